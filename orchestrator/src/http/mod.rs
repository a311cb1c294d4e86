//! The orchestrator's HTTP side, served on the gRPC port (HTTP/1.1 and
//! HTTP/2 share it; TLS and tokens too): the dashboard, its JSON API and
//! event stream, `/metrics` for Prometheus, `/healthz` and `/readyz`.
//!
//! The JSON API is a thin adapter over [`ModelService`]: each handler turns
//! the HTTP request into the gRPC request (its `authorization` header
//! included), so both APIs check the same tokens and roles and answer alike.

mod api;
mod assets;
mod events;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tonic::metadata::MetadataMap;

use crate::handle::Orchestrator;

/// The routes of the HTTP side; unknown paths are 404 (gRPC calls to an
/// unknown method get gRPC's UNIMPLEMENTED).
pub fn router(orch: Orchestrator) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api::status))
        .route("/api/gateways", get(api::gateways))
        .route("/api/history", get(api::history))
        .route("/api/model", get(api::model))
        .route("/api/diff", get(api::diff))
        .route("/api/rollback", post(api::rollback))
        .route("/api/rollout", get(api::rollout).post(api::control_rollout))
        .route("/api/events", get(events::stream))
        .fallback(not_found)
        .layer(axum::middleware::map_response(hardened))
        .with_state(orch)
}

/// Every answer forbids inline scripts and framing: model-provided text the
/// page shows can never run, even if a rendering bug let it into markup.
async fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

async fn not_found(headers: HeaderMap, uri: Uri) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no method {}", uri.path()))
            .into_http::<axum::body::Body>();
    }
    if uri.path().starts_with("/api/") {
        return api::error(StatusCode::NOT_FOUND, format!("no API {}", uri.path()));
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("404: nothing at {}\n", uri.path()),
    )
        .into_response()
}

/// The request's headers as gRPC metadata (the bearer token travels so).
fn metadata(headers: &HeaderMap) -> MetadataMap {
    MetadataMap::from_headers(headers.clone())
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Alive: the process answers.
async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

/// Ready: the store answers and the server is not stopping.
async fn readyz(State(orch): State<Orchestrator>) -> Response {
    if orch.stopping.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
    }
    let store = orch.store.clone();
    match tokio::task::spawn_blocking(move || store.first_seq()).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready: store open\n".into()),
        Ok(Err(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store: {e}\n"),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

/// Prometheus' text format. Open like `/healthz` when the API takes no
/// tokens; otherwise it needs a read token, as any view of the fleet does.
async fn metrics(State(orch): State<Orchestrator>, headers: HeaderMap) -> Response {
    if let Err(s) = orch
        .api
        .allow(&metadata(&headers), crate::access::Role::Read, "metrics")
    {
        return api::refused(&s);
    }
    let view = orch
        .read(|core, _| {
            let gateways = core.gateways();
            Ok((
                core.status(),
                crate::metrics::Fleet {
                    known: gateways.len(),
                    connected: gateways.iter().filter(|g| g.connected).count(),
                },
            ))
        })
        .await;
    let (status, fleet) = match view {
        Ok(v) => v,
        Err(e) => return api::refused(&e.to_status()),
    };
    let events = *orch.events.borrow();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        orch.metrics.render(&status, fleet, events),
    )
        .into_response()
}
