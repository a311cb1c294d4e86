//! Planning: the ordered steps that turn a current model into a target model.
//!
//! A plan is a DAG of idempotent steps. Every dependency points to a step of the
//! same or an earlier phase, and [`Plan::steps`] lists the steps in a topological
//! order sorted by phase: stop → unbind → remove → add → bind → update → start.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use serde::Serialize;

use crate::component::{Component, Kind};
use crate::cycles::CommunicationCycles;
use crate::route::routes_of;

/// The fields a component's bridge routes come from.
const ROUTE_FIELDS: &[&str] = &["triggers", "inputs", "outputs", "routes"];
use crate::diff::{diff, ModelDiff};
use crate::index::FastMap;
use crate::link::Link;
use crate::model::DeploymentModel;

/// The order steps run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stop what goes or changes.
    Stop,
    /// Remove links and routes.
    Unbind,
    /// Remove what goes.
    Remove,
    /// Create what comes.
    Add,
    /// Add links and routes.
    Bind,
    /// Update metadata in place.
    Update,
    /// Start what comes.
    Start,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 7] = [
        Phase::Stop,
        Phase::Unbind,
        Phase::Remove,
        Phase::Add,
        Phase::Bind,
        Phase::Update,
        Phase::Start,
    ];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stop => "stop",
            Phase::Unbind => "unbind",
            Phase::Remove => "remove",
            Phase::Add => "add",
            Phase::Bind => "bind",
            Phase::Update => "update",
            Phase::Start => "start",
        }
    }
}

/// What a step does. Steps name components by id; the executor reads their
/// specification from the target model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Stop a running component (its spec is in the current model).
    Stop {
        /// The component.
        component: String,
    },
    /// Remove a communication link between two components.
    Unbind {
        /// The link.
        link: Link,
    },
    /// Remove every bridge route of a component.
    Unroute {
        /// The component.
        component: String,
    },
    /// Delete a component and what was created for it.
    Remove {
        /// The component.
        component: String,
    },
    /// Create (build, pull, flash-prepare) a component from the target.
    Add {
        /// The component.
        component: String,
    },
    /// Add a communication link between two components.
    Bind {
        /// The link.
        link: Link,
    },
    /// Make the bridge carry exactly the routes the target gives a component.
    Route {
        /// The component.
        component: String,
    },
    /// Update metadata in place, without restarting.
    Update {
        /// The component.
        component: String,
    },
    /// Start a component (once what it needs is up).
    Start {
        /// The component.
        component: String,
    },
}

impl Action {
    /// The step's kind in one word (`start`, `bind`), for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Stop { .. } => "stop",
            Action::Unbind { .. } => "unbind",
            Action::Unroute { .. } => "unroute",
            Action::Remove { .. } => "remove",
            Action::Add { .. } => "add",
            Action::Bind { .. } => "bind",
            Action::Route { .. } => "route",
            Action::Update { .. } => "update",
            Action::Start { .. } => "start",
        }
    }

    /// The phase the step belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            Action::Stop { .. } => Phase::Stop,
            Action::Unbind { .. } | Action::Unroute { .. } => Phase::Unbind,
            Action::Remove { .. } => Phase::Remove,
            Action::Add { .. } => Phase::Add,
            Action::Bind { .. } | Action::Route { .. } => Phase::Bind,
            Action::Update { .. } => Phase::Update,
            Action::Start { .. } => Phase::Start,
        }
    }

    /// The component the step acts on (`None` for link steps).
    pub fn component(&self) -> Option<&str> {
        match self {
            Action::Stop { component }
            | Action::Remove { component }
            | Action::Add { component }
            | Action::Update { component }
            | Action::Start { component }
            | Action::Route { component }
            | Action::Unroute { component } => Some(component),
            Action::Unbind { .. } | Action::Bind { .. } => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Stop { component } => write!(f, "stop {component}"),
            Action::Unbind { link } => write!(f, "unbind {link}"),
            Action::Remove { component } => write!(f, "remove {component}"),
            Action::Add { component } => write!(f, "add {component}"),
            Action::Bind { link } => write!(f, "bind {link}"),
            Action::Route { component } => write!(f, "route {component}"),
            Action::Unroute { component } => write!(f, "unroute {component}"),
            Action::Update { component } => write!(f, "update {component}"),
            Action::Start { component } => write!(f, "start {component}"),
        }
    }
}

/// A step of a plan; `id` is its index in [`Plan::steps`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Its index in the plan.
    pub id: usize,
    /// Its phase.
    pub phase: Phase,
    /// What it does.
    #[serde(flatten)]
    pub action: Action,
    /// Steps that must finish first.
    pub after: Vec<usize>,
}

