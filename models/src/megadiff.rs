//! What changed between two megamodels, counted, without flattening them.
//!
//! A revision's summary counts the components and links added, removed and
//! changed across the whole megamodel, as [`crate::diff`] of the two
//! flattened megamodels would. Flattening copies every component twice; at
//! thousands of subsystems that was a transient copy of the whole model on
//! every apply. Here only the subsystems that differ are compared, one at a
//! time, and what left one subsystem for another is counted as changed (its
//! subsystem is part of what a flattened component is).

use std::collections::{HashMap, HashSet};

use crate::link::Link;
use crate::model::{DeploymentModel, Megamodel};

/// How many components and links a change adds, removes or changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    /// Components only in the new model.
    pub added: usize,
    /// Components only in the old model.
    pub removed: usize,
    /// Components in both that differ (or moved to another subsystem).
    pub changed: usize,
    /// Links only in the new model.
    pub links_added: usize,
    /// Links only in the old model.
    pub links_removed: usize,
}

impl ChangeCounts {
    /// The counts of a diff of two deployment models.
    pub fn of(d: &crate::ModelDiff) -> ChangeCounts {
        ChangeCounts {
            added: d.added.len(),
            removed: d.removed.len(),
            changed: d.changed.len(),
            links_added: d.links_added.len(),
            links_removed: d.links_removed.len(),
        }
    }
}

/// The top level's components and links as a model of their own.
fn top(mm: &Megamodel) -> DeploymentModel {
    DeploymentModel {
        id: None,
        on_failure: None,
        components: mm.components.clone(),
        links: mm.links.clone(),
    }
    .canonical()
}

/// Counts what turns `old` into `new`, as a diff of their flattened forms does
/// for megamodels whose hosting chains stay inside their subsystems (as
/// partitioning makes them).
pub fn megamodel_counts(old: &Megamodel, new: &Megamodel) -> ChangeCounts {
    let olds: HashMap<Option<&str>, &DeploymentModel> = old
        .subsystems
        .iter()
        .map(|s| (s.id.as_deref(), s))
        .collect();
    let news: HashSet<Option<&str>> = new.subsystems.iter().map(|s| s.id.as_deref()).collect();
    let empty = DeploymentModel::default();
    let mut counts = ChangeCounts::default();
    let mut removed: HashSet<String> = HashSet::new();
    let mut added: HashSet<String> = HashSet::new();
    let mut links_removed: HashSet<Link> = HashSet::new();
    let mut links_added: HashSet<Link> = HashSet::new();
    let mut compare = |a: &DeploymentModel, b: &DeploymentModel| {
        if a.components == b.components && a.links == b.links {
            return;
        }
        let d = crate::diff(a, b);
        counts.changed += d.changed.len();
        removed.extend(d.removed.into_iter().map(|c| c.id));
        added.extend(d.added.into_iter().map(|c| c.id));
        links_removed.extend(d.links_removed);
        links_added.extend(d.links_added);
    };
    for s in &new.subsystems {
        compare(olds.get(&s.id.as_deref()).copied().unwrap_or(&empty), s);
    }
    for s in &old.subsystems {
        if !news.contains(&s.id.as_deref()) {
            compare(s, &empty);
        }
    }
    compare(&top(old), &top(new));
    // What left one part for another was removed there and added here: in a
    // flattened model it is one component whose subsystem changed.
    let moved = removed.intersection(&added).count();
    counts.changed += moved;
    counts.removed += removed.len() - moved;
    counts.added += added.len() - moved;
    let moved_links = links_removed.intersection(&links_added).count();
    counts.links_removed += links_removed.len() - moved_links;
    counts.links_added += links_added.len() - moved_links;
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, mutate};
    use proptest::prelude::*;

    /// `model` cut into `parts` subsystems by the root of each component's
    /// hosting chain (as partitioning keeps chains together); links across
    /// subsystems go to the top level.
    fn split(model: &DeploymentModel, parts: u64, salt: u64) -> Megamodel {
        let host: HashMap<&str, &str> = model.hosts();
        let root = |id: &str| {
            let mut id = id.to_owned();
            let mut hops = 0;
            while let Some(h) = host.get(id.as_str()) {
                id = (*h).to_owned();
                hops += 1;
                if hops > model.components.len() {
                    break;
                }
            }
            id
        };
        let part_of = |id: &str| {
            let r = root(id);
            let h = r
                .bytes()
                .fold(salt, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            format!("s{}", h % parts)
        };
        let mut mm = Megamodel {
            name: "m".into(),
            ..Megamodel::default()
        };
        for p in 0..parts {
            mm.subsystems.push(DeploymentModel {
                id: Some(format!("s{p}")),
                ..DeploymentModel::default()
            });
        }
        let slot = |id: &str| part_of(id)[1..].parse::<usize>().expect("a part number");
        for c in &model.components {
            mm.subsystems[slot(&c.id)].components.push(c.clone());
        }
        for l in &model.links {
            let (a, b) = l.endpoints();
            if model.component(a).is_some() && part_of(a) == part_of(b) {
                mm.subsystems[slot(a)].links.push(l.clone());
            } else {
                mm.links.push(l.clone());
            }
        }
        mm.subsystems
            .retain(|s| !s.components.is_empty() || !s.links.is_empty());
        mm.canonicalize();
        mm
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn counts_are_those_of_the_flattened_diff(
            seed in 0u64..1000,
            size in 1usize..120,
            rate in 0.0f64..0.5,
            parts in 1u64..6,
            salt in 0u64..3,
        ) {
            let a = generate(seed, size);
            let b = mutate(&a, seed + 1, rate);
            // Same cut on both sides, and a different one: what moves between
            // subsystems counts as changed.
            for (sa, sb) in [(salt, salt), (salt, salt + 1)] {
                let (old, new) = (split(&a, parts, sa), split(&b, parts, sb));
                let expected = ChangeCounts::of(&crate::diff(&old.flatten(), &new.flatten()));
                prop_assert_eq!(megamodel_counts(&old, &new), expected);
            }
        }
    }

    #[test]
    fn a_subsystem_removed_counts_its_components_removed() {
        let a = split(&generate(7, 40), 3, 0);
        let mut b = a.clone();
        let gone = b.subsystems.remove(0);
        let c = megamodel_counts(&a, &b);
        assert_eq!(c.removed, gone.components.len());
        assert_eq!(c.links_removed, gone.links.len());
        assert_eq!((c.added, c.changed), (0, 0));
    }
}
