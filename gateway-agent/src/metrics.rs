//! The agent's HTTP side on `--metrics-listen`: `GET /metrics` for
//! Prometheus (reconcile passes, steps, flashes, components by status, the
//! functions' invocations, and the bridge's counters when there is a bridge), `/healthz` and `/readyz`.
//! Each response closes its connection: scrapes are rare, and a plain client
//! that reads to the end of the stream gets its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use continuum_bus::stats::FunctionStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::Snapshot;
use crate::bridge::metrics::{encode, registry, BridgeCollector};
use crate::bridge::Bridge;
use crate::engine::State;

/// The content type of Prometheus' text format as `prometheus-client` writes it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// What the agent counts as it works; shared by the engine's passes and steps.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    passes: Family<Labels, Counter>,
    pass_seconds: Histogram,
    steps: Family<Labels, Counter>,
    flashes: Family<Labels, Counter>,
    components: Family<Labels, Gauge>,
    generation: Gauge,
    functions: FunctionCounters,
    broker_skipped: Counter,
}

/// The counters of the subsystem's functions, summed from what their hosts
/// report (see [`continuum_bus::stats`]).
#[derive(Debug, Default)]
struct FunctionCounters {
    invocations: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    duplicates: Family<Labels, Counter>,
    /// The last report of each function.
    last: Mutex<HashMap<String, FunctionStats>>,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        let m = AgentMetrics {
            registry: Mutex::new(Registry::with_prefix("continuum")),
            passes: Family::default(),
            // 1 ms to about 65 s.
            pass_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            steps: Family::default(),
            flashes: Family::default(),
            components: Family::default(),
            generation: Gauge::default(),
            functions: FunctionCounters::default(),
            broker_skipped: Counter::default(),
        };
        for outcome in ["ok", "failed", "error"] {
            let _ = m
                .passes
                .get_or_create(&vec![("outcome", outcome.to_owned())]);
        }
        {
            let mut r = m.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.register(
                "reconcile_passes",
                "Reconcile passes by outcome (ok; failed: a step failed; error: the runtime could not be read)",
                m.passes.clone(),
            );
            r.register(
                "reconcile_duration_seconds",
                "How long a reconcile pass took, from reading what runs to its last step",
                m.pass_seconds.clone(),
            );
            r.register(
                "steps",
                "Plan steps enacted, by kind (add, start, stop, ...) and outcome",
                m.steps.clone(),
            );
            r.register(
                "flash_operations",
                "Firmware flashes onto leaf devices, by outcome",
                m.flashes.clone(),
            );
            r.register(
                "components",
                "Components of the subsystem by their last observed state",
                m.components.clone(),
            );
            r.register(
                "observed_generation",
                "The generation the last pass enforced",
                m.generation.clone(),
            );
            r.register(
                "local_broker_skipped",
                "Messages the embedded local broker dropped for a subscriber that fell behind its backlog (--mqtt-backlog-mib)",
                m.broker_skipped.clone(),
            );
            let f = &m.functions;
            r.register(
                "function_invocations",
                "Handler runs of the subsystem's functions, by function and outcome (ok, error, timeout), as their hosts report them",
                f.invocations.clone(),
            );
            r.register(
                "function_retries",
                "Handler runs that failed and were tried again, by function",
                f.retries.clone(),
            );
            r.register(
                "function_dead_letters",
                "Messages a function dead-lettered after its last failed run, by function",
                f.dead_letters.clone(),
            );
            r.register(
                "function_duplicates",
                "Redeliveries a function recognised by their id and did not run again, by function",
                f.duplicates.clone(),
            );
        }
        m
    }
}

fn outcome(ok: bool) -> String {
    if ok { "succeeded" } else { "failed" }.to_owned()
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Pending => "pending",
        State::Deploying => "deploying",
        State::Running => "running",
        State::Failed => "failed",
        State::Unknown => "unknown",
    }
}

impl AgentMetrics {
    /// A reconcile pass ended: `failed` when a step failed, `None` when the
    /// pass could not run at all.
    pub fn pass(&self, took: Duration, failed: Option<bool>) {
        let o = match failed {
            Some(false) => "ok",
            Some(true) => "failed",
            None => "error",
        };
        self.passes
            .get_or_create(&vec![("outcome", o.to_owned())])
            .inc();
        self.pass_seconds.observe(took.as_secs_f64());
    }

    /// A plan step of `kind` ended.
    pub fn step(&self, kind: &'static str, ok: bool) {
        self.steps
            .get_or_create(&vec![("kind", kind.to_owned()), ("outcome", outcome(ok))])
            .inc();
    }

    /// A flash ended.
    pub fn flash(&self, ok: bool) {
        self.flashes
            .get_or_create(&vec![("outcome", outcome(ok))])
            .inc();
    }

    /// Function `function`'s host reported `stats`: what it counted since its
    /// previous report is added to the agent's counters.
    pub fn function_report(&self, function: &str, stats: FunctionStats) {
        let f = &self.functions;
        let mut last = f.last.lock().unwrap_or_else(|e| e.into_inner());
        let added = stats.since(last.get(function));
        let name = || ("function", function.to_owned());
        for (outcome, n) in &added.invocations {
            f.invocations
                .get_or_create(&vec![name(), ("outcome", outcome.clone())])
                .inc_by(*n);
        }
        f.retries.get_or_create(&vec![name()]).inc_by(added.retries);
        f.dead_letters
            .get_or_create(&vec![name()])
            .inc_by(added.dead_letters);
        f.duplicates
            .get_or_create(&vec![name()])
            .inc_by(added.duplicates);
        last.insert(function.to_owned(), stats);
    }

