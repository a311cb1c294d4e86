//! What can go wrong in the orchestrator, and how each maps to a gRPC status.

use continuum_models::Invalid;
use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the model is invalid: {0}")]
    Invalid(Invalid),
    #[error("conflict: the head is {}, not {} as expected; get the latest revision and apply again", show(*.head), show(*.expected))]
    Conflict { head: u64, expected: u64 },
    #[error("there is no revision {0}")]
    NoRevision(u64),
    #[error("there is no subsystem `{0}` in revision {1}")]
    NoSubsystem(String, u64),
    #[error("there is no revision yet; apply a model first")]
    Empty,
    #[error("gateway `{0}` is already connected; a gateway id can hold one link at a time")]
    AlreadyConnected(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored data that does not read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An earlier failure left the state unusable: the process must restart.
    #[error("{0}")]
    Broken(String),
}

fn show(revision: u64) -> String {
    if revision == 0 {
        "no revision".to_owned()
    } else {
        format!("revision {revision}")
    }
}

impl Error {
    /// Problems of a model are sent whole, in the status details, so a client can
    /// show each with its file, line and JSON path.
    pub fn to_status(&self) -> Status {
        match self {
            Error::Invalid(invalid) => continuum_proto::rejection::to_status(invalid),
            Error::Conflict { .. } => Status::aborted(self.to_string()),
            Error::NoRevision(_) | Error::NoSubsystem(..) | Error::Empty => {
                Status::not_found(self.to_string())
            }
            Error::AlreadyConnected(_) => Status::already_exists(self.to_string()),
            Error::BadRequest(_) => Status::invalid_argument(self.to_string()),
            Error::Store(e) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(format!("the orchestrator's store failed: {e}"))
            }
            Error::Corrupt(_) | Error::Broken(_) => {
                tracing::error!(error = %self, "orchestrator failure");
                Status::internal(self.to_string())
            }
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.to_status()
    }
}
