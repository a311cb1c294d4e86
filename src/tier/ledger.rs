//! What a regional orchestrator remembers of the tier above, per gateway it
//! stands in for: the subsystem, and which of its own generations each
//! generation from above became. Generations are revision numbers, and the
//! two tiers number their revisions apart, so every report up translates
//! one into the other. Kept in a file beside the store, written before a
//! target from above is acknowledged.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many translations are kept per gateway (a status names a
/// generation a few back at most).
const KEPT: usize = 32;

/// One gateway's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The subsystem the tier above runs through this gateway.
    pub subsystem: String,
    /// (generation above, generation here), oldest first; both only grow.
    pub generations: Vec<(u64, u64)>,
}

impl Entry {
    /// The newest generation accepted from above (0: none).
    pub fn accepted(&self) -> u64 {
        self.generations.last().map_or(0, |&(above, _)| above)
    }

    /// The generation here the newest target from above became (0: none).
    pub fn local(&self) -> u64 {
        self.generations.last().map_or(0, |&(_, here)| here)
    }

    /// The generation above that generation `here` runs: the newest one
    /// whose model it holds (0: none, or older than what is kept).
    pub fn above(&self, here: u64) -> u64 {
        self.generations
            .iter()
            .rev()
            .find(|&&(_, h)| h <= here)
            .map_or(0, |&(above, _)| above)
    }

    /// Records that generation `above` became generation `here`.
    pub fn record(&mut self, above: u64, here: u64) {
        self.generations.retain(|&(a, _)| a < above);
        self.generations.push((above, here));
        let extra = self.generations.len().saturating_sub(KEPT);
        self.generations.drain(..extra);
    }
}

/// Every gateway's record, and the file it lives in.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

/// The ledger's file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct LedgerError {
    path: String,
    why: String,
}

impl Ledger {
    /// The ledger in `dir` (empty when it has no file yet).
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join("tier-above.json");
        let fail = |why: String| LedgerError {
            path: path.display().to_string(),
            why,
        };
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| fail(format!("not a ledger of the tier above: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(fail(e.to_string())),
        };
        Ok(Ledger { path, entries })
    }

    /// The gateways the tier above has sent targets for.
    pub fn gateways(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// A gateway's record (empty when none).
    pub fn entry(&self, gateway: &str) -> Entry {
        self.entries.get(gateway).cloned().unwrap_or_default()
    }

    /// Records that generation `above` of `subsystem`, sent for `gateway`,
    /// became generation `here`; durable when it returns.
    pub fn record(
        &mut self,
        gateway: &str,
        subsystem: &str,
        above: u64,
        here: u64,
    ) -> Result<(), LedgerError> {
        let mut entries = self.entries.clone();
        let entry = entries.entry(gateway.to_owned()).or_default();
        entry.subsystem = subsystem.to_owned();
        entry.record(above, here);
        self.write(&entries)?;
        self.entries = entries;
        Ok(())
    }

    /// Replaces the file whole: written aside, synced, renamed over.
    fn write(&self, entries: &BTreeMap<String, Entry>) -> Result<(), LedgerError> {
        let fail = |e: std::io::Error| LedgerError {
            path: self.path.display().to_string(),
            why: e.to_string(),
        };
        let tmp = self.path.with_extension("json.new");
        let bytes = serde_json::to_vec_pretty(entries).map_err(|e| fail(e.into()))?;
        let mut file = std::fs::File::create(&tmp).map_err(fail)?;
        file.write_all(&bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_generation_here_translates_to_the_newest_target_it_holds() {
        let mut e = Entry::default();
        e.record(3, 7);
        e.record(5, 9);
        // An identical target from above changes nothing here.
        e.record(6, 9);
        assert_eq!((e.accepted(), e.local()), (6, 9));
        assert_eq!(e.above(6), 0);
        assert_eq!(e.above(7), 3);
        assert_eq!(e.above(8), 3);
        assert_eq!(e.above(9), 6);
        // A local apply made it 12: it still holds the newest from above.
        assert_eq!(e.above(12), 6);
    }

    #[test]
    fn a_target_sent_again_replaces_what_followed_it() {
        let mut e = Entry::default();
        e.record(3, 7);
        e.record(5, 9);
        e.record(5, 11);
        assert_eq!(e.generations, vec![(3, 7), (5, 11)]);
    }

    proptest! {
        #[test]
        fn only_so_many_are_kept_and_the_newest_wins(steps in proptest::collection::vec((1u64..5, 0u64..3), 1..100)) {
            let mut e = Entry::default();
            let (mut above, mut here) = (0, 0);
            for (da, dh) in steps {
                above += da;
                here += dh;
                e.record(above, here);
                prop_assert!(e.generations.len() <= KEPT);
                prop_assert_eq!(e.accepted(), above);
                prop_assert_eq!(e.above(here), above);
            }
        }
    }

    #[test]
    fn the_ledger_survives_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ledger = Ledger::open(dir.path()).expect("opens empty");
        ledger.record("gw-a", "building-a", 4, 2).expect("records");
        let again = Ledger::open(dir.path()).expect("reopens");
        assert_eq!(again.entry("gw-a").accepted(), 4);
        assert_eq!(again.entry("gw-a").subsystem, "building-a");
        assert_eq!(again.gateways().collect::<Vec<_>>(), vec!["gw-a"]);
        std::fs::write(dir.path().join("tier-above.json"), b"{").expect("writes");
        let err = Ledger::open(dir.path()).expect_err("a broken file is refused");
        assert!(err.to_string().contains("tier-above.json"), "{err}");
    }
}
