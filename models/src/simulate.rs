//! An in-memory executor of plans that enforces the ordering rules a real engine
//! relies on. Used by property tests and by fakes in other crates' unit tests.

use std::collections::{HashMap, HashSet};

use crate::component::Component;
use crate::cycles::CommunicationCycles;
use crate::link::Link;
use crate::model::DeploymentModel;
use crate::plan::{Action, Plan, Step};
use crate::route::{routes_of, Route};

/// A rule a step broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step `{step}`: {rule}")]
pub struct Violation {
    /// The step.
    pub step: String,
    /// The rule it broke.
    pub rule: String,
}

/// The state of a simulated subsystem: what exists, what is wired, what runs.
#[derive(Debug, Clone, Default)]
pub struct Simulator {
    components: HashMap<String, Component>,
    links: HashSet<Link>,
    running: HashSet<String>,
    /// The bridge routes carried, by owner.
    routes: HashMap<String, Vec<Route>>,
}

impl Simulator {
    /// Everything in `current` exists and every lifecycle component runs.
    pub fn new(current: &DeploymentModel) -> Self {
        Simulator {
            components: current
                .components
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
            links: current.links.iter().cloned().collect(),
            running: current
                .components
                .iter()
                .filter(|c| c.kind().has_lifecycle())
                .map(|c| c.id.clone())
                .collect(),
            routes: current
                .components
                .iter()
                .map(|c| (c.id.clone(), routes_of(c)))
                .filter(|(_, r)| !r.is_empty())
                .collect(),
        }
    }

    /// The bridge routes carried, by owner.
    pub fn routes(&self) -> &HashMap<String, Vec<Route>> {
        &self.routes
    }

    /// The model the simulated subsystem is in now.
    pub fn model(&self) -> DeploymentModel {
        DeploymentModel {
            id: None,
            on_failure: None,
            components: self.components.values().cloned().collect(),
            links: self.links.iter().cloned().collect(),
        }
        .canonical()
    }

    /// What runs.
    pub fn running(&self) -> &HashSet<String> {
        &self.running
    }

    /// Whether `id` is up: running for lifecycle components, present otherwise.
    fn up(&self, id: &str) -> bool {
        match self.components.get(id) {
            Some(c) if c.kind().has_lifecycle() => self.running.contains(id),
            Some(_) => true,
            None => false,
        }
    }

    fn host_of(&self, id: &str) -> Option<&str> {
        self.links.iter().find_map(|l| match l {
            Link::Hosting { component, host } if component == id => Some(host.as_str()),
            _ => None,
        })
    }

    /// Executes every step of `plan` in the given order (which must respect
    /// `after`), checking each against the rules.
    pub fn run(
        &mut self,
        plan: &Plan,
        order: &[usize],
        target: &DeploymentModel,
    ) -> Result<(), Violation> {
        let index = Target::new(target);
        let mut done = vec![false; plan.steps.len()];
        for &i in order {
            let step = &plan.steps[i];
            if let Some(d) = step.after.iter().find(|d| !done[**d]) {
                return Err(violation(
                    step,
                    format!("ran before step #{} it depends on", d + 1),
                ));
            }
            self.execute(step, &index)?;
            done[i] = true;
        }
        Ok(())
    }

