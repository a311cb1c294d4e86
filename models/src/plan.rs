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
pub fn plan_diff<'m>(
    current: &'m DeploymentModel,
    target: &'m DeploymentModel,
    d: &'m ModelDiff,
) -> Plan {
    let mut t = Touched::default();
    // Ids in the order steps are created, so that ties in the final order are
    // broken the same way every time.
    let going_down: Vec<(Slot, Kind)> = d
        .removed
        .iter()
        .map(|c| (c.id.as_str(), c.kind()))
        .chain(
            d.replaced()
                .map(|c| (c.id.as_str(), c.previous_kind.unwrap_or(c.kind))),
        )
        .map(|(id, kind)| (t.mark(id, DOWN), kind))
        .collect();
    let coming_up: Vec<(Slot, Kind)> = d
        .added
        .iter()
        .map(|c| (c.id.as_str(), c.kind()))
        .chain(d.replaced().map(|c| (c.id.as_str(), c.kind)))
        .map(|(id, kind)| (t.mark(id, UP), kind))
        .collect();
    for c in d.replaced() {
        t.mark(&c.id, REPLACED);
    }
    let updated: Vec<Slot> = d
        .changed
        .iter()
        .filter(|c| !c.is_replace())
        .map(|c| t.mark(&c.id, 0))
        .collect();

    // Who needs what is going down (current model), and what what is coming up needs
    // (target model); links of replaced components are re-wired.
    // Components on a cycle of communication links stop and start together.
    // Only links with a touched end matter; most links are passed over here.
    let touching = |links: &'m [Link]| -> Vec<(&'m Link, Ends)> {
        links
            .iter()
            .filter_map(|l| {
                let ends = t.ends(l);
                (ends.marks() != 0).then_some((l, ends))
            })
            .collect()
    };
    let (current_links, target_links) = (touching(&current.links), touching(&target.links));
    let stop_together = CommunicationCycles::find(current_links.iter().map(|e| e.0), |id| {
        t.marks(id) & DOWN != 0
    });
    let start_together =
        CommunicationCycles::find(target_links.iter().map(|e| e.0), |id| t.marks(id) & UP != 0);
    // (what goes down, who needs it, whether it is hosted on it)
    let mut needed_by: Vec<(Slot, Slot, bool)> = Vec::new();
    let mut unbind: Vec<(&Link, Ends)> = d.links_removed.iter().map(|l| (l, t.ends(l))).collect();
    for &(l, ends) in &current_links {
        if let Some((who, what, Some((who_at, _)), Some((what_at, m)))) = ends.need(l) {
            let hosting = matches!(l, Link::Hosting { .. });
            if m & DOWN != 0 && (hosting || !stop_together.together(who, what)) {
                needed_by.push((what_at, who_at, hosting));
            }
        }
        if ends.marks() & REPLACED != 0 && d.links_removed.binary_search(l).is_err() {
            unbind.push((l, ends));
        }
    }
    // (who comes up, what it needs, whether it is its host)
    let mut needs: Vec<(Slot, Slot, bool)> = Vec::new();
    let mut bind: Vec<(&Link, Ends)> = d.links_added.iter().map(|l| (l, t.ends(l))).collect();
    for &(l, ends) in &target_links {
        if let Some((who, what, Some((who_at, m)), Some((what_at, _)))) = ends.need(l) {
            let hosting = matches!(l, Link::Hosting { .. });
            if m & UP != 0 && (hosting || !start_together.together(who, what)) {
                needs.push((who_at, what_at, hosting));
            }
        }
        if ends.marks() & REPLACED != 0 && d.links_added.binary_search(l).is_err() {
            bind.push((l, ends));
        }
    }
    unbind.retain(|(l, _)| matches!(l, Link::Communication(_)));
    bind.retain(|(l, _)| matches!(l, Link::Communication(_)));

    let mut g = Builder::new(&t);
    for &(at, kind) in &going_down {
        if kind.has_lifecycle() {
            g.add(
                Action::Stop {
                    component: t.owned(at),
                },
                at,
            );
        }
        g.add(
            Action::Remove {
                component: t.owned(at),
            },
            at,
        );
    }
    let mut unbound: FastMap<&Link, usize> = FastMap::default();
    for &(l, _) in &unbind {
        unbound.insert(l, g.add_link(Action::Unbind { link: l.clone() }));
    }
    for &(at, kind) in &coming_up {
        g.add(
            Action::Add {
                component: t.owned(at),
            },
            at,
        );
        if kind.has_lifecycle() {
            g.add(
                Action::Start {
                    component: t.owned(at),
                },
                at,
            );
        }
    }
    let bound: Vec<usize> = bind
        .iter()
        .map(|&(l, _)| g.add_link(Action::Bind { link: l.clone() }))
        .collect();
    for &at in &updated {
        g.add(
            Action::Update {
                component: t.owned(at),
            },
            at,
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
    let unroute: Vec<Slot> = unroute.iter().filter_map(|id| t.slot(id)).collect();
    let route: Vec<Slot> = route.iter().filter_map(|id| t.slot(id)).collect();
    for &at in &unroute {
        g.add(
            Action::Unroute {
                component: t.owned(at),
            },
            at,
        );
    }
    for &at in &route {
        g.add(
            Action::Route {
                component: t.owned(at),
            },
            at,
        );
    }

    // Dependencies.
    use Phase::{Add, Bind, Remove, Start, Stop, Unbind};
    for &at in &unroute {
        g.dep(g.find(Unbind, at), g.find(Stop, at));
        g.dep(g.find(Remove, at), g.find(Unbind, at));
    }
    for &at in &route {
        g.dep(g.find(Bind, at), g.find(Add, at));
    }
    for &(what, who, hosted) in &needed_by {
        g.dep(g.find(Stop, what), g.find(Stop, who));
        if hosted {
            g.dep(g.find(Remove, what), g.find(Remove, who));
        }
    }
    for &(at, _) in &going_down {
        g.dep(g.find(Remove, at), g.find(Stop, at));
    }
    for &(l, ends) in &unbind {
        let step = unbound.get(l).copied();
        for at in ends.slots() {
            g.dep(step, g.find(Stop, at));
            g.dep(g.find(Remove, at), step);
        }
    }
    for &(at, _) in &coming_up {
        let add = g.find(Add, at);
        g.dep(add, g.find(Remove, at));
        g.dep(g.find(Start, at), add);
    }
    for &(who, what, hosting) in &needs {
        if hosting {
            g.dep(g.find(Add, who), g.find(Add, what));
        }
        let before = g.find(Start, what).or_else(|| g.find(Add, what));
        g.dep(g.find(Start, who), before);
    }
    for (&(l, ends), &step) in bind.iter().zip(&bound) {
        let step = Some(step);
        for at in ends.slots() {
            g.dep(step, g.find(Add, at));
        }
        g.dep(step, unbound.get(l).copied());
        // The side that needs the link starts once it is bound; the side it
        // needs does not wait for it (a failed client must not hold its server
        // back). A link that orders nothing holds both ends.
        match ends.need(l) {
            Some((_, _, who, _)) => {
                if let Some((who, _)) = who {
                    g.dep(g.find(Start, who), step);
                }
            }
            None => {
                for at in ends.slots() {
                    g.dep(g.find(Start, at), step);
                }
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

/// A component the plan touches, by its place in [`Touched`].
type Slot = u32;

/// Marks of a touched component.
const DOWN: u8 = 1;
const UP: u8 = 2;
const REPLACED: u8 = 4;

/// The components a diff touches, interned: each id is hashed once per link end
/// and once when first seen; everything else the planner records about a
/// component is indexed by its slot.
#[derive(Default)]
struct Touched<'a> {
    slots: FastMap<&'a str, Slot>,
    ids: Vec<&'a str>,
    marks: Vec<u8>,
}

impl<'a> Touched<'a> {
    /// Interns `id` (if new) and adds `mark` to it.
    fn mark(&mut self, id: &'a str, mark: u8) -> Slot {
        let next = Slot::try_from(self.ids.len()).expect("fewer than 2^32 components");
        let at = *self.slots.entry(id).or_insert(next);
        if at == next {
            self.ids.push(id);
            self.marks.push(0);
        }
        self.marks[at as usize] |= mark;
        at
    }

    fn slot(&self, id: &str) -> Option<Slot> {
        self.slots.get(id).copied()
    }

    /// The marks of `id`; 0 when untouched.
    fn marks(&self, id: &str) -> u8 {
        self.slot(id).map_or(0, |at| self.marks[at as usize])
    }

    fn end(&self, id: &str) -> End {
        self.slot(id).map(|at| (at, self.marks[at as usize]))
    }

    fn ends(&self, l: &Link) -> Ends {
        let (x, y) = l.endpoints();
        Ends {
            x: self.end(x),
            y: self.end(y),
        }
    }

    fn owned(&self, at: Slot) -> String {
        self.ids[at as usize].to_owned()
    }
}

/// One end of a link: its slot and marks, when touched.
type End = Option<(Slot, u8)>;

/// Both ends of a link, in [`Link::endpoints`] order.
#[derive(Clone, Copy)]
struct Ends {
    x: End,
    y: End,
}

impl Ends {
    fn marks(self) -> u8 {
        self.x.map_or(0, |e| e.1) | self.y.map_or(0, |e| e.1)
    }

    fn slots(self) -> impl Iterator<Item = Slot> {
        self.x.into_iter().chain(self.y).map(|e| e.0)
    }

    /// [`Link::need`] with the ends: (who, what, who's end, what's end).
    fn need(self, l: &Link) -> Option<(&str, &str, End, End)> {
        let (who, what) = l.need()?;
        let (x, _) = l.endpoints();
        Some(if std::ptr::eq(who, x) {
            (who, what, self.x, self.y)
        } else {
            (who, what, self.y, self.x)
        })
    }
}

const NO_STEP: usize = usize::MAX;

struct Builder {
    actions: Vec<Action>,
    /// Dependencies as (step, the step it waits for), duplicates included:
    /// one flat list rather than a vector per step (a plan has thousands).
    edges: Vec<(usize, usize)>,
    /// Each touched component's step in each phase.
    by_component: Vec<[usize; 7]>,
}

impl Builder {
    fn new(touched: &Touched<'_>) -> Self {
        Builder {
            actions: Vec::new(),
            edges: Vec::new(),
            by_component: vec![[NO_STEP; 7]; touched.ids.len()],
        }
    }

    fn add(&mut self, action: Action, at: Slot) {
        let phase = action.phase() as usize;
        self.by_component[at as usize][phase] = self.actions.len();
        self.actions.push(action);
    }

    /// Adds a link's step; it is found through the index returned.
    fn add_link(&mut self, action: Action) -> usize {
        self.actions.push(action);
        self.actions.len() - 1
    }

    fn find(&self, phase: Phase, at: Slot) -> Option<usize> {
        let step = self.by_component[at as usize][phase as usize];
        (step != NO_STEP).then_some(step)
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
