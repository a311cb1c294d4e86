//! Components that need each other through communication links.
//!
//! GeneSIS models routinely link two components both ways (a publisher and a
//! subscriber of one broker, a client and a server that calls back). Such a
//! cycle orders nothing: its members start together, with no order among them.
//! A cycle that goes through a hosting link is different — a component cannot
//! run before its host exists — and stays an error (see `validate`).

use crate::index::{FastMap, FastSet};
use crate::link::Link;

/// The groups of components that a cycle of communication links joins.
#[derive(Debug, Default, Clone)]
pub struct CommunicationCycles<'a> {
    group_of: FastMap<&'a str, usize>,
    groups: Vec<Vec<&'a str>>,
}

impl<'a> CommunicationCycles<'a> {
    /// Finds the cycles among the communication links of `links` whose two ends
    /// `keep` accepts (physical links order nothing and are left out).
    pub fn find(links: impl IntoIterator<Item = &'a Link>, keep: impl Fn(&str) -> bool) -> Self {
        let mut edges: FastMap<&'a str, Vec<&'a str>> = FastMap::default();
        for l in links {
            if let (Link::Communication(_), Some((who, what))) = (l, l.need()) {
                if who != what && keep(who) && keep(what) {
                    edges.entry(who).or_default().push(what);
                    edges.entry(what).or_default();
                }
            }
        }
        let mut groups = strongly_connected(&edges);
        groups.retain(|g| g.len() > 1);
        for g in &mut groups {
            g.sort_unstable();
        }
        groups.sort();
        let group_of = groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.iter().map(move |c| (*c, i)))
            .collect();
        CommunicationCycles { group_of, groups }
    }

    /// Whether `a` and `b` are on one cycle: neither waits for the other.
    pub fn together(&self, a: &str, b: &str) -> bool {
        match (self.group_of.get(a), self.group_of.get(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }

    /// The groups, each sorted, in a stable order.
    pub fn groups(&self) -> &[Vec<&'a str>] {
        &self.groups
    }

    /// Whether there is no cycle at all.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Tarjan's algorithm, iterative so that a long chain cannot overflow the stack.
/// (Twenty lines here instead of a graph crate: the nodes are borrowed ids and
/// the planner calls this on every pass.)
fn strongly_connected<'a>(edges: &FastMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut index: FastMap<&str, (usize, usize)> = FastMap::default(); // (index, lowlink)
    let mut on_stack: FastSet<&str> = FastSet::default();
    let mut stack: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut nodes: Vec<&str> = edges.keys().copied().collect();
    nodes.sort_unstable();
    for &root in &nodes {
        if index.contains_key(root) {
            continue;
        }
        let mut work: Vec<(&str, usize)> = vec![(root, 0)];
        while let Some(top) = work.last_mut() {
            let (node, next) = *top;
            if next == 0 {
                let n = index.len();
                index.insert(node, (n, n));
                stack.push(node);
                on_stack.insert(node);
            }
            if let Some(&to) = edges[node].get(next) {
                top.1 += 1;
                match index.get(to) {
                    None => work.push((to, 0)),
                    Some(&(i, _)) if on_stack.contains(to) => {
                        let entry = index.get_mut(node).expect("visited");
                        entry.1 = entry.1.min(i);
                    }
                    Some(_) => {}
                }
                continue;
            }
            work.pop();
            let (i, low) = index[node];
            if let Some(&(parent, _)) = work.last() {
                let p = index.get_mut(parent).expect("visited");
                p.1 = p.1.min(low);
            }
            if i == low {
                let mut group = Vec::new();
                while let Some(x) = stack.pop() {
                    on_stack.remove(x);
                    group.push(x);
                    if x == node {
                        break;
                    }
                }
                out.push(group);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(a: &str, b: &str) -> Link {
        Link::communication(a, b)
    }

    #[test]
    fn a_pair_linked_both_ways_is_one_group() {
        let links = [comm("a", "b"), comm("b", "a"), comm("c", "a")];
        let c = CommunicationCycles::find(&links, |_| true);
        assert_eq!(c.groups(), [vec!["a", "b"]]);
        assert!(c.together("a", "b"));
        assert!(!c.together("a", "c"));
    }

    #[test]
    fn hosting_and_physical_links_close_no_cycle() {
        let mut physical = comm("b", "a");
        if let Link::Communication(p) = &mut physical {
            p.physical = true;
        }
        let links = [comm("a", "b"), physical, Link::hosting("b", "a")];
        assert!(CommunicationCycles::find(&links, |_| true).is_empty());
    }

    #[test]
    fn a_long_ring_and_a_filter() {
        let n = 10_000;
        let links: Vec<Link> = (0..n)
            .map(|i| comm(&format!("c{i}"), &format!("c{}", (i + 1) % n)))
            .collect();
        let c = CommunicationCycles::find(&links, |_| true);
        assert_eq!(c.groups().len(), 1);
        assert_eq!(c.groups()[0].len(), n);
        let c = CommunicationCycles::find(&links, |id| id != "c5");
        assert!(c.is_empty());
    }

    #[test]
    fn two_rings_joined_one_way_stay_two_groups() {
        let links = [
            comm("a", "b"),
            comm("b", "a"),
            comm("b", "x"),
            comm("x", "y"),
            comm("y", "x"),
        ];
        let c = CommunicationCycles::find(&links, |_| true);
        assert_eq!(c.groups(), [vec!["a", "b"], vec!["x", "y"]]);
    }
}
