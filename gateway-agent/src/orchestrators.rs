//! The orchestrators a gateway may dial. Several orchestrators sharing one
//! etcd store elect a leader; only the leader listens, so a gateway given all
//! their addresses dials them in turn until one answers, and stays with it
//! until its link breaks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// URLs from a list of `host:port` or URLs separated by commas (`http://`
/// assumed without a scheme); empty entries are skipped.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_owned()
            } else {
                format!("http://{s}")
            }
        })
        .collect()
}

/// The endpoints (URLs), and the one dialled last.
#[derive(Debug, Clone)]
pub struct Orchestrators {
    endpoints: Arc<[String]>,
    current: Arc<AtomicUsize>,
}

impl Orchestrators {
    /// `host:port` or URLs, separated by commas; `http://` is assumed
    /// without a scheme.
    pub fn parse(list: &str) -> Result<Orchestrators, String> {
        let endpoints = endpoints(list);
        if endpoints.is_empty() {
            return Err(format!("`{list}` names no orchestrator"));
        }
        Ok(Orchestrators {
            endpoints: endpoints.into(),
            current: Arc::default(),
        })
    }

    /// The endpoint to dial now.
    pub fn current(&self) -> &str {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    /// Moves on to the next endpoint, after `failed` did not answer (another
    /// caller may have moved on already).
    pub fn failed(&self, failed: &str) {
        let n = self.endpoints.len();
        let _ = self
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| {
                (self.endpoints[i % n] == failed).then_some((i + 1) % n)
            });
    }

    /// Every endpoint, starting with the current one.
    pub fn in_turn(&self) -> impl Iterator<Item = &str> {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.endpoints.len();
        (0..n).map(move |k| self.endpoints[(start + k) % n].as_str())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Never: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

impl From<String> for Orchestrators {
    /// One endpoint, taken as it is.
    fn from(endpoint: String) -> Orchestrators {
        Orchestrators {
            endpoints: vec![endpoint].into(),
            current: Arc::default(),
        }
    }
}

impl std::fmt::Display for Orchestrators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.endpoints.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_dialled_in_turn_from_the_one_that_failed() {
        let o = Orchestrators::parse("a:1, https://b:2,,c:3").unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o.current(), "http://a:1");
        o.failed("http://a:1");
        assert_eq!(o.current(), "https://b:2");
        // A stale failure report does not skip the one now current.
        o.failed("http://a:1");
        assert_eq!(o.current(), "https://b:2");
        let order: Vec<&str> = o.in_turn().collect();
        assert_eq!(order, ["https://b:2", "http://c:3", "http://a:1"]);
        o.failed("https://b:2");
        o.failed("http://c:3");
        assert_eq!(o.current(), "http://a:1");
        assert!(Orchestrators::parse(" , ").is_err());
    }
}
