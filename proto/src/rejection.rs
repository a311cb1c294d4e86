//! An invalid model across the wire, in gRPC's standard rich error model: the
//! `grpc-status-details-bin` trailer of an `INVALID_ARGUMENT` status holds a
//! `google.rpc.Status` whose details pack two messages —
//!
//! * a `google.rpc.BadRequest` with one field violation per problem (the JSON
//!   path as the field), which any gRPC client reads with its standard status
//!   helpers (`grpc_status.rpc_status.from_call` in Python, `status.FromError`
//!   and `Details()` in Go, `StatusProto.fromThrowable` in Java);
//! * a `continuum.v1.Rejection` with every problem located (file, line, column,
//!   path, expectation), which Continuum's own CLI shows as `validate` does.

use continuum_models::{Diagnostic, Invalid};
use prost::Message;
use prost_types::Any;
use tonic::{Code, Status};
use tonic_types::pb;

use crate::v1::{Problem, Rejection};

const TYPE_PREFIX: &str = "type.googleapis.com/";

fn pack<M: Message>(name: &str, message: &M) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

/// One problem as a sentence: where, what, and what was expected.
fn describe(d: &Diagnostic) -> String {
    let mut s = String::new();
    if !d.file.is_empty() {
        s.push_str(&d.file);
        if d.line > 0 {
            s.push_str(&format!(":{}:{}", d.line, d.column));
        }
        s.push_str(": ");
    }
    s.push_str(&d.message);
    if let Some(e) = &d.expected {
        s.push_str(&format!(" (expected {e})"));
    }
    s
}

/// The status that refuses an invalid model.
pub fn to_status(invalid: &Invalid) -> Status {
    let rejection = Rejection {
        problems: invalid
            .diagnostics
            .iter()
            .map(|d| Problem {
                file: d.file.clone(),
                line: u32::try_from(d.line).unwrap_or(u32::MAX),
                column: u32::try_from(d.column).unwrap_or(u32::MAX),
                path: d.path.clone(),
                message: d.message.clone(),
                expected: d.expected.clone().unwrap_or_default(),
            })
            .collect(),
    };
    let bad_request = pb::BadRequest {
        field_violations: invalid
            .diagnostics
            .iter()
            .map(|d| pb::bad_request::FieldViolation {
                field: if d.path.is_empty() {
                    d.file.clone()
                } else {
                    d.path.clone()
                },
                description: describe(d),
                ..Default::default()
            })
            .collect(),
    };
    let n = invalid.diagnostics.len();
    let message = format!(
        "the model is invalid: {n} problem{} found",
        if n == 1 { "" } else { "s" }
    );
    let status = pb::Status {
        code: Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![
            pack("google.rpc.BadRequest", &bad_request),
            pack("continuum.v1.Rejection", &rejection),
        ],
    };
    Status::with_details(
        Code::InvalidArgument,
        message,
        status.encode_to_vec().into(),
    )
}

/// The `Rejection` a refusal carries, if it carries one.
pub fn rejection(status: &Status) -> Option<Rejection> {
    if status.code() != Code::InvalidArgument || status.details().is_empty() {
        return None;
    }
    let rich = pb::Status::decode(status.details()).ok()?;
    let wanted = format!("{TYPE_PREFIX}continuum.v1.Rejection");
    let any = rich.details.iter().find(|a| a.type_url == wanted)?;
    Rejection::decode(any.value.as_slice()).ok()
}

/// The problems of a refused model, when the status carries them.
pub fn from_status(status: &Status) -> Option<Invalid> {
    let rejection = rejection(status)?;
    Some(Invalid {
        diagnostics: rejection
            .problems
            .into_iter()
            .map(|p| Diagnostic {
                file: p.file,
                line: p.line as usize,
                column: p.column as usize,
                path: p.path,
                message: p.message,
                expected: (!p.expected.is_empty()).then_some(p.expected),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn invalid() -> Invalid {
        Invalid {
            diagnostics: vec![
                Diagnostic {
                    file: "m.json".into(),
                    line: 3,
                    column: 7,
                    path: "subsystems[0].components[1].kind".into(),
                    message: "unknown kind `servce`".into(),
                    expected: Some("one of gateway, host, service".into()),
                },
                Diagnostic {
                    file: "m.json".into(),
                    line: 9,
                    column: 2,
                    path: "subsystems[0].links[0].to".into(),
                    message: "link to missing component `db`".into(),
                    expected: None,
                },
            ],
        }
    }

    #[test]
    fn a_refusal_reads_back_whole() {
        let status = to_status(&invalid());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(from_status(&status).unwrap(), invalid());
    }

    #[test]
    fn standard_helpers_read_one_violation_per_problem() {
        let status = to_status(&invalid());
        // tonic-types' reader stands for the other languages' status helpers.
        let bad = status
            .get_details_bad_request()
            .expect("a BadRequest detail");
        let fields: Vec<(&str, &str)> = bad
            .field_violations
            .iter()
            .map(|v| (v.field.as_str(), v.description.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (
                    "subsystems[0].components[1].kind",
                    "m.json:3:7: unknown kind `servce` (expected one of gateway, host, service)"
                ),
                (
                    "subsystems[0].links[0].to",
                    "m.json:9:2: link to missing component `db`"
                ),
            ]
        );
        let rich = pb::Status::decode(status.details()).unwrap();
        assert_eq!(rich.code, Code::InvalidArgument as i32);
        assert_eq!(rich.message, status.message());
    }

    #[test]
    fn other_statuses_carry_no_problems() {
        assert!(from_status(&Status::invalid_argument("no")).is_none());
        assert!(from_status(&Status::not_found("no")).is_none());
    }
}
