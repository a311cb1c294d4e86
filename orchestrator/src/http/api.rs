//! The dashboard's JSON API: each handler makes the gRPC request from the
//! HTTP one and answers the gRPC response as JSON (the CLI's `-o json` shape:
//! enums by name, models inline).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use continuum_proto::v1::model_service_server::ModelService;
use continuum_proto::v1::{
    diff_request::Between, DiffRequest, GetRequest, HistoryRequest, ListGatewaysRequest, Live,
    Revisions, RollbackRequest, StatusRequest, View,
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
    answer(orch.status(request(&headers, StatusRequest {})).await)
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

/// A rollback from the page. It must be JSON and, when the browser says
/// where the page came from, from this origin: another site's form cannot
/// roll back (a cross-origin JSON post needs a CORS grant never given).
pub(super) async fn rollback(
    State(orch): State<Orchestrator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a rollback is a JSON body ({\"to\": N}) with Content-Type: application/json".into(),
        );
    }
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return error(
            StatusCode::FORBIDDEN,
            "a rollback must come from this orchestrator's own page".into(),
        );
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
