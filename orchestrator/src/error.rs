//! What can go wrong in the orchestrator, and how each maps to a gRPC status.

use continuum_models::Invalid;
use tonic::Status;

use crate::store::StoreError;

/// What can go wrong in an orchestrator operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model is invalid; every problem is inside.
    #[error("the model is invalid: {0}")]
    Invalid(Invalid),
    #[error("conflict: the head is {}, not {} as expected; get the latest revision and apply again", show(*.head), show(*.expected))]
    /// The head is not the revision the client expected.
    Conflict {
        /// The head now.
        head: u64,
        /// The head the client based its change on.
        expected: u64,
    },
    /// The revision asked for does not exist.
    #[error("there is no revision {0}")]
    NoRevision(u64),
    /// The subsystem asked for is not in that revision.
    #[error("there is no subsystem `{0}` in revision {1}")]
    NoSubsystem(String, u64),
    /// No gateway of that id is registered.
    #[error("no gateway `{0}` is registered")]
    NoGateway(String),
    /// Nothing has been applied yet.
    #[error("there is no revision yet; apply a model first")]
    Empty,
    /// The gateway id already holds a link.
    #[error("gateway `{0}` is already connected; a gateway id can hold one link at a time")]
    AlreadyConnected(String),
    /// A workload needs what the workload policy does not allow.
    #[error("refused by the workload policy: {0}")]
    Policy(String),
    /// The model changes subsystems a tier above runs through a live link.
    #[error("the tier above runs {0} and is linked now: apply there (this orchestrator takes local changes to them only while cut off from it)")]
    HeldAbove(String),
    /// No staged rollout to show or control (the message says why).
    #[error("{0}")]
    NoRollout(String),
    /// The rollout cannot do what was asked in the state it is in.
    #[error("{0}")]
    RolloutState(String),
    /// The request makes no sense (the message says why).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The commit this change was batched into failed: nothing of it is kept.
    #[error(transparent)]
    Committing(std::sync::Arc<StoreError>),
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
            Error::NoRevision(_) | Error::NoSubsystem(..) | Error::NoGateway(_) | Error::Empty => {
                Status::not_found(self.to_string())
            }
            Error::AlreadyConnected(_) => Status::already_exists(self.to_string()),
            Error::NoRollout(_) => Status::not_found(self.to_string()),
            Error::RolloutState(_) => Status::failed_precondition(self.to_string()),
            Error::Policy(_) => Status::permission_denied(self.to_string()),
            Error::HeldAbove(_) => Status::failed_precondition(self.to_string()),
            Error::BadRequest(_) => Status::invalid_argument(self.to_string()),
            Error::Store(e) => store_failed(e),
            Error::Committing(e) => store_failed(e),
            Error::Corrupt(_) | Error::Broken(_) => {
                tracing::error!(error = %self, "orchestrator failure");
                Status::internal(self.to_string())
            }
        }
    }
}

fn store_failed(e: &StoreError) -> Status {
    tracing::error!(error = %e, "store failure");
    Status::internal(format!("the orchestrator's store failed: {e}"))
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.to_status()
    }
}
