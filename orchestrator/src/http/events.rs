//! The event log as server-sent events: the same log, order and resume rules
//! as `Watch`. Each event's SSE id is its sequence number, so a client that
//! reconnects (`Last-Event-ID`, or `?after=N`) resumes after the last event
//! it saw; one whose next event is no longer kept is told so (410), never
//! shown a silent gap.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use continuum_proto::v1::model_service_server::ModelService;
use continuum_proto::v1::{event, Event, WatchRequest};
use tokio_stream::StreamExt;

use crate::handle::Orchestrator;

#[derive(Debug, serde::Deserialize)]
pub(super) struct EventsQuery {
    /// Resume after this sequence number.
    after: Option<u64>,
    /// Or start this many events before the newest (a page's first load).
    tail: Option<u64>,
    #[serde(default)]
    subsystem: String,
}

/// The SSE event name of a log event, for `addEventListener`-style clients.
fn kind(e: &Event) -> &'static str {
    match e.kind {
        Some(event::Kind::Revision(_)) => "revision",
        Some(event::Kind::TargetSent(_)) => "target_sent",
        Some(event::Kind::Acknowledged(_)) => "acknowledged",
        Some(event::Kind::Connected(_)) => "connected",
        Some(event::Kind::Disconnected(_)) => "disconnected",
        Some(event::Kind::Component(_)) => "component",
        Some(event::Kind::Step(_)) => "step",
        Some(event::Kind::Current(_)) => "current",
        Some(event::Kind::Diverged(_)) => "diverged",
        Some(event::Kind::Rollout(_)) => "rollout",
        None => "unknown",
    }
}

fn sse(e: &Event) -> SseEvent {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(e.seq.to_string())
        .event(kind(e))
        .data(data)
}

pub(super) async fn stream(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = match (resume.or(q.after), q.tail) {
        (Some(after), _) => after,
        (None, Some(tail)) => {
            let store = orch.store.clone();
            let first = tokio::task::spawn_blocking(move || store.first_seq())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let newest = *orch.events.borrow();
            newest.saturating_sub(tail).max(first.saturating_sub(1))
        }
        (None, None) => *orch.events.borrow(),
    };
    let events = match orch
        .watch(super::api::request(
            &headers,
            WatchRequest {
                after,
                subsystem: q.subsystem,
            },
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return super::api::refused(&s),
    };
    // First a `hello` naming where the stream starts, so a client knows the
    // events it shows follow on from what it fetched.
    let hello = SseEvent::default()
        .event("hello")
        .data(serde_json::json!({ "after": after }).to_string());
    let stream = tokio_stream::once(hello).chain(events.map(|r| {
        match r {
            Ok(e) => sse(&e),
            Err(s) => SseEvent::default()
                .event("failure")
                .data(serde_json::json!({ "error": s.message() }).to_string()),
        }
    }));
    Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