/// The steps from a current model to a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The steps, in an order their dependencies allow.
    pub steps: Vec<Step>,
    /// Components that start with no order among them, because communication
    /// links between them form a cycle (each group sorted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub start_together: Vec<Vec<String>>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }
}

/// Plans the steps from `current` to `target`.
pub fn plan(current: &DeploymentModel, target: &DeploymentModel) -> Plan {
    plan_diff(current, target, &diff(current, target))
}

/// Plans from an already computed `diff(current, target)`. Looks only at what the
/// diff touches: one pass over each model's links, no index of whole models.
pub fn plan_diff(current: &DeploymentModel, target: &DeploymentModel, d: &ModelDiff) -> Plan {
    let going_down: Vec<(&str, Kind)> = d
        .removed
        .iter()
        .map(|c| (c.id.as_str(), c.kind()))
        .chain(
            d.replaced()
                .map(|c| (c.id.as_str(), c.previous_kind.unwrap_or(c.kind))),
        )
        .collect();
    let coming_up: Vec<(&str, Kind)> = d
        .added
        .iter()
        .map(|c| (c.id.as_str(), c.kind()))
        .chain(d.replaced().map(|c| (c.id.as_str(), c.kind)))
        .collect();
    // One lookup per link end tells whether the component goes down, comes
    // up or is replaced: most links touch nothing that changes and are
    // passed over after two lookups.
    const DOWN: u8 = 1;
    const UP: u8 = 2;
    const REPLACED: u8 = 4;
    let mut marks: FastMap<&str, u8> = FastMap::default();
    marks.reserve(going_down.len() + coming_up.len());
    for &(id, _) in &going_down {
        *marks.entry(id).or_default() |= DOWN;
    }
    for &(id, _) in &coming_up {
        *marks.entry(id).or_default() |= UP;
    }
    for c in d.replaced() {
        *marks.entry(c.id.as_str()).or_default() |= REPLACED;
    }
    let mark = |id: &str| marks.get(id).copied().unwrap_or(0);
    let down = |id: &str| mark(id) & DOWN != 0;
    let up = |id: &str| mark(id) & UP != 0;
    // The marks of a link's ends: (its first end, both ends' marks).
    fn ends<'l>(l: &'l Link, mark: &impl Fn(&str) -> u8) -> (&'l str, u8, u8) {
        let (x, y) = l.endpoints();
        (x, mark(x), mark(y))
    }

    // Who needs what is going down (current model), and what what is coming up needs
    // (target model); links of replaced components are re-wired.
    // Components on a cycle of communication links stop and start together.
    let stop_together = CommunicationCycles::find(&current.links, down);
    let start_together = CommunicationCycles::find(&target.links, up);
    let mut needed_by: FastMap<&str, Vec<(&str, bool)>> = FastMap::default();
    let mut unbind: Vec<&Link> = d.links_removed.iter().collect();
    for l in &current.links {
        let (x, mx, my) = ends(l, &mark);
        if mx | my == 0 {
            continue;
        }
        // `need` names the link's own ends.
        let of = |id: &str| if std::ptr::eq(id, x) { mx } else { my };
        let any = mx | my;
        if let Some((who, what)) = l.need() {
            if of(what) & DOWN != 0
                && (matches!(l, Link::Hosting { .. }) || !stop_together.together(who, what))
            {
                needed_by
                    .entry(what)
                    .or_default()
                    .push((who, matches!(l, Link::Hosting { .. })));
            }
        }
        if any & REPLACED != 0 && d.links_removed.binary_search(l).is_err() {
            unbind.push(l);
        }
    }
    let mut needs: FastMap<&str, Vec<&str>> = FastMap::default();
    let mut host_of: FastMap<&str, &str> = FastMap::default();
    let mut bind: Vec<&Link> = d.links_added.iter().collect();
    for l in &target.links {
        let (x, mx, my) = ends(l, &mark);
        if mx | my == 0 {
            continue;
        }
        let of = |id: &str| if std::ptr::eq(id, x) { mx } else { my };
        let any = mx | my;
        if let Some((who, what)) = l.need() {
            let hosting = matches!(l, Link::Hosting { .. });
            if of(who) & UP != 0 && (hosting || !start_together.together(who, what)) {
                needs.entry(who).or_default().push(what);
                if hosting {
                    host_of.insert(who, what);
                }
            }
        }
        if any & REPLACED != 0 && d.links_added.binary_search(l).is_err() {
            bind.push(l);
        }
    }
    unbind.retain(|l| matches!(l, Link::Communication(_)));
    bind.retain(|l| matches!(l, Link::Communication(_)));

    let mut g = Builder::default();
    for &(id, kind) in &going_down {
        if kind.has_lifecycle() {
            g.add(
                Action::Stop {
                    component: id.to_owned(),
                },
                Key::Component(id),
            );
        }
        g.add(
            Action::Remove {
                component: id.to_owned(),
            },
            Key::Component(id),
        );
    }
    for &l in &unbind {
        g.add(Action::Unbind { link: l.clone() }, Key::Link(l));
    }
    for &(id, kind) in &coming_up {
        g.add(
            Action::Add {
                component: id.to_owned(),
            },
            Key::Component(id),
        );
        if kind.has_lifecycle() {
            g.add(
                Action::Start {
                    component: id.to_owned(),
                },
                Key::Component(id),
            );
        }
    }
    for &l in &bind {
        g.add(Action::Bind { link: l.clone() }, Key::Link(l));
    }
    for c in d.changed.iter().filter(|c| !c.is_replace()) {
        g.add(
            Action::Update {
                component: c.id.clone(),
            },
            Key::Component(&c.id),
        );
    }

    // Bridge routes follow the model: those of what goes are removed, those of
    // what comes or changes its routes are set.
    let routed = |c: &Component| !routes_of(c).is_empty();
    let mut unroute: Vec<&str> = d
        .removed
        .iter()
        .filter(|c| routed(c))
        .map(|c| c.id.as_str())
        .collect();
    let mut route: Vec<&str> = d
        .added
        .iter()
        .filter(|c| routed(c))
        .map(|c| c.id.as_str())
        .collect();
    for c in &d.changed {
        if c.fields
            .iter()
            .any(|f| ROUTE_FIELDS.contains(&f.top_field()))
        {
            route.push(&c.id);
        }
    }
    unroute.sort_unstable();
    route.sort_unstable();
    for &id in &unroute {
        g.add(
            Action::Unroute {
                component: id.to_owned(),
            },
            Key::Component(id),
        );
    }
    for &id in &route {
        g.add(
            Action::Route {
                component: id.to_owned(),
            },
            Key::Component(id),
        );
    }

    // Dependencies.
    for &id in &unroute {
        g.dep(g.find(Phase::Unbind, id), g.find(Phase::Stop, id));
        g.dep(g.find(Phase::Remove, id), g.find(Phase::Unbind, id));
    }
    for &id in &route {
        g.dep(g.find(Phase::Bind, id), g.find(Phase::Add, id));
    }
    for &(id, _) in &going_down {
        let stop = g.find(Phase::Stop, id);
        let remove = g.find(Phase::Remove, id);
        for &(dependant, hosted) in needed_by.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            g.dep(stop, g.find(Phase::Stop, dependant));
            if hosted {
                g.dep(remove, g.find(Phase::Remove, dependant));
            }
        }
        g.dep(remove, stop);
    }
    for &l in &unbind {
        let step = g.find_link(Phase::Unbind, l);
        let (x, y) = l.endpoints();
        g.dep(step, g.find(Phase::Stop, x));
        g.dep(step, g.find(Phase::Stop, y));
        g.dep(g.find(Phase::Remove, x), step);
        g.dep(g.find(Phase::Remove, y), step);
    }
    for &(id, _) in &coming_up {
        let add = g.find(Phase::Add, id);
        g.dep(add, g.find(Phase::Remove, id));
        if let Some(host) = host_of.get(id) {
            g.dep(add, g.find(Phase::Add, host));
        }
        let start = g.find(Phase::Start, id);
        g.dep(start, add);
        for &n in needs.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            let before = g.find(Phase::Start, n).or_else(|| g.find(Phase::Add, n));
            g.dep(start, before);
        }
    }
    for &l in &bind {
        let step = g.find_link(Phase::Bind, l);
        let (x, y) = l.endpoints();
        g.dep(step, g.find(Phase::Add, x));
        g.dep(step, g.find(Phase::Add, y));
        g.dep(step, g.find_link(Phase::Unbind, l));
        // The side that needs the link starts once it is bound; the side it
        // needs does not wait for it (a failed client must not hold its server
        // back). A link that orders nothing holds both ends.
        match l.need() {
            Some((needer, _)) => g.dep(g.find(Phase::Start, needer), step),
            None => {
                g.dep(g.find(Phase::Start, x), step);
                g.dep(g.find(Phase::Start, y), step);
            }
        }
    }
    let mut plan = g.finish();
    plan.start_together = start_together
        .groups()
        .iter()
        .map(|g| g.iter().map(|c| (*c).to_owned()).collect())
        .collect();
    plan
}

