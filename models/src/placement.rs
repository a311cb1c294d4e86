//! Placement: a function with no hosting link, in no subsystem, is put on the
//! gateway best fit to run it — the weighted multi-cluster placement of
//! serverless functions across the continuum.
//!
//! A gateway is a *candidate* when it has a bridge (a function's triggers come
//! over it), when its labels agree with the function's `context` on every key
//! some gateway labels (a context key no gateway labels, such as a threshold,
//! is the function's own business), and when it offers every `requires` entry
//! (`docker`, `arch=<arch>`, `<label>=<value>`, or a label's name). Candidates
//! are scored by the CPU and memory they have free, weighted by the
//! megamodel's `placement` weights: what their hosts last measured (CPUs less
//! the load average, available memory) when the orchestrator knows it for
//! every gateway, else their declared `cpus` and `memory_mb` shared by the
//! components their subsystem runs (the two are not on one scale); either way
//! shared by the functions this placement puts there. The best wins, the first subsystem on a tie. A function placed
//! before stays where it is while that gateway is still a candidate, so a
//! shift of load does not move what runs. Pure: given the same observations,
//! the same model places the same way offline (`continuum explain`) and on
//! the orchestrator.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::component::{Capabilities, Component, ComponentSpec, Kind};
use crate::diagnostic::Problem;
use crate::link::Link;
use crate::located::Document;
use crate::model::Megamodel;

/// The property template expansion puts on the components a template adds
/// next to a function: the function's id (they follow it where it is placed).
pub const FUNCTION_PROPERTY: &str = "continuum.function";

/// The property placement puts on a function it placed: the gateway it chose
/// (a function placed by hand has none, and is never moved).
pub const PLACED_PROPERTY: &str = "continuum.placed-on";

/// How much free CPU and free memory weigh in a candidate's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// The weight of CPUs per workload.
    #[serde(default = "one")]
    pub cpu: u32,
    /// The weight of GiB of memory per workload.
    #[serde(default = "one")]
    pub memory: u32,
}

fn one() -> u32 {
    1
}

impl Default for Weights {
    fn default() -> Self {
        Weights { cpu: 1, memory: 1 }
    }
}

impl Weights {
    /// Whether these are the defaults (then not written).
    pub fn is_default(&self) -> bool {
        *self == Weights::default()
    }
}

/// What a gateway's host last measured of itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    /// CPUs.
    pub cpus: u32,
    /// The one-minute load average.
    pub load: f64,
    /// Memory still available, in MiB.
    pub memory_available_mb: u64,
}

impl Measured {
    /// CPUs not busy.
    pub fn free_cpus(&self) -> f64 {
        (f64::from(self.cpus) - self.load).max(0.0)
    }
}

/// What placement knows beyond the model.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The load each gateway (by id) last measured.
    pub load: HashMap<String, Measured>,
    /// Where each function (by id) was placed before: it stays there while
    /// that gateway is a candidate.
    pub placed: HashMap<String, String>,
}

/// A gateway judged for a function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    /// The gateway's id.
    pub gateway: String,
    /// Its subsystem.
    pub subsystem: String,
    /// Its score when it is a candidate.
    pub score: Option<f64>,
    /// Why it is not a candidate (empty for a candidate).
    pub excluded: Vec<String>,
    /// Workloads it runs already, which share its CPU and memory.
    pub workloads: usize,
    /// What its host measured, when known (the score then uses it).
    pub measured: Option<Measured>,
}

/// A gateway and what it offers.
#[derive(Debug, Clone)]
struct Gateway {
    id: String,
    subsystem: String,
    bridge: bool,
    capabilities: Capabilities,
    workloads: usize,
    measured: Option<Measured>,
    /// Functions this placement put there.
    added: usize,
}

impl Gateway {
    fn add(&mut self) {
        self.workloads += 1;
        self.added += 1;
    }
}

