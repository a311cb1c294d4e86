//! What a function host says of its work: its counters, published retained on
//! `/<function>/stats` of the local broker whenever they change (at most about
//! once a second). The gateway agent reads them and counts every function of
//! its subsystem on its own `/metrics`, because function containers are not
//! reachable from where Prometheus scrapes the gateway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic function `function`'s counters are published on.
pub fn stats_topic(function: &str) -> String {
    format!("/{function}/stats")
}

/// The filter matching every function's counters.
pub const STATS_FILTER: &str = "/+/stats";

/// The function named by a topic [`stats_topic`] made.
pub fn function_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix('/')?
        .strip_suffix("/stats")
        .filter(|f| !f.is_empty() && !f.contains('/'))
}

/// A function host's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FunctionStats {
    /// When the host started, in milliseconds since the Unix epoch: counters
    /// with another start began again from zero.
    pub started_ms: u64,
    /// Handler runs by outcome (`ok`, `error`, `timeout`).
    pub invocations: BTreeMap<String, u64>,
    /// Runs that failed and were tried again.
    pub retries: u64,
    /// Messages dead-lettered after their last failed run.
    pub dead_letters: u64,
    /// Redeliveries recognised by their id and not run again.
    pub duplicates: u64,
}

impl FunctionStats {
    /// What was counted since `earlier`, the previous report of the same
    /// function (none: everything). A host that restarted (another start, or
    /// a counter gone down) counted everything it reports since.
    pub fn since(&self, earlier: Option<&FunctionStats>) -> FunctionStats {
        let restarted = earlier.is_none_or(|e| {
            e.started_ms != self.started_ms
                || e.retries > self.retries
                || e.dead_letters > self.dead_letters
                || e.duplicates > self.duplicates
                || e.invocations
                    .iter()
                    .any(|(k, v)| self.invocations.get(k).copied().unwrap_or(0) < *v)
        });
        let base = match earlier {
            Some(e) if !restarted => e.clone(),
            _ => FunctionStats::default(),
        };
        FunctionStats {
            started_ms: self.started_ms,
            invocations: self
                .invocations
                .iter()
                .map(|(k, v)| (k.clone(), v - base.invocations.get(k).copied().unwrap_or(0)))
                .collect(),
            retries: self.retries - base.retries,
            dead_letters: self.dead_letters - base.dead_letters,
            duplicates: self.duplicates - base.duplicates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stats(started_ms: u64, ok: u64, error: u64, dead: u64) -> FunctionStats {
        FunctionStats {
            started_ms,
            invocations: BTreeMap::from([("ok".into(), ok), ("error".into(), error)]),
            dead_letters: dead,
            ..FunctionStats::default()
        }
    }

    #[test]
    fn topics_name_their_function() {
        assert_eq!(function_of(&stats_topic("thermo")), Some("thermo"));
        for t in ["/a/b/stats", "//stats", "a/stats", "/a/status"] {
            assert_eq!(function_of(t), None, "{t}");
        }
    }

    #[test]
    fn a_restart_counts_everything_reported_since() {
        let before = stats(1, 10, 2, 1);
        assert_eq!(stats(1, 12, 2, 1).since(Some(&before)), stats(1, 2, 0, 0));
        // Another start, even with counters above the old ones.
        assert_eq!(stats(2, 15, 0, 0).since(Some(&before)), stats(2, 15, 0, 0));
        // The same start but a counter went down: a restart too.
        assert_eq!(stats(1, 3, 5, 1).since(Some(&before)), stats(1, 3, 5, 1));
        assert_eq!(before.since(None), before);
    }

    proptest! {
        /// Summing what each report adds gives the counts a host made across
        /// its restarts, whatever reports were seen.
        #[test]
        fn deltas_add_up_to_what_was_counted(
            runs in proptest::collection::vec(proptest::collection::vec((0u64..5, 0u64..3), 1..8), 1..4)
        ) {
            let (mut seen, mut total_ok, mut total_err, mut counted_ok, mut counted_err) =
                (None::<FunctionStats>, 0, 0, 0, 0);
            for (start, reports) in runs.iter().enumerate() {
                let (mut ok, mut err) = (0, 0);
                for (dok, derr) in reports {
                    ok += dok;
                    err += derr;
                    let now = stats(start as u64 + 1, ok, err, 0);
                    let d = now.since(seen.as_ref());
                    counted_ok += d.invocations["ok"];
                    counted_err += d.invocations["error"];
                    seen = Some(now);
                }
                total_ok += ok;
                total_err += err;
            }
            prop_assert_eq!((counted_ok, counted_err), (total_ok, total_err));
        }
    }
}