/// What a step is looked up by while the plan is built.
enum Key<'a> {
    Component(&'a str),
    Link(&'a Link),
}

#[derive(Default)]
struct Builder<'a> {
    actions: Vec<Action>,
    /// Dependencies as (step, the step it waits for), duplicates included:
    /// one flat list rather than a vector per step (a plan has thousands).
    edges: Vec<(usize, usize)>,
    by_component: FastMap<&'a str, [Option<usize>; 7]>,
    by_link: FastMap<&'a Link, [Option<usize>; 7]>,
}

impl<'a> Builder<'a> {
    fn add(&mut self, action: Action, key: Key<'a>) {
        let i = self.actions.len();
        let phase = action.phase() as usize;
        match key {
            Key::Component(c) => self.by_component.entry(c).or_default()[phase] = Some(i),
            Key::Link(l) => self.by_link.entry(l).or_default()[phase] = Some(i),
        }
        self.actions.push(action);
    }

    fn find(&self, phase: Phase, component: &str) -> Option<usize> {
        self.by_component.get(component)?[phase as usize]
    }

    fn find_link(&self, phase: Phase, link: &Link) -> Option<usize> {
        self.by_link.get(link)?[phase as usize]
    }

    fn dep(&mut self, step: Option<usize>, on: Option<usize>) {
        if let (Some(s), Some(o)) = (step, on) {
            if s != o {
                self.edges.push((s, o));
            }
        }
    }

