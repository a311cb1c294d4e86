//! Lookup tables over a deployment model, built once and shared by diff and plan.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::component::Component;
use crate::link::Link;
use crate::model::DeploymentModel;

/// A fast multiply-rotate hasher for the short ids of one model. Models come from
/// the system's own users, so collision attacks are not a concern here; speed is.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl IdHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    /// A final avalanche: the table indexes buckets by the low bits, which the
    /// multiply alone leaves depending on the first bytes only.
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

fn map<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default())
}

/// A model's components by id, hosts and link set, for diffing models that are
/// not in canonical order.
#[derive(Debug)]
pub struct ModelIndex<'a> {
    pub model: &'a DeploymentModel,
    pub components: FastMap<&'a str, &'a Component>,
    /// The host of each hosted component.
    pub hosts: FastMap<&'a str, &'a str>,
    pub links: FastSet<&'a Link>,
}

impl<'a> ModelIndex<'a> {
    pub fn new(model: &'a DeploymentModel) -> Self {
        let mut components = map(model.components.len());
        for c in &model.components {
            components.entry(c.id.as_str()).or_insert(c);
        }
        let mut hosts = map(model.links.len());
        let mut links =
            FastSet::with_capacity_and_hasher(model.links.len(), BuildHasherDefault::default());
        for l in &model.links {
            links.insert(l);
            if let Link::Hosting { component, host } = l {
                hosts.insert(component.as_str(), host.as_str());
            }
        }
        ModelIndex {
            model,
            components,
            hosts,
            links,
        }
    }
}
