//! The shell around the core: it reads the clock, commits each transition
//! durably, then completes it in memory and hands its deliveries to the
//! gateways' sessions and its new events to watchers — all under one lock, on
//! the blocking pool (commits wait for the disk).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use continuum_proto::v1::Target;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::{now_ms, Core, Delivery, Registered, Transition};
use crate::error::Error;
use crate::store::Store;

/// What the lock guards: the core, and the sessions its deliveries go to.
#[derive(Debug)]
struct Shared {
    core: Core,
    /// Per gateway: its session number and where its newest target goes.
    sessions: HashMap<String, (u64, watch::Sender<Option<Target>>)>,
    /// The head revision's number, for links that wait to be named.
    head: watch::Sender<u64>,
}

impl Shared {
    fn deliver(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            match self.sessions.get(&d.gateway_id) {
                Some((session, tx)) if *session == d.session => {
                    tx.send_replace(Some(d.target));
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Orchestrator {
    shared: Arc<Mutex<Shared>>,
    pub(crate) store: Arc<Store>,
    /// The newest event's sequence number.
    events_tx: Arc<watch::Sender<u64>>,
    pub(crate) events: watch::Receiver<u64>,
    /// Cancelled when the server stops: long-lived streams end.
    pub(crate) stopping: CancellationToken,
    /// The tasks behind streams, awaited before the store closes.
    pub(crate) tasks: TaskTracker,
    pub(crate) heartbeat_interval: Duration,
    /// The blobs artefacts are pinned to (none: references are not checked).
    pub(crate) blobs: Option<Arc<crate::blobs::BlobStore>>,
    /// What workloads may reach of their hosts.
    pub(crate) policy: Arc<continuum_models::policy::Policy>,
    /// Who may call the client API.
    pub(crate) api: crate::access::SharedAccess,
    /// Which gateways may hold a link.
    pub(crate) gatekeeper: crate::admission::Gatekeeper,
    /// The head revision's number.
    pub(crate) head: watch::Receiver<u64>,
    /// Applies prepared at once: preparing one holds about twenty times the
    /// model's size in memory (measured: 15 MB took the server from 34 to
    /// 315 MB), so concurrent large applies queue rather than multiply it.
    pub(crate) preparing: Arc<tokio::sync::Semaphore>,
    /// What requests did, for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

/// Applies prepared at once (see `Orchestrator::preparing`).
pub const CONCURRENT_PREPARES: usize = 2;

/// A session just registered: its welcome, and where its targets arrive (only
/// the newest matters).
#[derive(Debug)]
pub struct Session {
    pub registered: Registered,
    pub targets: watch::Receiver<Option<Target>>,
}

impl Orchestrator {
    pub fn new(
        core: Core,
        store: Arc<Store>,
        stopping: CancellationToken,
        tasks: TaskTracker,
        heartbeat_interval: Duration,
    ) -> Orchestrator {
        let (events_tx, events) = watch::channel(core.last_seq());
        let (head_tx, head) = watch::channel(core.head_number());
        Orchestrator {
            shared: Arc::new(Mutex::new(Shared {
                core,
                sessions: HashMap::new(),
                head: head_tx,
            })),
            store,
            events_tx: Arc::new(events_tx),
            events,
            stopping,
            tasks,
            heartbeat_interval,
            blobs: None,
            policy: Arc::default(),
            api: Default::default(),
            gatekeeper: crate::admission::Gatekeeper::new(Default::default()),
            head,
            preparing: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_PREPARES)),
            metrics: Arc::default(),
        }
    }

    /// Who may call the client API, and which gateways may hold a link.
    pub fn with_access(
        mut self,
        api: crate::access::SharedAccess,
        gateways: crate::admission::GatewayAdmission,
    ) -> Orchestrator {
        self.api = api;
        self.gatekeeper = crate::admission::Gatekeeper::new(gateways);
        self
    }

    /// Refuses at apply what `policy` does not allow.
    pub fn with_policy(mut self, policy: continuum_models::policy::Policy) -> Orchestrator {
        self.policy = Arc::new(policy);
        self
    }

    /// Checks at apply that every pinned artefact is in `blobs`.
    pub fn with_blobs(mut self, blobs: Arc<crate::blobs::BlobStore>) -> Orchestrator {
        self.blobs = Some(blobs);
        self
    }

    /// Runs `f` on the locked state, off the async workers.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Shared, &Store, &watch::Sender<u64>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let shared = Arc::clone(&self.shared);
        let store = Arc::clone(&self.store);
        let events = Arc::clone(&self.events_tx);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock may have left memory half-updated;
            // refuse to go on with it (the store is intact: restart).
            let mut guard = shared.lock().map_err(|_| {
                Error::Broken("the orchestrator's state was left inconsistent by an earlier failure; restart it".into())
            })?;
            Ok(f(&mut guard, &store, &events))
        })
        .await
        .map_err(|e| Error::Broken(format!("orchestrator task failed: {e}")))?
    }

