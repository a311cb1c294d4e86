//! Which subsystem each component belongs to, and partitioning a megamodel into
//! one deployment model per subsystem.
//!
//! A component belongs to the subsystem it is nested in; else to the one its
//! `subsystem` field names; a top-level gateway opens a subsystem (its `subsystem`
//! field, or its own id). Other components follow their hosting chain and physical
//! links to a component whose subsystem is known. When the megamodel has a single
//! subsystem, everything that cannot be placed otherwise goes there. Functions that
//! reach no subsystem are left for placement; externals need none.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::component::{Component, Kind};
use crate::diagnostic::Problem;
use crate::link::Link;
use crate::located::Document;
use crate::model::{DeploymentModel, Megamodel};

/// The outcome of subsystem assignment.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Subsystem ids in order of first appearance.
    pub subsystems: Vec<String>,
    /// The subsystem of each component; `None` for unplaced functions and externals.
    pub of: HashMap<String, Option<String>>,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

pub(crate) fn assign(mm: &Megamodel, doc: &Document<'_>) -> Assignment {
    let mut out = Assignment::default();
    let mut known: HashSet<String> = HashSet::new();
    let mut declare = |id: &str, out: &mut Assignment| {
        if known.insert(id.to_owned()) {
            out.subsystems.push(id.to_owned());
        }
    };
    for s in &mm.subsystems {
        if let Some(id) = &s.id {
            declare(id, &mut out);
        }
    }
    for c in &mm.components {
        if c.kind() == Kind::Gateway {
            declare(c.subsystem.as_deref().unwrap_or(&c.id), &mut out);
        }
    }

    // Direct assignments.
    let mut direct: HashMap<&str, String> = HashMap::new();
    for c in &doc.components {
        let id = c.item.id.as_str();
        if let Some(n) = c.nested_in {
            direct.insert(id, n.to_owned());
        } else if let Some(s) = &c.item.subsystem {
            if known.contains(s) {
                direct.insert(id, s.clone());
            } else {
                out.problems.push(
                    Problem::new(
                        c.path().key("subsystem"),
                        format!("unknown subsystem `{s}`"),
                    )
                    .expected(format!("one of: {}", list(&out.subsystems))),
                );
            }
        } else if c.item.kind() == Kind::Gateway {
            direct.insert(id, id.to_owned());
        }
    }

    // Undirected neighbourhood through hosting and physical links.
    let mut adjacent: HashMap<&str, Vec<&str>> = HashMap::new();
    for l in &doc.links {
        let joins = match l.item {
            Link::Hosting { .. } => true,
            Link::Communication(c) => c.physical,
        };
        if joins {
            let (a, b) = l.item.endpoints();
            adjacent.entry(a).or_default().push(b);
            adjacent.entry(b).or_default().push(a);
        }
    }

    let only = (out.subsystems.len() == 1).then(|| out.subsystems[0].clone());
    for c in &doc.components {
        let id = c.item.id.as_str();
        if out.of.contains_key(id) {
            continue; // duplicate id, reported by validation
        }
        if let Some(s) = direct.get(id) {
            out.of.insert(id.to_owned(), Some(s.clone()));
            continue;
        }
        if c.item.subsystem.is_some() {
            out.of.insert(id.to_owned(), None); // unknown subsystem, reported above
            continue;
        }
        let reached = reach(id, &adjacent, &direct);
        let kind = c.item.kind();
        match reached.as_slice() {
            [s] => {
                out.of.insert(id.to_owned(), Some(s.clone()));
            }
            // Functions (and what their templates add beside them) wait for
            // placement; externals need no subsystem.
            [] if matches!(kind, Kind::Function | Kind::External)
                || c.item
                    .properties
                    .contains_key(crate::placement::FUNCTION_PROPERTY) =>
            {
                out.of.insert(id.to_owned(), None);
            }
            [] => {
                if let Some(s) = &only {
                    out.of.insert(id.to_owned(), Some(s.clone()));
                } else {
                    out.of.insert(id.to_owned(), None);
                    out.problems.push(
                        Problem::new(c.path(), format!("cannot tell which subsystem {kind} `{id}` belongs to"))
                            .expected(if out.subsystems.is_empty() {
                                "a gateway component: every subsystem is run by one gateway".to_owned()
                            } else {
                                format!("`subsystem`: one of {}; or a hosting or physical link to a component of that subsystem", list(&out.subsystems))
                            }),
                    );
                }
            }
            many => {
                out.of.insert(id.to_owned(), None);
                out.problems.push(
                    Problem::new(
                        c.path(),
                        format!(
                            "{kind} `{id}` is linked to several subsystems: {}",
                            list(many)
                        ),
                    )
                    .expected("`subsystem` naming the one it belongs to"),
                );
            }
        }
    }

    // Exactly one gateway per subsystem; hosting stays inside a subsystem.
    let mut gateways: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &doc.components {
        if c.item.kind() == Kind::Gateway {
            if let Some(Some(s)) = out.of.get(&c.item.id) {
                gateways.entry(s).or_default().push(&c.item.id);
                if gateways[s.as_str()].len() > 1 {
                    out.problems.push(
                        Problem::new(
                            c.path(),
                            format!("subsystem `{s}` has a second gateway `{}`", c.item.id),
                        )
                        .expected(format!(
                            "one gateway per subsystem; `{}` already runs `{s}`",
                            gateways[s.as_str()][0]
                        )),
                    );
                }
            }
        }
    }
    for (i, s) in mm.subsystems.iter().enumerate() {
        if let Some(id) = &s.id {
            if !gateways.contains_key(id.as_str()) {
                out.problems.push(
                    Problem::new(crate::JsonPath::root().key("subsystems").index(i), format!("subsystem `{id}` has no gateway"))
                        .expected("a component of kind gateway in the subsystem (it runs the subsystem's agent)"),
                );
            }
        }
    }
    for l in &doc.links {
        if let Link::Hosting { component, host } = l.item {
            if let (Some(Some(a)), Some(Some(b))) = (out.of.get(component), out.of.get(host)) {
                if a != b {
                    out.problems.push(
                        Problem::new(l.path(), format!("`{component}` (subsystem `{a}`) is hosted on `{host}` (subsystem `{b}`)"))
                            .expected("a component and its host in the same subsystem"),
                    );
                }
            }
        }
    }
    out
}

