//! Components that need each other through communication links.
//!
//! GeneSIS models routinely link two components both ways (a publisher and a
//! subscriber of one broker, a client and a server that calls back). Such a
//! cycle orders nothing: its members start together, with no order among them.
//! A cycle that goes through a hosting link is different — a component cannot
//! run before its host exists — and stays an error (see `validate`).

use crate::index::FastMap;
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
        let mut slot: FastMap<&'a str, u32> = FastMap::default();
        let mut names: Vec<&'a str> = Vec::new();
        let mut intern = |id: &'a str| {
            *slot.entry(id).or_insert_with(|| {
                names.push(id);
                u32::try_from(names.len() - 1).expect("fewer than 2^32 components")
            })
        };
        let mut edges = Vec::new();
        for l in links {
            if let (Link::Communication(_), Some((who, what))) = (l, l.need()) {
                if who != what && keep(who) && keep(what) {
                    edges.push((intern(who), intern(what)));
                }
            }
        }
        let graph = Graph::new(names.len(), edges);
        let mut groups: Vec<Vec<&'a str>> = graph
            .cycle_groups()
            .into_iter()
            .map(|g| {
                let mut g: Vec<&'a str> = g.into_iter().map(|n| names[n as usize]).collect();
                g.sort_unstable();
                g
            })
            .collect();
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

/// A directed graph over the nodes `0..n`, each node's edges in the order they
/// were given (compressed rows: one allocation for all edges).
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    starts: Vec<u32>,
    targets: Vec<u32>,
}

impl Graph {
    pub(crate) fn new(n: usize, edges: Vec<(u32, u32)>) -> Self {
        let mut starts = vec![0u32; n + 1];
        for &(from, _) in &edges {
            starts[from as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut fill = starts.clone();
        let mut targets = vec![0u32; edges.len()];
        for (from, to) in edges {
            let at = &mut fill[from as usize];
            targets[*at as usize] = to;
            *at += 1;
        }
        Graph { starts, targets }
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub(crate) fn edges(&self, node: u32) -> &[u32] {
        let n = node as usize;
        &self.targets[self.starts[n] as usize..self.starts[n + 1] as usize]
    }

    /// The strongly connected components of more than one node.
    pub(crate) fn cycle_groups(&self) -> Vec<Vec<u32>> {
        let mut groups = strongly_connected(self);
        groups.retain(|g| g.len() > 1);
        groups
    }

    /// For each node, the index of its group in `groups`, or `None`.
    pub(crate) fn group_of(&self, groups: &[Vec<u32>]) -> Vec<Option<u32>> {
        let mut of = vec![None; self.len()];
        for (i, g) in groups.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 groups");
            for &n in g {
                of[n as usize] = Some(i);
            }
        }
        of
    }
}

/// Tarjan's algorithm, iterative so that a long chain cannot overflow the stack.
/// (Thirty lines here instead of a graph crate: the planner and the validation
/// call this on every pass, over nodes they have already numbered.)
fn strongly_connected(graph: &Graph) -> Vec<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = graph.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    let mut next_index = 0u32;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        let mut work: Vec<(u32, usize)> = vec![(u32::try_from(root).expect("u32 nodes"), 0)];
        while let Some(top) = work.last_mut() {
            let (node, next) = *top;
            let u = node as usize;
            if next == 0 {
                index[u] = next_index;
                low[u] = next_index;
                next_index += 1;
                stack.push(node);
                on_stack[u] = true;
            }
            if let Some(&to) = graph.edges(node).get(next) {
                top.1 += 1;
                let t = to as usize;
                if index[t] == UNSEEN {
                    work.push((to, 0));
                } else if on_stack[t] {
                    low[u] = low[u].min(index[t]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                let p = parent as usize;
                low[p] = low[p].min(low[u]);
            }
            if index[u] == low[u] {
                let mut group = Vec::new();
                while let Some(x) = stack.pop() {
                    on_stack[x as usize] = false;
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