    /// Reads the state.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core, &Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.locked(move |s, store, _| f(&s.core, store)).await?
    }

    /// Decides a transition at the current time, commits its writes, then
    /// completes it: memory changes, targets go out, watchers wake.
    pub async fn transact<T: Send + 'static>(
        &self,
        decide: impl FnOnce(&Core, &Store, i64) -> Result<Transition<T>, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.locked(move |s, store, events| {
            let t = decide(&s.core, store, now_ms())?;
            store.commit(&t.changes)?;
            Ok(finish(s, t, events))
        })
        .await?
    }

    /// Registers a gateway and opens its session.
    pub async fn register(
        &self,
        register: continuum_proto::v1::Register,
    ) -> Result<Session, Error> {
        self
            .locked(move |s, store, events| {
                let t = s.core.register(register, now_ms())?;
                store.commit(&t.changes)?;
                let (tx, targets) = watch::channel(None);
                // The session exists before its first delivery is handed over.
                s.sessions
                    .insert(gateway_of_registration(&t), (t.reply.session, tx));
                let registered = finish(s, t, events);
                tracing::info!(subsystem = %registered.welcome.subsystem, session = registered.session, "gateway connected");
                Ok(Session {
                    registered,
                    targets,
                })
            })
            .await?
    }

    /// Ends a session: recorded when the store takes it; memory follows either
    /// way (a gateway that is gone is gone).
    pub async fn disconnect(&self, gateway: String, session: u64, reason: String) {
        let result = self
            .locked(move |s, store, events| {
                let Some(t) = s.core.disconnect(&gateway, session, &reason, now_ms()) else {
                    return;
                };
                if let Err(e) = store.commit(&t.changes) {
                    tracing::error!(gateway = %gateway, error = %e, "cannot record a disconnection");
                }
                if s.sessions.get(&gateway).is_some_and(|(id, _)| *id == session) {
                    s.sessions.remove(&gateway);
                }
                finish(s, t, events);
                tracing::info!(gateway = %gateway, %reason, "gateway disconnected");
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record the disconnection");
        }
    }
}

/// The gateway a registration is about (its reply's session is keyed by it).
fn gateway_of_registration(t: &Transition<Registered>) -> String {
    t.changes
        .gateways
        .first()
        .map(|g| g.id.clone())
        .unwrap_or_default()
}

/// Completes a committed transition: memory, deliveries, watchers.
fn finish<T>(s: &mut Shared, t: Transition<T>, events: &watch::Sender<u64>) -> T {
    let done = s.core.complete(t);
    s.deliver(done.deliveries);
    let head = s.core.head_number();
    s.head
        .send_if_modified(|h| std::mem::replace(h, head) != head);
    if let Some(last) = done.new_last_seq {
        events.send_replace(last);
    }
    done.reply
}