    /// The text format, with the components' states from `snapshot` and the
    /// bridge's counters when there is a bridge.
    pub fn render(&self, snapshot: &Snapshot, bridge: Option<&Registry>) -> String {
        self.generation
            .set(i64::try_from(snapshot.observed).unwrap_or(i64::MAX));
        let skipped = continuum_bus::lag::skipped();
        self.broker_skipped
            .inc_by(skipped.saturating_sub(self.broker_skipped.get()));
        self.components.clear();
        for s in ["pending", "deploying", "running", "failed", "unknown"] {
            self.components
                .get_or_create(&vec![("state", s.to_owned())])
                .set(0);
        }
        for status in snapshot.statuses.values() {
            self.components
                .get_or_create(&vec![("state", state_name(status.state).to_owned())])
                .inc();
        }
        let mut out = {
            let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            encode(&registry)
        };
        if let Some(b) = bridge {
            // Both registries end with `# EOF`: keep only the last one.
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out = body.to_owned();
            }
            out.push_str(&encode(b));
        }
        out
    }
}

/// What the endpoints read.
#[derive(Clone)]
pub struct Observed {
    metrics: Arc<AgentMetrics>,
    snapshot: watch::Receiver<Snapshot>,
    /// Whether the link to the orchestrator is up.
    linked: watch::Receiver<bool>,
    /// The bridge, if there is one, and the registry reading its counters.
    bridge: Option<(Arc<Bridge>, Arc<Registry>)>,
}

impl Observed {
    /// What the endpoints of agent `gateway` read.
    pub fn new(
        gateway: String,
        metrics: Arc<AgentMetrics>,
        snapshot: watch::Receiver<Snapshot>,
        linked: watch::Receiver<bool>,
        bridge: Option<Arc<Bridge>>,
    ) -> Observed {
        let bridge = bridge.map(|b| {
            let read = Arc::clone(&b);
            let counters = registry(BridgeCollector::new(gateway, move || read.status()));
            (b, Arc::new(counters))
        });
        Observed {
            metrics,
            snapshot,
            linked,
            bridge,
        }
    }
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl Observed {
    /// Ready when the agent can take a model: its link to the orchestrator
    /// is up, or its local bus is (a subsystem cut off keeps working).
    fn ready(&self) -> Result<String, String> {
        let linked = *self.linked.borrow();
        let bus = self
            .bridge
            .as_ref()
            .map(|(b, _)| b.status().local == crate::bridge::stats::LinkState::Connected);
        match (linked, bus) {
            (true, _) => Ok("ready: linked to the orchestrator".into()),
            (false, Some(true)) => Ok("ready: cut off from the orchestrator, local bus up".into()),
            (false, Some(false)) => {
                Err("not ready: no link to the orchestrator and the local bus is down".into())
            }
            (false, None) => Err("not ready: no link to the orchestrator".into()),
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, observed: Observed, shutdown: CancellationToken) {
    let metrics = {
        let o = observed.clone();
        move || {
            let o = o.clone();
            async move {
                let snapshot = o.snapshot.borrow().clone();
                (
                    [(CONTENT_TYPE, OPENMETRICS)],
                    o.metrics
                        .render(&snapshot, o.bridge.as_ref().map(|(_, r)| r.as_ref())),
                )
            }
        }
    };
    let ready = move || {
        let o = observed.clone();
        async move {
            match o.ready() {
                Ok(s) => (StatusCode::OK, s + "\n"),
                Err(s) => (StatusCode::SERVICE_UNAVAILABLE, s + "\n"),
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .fallback(|uri: axum::http::Uri| async move {
            (
                StatusCode::NOT_FOUND,
                format!("404: nothing at {}\n", uri.path()),
            )
                .into_response()
        })
        .layer(axum::middleware::map_response(
            |mut r: axum::response::Response| async move {
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                r
            },
        ));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Status;

    #[test]
    fn counts_passes_steps_and_flashes_and_reads_states_at_each_scrape() {
        let m = AgentMetrics::default();
        m.pass(Duration::from_millis(5), Some(false));
        m.pass(Duration::from_millis(5), Some(true));
        m.step("start", true);
        m.step("start", false);
        m.flash(true);
        let mut snapshot = Snapshot {
            observed: 3,
            ..Snapshot::default()
        };
        snapshot
            .statuses
            .insert("a".into(), Status::new(State::Running, ""));
        snapshot
            .statuses
            .insert("b".into(), Status::new(State::Failed, "no"));
        let text = m.render(&snapshot, None);
        for line in [
            "continuum_reconcile_passes_total{outcome=\"ok\"} 1",
            "continuum_reconcile_passes_total{outcome=\"failed\"} 1",
            "continuum_reconcile_passes_total{outcome=\"error\"} 0",
            "continuum_reconcile_duration_seconds_count 2",
            "continuum_steps_total{kind=\"start\",outcome=\"succeeded\"} 1",
            "continuum_steps_total{kind=\"start\",outcome=\"failed\"} 1",
            "continuum_flash_operations_total{outcome=\"succeeded\"} 1",
            "continuum_components{state=\"running\"} 1",
            "continuum_components{state=\"failed\"} 1",
            "continuum_components{state=\"pending\"} 0",
            "continuum_observed_generation 3",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }
}
