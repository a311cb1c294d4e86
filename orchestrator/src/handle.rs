//! The shell around the core: it reads the clock, commits transitions
//! durably, and only then answers their callers, hands their deliveries to
//! the gateways' sessions and their new events to watchers — all under one
//! lock, on the blocking pool (commits wait for the disk).
//!
//! **Group commit.** A transition is queued, and whoever takes the lock next
//! decides and completes in memory every transition queued by then, each on
//! top of the one before, and commits all their writes in one durable
//! transaction. Reports from many gateways arriving together cost one fsync,
//! not one each. Nothing leaves before the commit; a failed commit undoes
//! every completion of its batch (newest first) and each caller is told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use continuum_proto::v1::{AgentOffer, Target};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::{now_ms, Core, Delivery, Registered, Transition, Undo};
use crate::error::Error;
use crate::store::{Changes, Store, StoreError};

/// A transition waiting for the next commit: given the locked state, the
/// store and the time, it decides and completes itself, or answers its caller
/// at once (nothing to commit).
type Job = Box<dyn FnOnce(&mut Shared, &Store, i64) -> Option<Staged> + Send>;

/// The transitions waiting for the next commit, oldest first. One committer at a time drains it: while it commits, what arrives waits
/// for its next round, so every round takes all that queued meanwhile.
#[derive(Default)]
struct Queue(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    jobs: Vec<Job>,
    /// A committer is at work and will take what is queued.
    committing: bool,
}

impl Queue {
    /// Queues `job`; true when the caller must start a committer.
    fn push(&self, job: Job) -> bool {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.jobs.push(job);
        !std::mem::replace(&mut w.committing, true)
    }

    /// The jobs queued, or none (and the committer stops) when none is.
    fn next_round(&self) -> Option<Vec<Job>> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if w.jobs.is_empty() {
            w.committing = false;
            None
        } else {
            Some(std::mem::take(&mut w.jobs))
        }
    }

    /// The committer died: what waits is dropped, which tells its callers.
    fn abandon(&self) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.jobs.clear();
        w.committing = false;
    }

    fn len(&self) -> usize {
        self.0.lock().map_or(0, |w| w.jobs.len())
    }

    /// No committer is at work.
    #[cfg(test)]
    fn idle(&self) -> bool {
        self.0.lock().is_ok_and(|w| !w.committing)
    }

    /// A committer is at work and has taken everything queued.
    #[cfg(test)]
    fn drained(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|w| w.committing && w.jobs.is_empty())
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({} waiting)", self.len())
    }
}

/// Lets a committer that panics leave the queue to the next caller.
struct Committer<'a>(&'a Queue);

impl Drop for Committer<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandon();
        }
    }
}

/// What answers a caller once its batch's commit is known.
type Settle = Box<dyn FnOnce(&mut Shared, Result<(), Arc<StoreError>>) + Send>;

/// A transition completed in memory, waiting for its batch's commit.
struct Staged {
    changes: Changes,
    undo: Undo,
    deliveries: Vec<Delivery>,
    new_last_seq: Option<u64>,
    /// Runs once the commit is done, or failed and memory is undone: answers
    /// the caller (and may open a session first).
    settle: Settle,
}

impl Staged {
    /// Completes `t` in memory; `settle` answers its caller with its reply.
    fn complete<T: Send + 'static>(
        core: &mut Core,
        mut t: Transition<T>,
        settle: impl FnOnce(&mut Shared, Result<T, Arc<StoreError>>) + Send + 'static,
    ) -> Staged {
        let changes = std::mem::take(&mut t.changes);
        let done = core.complete(t);
        let reply = done.reply;
        Staged {
            changes,
            undo: done.undo,
            deliveries: done.deliveries,
            new_last_seq: done.new_last_seq,
            settle: Box::new(move |s, result| settle(s, result.map(|()| reply))),
        }
    }
}

