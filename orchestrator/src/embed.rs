//! What the process that runs an orchestrator may ask of it in-process. A
//! regional orchestrator's links to the tier above use it: they learn which
//! gateways wait to be named, apply what the tier above sends, and read back
//! how each subsystem runs. No access check applies: the caller is the
//! process itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use continuum_models::{DeploymentModel, Megamodel};
use continuum_proto::v1::{ApplyRequest, ApplyResponse, ComponentStatus, Event, Gateway, Revision};
use tokio::sync::watch;
use tonic::Status;

use crate::error::Error;
use crate::handle::Orchestrator;

/// One subsystem as the orchestrator holds it now.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsystemView {
    /// The generation of its target (the revision that last changed it).
    pub target_generation: u64,
    /// It is not in the head revision (its gateway tears everything down).
    pub removed: bool,
    /// The model its gateway must run.
    pub target_model: Arc<DeploymentModel>,
    /// The generation its gateway last reported running.
    pub observed_generation: u64,
    /// What its gateway last reported running (`None` before the first report).
    pub current_model: Option<Arc<DeploymentModel>>,
    /// The last status of each component.
    pub statuses: BTreeMap<String, ComponentStatus>,
    /// Its gateway's record, once that gateway registered.
    pub gateway: Option<Gateway>,
}

/// The head revision and its megamodel (expanded and partitioned).
#[derive(Debug, Clone)]
pub struct HeadView {
    /// Its metadata.
    pub revision: Revision,
    /// Its megamodel as deployed.
    pub megamodel: Megamodel,
}

impl Orchestrator {
    /// Applies a megamodel in the name of `req.author`, as the API's Apply
    /// does once its caller is known.
    pub async fn apply_in_process(&self, req: ApplyRequest) -> Result<ApplyResponse, Status> {
        self.apply_request(req, true).await
    }

    /// Whether the tier above runs `subsystem` through a live link now:
    /// while it does, local applies may not change it.
    pub fn hold_for_above(&self, subsystem: &str, held: bool) {
        let mut h = self
            .held_above
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held {
            h.insert(subsystem.to_owned());
        } else {
            h.remove(subsystem);
        }
    }

    /// Whether blob `hex` is here (blocks).
    pub fn has_blob(&self, hex: &str) -> bool {
        self.blobs.as_ref().is_some_and(|b| b.has(hex))
    }

    /// Keeps `bytes` as a blob; its digest (blocks).
    pub fn put_blob(&self, bytes: &[u8]) -> std::io::Result<String> {
        match &self.blobs {
            Some(b) => b.put(bytes),
            None => Err(std::io::Error::other("this orchestrator keeps no blobs")),
        }
    }

    /// The head revision, if any.
    pub async fn head_view(&self) -> Result<Option<HeadView>, Error> {
        self.read(|core, _| {
            Ok(core.head.as_ref().map(|h| HeadView {
                revision: h.meta.clone(),
                megamodel: h.megamodel.clone(),
            }))
        })
        .await
    }

    /// A gateway's record as held now (`None`: it never registered).
    pub async fn gateway_record(&self, gateway_id: &str) -> Result<Option<Gateway>, Error> {
        let id = gateway_id.to_owned();
        self.read(move |core, _| Ok(core.gateways.get(&id).map(|g| core.gateway_view(g))))
            .await
    }

    /// Every subsystem whose gateway is `gateway_id`, as held now.
    pub async fn subsystems_of_gateway(
        &self,
        gateway_id: &str,
    ) -> Result<Vec<(String, SubsystemView)>, Error> {
        let id = gateway_id.to_owned();
        self.read(move |core, _| {
            let gateway = core.gateways.get(&id).map(|g| core.gateway_view(g));
            Ok(core
                .subsystems_of(&id)
                .map(|(name, s)| {
                    let view = SubsystemView {
                        target_generation: s.target.generation,
                        removed: s.target.removed,
                        target_model: Arc::clone(&s.target_model),
                        observed_generation: s.observed_generation,
                        current_model: s.current_model.clone(),
                        statuses: s.statuses.clone(),
                        gateway: gateway.clone(),
                    };
                    (name.clone(), view)
                })
                .collect())
        })
        .await
    }

    /// Up to `max` events after sequence number `after`, oldest first (the
    /// log keeps the newest ones only: a first event past `after + 1` means
    /// some were forgotten).
    pub async fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, Error> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.events_after(after, max))
            .await
            .map_err(|e| Error::Broken(format!("event read failed: {e}")))?
            .map_err(Error::from)
    }

    /// The newest event's sequence number, as it changes (every change of
    /// state adds an event).
    pub fn event_seq(&self) -> watch::Receiver<u64> {
        self.events.clone()
    }

    /// Runs `task` until the orchestrator stops: it is awaited, with the
    /// streams, before the store closes; `stopping` tells it to end.
    pub fn spawn_task<F>(&self, task: impl FnOnce(tokio_util::sync::CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.stopping.clone()));
    }

    /// The ids of the gateways whose links wait for a revision to name
    /// them, with how many links each, as they change.
    pub fn waiting_gateways(&self) -> watch::Receiver<crate::admission::Waiting> {
        self.gatekeeper.waiting()
    }
}
