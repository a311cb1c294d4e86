//! An invalid model across the wire: every problem travels, located, in the
//! details of an `INVALID_ARGUMENT` status, and is read back on the other side.

use continuum_models::{Diagnostic, Invalid};
use prost::Message;
use tonic::{Code, Status};

use crate::v1::{Problem, Rejection};

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
    let n = invalid.diagnostics.len();
    Status::with_details(
        Code::InvalidArgument,
        format!(
            "the model is invalid: {n} problem{} found",
            if n == 1 { "" } else { "s" }
        ),
        rejection.encode_to_vec().into(),
    )
}

/// The problems of a refused model, when the status carries them.
pub fn from_status(status: &Status) -> Option<Invalid> {
    if status.code() != Code::InvalidArgument || status.details().is_empty() {
        return None;
    }
    let rejection = Rejection::decode(status.details()).ok()?;
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
