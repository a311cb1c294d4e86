//! The host's metrics, in Prometheus' text format on `GET /metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use continuum_bus::stats::FunctionStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::invoke::Failure;

/// The content type of the text format as `prometheus-client` writes it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Outcomes = Family<Vec<(String, String)>, Counter>;

/// The host's counters.
#[derive(Debug)]
pub struct Metrics {
    invocations: Outcomes,
    /// Runs that failed and were tried again.
    pub retries: Counter,
    /// Messages that went to the dead-letter topic.
    pub dead_letters: Counter,
    /// Redelivered messages recognised by their id and not run again.
    pub duplicates: Counter,
    duration: Histogram,
    registry: Registry,
    /// When these counters began, in milliseconds since the Unix epoch.
    started_ms: u64,
}

impl Metrics {
    /// The metrics of function `function`.
    pub fn new(function: &str) -> Metrics {
        let mut registry =
            Registry::with_labels([("function".into(), function.to_owned().into())].into_iter());
        let invocations = Outcomes::default();
        let retries = Counter::default();
        let dead_letters = Counter::default();
        let duplicates = Counter::default();
        // 1 ms to about 33 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "continuum_function_invocations",
            "Handler runs, by outcome (ok, error, timeout)",
            invocations.clone(),
        );
        registry.register(
            "continuum_function_retries",
            "Handler runs that failed and were tried again",
            retries.clone(),
        );
        registry.register(
            "continuum_function_dead_letters",
            "Messages dead-lettered after the last failed run",
            dead_letters.clone(),
        );
        registry.register(
            "continuum_function_duplicates",
            "Redelivered messages recognised by their id and not run again",
            duplicates.clone(),
        );
        registry.register(
            "continuum_function_duration_seconds",
            "How long handler runs took",
            duration.clone(),
        );
        Metrics {
            invocations,
            retries,
            dead_letters,
            duplicates,
            duration,
            registry,
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The counters as the gateway reads them (see [`FunctionStats`]).
    pub fn stats(&self) -> FunctionStats {
        FunctionStats {
            started_ms: self.started_ms,
            invocations: ["ok", "error", "timeout"]
                .into_iter()
                .map(|o| (o.to_owned(), self.invocations(o)))
                .collect(),
            retries: self.retries.get(),
            dead_letters: self.dead_letters.get(),
            duplicates: self.duplicates.get(),
        }
    }

    /// Counts one handler run.
    pub fn observe(&self, took: Duration, result: &Result<Vec<u8>, Failure>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(Failure::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        self.invocations
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Handler runs that ended with `outcome` (ok, error, timeout).
    pub fn invocations(&self, outcome: &str) -> u64 {
        self.invocations
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .get()
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a string cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = Arc::clone(&metrics);
            async move { ([(CONTENT_TYPE, OPENMETRICS)], m.encode()) }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint failed");
    }
}