fn gateways(
    mm: &Megamodel,
    of: &HashMap<String, Option<String>>,
    observed: &Observed,
) -> Vec<Gateway> {
    let all: Vec<&Component> = mm
        .subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .chain(mm.components.iter())
        .collect();
    let mut out: Vec<Gateway> = Vec::new();
    for c in &all {
        let ComponentSpec::Gateway(g) = &c.spec else {
            continue;
        };
        let Some(Some(subsystem)) = of.get(&c.id) else {
            continue;
        };
        let workloads = all
            .iter()
            .filter(|o| o.kind().has_lifecycle() && o.kind() != Kind::Gateway)
            .filter(|o| of.get(&o.id).and_then(Option::as_ref) == Some(subsystem))
            .count();
        out.push(Gateway {
            id: c.id.clone(),
            subsystem: subsystem.clone(),
            bridge: g.equipped_with_bridge,
            capabilities: g.capabilities.clone(),
            workloads,
            measured: observed.load.get(&c.id).copied(),
            added: 0,
        });
    }
    // A measurement and a declaration are not on one scale: measured loads
    // score only when every gateway has one.
    if out.iter().any(|g| g.measured.is_none()) {
        for g in &mut out {
            g.measured = None;
        }
    }
    out
}

fn judge(function: &Component, g: &Gateway, labelled: &[&str], weights: Weights) -> Judged {
    let mut excluded = Vec::new();
    if !g.bridge {
        excluded.push("it has no bridge to carry the function's triggers".to_owned());
    }
    let f = function.as_function().cloned().unwrap_or_default();
    for (key, wanted) in &f.context {
        if !labelled.contains(&key.as_str()) {
            continue;
        }
        match g.capabilities.labels.get(key) {
            Some(v) if v == wanted => {}
            Some(v) => excluded.push(format!(
                "its {key} is {v}, the function's context wants {wanted}"
            )),
            None => excluded.push(format!(
                "it has no {key} label; the function's context wants {wanted}"
            )),
        }
    }
    for r in &f.requires {
        let ok = match r.split_once('=') {
            Some(("arch", arch)) => g.capabilities.arch.as_deref() == Some(arch),
            Some((k, v)) => g.capabilities.labels.get(k).map(String::as_str) == Some(v),
            None if r == "docker" => g.capabilities.docker,
            None => g.capabilities.labels.contains_key(r),
        };
        if !ok {
            excluded.push(format!("it does not offer `{r}`"));
        }
    }
    let score = excluded.is_empty().then(|| {
        // What runs there already shows in a measured load.
        let (cpus, memory_gib, share) = match g.measured {
            Some(m) => (
                m.free_cpus(),
                m.memory_available_mb as f64 / 1024.0,
                1.0 + g.added as f64,
            ),
            None => (
                f64::from(g.capabilities.cpus.unwrap_or(1)),
                g.capabilities.memory_mb.unwrap_or(1024) as f64 / 1024.0,
                1.0 + g.workloads as f64,
            ),
        };
        (f64::from(weights.cpu) * cpus + f64::from(weights.memory) * memory_gib) / share
    });
    Judged {
        gateway: g.id.clone(),
        subsystem: g.subsystem.clone(),
        score,
        excluded,
        workloads: g.workloads,
        measured: g.measured,
    }
}

/// Every gateway judged for `function` in `mm` (templates expanded), best
/// first, then those excluded.
pub fn rank(mm: &Megamodel, function: &Component) -> Vec<Judged> {
    let doc = Document::of_megamodel(mm);
    let assignment = crate::subsystem::assign(mm, &doc);
    let gws = gateways(mm, &assignment.of, &Observed::default());
    rank_among(function, &gws, mm.placement)
}

