//! The orchestrator's metrics for Prometheus (`GET /metrics`): what requests
//! did, counted as they happen, and what the fleet looks like, read from the
//! core at each scrape.

use std::sync::atomic::AtomicI64;
use std::sync::Mutex;
use std::time::Duration;

use continuum_proto::v1::{ComponentState, StatusResponse, SubsystemPhase};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Everything the orchestrator counts; cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    applies: Family<Labels, Counter>,
    apply_seconds: Histogram,
    rollbacks: Family<Labels, Counter>,
    watchers: Gauge,
    gateways: Family<Labels, Gauge>,
    subsystems: Family<Labels, Gauge>,
    components: Family<Labels, Gauge>,
    head: Gauge,
    events: Gauge,
    commits: Family<Labels, Counter>,
    commit_batch: Histogram,
    bus_skipped: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("continuum")),
            applies: Family::default(),
            // 1 ms to about 33 s.
            apply_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            rollbacks: Family::default(),
            watchers: Gauge::default(),
            gateways: Family::default(),
            subsystems: Family::default(),
            components: Family::default(),
            head: Gauge::<i64, AtomicI64>::default(),
            events: Gauge::default(),
            commits: Family::default(),
            // 1 to 1,024 transitions.
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            bus_skipped: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "applies",
                "Apply requests by outcome (accepted, unchanged, refused)",
                m.applies.clone(),
            );
            r.register(
                "apply_duration_seconds",
                "From an apply request to its durable commit (or refusal)",
                m.apply_seconds.clone(),
            );
            r.register(
                "rollbacks",
                "Rollback requests by outcome",
                m.rollbacks.clone(),
            );
            r.register(
                "watchers",
                "Event streams open now (Watch and the dashboard)",
                m.watchers.clone(),
            );
            r.register(
                "gateways",
                "Known gateways by connectivity",
                m.gateways.clone(),
            );
            r.register(
                "subsystems",
                "Subsystems of the head revision by rollout phase",
                m.subsystems.clone(),
            );
            r.register(
                "components",
                "Components of the head revision by their last reported state",
                m.components.clone(),
            );
            r.register(
                "head_revision",
                "The head revision's number",
                m.head.clone(),
            );
            r.register(
                "event_seq",
                "The newest event's sequence number",
                m.events.clone(),
            );
            r.register(
                "store_commits",
                "Durable commits of the store, by outcome (each commits every transition waiting for it)",
                m.commits.clone(),
            );
            r.register(
                "store_commit_transitions",
                "Transitions (applies, reports, registrations...) committed together in one durable commit",
                m.commit_batch.clone(),
            );
            r.register(
                "bus_skipped",
                "Messages the embedded global bus dropped for a subscriber (a gateway's bridge away too long) that fell behind its backlog (--mqtt-backlog-mib)",
                m.bus_skipped.clone(),
            );
        }
        m
    }
}

/// What an apply or rollback came to, for the counters.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A new revision was committed.
    Accepted,
    /// The model equalled the head: nothing was committed.
    Unchanged,
    /// Refused (invalid, not allowed, conflicting, or failed).
    Refused,
}

impl Outcome {
    fn label(self) -> Labels {
        let s = match self {
            Outcome::Accepted => "accepted",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
        };
        vec![("outcome", s.to_owned())]
    }
}

/// How many gateways are known, and how many of them hold a link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fleet {
    /// Gateways with a record.
    pub known: usize,
    /// Of those, the connected ones.
    pub connected: usize,
}

/// Counts an open event stream while it lives.
#[derive(Debug)]
pub struct Watching(Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn phase_name(p: i32) -> &'static str {
    match SubsystemPhase::try_from(p).unwrap_or(SubsystemPhase::Unspecified) {
        SubsystemPhase::Unspecified => "unknown",
        SubsystemPhase::NoGateway => "no_gateway",
        SubsystemPhase::Waiting => "waiting",
        SubsystemPhase::Offline => "offline",
        SubsystemPhase::Deploying => "deploying",
        SubsystemPhase::Converged => "converged",
        SubsystemPhase::Failed => "failed",
        SubsystemPhase::Refused => "refused",
        SubsystemPhase::Pending => "pending",
    }
}

fn state_name(s: i32) -> &'static str {
    match ComponentState::try_from(s).unwrap_or(ComponentState::Unspecified) {
        ComponentState::Unspecified | ComponentState::Unknown => "unknown",
        ComponentState::Pending => "pending",
        ComponentState::Deploying => "deploying",
        ComponentState::Running => "running",
        ComponentState::Failed => "failed",
    }
}