    /// Executes one step, checking it against the rules.
    pub fn execute(&mut self, step: &Step, target: &Target<'_>) -> Result<(), Violation> {
        let fail = |rule: String| Err(violation(step, rule));
        match &step.action {
            Action::Stop { component } => {
                if !self.running.contains(component) {
                    return fail("stops a component that is not running".into());
                }
                let hosted_running = self.links.iter().any(|l| {
                    matches!(l, Link::Hosting { component: c, host } if host == component && self.running.contains(c))
                });
                if hosted_running {
                    return fail("stops a host while something it hosts still runs".into());
                }
                self.running.remove(component);
            }
            Action::Unbind { link } => {
                if !self.links.remove(link) {
                    return fail("unbinds a link that is not bound".into());
                }
            }
            Action::Remove { component } => {
                if !self.components.contains_key(component) {
                    return fail("removes a component that does not exist".into());
                }
                if self.running.contains(component) {
                    return fail("removes a running component".into());
                }
                // A replaced component keeps its routes (they belong to its id,
                // not to what runs); one that goes for good must lose them first.
                if self.routes.contains_key(component)
                    && !target.components.contains_key(component.as_str())
                {
                    return fail("removes a component the bridge still routes".into());
                }
                if let Some(l) = self.links.iter().find(|l| match l {
                    Link::Hosting { host, .. } => host == component,
                    Link::Communication(_) => l.touches(component),
                }) {
                    return fail(format!("removes a component still linked: {l}"));
                }
                self.links
                    .retain(|l| !matches!(l, Link::Hosting { component: c, .. } if c == component));
                self.components.remove(component);
            }
            Action::Add { component } => {
                if self.components.contains_key(component) {
                    return fail("adds a component that already exists".into());
                }
                let Some(c) = target.components.get(component.as_str()) else {
                    return fail("adds a component that is not in the target".into());
                };
                if let Some(h) = target.hosts.get(component.as_str()) {
                    if !self.components.contains_key(*h) {
                        return fail(format!("adds before its host `{h}` exists"));
                    }
                    self.links.insert(Link::hosting(component.clone(), *h));
                }
                self.components.insert(component.clone(), (*c).clone());
            }
            Action::Bind { link } => {
                let (a, b) = link.endpoints();
                if !self.components.contains_key(a) || !self.components.contains_key(b) {
                    return fail("binds a link to a component that does not exist".into());
                }
                if !self.links.insert(link.clone()) {
                    return fail("binds a link that is already bound".into());
                }
            }
            Action::Route { component } => {
                let (Some(c), true) = (
                    target.components.get(component.as_str()),
                    self.components.contains_key(component),
                ) else {
                    return fail("routes a component missing from the state or the target".into());
                };
                let routes = routes_of(c);
                if routes.is_empty() {
                    self.routes.remove(component);
                } else {
                    self.routes.insert(component.clone(), routes);
                }
            }
            Action::Unroute { component } => {
                if self.running.contains(component) {
                    return fail("unroutes a component still running".into());
                }
                if self.routes.remove(component).is_none() {
                    return fail("unroutes a component that has no routes".into());
                }
            }
            Action::Update { component } => {
                let (Some(c), true) = (
                    target.components.get(component.as_str()),
                    self.components.contains_key(component),
                ) else {
                    return fail("updates a component missing from the state or the target".into());
                };
                self.components.insert(component.clone(), (*c).clone());
            }
            Action::Start { component } => {
                if !self.components.contains_key(component) {
                    return fail("starts a component that does not exist".into());
                }
                if self.running.contains(component) {
                    return fail("starts a component already running".into());
                }
                if let Some(h) = self.host_of(component) {
                    if !self.up(h) {
                        return fail(format!("starts before its host `{h}` is up"));
                    }
                }
                for l in &self.links {
                    if let Some((who, what)) = l.need() {
                        let cycle = matches!(l, Link::Communication(_))
                            && target.together.together(who, what);
                        if who == component && !cycle && !self.up(what) {
                            return fail(format!(
                                "starts before `{what}`, which it needs ({l}), is up"
                            ));
                        }
                    }
                }
                self.running.insert(component.clone());
            }
        }
        Ok(())
    }
}

/// The target model, indexed for the simulator.
#[derive(Debug)]
pub struct Target<'a> {
    components: HashMap<&'a str, &'a Component>,
    hosts: HashMap<&'a str, &'a str>,
    /// Components that start in no order among them.
    together: CommunicationCycles<'a>,
}

impl<'a> Target<'a> {
    /// The target, indexed.
    pub fn new(model: &'a DeploymentModel) -> Self {
        Target {
            components: model.index(),
            hosts: model.hosts(),
            together: CommunicationCycles::find(&model.links, |_| true),
        }
    }
}

fn violation(step: &Step, rule: impl Into<String>) -> Violation {
    Violation {
        step: step.action.to_string(),
        rule: rule.into(),
    }
}

/// A random order of a plan's steps that respects every `after` (the order a
/// concurrent executor might pick). Panics if the plan's dependencies form a
/// cycle: a plan never may.
pub fn random_order(plan: &Plan, seed: u64) -> Vec<usize> {
    let mut rng = crate::generate::Rng::new(seed);
    let n = plan.steps.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let ready: Vec<usize> = (0..n)
            .filter(|&i| !done[i] && plan.steps[i].after.iter().all(|d| done[*d]))
            .collect();
        assert!(!ready.is_empty(), "plan has a dependency cycle");
        let pick = ready[rng.below(ready.len())];
        done[pick] = true;
        order.push(pick);
    }
    order
}