fn rank_among(function: &Component, gws: &[Gateway], weights: Weights) -> Vec<Judged> {
    let mut labelled: Vec<&str> = gws
        .iter()
        .flat_map(|g| g.capabilities.labels.keys().map(String::as_str))
        .collect();
    labelled.sort_unstable();
    labelled.dedup();
    let mut judged: Vec<Judged> = gws
        .iter()
        .map(|g| judge(function, g, &labelled, weights))
        .collect();
    // Best score first; a stable sort keeps the model's order on a tie.
    judged.sort_by(|a, b| match (a.score, b.score) {
        (Some(x), Some(y)) => y.total_cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    judged
}

/// The top-level functions no subsystem reaches, in model order, with where
/// they are in the model.
fn waiting(
    doc: &Document<'_>,
    of: &HashMap<String, Option<String>>,
) -> Vec<(String, crate::diagnostic::JsonPath)> {
    doc.components
        .iter()
        .filter(|c| c.item.kind() == Kind::Function && c.nested_in.is_none())
        .filter(|c| of.get(&c.item.id).is_some_and(Option::is_none))
        .map(|c| (c.item.id.clone(), c.path()))
        .collect()
}

/// How function `id` of `mm` (templates expanded) is placed: every gateway
/// judged as `place` judges them, after the functions placed before it; none
/// when no such function waits for placement (a hosting link or a subsystem
/// places it).
pub fn explain(mm: &Megamodel, id: &str, observed: &Observed) -> Option<Vec<Judged>> {
    let doc = Document::of_megamodel(mm);
    let assignment = crate::subsystem::assign(mm, &doc);
    let mut gws = gateways(mm, &assignment.of, observed);
    for (w, _) in &waiting(&doc, &assignment.of) {
        let function = mm.components.iter().find(|c| &c.id == w)?;
        let judged = rank_among(function, &gws, mm.placement);
        if w == id {
            return Some(judged);
        }
        if let Some(chosen) = choose(&judged, observed.placed.get(w)) {
            if let Some(g) = gws.iter_mut().find(|g| g.id == chosen.gateway) {
                g.add();
            }
        }
    }
    None
}

/// The gateway a function goes to: where it was placed before while that
/// gateway is a candidate, else the best candidate.
fn choose<'j>(judged: &'j [Judged], before: Option<&String>) -> Option<&'j Judged> {
    before
        .and_then(|b| judged.iter().find(|j| &j.gateway == b && j.score.is_some()))
        .or_else(|| judged.first().filter(|j| j.score.is_some()))
}

/// Places every function waiting for placement: it (and what its template
/// added next to it) joins the chosen gateway's subsystem, hosted on the
/// gateway. Returns (function, gateway) for each; a function no gateway can
/// run is a problem naming every gateway and why.
pub fn place(
    mm: &mut Megamodel,
    observed: &Observed,
) -> Result<Vec<(String, String)>, Vec<Problem>> {
    place_excluding(mm, &[], observed)
}