    /// Orders the steps topologically, earliest phase first (then creation order),
    /// and renumbers them.
    fn finish(mut self) -> Plan {
        let n = self.actions.len();
        self.edges.sort_unstable();
        self.edges.dedup();
        // Who waits for each step, as one array sliced by `starts` (edges
        // sorted by the step waited for).
        let mut indegree = vec![0usize; n];
        let mut starts = vec![0usize; n + 1];
        for &(s, o) in &self.edges {
            indegree[s] += 1;
            starts[o + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut dependants = vec![0usize; self.edges.len()];
        for &(s, o) in &self.edges {
            dependants[fill[o]] = s;
            fill[o] += 1;
        }
        let phase: Vec<Phase> = self.actions.iter().map(Action::phase).collect();
        let mut ready: BinaryHeap<Reverse<(Phase, usize)>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(|i| Reverse((phase[i], i)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, i))) = ready.pop() {
            order.push(i);
            for &s in &dependants[starts[i]..starts[i + 1]] {
                indegree[s] -= 1;
                if indegree[s] == 0 {
                    ready.push(Reverse((phase[s], s)));
                }
            }
        }
        debug_assert_eq!(order.len(), n, "plan dependencies form a cycle");
        let mut new_id = vec![0usize; n];
        for (pos, &old) in order.iter().enumerate() {
            new_id[old] = pos;
        }
        // What each step waits for: the edges are sorted by step.
        let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
        for run in self.edges.chunk_by(|x, y| x.0 == y.0) {
            let mut deps: Vec<usize> = run.iter().map(|&(_, o)| new_id[o]).collect();
            deps.sort_unstable();
            after[run[0].0] = deps;
        }
        let mut actions: Vec<Option<Action>> = self.actions.into_iter().map(Some).collect();
        let steps = order
            .iter()
            .enumerate()
            .filter_map(|(pos, &old)| {
                let action = actions[old].take()?;
                Some(Step {
                    id: pos,
                    phase: phase[old],
                    action,
                    after: std::mem::take(&mut after[old]),
                })
            })
            .collect();
        Plan {
            steps,
            start_together: Vec::new(),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "nothing to do: current and target are the same");
        }
        writeln!(
            f,
            "{} step{}",
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" }
        )?;
        let mut phase = None;
        for s in &self.steps {
            if phase != Some(s.phase) {
                writeln!(f, "{}:", s.phase.as_str())?;
                phase = Some(s.phase);
            }
            write!(f, "  #{:<4} {}", s.id + 1, s.action)?;
            if !s.after.is_empty() {
                let deps: Vec<String> = s.after.iter().map(|d| format!("#{}", d + 1)).collect();
                write!(f, "   (after {})", deps.join(", "))?;
            }
            writeln!(f)?;
        }
        for group in &self.start_together {
            writeln!(
                f,
                "start together, in no order (communication links between them form a cycle): {}",
                group.join(", ")
            )?;
        }
        Ok(())
    }
}