/// What the lock guards: the core, and the sessions its deliveries go to.
#[derive(Debug)]
struct Shared {
    core: Core,
    /// Per gateway: its session number and where its newest target goes.
    sessions: HashMap<String, (u64, watch::Sender<Option<Target>>)>,
    /// The head revision's number, for links that wait to be named.
    head: watch::Sender<u64>,
    /// The agent build on offer, for every link.
    agent_offer: watch::Sender<Option<AgentOffer>>,
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

/// A serving orchestrator's state and services; cheap to clone.
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
    /// The agent build on offer (sent to every link).
    pub(crate) agent_offer: watch::Receiver<Option<AgentOffer>>,
    /// Applies prepared at once: preparing one holds about twenty times the
    /// model's size in memory (measured: 15 MB took the server from 34 to
    /// 315 MB), so concurrent large applies queue rather than multiply it.
    pub(crate) preparing: Arc<tokio::sync::Semaphore>,
    /// What requests did, for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Transitions waiting for the next commit.
    queue: Arc<Queue>,
    /// The subsystems a tier above runs through a live link: local applies
    /// may not change them.
    pub(crate) held_above: Arc<Mutex<std::collections::BTreeSet<String>>>,
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
    /// An orchestrator over `core`, committing to `store`.
    pub fn new(
        core: Core,
        store: Arc<Store>,
        stopping: CancellationToken,
        tasks: TaskTracker,
        heartbeat_interval: Duration,
    ) -> Orchestrator {
        let (events_tx, events) = watch::channel(core.last_seq());
        let (head_tx, head) = watch::channel(core.head_number());
        let (offer_tx, agent_offer) = watch::channel(core.agent_offer().cloned());
        Orchestrator {
            shared: Arc::new(Mutex::new(Shared {
                core,
                sessions: HashMap::new(),
                head: head_tx,
                agent_offer: offer_tx,
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
            agent_offer,
            preparing: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_PREPARES)),
            metrics: Arc::default(),
            queue: Arc::default(),
            held_above: Arc::default(),
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

    /// Decides a transition at the current time and completes it; answers
    /// once its writes are durable (committed with whatever else was queued).
    pub async fn transact<T: Send + 'static>(
        &self,
        decide: impl FnOnce(&Core, &Store, i64) -> Result<Transition<T>, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |s, store, now| {
            match decide(&s.core, store, now) {
                Ok(t) => Some(Staged::complete(&mut s.core, t, move |_, r| {
                    let _ = tx.send(r.map_err(Error::Committing));
                })),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            }
        }));
        rx.await.unwrap_or_else(|_| Err(broken()))
    }

    /// Registers a gateway and opens its session.
    pub async fn register(
        &self,
        register: continuum_proto::v1::Register,
    ) -> Result<Session, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |s, _, now| {
            let t = match s.core.register(register, now) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            };
            let gateway = gateway_of_registration(&t);
            Some(Staged::complete(&mut s.core, t, move |s, r| {
                let r = r.map_err(Error::Committing).map(|registered: Registered| {
                    // The session exists before its first delivery is handed over.
                    let (targets_tx, targets) = watch::channel(None);
                    s.sessions
                        .insert(gateway, (registered.session, targets_tx));
                    tracing::info!(subsystem = %registered.welcome.subsystem, session = registered.session, "gateway connected");
                    Session {
                        registered,
                        targets,
                    }
                });
                let _ = tx.send(r);
            }))
        }));
        rx.await.unwrap_or_else(|_| Err(broken()))
    }

    /// Ends a session: recorded when the store takes it; memory follows either
    /// way (a gateway that is gone is gone).
    pub async fn disconnect(&self, gateway: String, session: u64, reason: String) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.submit(Box::new(move |s, _, now| {
                let t = s.core.disconnect(&gateway, session, &reason, now)?;
                Some(Staged::complete(&mut s.core, t, move |s, r| {
                    if let Err(e) = r {
                        tracing::error!(gateway = %gateway, error = %e, "cannot record a disconnection");
                        // Undone with its batch: forgotten in memory all the same.
                        if let Some(t) = s.core.disconnect(&gateway, session, &reason, now_ms()) {
                            let _ = s.core.complete(t).undo;
                        }
                    }
                    if s.sessions.get(&gateway).is_some_and(|(id, _)| *id == session) {
                        s.sessions.remove(&gateway);
                    }
                    tracing::info!(gateway = %gateway, %reason, "gateway disconnected");
                    let _ = tx.send(());
                }))
            }));
        // Nothing to record (an old session) answers nothing: the same.
        let _ = rx.await;
    }

    /// Queues `job`; starts a committer on the blocking pool unless one is at
    /// work (it will take the job in its next round). The job answers its
    /// caller itself; a job dropped unanswered means the state is broken.
    fn submit(&self, job: Job) {
        if !self.queue.push(job) {
            return;
        }
        let (shared, store, events, queue, metrics) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.store),
            Arc::clone(&self.events_tx),
            Arc::clone(&self.queue),
            Arc::clone(&self.metrics),
        );
        tokio::task::spawn_blocking(move || {
            let _committer = Committer(&queue);
            while let Some(jobs) = queue.next_round() {
                let Ok(mut guard) = shared.lock() else {
                    // An earlier panic left memory half-updated: refuse.
                    drop(jobs);
                    queue.abandon();
                    return;
                };
                commit_round(&mut guard, jobs, &store, &events, &metrics);
            }
        });
    }
}