/// As [`place`], never choosing a gateway of `exclude`.
fn place_excluding(
    mm: &mut Megamodel,
    exclude: &[&str],
    observed: &Observed,
) -> Result<Vec<(String, String)>, Vec<Problem>> {
    // Only top-level functions can wait for placement.
    if !mm.components.iter().any(|c| c.kind() == Kind::Function) {
        return Ok(Vec::new());
    }
    let doc = Document::of_megamodel(mm);
    let assignment = crate::subsystem::assign(mm, &doc);
    let waiting = waiting(&doc, &assignment.of);
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let mut gws = gateways(mm, &assignment.of, observed);
    gws.retain(|g| !exclude.contains(&g.id.as_str()));
    drop(doc);
    let mut placed = Vec::new();
    let mut problems = Vec::new();
    for (id, path) in &waiting {
        let Some(function) = mm.components.iter().find(|c| &c.id == id).cloned() else {
            continue;
        };
        let judged = rank_among(&function, &gws, mm.placement);
        let Some(best) = choose(&judged, observed.placed.get(id)).cloned() else {
            let why: Vec<String> = judged
                .iter()
                .map(|j| format!("{}: {}", j.gateway, j.excluded.join("; ")))
                .collect();
            problems.push(
                Problem::new(
                    path.clone(),
                    if judged.is_empty() {
                        format!("no gateway to place function `{id}` on: the model has none")
                    } else {
                        format!("no gateway can run function `{id}`: {}", why.join(" | "))
                    },
                )
                .expected("a gateway with a bridge whose labels match the function's context and that offers what it requires, or a hosting link"),
            );
            continue;
        };
        let mut unhosted = vec![id.clone()];
        for c in mm.components.iter_mut() {
            let follower =
                c.properties.get(FUNCTION_PROPERTY).map(String::as_str) == Some(id.as_str());
            if c.id == *id || follower {
                c.subsystem = Some(best.subsystem.clone());
            }
            if c.id == *id {
                c.properties
                    .insert(PLACED_PROPERTY.to_owned(), best.gateway.clone());
            }
            if follower && c.kind().needs_host() {
                unhosted.push(c.id.clone());
            }
        }
        // The function, and what its template left unhosted beside it.
        let hosted: Vec<String> = mm
            .links
            .iter()
            .filter_map(|l| match l {
                Link::Hosting { component, .. } => Some(component.clone()),
                Link::Communication(_) => None,
            })
            .collect();
        for component in unhosted.into_iter().filter(|c| !hosted.contains(c)) {
            mm.links.push(Link::Hosting {
                component,
                host: best.gateway.clone(),
            });
        }
        if let Some(g) = gws.iter_mut().find(|g| g.id == best.gateway) {
            g.add();
        }
        placed.push((id.clone(), best.gateway));
    }
    if problems.is_empty() {
        Ok(placed)
    } else {
        Err(problems)
    }
}

/// The megamodel after a move, and each function moved with its new gateway.
pub type Moves = (Megamodel, Vec<(String, String)>);

/// Moves the functions placement put on the gateways `away` (and what their
/// templates added beside them) to the best other gateway, in `mm` as stored
/// (partitioned). None when no function was placed there; an error when one
/// has nowhere else to go.
pub fn move_off(
    mm: &Megamodel,
    away: &[&str],
    observed: &Observed,
) -> Result<Option<Moves>, Vec<Problem>> {
    let placed_there = |c: &Component| {
        c.kind() == Kind::Function
            && c.properties
                .get(PLACED_PROPERTY)
                .is_some_and(|g| away.contains(&g.as_str()))
    };
    let moving: Vec<String> = mm
        .subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .filter(|c| placed_there(c))
        .map(|c| c.id.clone())
        .collect();
    if moving.is_empty() {
        return Ok(None);
    }
    let follows = |c: &Component| {
        moving.contains(&c.id)
            || c.properties
                .get(FUNCTION_PROPERTY)
                .is_some_and(|f| moving.contains(f))
    };
    let ids = moving_ids(mm, &follows);
    let touches = |l: &Link| match l {
        Link::Hosting { component, .. } => ids.contains(component),
        Link::Communication(c) => ids.contains(&c.from) || ids.contains(&c.to),
    };
    let mut flat = mm.clone();
    for s in &mut flat.subsystems {
        let (out, keep): (Vec<Component>, Vec<Component>) = std::mem::take(&mut s.components)
            .into_iter()
            .partition(|c| follows(c));
        s.components = keep;
        for mut c in out {
            c.subsystem = None;
            c.properties.remove(PLACED_PROPERTY);
            flat.components.push(c);
        }
        let (out, keep): (Vec<Link>, Vec<Link>) = std::mem::take(&mut s.links)
            .into_iter()
            .partition(|l| touches(l));
        s.links = keep;
        flat.links.extend(out);
    }
    // Their hosting goes: placement gives a new one.
    flat.links
        .retain(|l| !matches!(l, Link::Hosting { component, .. } if ids.contains(component)));
    let moved = place_excluding(&mut flat, away, observed)?;
    let partitioned = crate::subsystem::partition(&flat)?;
    Ok(Some((partitioned, moved)))
}

fn moving_ids(mm: &Megamodel, follows: &impl Fn(&Component) -> bool) -> Vec<String> {
    mm.subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .filter(|c| follows(c))
        .map(|c| c.id.clone())
        .collect()
}