/// The distinct subsystems directly assigned components reachable from `start` have,
/// not walking past a component whose subsystem is known.
fn reach(
    start: &str,
    adjacent: &HashMap<&str, Vec<&str>>,
    direct: &HashMap<&str, String>,
) -> Vec<String> {
    let mut seen: HashSet<&str> = HashSet::from([start]);
    let mut queue = VecDeque::from([start]);
    let mut found: Vec<String> = Vec::new();
    while let Some(n) = queue.pop_front() {
        for &m in adjacent.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            if !seen.insert(m) {
                continue;
            }
            match direct.get(m) {
                Some(s) => {
                    if !found.contains(s) {
                        found.push(s.clone());
                    }
                }
                None => queue.push_back(m),
            }
        }
    }
    found.sort();
    found
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "(none)".to_owned();
    }
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Partitions a megamodel: every component moves into its subsystem's deployment
/// model (one per gateway); links inside a subsystem move with it; links between
/// subsystems stay at the top level, as do unplaced functions and externals.
/// Each subsystem model carries its effective failure policy.
pub fn partition(mm: &Megamodel) -> Result<Megamodel, Vec<Problem>> {
    let doc = Document::of_megamodel(mm);
    let assignment = assign(mm, &doc);
    if !assignment.problems.is_empty() {
        return Err(assignment.problems);
    }
    let mut models: Vec<DeploymentModel> = assignment
        .subsystems
        .iter()
        .map(|id| {
            let declared = mm.subsystem(id);
            DeploymentModel {
                id: Some(id.clone()),
                on_failure: Some(declared.and_then(|s| s.on_failure).unwrap_or(mm.on_failure)),
                components: Vec::new(),
                links: Vec::new(),
            }
        })
        .collect();
    let slot: HashMap<&str, usize> = assignment
        .subsystems
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut top_components: Vec<Component> = Vec::new();
    for c in &doc.components {
        match assignment.of.get(&c.item.id).cloned().flatten() {
            Some(s) => {
                let mut c = c.item.clone();
                c.subsystem = None;
                models[slot[s.as_str()]].components.push(c);
            }
            None => top_components.push(c.item.clone()),
        }
    }
    let mut top_links = Vec::new();
    for l in &doc.links {
        let (a, b) = l.item.endpoints();
        match (assignment.of.get(a), assignment.of.get(b)) {
            (Some(Some(x)), Some(Some(y))) if x == y => {
                models[slot[x.as_str()]].links.push(l.item.clone())
            }
            _ => top_links.push(l.item.clone()),
        }
    }
    // Grown by pushing, each model holds up to twice its components' room;
    // an orchestrator keeps thousands of these for as long as they are the
    // target.
    for m in &mut models {
        m.components.shrink_to_fit();
        m.links.shrink_to_fit();
    }
    Ok(Megamodel {
        name: mm.name.clone(),
        description: mm.description.clone(),
        on_failure: mm.on_failure,
        placement: mm.placement,
        subsystems: models,
        components: top_components,
        links: top_links,
    })
}
