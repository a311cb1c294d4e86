//! The shared handle the gRPC services hold: the core behind a lock, run on the
//! blocking pool (store commits wait for the disk), and the shutdown signal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::core::Core;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Orchestrator {
    core: Arc<Mutex<Core>>,
    pub(crate) store: Arc<Store>,
    /// The newest event's sequence number.
    pub(crate) events: watch::Receiver<u64>,
    /// Cancelled when the server stops: long-lived streams end.
    pub(crate) stopping: CancellationToken,
    /// The tasks behind streams, awaited before the store closes.
    pub(crate) tasks: TaskTracker,
    pub(crate) heartbeat_interval: Duration,
}

impl Orchestrator {
    pub fn new(
        core: Core,
        store: Arc<Store>,
        stopping: CancellationToken,
        tasks: TaskTracker,
        heartbeat_interval: Duration,
    ) -> Orchestrator {
        let events = core.subscribe();
        Orchestrator {
            core: Arc::new(Mutex::new(core)),
            store,
            events,
            stopping,
            tasks,
            heartbeat_interval,
        }
    }

    /// Runs `f` on the core, off the async workers.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Core) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let core = Arc::clone(&self.core);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock may have left memory half-updated;
            // refuse to go on with it (the store is intact: restart).
            let mut guard = core.lock().map_err(|_| {
                Status::internal("the orchestrator's state was left inconsistent by an earlier failure; restart it")
            })?;
            Ok(f(&mut guard))
        })
        .await
        .map_err(|e| Status::internal(format!("orchestrator task failed: {e}")))?
    }
}