/// The error of a caller whose transition was lost to an earlier failure.
fn broken() -> Error {
    Error::Broken(
        "the orchestrator's state was left inconsistent by an earlier failure; restart it".into(),
    )
}

/// Waves a rollout may start in one round (a wave whose gateways are all
/// away settles at once, and the next may too).
const MAX_WAVES_PER_ROUND: usize = 64;

/// Decides, completes and commits a round of queued transitions in one durable
/// transaction, then settles them in order: replies, sessions, deliveries,
/// watchers. A failed commit undoes them all first.
fn commit_round(
    s: &mut Shared,
    jobs: Vec<Job>,
    store: &Store,
    events: &watch::Sender<u64>,
    metrics: &crate::metrics::Metrics,
) {
    let now = now_ms();
    let mut staged: Vec<Staged> = jobs
        .into_iter()
        .filter_map(|job| job(s, store, now))
        .collect();
    // A staged rollout moves on with what this round changed: the next wave
    // starts (or the rollout stops) in the same commit as the report that
    // settled the last one.
    for _ in 0..MAX_WAVES_PER_ROUND {
        match s.core.advance_rollout(now) {
            Ok(Some(t)) => staged.push(Staged::complete(&mut s.core, t, |_, r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record the rollout's progress; it moves on with the next change");
                }
            })),
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "the rollout cannot move on");
                break;
            }
        }
    }
    if staged.is_empty() {
        return;
    }
    let mut changes = Changes::default();
    for st in &mut staged {
        changes.absorb(std::mem::take(&mut st.changes));
    }
    let _span = tracing::debug_span!("commit", transitions = staged.len()).entered();
    let committed = if changes.is_empty() {
        Ok(())
    } else {
        let r = store.commit(&changes).map_err(Arc::new);
        metrics.committed(staged.len(), r.is_ok());
        r
    };
    if committed.is_err() {
        for st in staged.iter_mut().rev() {
            s.core.undo(std::mem::take(&mut st.undo));
        }
    }
    let mut last_seq = None;
    for st in staged {
        (st.settle)(s, committed.clone());
        if committed.is_ok() {
            s.deliver(st.deliveries);
            last_seq = st.new_last_seq.or(last_seq);
        }
    }
    let head = s.core.head_number();
    s.head
        .send_if_modified(|h| std::mem::replace(h, head) != head);
    let offer = s.core.agent_offer().cloned();
    s.agent_offer.send_if_modified(|o| {
        let changed = *o != offer;
        *o = offer;
        changed
    });
    if let Some(last) = last_seq {
        events.send_replace(last);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use continuum_proto::v1::{ApplyRequest, ApplyResponse, Document};

    use super::*;
    use crate::core::{CoreConfig, Prepared};

    fn orchestrator(dir: &std::path::Path) -> Orchestrator {
        orchestrator_closing(dir).0
    }

    /// An orchestrator, and what resolves once its store's file is closed.
    fn orchestrator_closing(
        dir: &std::path::Path,
    ) -> (Orchestrator, tokio::sync::oneshot::Receiver<()>) {
        let mut store = Store::open(dir).unwrap();
        let closed = store.on_close();
        let store = Arc::new(store);
        let core = Core::from_snapshot(store.load().unwrap(), 0, CoreConfig::for_tests()).unwrap();
        (
            Orchestrator::new(
                core,
                store,
                CancellationToken::new(),
                TaskTracker::new(),
                Duration::from_secs(5),
            ),
            closed,
        )
    }

    fn model(version: usize) -> Prepared {
        let json = format!(
            r#"{{"name": "m", "subsystems": [{{"id": "s", "components": [
                {{"id": "gw", "kind": "gateway"}},
                {{"id": "web", "kind": "service", "resources": {{"container": {{"image": "web:{version}"}}}}}}],
              "links": [{{"kind": "hosting", "component": "web", "host": "gw"}}]}}]}}"#
        );
        let request = ApplyRequest {
            megamodel: Some(Document {
                name: "m.json".into(),
                json: json.into_bytes(),
            }),
            ..ApplyRequest::default()
        };
        Prepared::from_request(request, &Default::default()).unwrap()
    }

    /// Waits for `done`, or panics after 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::task::yield_now().await;
        }
    }

    /// Applies `versions` while a committer is at work (it waits for the lock
    /// the test holds, with a transition that writes nothing), so they all
    /// queue for its next round; then lets it go. Version 0 must be the head.
    // Holding the lock across the wait is the point: the applies must queue.
    #[allow(clippy::await_holding_lock)]
    async fn applied_together(
        o: &Orchestrator,
        versions: std::ops::Range<usize>,
    ) -> Vec<Result<ApplyResponse, Error>> {
        let n = versions.len();
        // The committer of what came before may not have looked for more
        // yet: were it still at work, `drained` below would hold before the
        // busy transition is even queued.
        until("the committer before is done", || o.queue.idle()).await;
        let guard = o.shared.lock().unwrap();
        let busy = {
            let o = o.clone();
            tokio::spawn(async move { o.transact(|c, _, now| c.apply(model(0), now)).await })
        };
        until("a committer waits for the lock", || o.queue.drained()).await;
        let tasks: Vec<_> = versions
            .map(|v| {
                let o = o.clone();
                tokio::spawn(
                    async move { o.transact(move |c, _, now| c.apply(model(v), now)).await },
                )
            })
            .collect();
        until("every apply queued", || o.queue.len() == n).await;
        drop(guard);
        assert!(busy.await.unwrap().unwrap().unchanged);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transitions_queued_during_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (o, closed) = orchestrator_closing(dir.path());
        o.transact(|c, _, now| c.apply(model(0), now))
            .await
            .unwrap();
        assert_eq!(o.metrics.commits(), 1);
        let replies = applied_together(&o, 1..9).await;
        let mut numbers: Vec<u64> = replies
            .into_iter()
            .map(|r| r.unwrap().revision.unwrap().number)
            .collect();
        numbers.sort_unstable();
        // Each decided on top of the one before, none answered before the commit.
        assert_eq!(numbers, (2..10).collect::<Vec<u64>>());
        assert_eq!(o.metrics.commits(), 2, "one durable commit for 8 applies");
        let history = o.store.history(100).unwrap();
        assert_eq!(history.len(), 9);
        assert_eq!(o.read(|c, _| Ok(c.head_number())).await.unwrap(), 9);
        // What the batch wrote reads back after a restart, head included.
        // The committer may still hold the store for a moment after the
        // replies went out (as a stopping process would): reopened once its
        // file is closed (not merely once the last reference is gone: the
        // file closes after that).
        drop(o);
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the committer never let go of the store")
            .ok();
        let o = orchestrator(dir.path());
        assert_eq!(o.read(|c, _| Ok(c.head_number())).await.unwrap(), 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_fails_every_transition_of_its_batch_and_undoes_them() {
        let dir = tempfile::tempdir().unwrap();
        let o = orchestrator(dir.path());
        o.transact(|c, _, now| c.apply(model(0), now))
            .await
            .unwrap();
        let before = o
            .read(|c, _| Ok((c.head_number(), c.last_seq(), format!("{:?}", c.status()))))
            .await
            .unwrap();
        o.store.fail_next_commit.store(true, Ordering::SeqCst);
        for r in applied_together(&o, 1..4).await {
            match r {
                Err(Error::Committing(e)) => assert!(e.to_string().contains("orchestrator.redb")),
                other => panic!("expected the commit's failure, got {other:?}"),
            }
        }
        let after = o
            .read(|c, _| Ok((c.head_number(), c.last_seq(), format!("{:?}", c.status()))))
            .await
            .unwrap();
        assert_eq!(after, before, "memory is as before the batch");
        assert_eq!(o.store.history(100).unwrap().len(), 1);
        // The next change goes on from there.
        let r = o
            .transact(|c, _, now| c.apply(model(7), now))
            .await
            .unwrap();
        assert_eq!(r.revision.unwrap().number, 2);
    }
}