impl Metrics {
    /// One durable commit of `transitions` transitions ended.
    pub fn committed(&self, transitions: usize, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.commits
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
        self.commit_batch.observe(transitions as f64);
    }

    /// Durable commits that succeeded so far.
    pub fn commits(&self) -> u64 {
        self.commits
            .get_or_create(&vec![("outcome", "ok".to_owned())])
            .get()
    }

    /// Records an apply that took `took`.
    pub fn applied(&self, outcome: Outcome, took: Duration) {
        self.applies.get_or_create(&outcome.label()).inc();
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// Records a rollback request.
    pub fn rolled_back(&self, outcome: Outcome) {
        self.rollbacks.get_or_create(&outcome.label()).inc();
    }

    /// An event stream opened; it counts until the guard drops.
    pub fn watching(&self) -> Watching {
        self.watchers.inc();
        Watching(self.watchers.clone())
    }

    /// The text format, with the fleet's gauges taken from `status`, the
    /// gateways known (and how many hold a link) and the newest event's number.
    pub fn render(&self, status: &StatusResponse, gateways: Fleet, events: u64) -> String {
        self.head
            .set(i64::try_from(status.head).unwrap_or(i64::MAX));
        self.events.set(i64::try_from(events).unwrap_or(i64::MAX));
        let skipped = continuum_bus::lag::skipped();
        self.bus_skipped
            .inc_by(skipped.saturating_sub(self.bus_skipped.get()));
        // Every known label is written, at zero when nothing has it, so a
        // series does not vanish when its count drops to none.
        self.gateways.clear();
        for (state, n) in [
            ("connected", gateways.connected),
            (
                "disconnected",
                gateways.known.saturating_sub(gateways.connected),
            ),
        ] {
            self.gateways
                .get_or_create(&vec![("state", state.to_owned())])
                .set(n as i64);
        }
        self.subsystems.clear();
        for p in [
            "no_gateway",
            "waiting",
            "offline",
            "deploying",
            "converged",
            "failed",
            "refused",
        ] {
            self.subsystems
                .get_or_create(&vec![("phase", p.to_owned())])
                .set(0);
        }
        self.components.clear();
        for s in ["pending", "deploying", "running", "failed", "unknown"] {
            self.components
                .get_or_create(&vec![("state", s.to_owned())])
                .set(0);
        }
        for s in &status.subsystems {
            self.subsystems
                .get_or_create(&vec![("phase", phase_name(s.phase).to_owned())])
                .inc();
            for c in &s.components {
                self.components
                    .get_or_create(&vec![("state", state_name(c.state).to_owned())])
                    .inc();
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_proto::v1::{ComponentStatus, SubsystemStatus};

    #[test]
    fn counts_requests_and_reads_the_fleet_at_each_scrape() {
        let m = Metrics::default();
        m.applied(Outcome::Accepted, Duration::from_millis(3));
        m.applied(Outcome::Refused, Duration::from_millis(1));
        let w = m.watching();
        let status = StatusResponse {
            head: 4,
            subsystems: vec![SubsystemStatus {
                subsystem: "a".into(),
                phase: SubsystemPhase::Failed as i32,
                components: vec![
                    ComponentStatus {
                        component: "x".into(),
                        state: ComponentState::Failed as i32,
                        ..Default::default()
                    },
                    ComponentStatus {
                        component: "y".into(),
                        state: ComponentState::Running as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            unassigned: vec![],
            rollout: None,
        };
        let text = m.render(
            &status,
            Fleet {
                known: 2,
                connected: 1,
            },
            17,
        );
        for line in [
            "continuum_applies_total{outcome=\"accepted\"} 1",
            "continuum_applies_total{outcome=\"refused\"} 1",
            "continuum_apply_duration_seconds_count 2",
            "continuum_watchers 1",
            "continuum_gateways{state=\"connected\"} 1",
            "continuum_gateways{state=\"disconnected\"} 1",
            "continuum_subsystems{phase=\"failed\"} 1",
            "continuum_subsystems{phase=\"converged\"} 0",
            "continuum_components{state=\"failed\"} 1",
            "continuum_components{state=\"running\"} 1",
            "continuum_head_revision 4",
            "continuum_event_seq 17",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        drop(w);
        let text = m.render(&status, Fleet::default(), 17);
        assert!(text.contains("continuum_watchers 0"), "{text}");
        assert!(text.contains("continuum_gateways{state=\"connected\"} 0"));
    }
}
