//! The dashboard's JSON API: each handler makes the gRPC request from the
//! HTTP one and answers the gRPC response as JSON (the CLI's `-o json` shape:
//! enums by name, models inline).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuum_proto::v1::model_service_server::ModelService;
use continuum_proto::v1::{
    diff_request::Between, ControlRolloutRequest, DiffRequest, GetRequest, GetRolloutRequest,
    HistoryRequest, ListGatewaysRequest, Live, Revisions, RollbackRequest, RolloutAction,
    StatusRequest, View,
};
use tonic::Code;

use crate::handle::Orchestrator;

/// The gRPC request `message` with the HTTP request's headers as metadata.
pub(super) fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    tonic::Request::from_parts(
        super::metadata(headers),
        tonic::Extensions::default(),
        message,
    )
}

/// An error as JSON: `{"error": "...", "code": "NOT_FOUND"}`.
pub(super) fn error(status: StatusCode, message: String) -> Response {
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_uppercase()
        .replace(' ', "_");
    (
        status,
        Json(serde_json::json!({ "error": message, "code": code })),
    )
        .into_response()
}

/// The HTTP status a gRPC code stands for.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        // Events no longer kept: gone for good.
        Code::OutOfRange => StatusCode::GONE,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refused gRPC call as an HTTP error with its message.
pub(super) fn refused(status: &tonic::Status) -> Response {
    let mut r = error(http_status(status.code()), status.message().to_owned());
    if status.code() == Code::Unauthenticated {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

fn answer<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Response {
    match r {
        Ok(r) => Json(r.into_inner()).into_response(),
        Err(s) => refused(&s),
    }
}

pub(super) async fn status(State(orch): State<Orchestrator>, headers: HeaderMap) -> Response {
    answer(
        orch.status(request(&headers, StatusRequest::default()))
            .await,
    )
}

pub(super) async fn gateways(State(orch): State<Orchestrator>, headers: HeaderMap) -> Response {
    answer(
        orch.list_gateways(request(&headers, ListGatewaysRequest {}))
            .await,
    )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    limit: u32,
}

pub(super) async fn history(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    answer(
        orch.history(request(&headers, HistoryRequest { limit: q.limit }))
            .await,
    )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ModelQuery {
    #[serde(default)]
    subsystem: String,
    #[serde(default)]
    revision: u64,
    /// `target` (the default) or `current`.
    #[serde(default)]
    view: Option<String>,
}

pub(super) async fn model(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    Query(q): Query<ModelQuery>,
) -> Response {
    let view = match q.view.as_deref() {
        None | Some("target") => View::Target,
        Some("current") => View::Current,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("view `{other}`: expected `target` or `current`"),
            )
        }
    };
    answer(
        orch.get(request(
            &headers,
            GetRequest {
                view: view as i32,
                subsystem: q.subsystem,
                revision: q.revision,
            },
        ))
        .await,
    )
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct DiffQuery {
    /// Two revisions: `from` and `to`; neither: the live diff.
    from: Option<u64>,
    to: Option<u64>,
    #[serde(default)]
    subsystem: String,
}

pub(super) async fn diff(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    Query(q): Query<DiffQuery>,
) -> Response {
    let between = match (q.from, q.to) {
        (None, None) => Between::Live(Live {
            subsystem: q.subsystem,
        }),
        (Some(from), Some(to)) => Between::Revisions(Revisions { from, to }),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "a diff between revisions needs both `from` and `to`".into(),
            )
        }
    };
    answer(
        orch.diff(request(
            &headers,
            DiffRequest {
                between: Some(between),
            },
        ))
        .await,
    )
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    to: u64,
    expected_base: Option<u64>,
}

/// A change asked from the page must be JSON and, when the browser says
/// where the page came from, from this origin: another site's form cannot
/// make it (a cross-origin JSON post needs a CORS grant never given).
/// The answer that refuses it, if it must be.
fn refused_from_elsewhere(headers: &HeaderMap, what: &str, shape: &str) -> Option<Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a {what} is a JSON body ({shape}) with Content-Type: application/json"),
        ));
    }
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!("a {what} must come from this orchestrator's own page"),
        ));
    }
    None
}

/// A rollback from the page.
pub(super) async fn rollback(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refused_from_elsewhere(&headers, "rollback", "{\"to\": N}") {
        return refused;
    }
    let body: RollbackBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the rollback body: {e}; expected {{\"to\": N[, \"expected_base\": M]}}"),
            )
        }
    };
    let r = orch
        .rollback(request(
            &headers,
            RollbackRequest {
                to: body.to,
                expected_base: body.expected_base,
                // Who, when the API takes no tokens (else the token says).
                author: "dashboard".into(),
            },
        ))
        .await;
    answer(r)
}

/// The newest staged rollout.
pub(super) async fn rollout(State(orch): State<Orchestrator>, headers: HeaderMap) -> Response {
    answer(
        orch.get_rollout(request(&headers, GetRolloutRequest {}))
            .await,
    )
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RolloutBody {
    action: String,
    #[serde(default)]
    revision: u64,
    #[serde(default)]
    reason: String,
}

/// Pauses, resumes or aborts the rollout from the page.
pub(super) async fn control_rollout(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let shape = "{\"action\": \"pause\"|\"resume\"|\"abort\"}";
    if let Some(refused) = refused_from_elsewhere(&headers, "rollout action", shape) {
        return refused;
    }
    let body: RolloutBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the rollout body: {e}; expected {shape}"),
            )
        }
    };
    let action = match body.action.as_str() {
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "abort" => RolloutAction::Abort,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{other}` is not a rollout action: expected pause, resume or abort"),
            )
        }
    };
    let r = orch
        .control_rollout(request(
            &headers,
            ControlRolloutRequest {
                action: action as i32,
                revision: body.revision,
                author: "dashboard".into(),
                reason: body.reason,
            },
        ))
        .await;
    answer(r)
}
