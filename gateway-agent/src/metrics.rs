//! `GET /metrics` for Prometheus (axum), with the bridge's counters. Each
//! response closes its connection: scrapes are rare, and a plain client that
//! reads to the end of the stream gets its answer.

use std::sync::Arc;

use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::metrics::{encode, registry, BridgeCollector};
use crate::bridge::Bridge;

/// The content type of Prometheus' text format as `prometheus-client` writes it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(registry: Arc<Registry>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], encode(&registry))
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    gateway: String,
    bridge: Arc<Bridge>,
    shutdown: CancellationToken,
) {
    let registry = Arc::new(registry(BridgeCollector::new(gateway, move || {
        bridge.status()
    })));
    let app = Router::new()
        .route("/metrics", get(move || metrics(Arc::clone(&registry))))
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
