//! The agent's loop: it accepts targets (persisting each before it is
//! acknowledged), reconciles on every new target and periodically, applies the
//! model's failure policy, and publishes what it observes for the link to report.
//! It needs the orchestrator for nothing: cut off, it keeps enforcing the last
//! target it accepted, across its own restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use continuum_models::{DeploymentModel, FailurePolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::{admit_with, Refusal};
use crate::backoff::Backoff;
use crate::engine::{reconcile, EngineConfig, PassReport, State, Status};
use crate::exec::Progress;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::store::{Kept, LocalNote, Slot, Store};

/// A target offered by the orchestrator (or the local API); `reply` says
/// whether it was accepted, and why not.
#[derive(Debug)]
pub struct Offer {
    /// The generation offered.
    pub generation: u64,
    /// The subsystem it is the model of.
    pub subsystem: String,
    /// The model, canonical JSON.
    pub model: Vec<u8>,
    /// Set for a model applied through the gateway's local API.
    pub local: Option<LocalNote>,
    /// Where the agent answers: accepted, or refused and why.
    pub reply: oneshot::Sender<Result<(), Refusal>>,
}

/// What the agent knows now, for the link to report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The generation accepted last (persisted).
    pub accepted: u64,
    /// The generation whose model the last pass enforced.
    pub observed: u64,
    /// The subsystem the accepted target is the model of.
    pub subsystem: String,
    /// The current model after the last pass (`None` before the first).
    pub current: Option<DeploymentModel>,
    /// The last status of each component.
    pub statuses: BTreeMap<String, Status>,
    /// Set while the agent enforces a model applied locally.
    pub local: Option<(LocalNote, DeploymentModel)>,
}

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// What runs the workloads (decides what can be admitted).
    pub driver: Driver,
    /// Reconcile this often even when nothing is announced (drift repair).
    pub interval: Duration,
    /// How every pass enacts (its routing is `NoBridge` when the gateway runs
    /// no bridge).
    pub engine: Arc<EngineConfig>,
    /// Whether the agent may act (another agent may hold its id); always
    /// when none.
    pub fencing: Option<Arc<crate::fence::Fencing>>,
    /// What workloads may reach of this host (checked at admission).
    pub policy: Arc<continuum_models::policy::Policy>,
    /// Take a target older than the one held (after an orchestrator was
    /// restored from an older backup); refused as a replay otherwise.
    pub accept_older: bool,
}

/// Follows the engine's events for a subsystem's workloads, re-subscribing
/// after a failure (the engine restarting, say).
async fn watch_engine<R: ContainerRuntime>(
    runtime: Arc<R>,
    subsystem: String,
    changes: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let watched = tokio::time::Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = runtime.watch(crate::spec::LABEL_SUBSYSTEM, &subsystem, changes.clone()) => r,
        };
        if changes.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "engine events unavailable; retrying");
        }
        // A watch that lasted was a success: the next failure waits little.
        if watched.elapsed() >= Duration::from_secs(10) {
            backoff.reset();
        }
        if !backoff.pause(shutdown.cancelled()).await {
            return;
        }
    }
}

/// The kinds of driver an agent can run workloads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// Containers on the local Docker engine.
    Docker,
    /// Child processes running each container's `command` (no Docker).
    Process,
    /// A simulated engine (`continuum gateway sim`): nothing runs.
    #[value(skip)]
    Sim,
}

/// Reads an offered model.
fn read(offer: &Offer) -> Result<DeploymentModel, Refusal> {
    let name = format!("target {} of `{}`", offer.generation, offer.subsystem);
    let invalid = |text: &str, problems| {
        Refusal::Invalid(
            continuum_models::Invalid::from_problems(&name, text, problems).to_string(),
        )
    };
    let text = std::str::from_utf8(&offer.model)
        .map_err(|_| Refusal::Invalid(format!("the {name} is not UTF-8")))?;
    let (model, problems) = continuum_models::parse::parse_deployment_model(&name, text)
        .map_err(|e| Refusal::Invalid(e.to_string()))?;
    if !problems.is_empty() {
        return Err(invalid(text, problems));
    }
    let problems = continuum_models::validate_deployment_model(&model);
    if !problems.is_empty() {
        return Err(invalid(text, problems));
    }
    Ok(model.canonical())
}

/// How soon the next pass may run. After a pass in which something failed,
/// engine events and the periodic tick wait a growing delay: a component that
/// crashes as soon as it starts is not recreated in a tight loop (each attempt
/// costs a container and an event at the orchestrator). A new target, or a
/// pass that fails nothing, lifts the wait.
#[derive(Debug)]
struct Pacing {
    retry: Backoff,
    /// No pass before this, unless a new target arrives.
    hold: Option<tokio::time::Instant>,
    /// A pass was asked for during the hold: it runs when the hold ends.
    deferred: bool,
}

impl Pacing {
    fn new() -> Pacing {
        Pacing {
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            hold: None,
            deferred: false,
        }
    }

    fn reset(&mut self) {
        self.retry.reset();
        self.hold = None;
        self.deferred = false;
    }

    /// Whether a pass may run now; if not, one runs when the hold ends.
    fn may_pass(&mut self) -> bool {
        match self.hold {
            Some(h) if h > tokio::time::Instant::now() => {
                self.deferred = true;
                false
            }
            _ => true,
        }
    }

    /// When a deferred pass is due.
    fn resume_at(&self) -> Option<tokio::time::Instant> {
        self.hold.filter(|_| self.deferred)
    }

    fn after(&mut self, failed: bool) {
        self.deferred = false;
        if failed {
            self.hold = Some(tokio::time::Instant::now() + self.retry.next_delay());
        } else {
            self.reset();
        }
    }
}

/// What the agent enforces of the target it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcing {
    /// The accepted target, as it is.
    Accepted,
    /// Generation `from` failed under the rollback policy: the last good
    /// generation `to` runs instead, and `from` is not retried until a newer
    /// target arrives.
    RolledBack {
        /// The generation that failed.
        from: u64,
        /// The generation that runs instead.
        to: u64,
        /// The components that failed, with why.
        failed: BTreeMap<String, String>,
    },
}

/// The agent: accepts targets and keeps reality equal to the one it enforces.
#[derive(Debug)]
pub struct Agent<R> {
    runtime: Arc<R>,
    store: Store,
    config: AgentConfig,
    snapshot: watch::Sender<Snapshot>,
    progress: mpsc::UnboundedSender<Progress>,
    /// The accepted target, kept in memory; every change is written to the
    /// store first (it is read from disk only at start).
    accepted: Option<Arc<Kept>>,
    /// The last generation that fully ran, likewise.
    good: Option<Arc<Kept>>,
    enforcing: Enforcing,
}

impl<R: ContainerRuntime> Agent<R> {
    /// An agent over `runtime`, with the targets kept in `store`.
    pub fn new(
        runtime: Arc<R>,
        store: Store,
        config: AgentConfig,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Result<(Agent<R>, watch::Receiver<Snapshot>), crate::store::StoreError> {
        let accepted = store.get(Slot::Accepted)?;
        let good = store.get(Slot::Good)?.map(Arc::new);
        let initial = Snapshot {
            accepted: accepted.as_ref().map_or(0, |k| k.generation),
            subsystem: accepted
                .as_ref()
                .map(|k| k.subsystem.clone())
                .unwrap_or_default(),
            local: accepted
                .as_ref()
                .and_then(|k| k.local.clone().map(|n| (n, k.model.clone()))),
            ..Snapshot::default()
        };
        let (snapshot, rx) = watch::channel(initial);
        Ok((
            Agent {
                runtime,
                store,
                config,
                snapshot,
                progress,
                accepted: accepted.map(Arc::new),
                good,
                enforcing: Enforcing::Accepted,
            },
            rx,
        ))
    }

    /// Runs until `shutdown`: a pass on every new target, on every change the
    /// engine reports for this subsystem's workloads, and periodically.
    pub async fn run(mut self, mut offers: mpsc::Receiver<Offer>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (changes_tx, mut changes) = mpsc::channel::<()>(1);
        let mut watching: Option<(String, tokio::task::JoinHandle<()>)> = None;
        let mut pacing = Pacing::new();
        let mut fence = self.config.fencing.as_ref().map(|f| f.subscribe());
        loop {
            let subsystem = self.snapshot.borrow().subsystem.clone();
            if !subsystem.is_empty() && watching.as_ref().is_none_or(|(s, _)| *s != subsystem) {
                if let Some((_, task)) = watching.take() {
                    task.abort();
                }
                let task = tokio::spawn(watch_engine(
                    Arc::clone(&self.runtime),
                    subsystem.clone(),
                    changes_tx.clone(),
                    shutdown.clone(),
                ));
                watching = Some((subsystem, task));
            }
            let resume = pacing.resume_at();
            tokio::select! {
                () = shutdown.cancelled() => break,
                offer = offers.recv() => {
                    let Some(offer) = offer else { break };
                    self.offer(offer);
                    // A new target is tried at once, whatever failed before.
                    pacing.reset();
                    let failed = self.pass().await;
                    pacing.after(failed);
                    tick.reset();
                }
                // Admitted again: act on the target at once.
                Ok(()) = async { fence.as_mut().expect("guarded").changed().await }, if fence.is_some() => {
                    let open = fence.as_mut().is_some_and(|f| *f.borrow_and_update() == crate::fence::Fence::Open);
                    if open {
                        pacing.reset();
                        let failed = self.pass().await;
                        pacing.after(failed);
                    }
                }
                Some(()) = changes.recv() => {
                    tracing::debug!("the engine reported a change");
                    if pacing.may_pass() {
                        let failed = self.pass().await;
                        pacing.after(failed);
                    }
                }
                _ = tick.tick() => {
                    if pacing.may_pass() {
                        let failed = self.pass().await;
                        pacing.after(failed);
                    }
                }
                () = tokio::time::sleep_until(resume.unwrap_or_else(tokio::time::Instant::now)), if resume.is_some() => {
                    let failed = self.pass().await;
                    pacing.after(failed);
                }
            }
        }
        if let Some((_, task)) = watching {
            task.abort();
        }
    }

    /// Refuses an orchestrator's target older than the one held for the
    /// same subsystem (a gateway moved to another subsystem starts afresh).
    fn replayed(&self, offer: &Offer) -> Result<(), Refusal> {
        let Some(held) = self.accepted.as_deref() else {
            return Ok(());
        };
        if self.config.accept_older
            || offer.local.is_some()
            || held.local.is_some()
            || held.subsystem != offer.subsystem
            || offer.generation >= held.generation
        {
            return Ok(());
        }
        Err(Refusal::Older {
            subsystem: offer.subsystem.clone(),
            offered: offer.generation,
            holds: held.generation,
        })
    }

    fn offer(&mut self, offer: Offer) {
        let result = self
            .replayed(&offer)
            .and_then(|()| read(&offer))
            .and_then(|model| {
                admit_with(
                    &model,
                    self.config.driver,
                    self.config.engine.routing.enabled(),
                    self.config.engine.deployers.is_some(),
                    &self.config.policy,
                )
                .map(|()| model)
            })
            .and_then(|model| {
                let kept = Kept {
                    generation: offer.generation,
                    subsystem: offer.subsystem.clone(),
                    model,
                    local: offer.local.clone(),
                };
                self.store
                    .put(Slot::Accepted, &kept)
                    .map(|()| kept)
                    .map_err(|e| Refusal::Store(e.to_string()))
            });
        let result = match result {
            Ok(kept) => {
                tracing::info!(
                    generation = offer.generation,
                    local = kept.local.is_some(),
                    "target accepted"
                );
                // A new target: a failed one is no longer held back.
                self.enforcing = Enforcing::Accepted;
                self.snapshot.send_modify(|s| {
                    s.accepted = offer.generation;
                    s.subsystem = offer.subsystem.clone();
                    s.local = kept.local.clone().map(|n| (n, kept.model.clone()));
                });
                self.accepted = Some(Arc::new(kept));
                Ok(())
            }
            Err(reason) => Err(reason),
        };
        match &result {
            Ok(()) => {}
            Err(reason) => {
                tracing::warn!(generation = offer.generation, %reason, "target refused")
            }
        }
        let _ = offer.reply.send(result);
    }

    /// One reconcile of the accepted target (or, after a failure under the
    /// rollback policy, of the last good one). True when something failed (a
    /// step, or the engine itself).
    async fn pass(&mut self) -> bool {
        let Some(accepted) = self.accepted.clone() else {
            return false;
        };
        if let Some(why) = self.config.fencing.as_ref().and_then(|f| f.holds()) {
            tracing::debug!(%why, "not acting");
            return false;
        }
        let enforce = match (&self.enforcing, &self.good) {
            (Enforcing::RolledBack { .. }, Some(good)) => Arc::clone(good),
            _ => Arc::clone(&accepted),
        };
        let report = self.enforce(&enforce).await;
        let Some(mut report) = report else {
            return true;
        };
        if report.converged() {
            if enforce.generation == accepted.generation {
                self.enforcing = Enforcing::Accepted;
            }
            if self
                .good
                .as_ref()
                .is_none_or(|g| g.generation != enforce.generation)
            {
                match self.store.put(Slot::Good, &enforce) {
                    Ok(()) => self.good = Some(Arc::clone(&enforce)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot record the last good generation")
                    }
                }
            }
        } else if enforce.generation == accepted.generation
            && enforce.model.on_failure == Some(FailurePolicy::Rollback)
            && !report.outcome.failed.is_empty()
        {
            if let Some(good) = self
                .good
                .clone()
                .filter(|g| g.generation != accepted.generation)
            {
                tracing::warn!(
                    failed = accepted.generation,
                    to = good.generation,
                    "rolling back to the last good generation"
                );
                self.enforcing = Enforcing::RolledBack {
                    from: accepted.generation,
                    to: good.generation,
                    failed: report.outcome.failed.clone(),
                };
                match self.enforce(&good).await {
                    Some(r) => report = r,
                    None => return true,
                }
            }
        }
        // Under a rollback, say why on the components that failed.
        if let Enforcing::RolledBack {
            from: generation,
            failed,
            ..
        } = &self.enforcing
        {
            for (component, reason) in failed {
                let mut status = Status::new(
                    State::Failed,
                    format!(
                        "generation {generation} failed: {reason}; rolled back to generation {}",
                        report.generation
                    ),
                )
                .at(*generation);
                status.rolled_back_to = report.generation;
                report.statuses.insert(component.clone(), status);
            }
        }
        let failed = !report.outcome.failed.is_empty();
        self.publish(&accepted, report);
        failed
    }

    async fn enforce(&mut self, kept: &Kept) -> Option<PassReport> {
        // Artefacts first: a step that needs one that cannot be had fails
        // with the reason, the others go on.
        if let Some(blobs) = &self.config.engine.blobs {
            blobs.ensure(&kept.model).await;
        }
        match reconcile(
            &self.runtime,
            &self.config.engine,
            &kept.subsystem,
            kept.generation,
            &kept.model,
            &self.progress,
        )
        .await
        {
            Ok(report) => Some(report),
            Err(e) => {
                self.unreachable(kept, &e);
                None
            }
        }
    }

    /// The engine cannot be reached: nothing is known to run.
    fn unreachable(&mut self, kept: &Kept, e: &RuntimeError) {
        tracing::warn!(error = %e, "cannot observe the container engine");
        let statuses = kept
            .model
            .components
            .iter()
            .filter(|c| c.kind().has_lifecycle())
            .map(|c| {
                let status = Status::new(State::Unknown, e.to_string()).at(kept.generation);
                (c.id.clone(), status)
            })
            .collect();
        let current = DeploymentModel {
            components: kept
                .model
                .components
                .iter()
                .filter(|c| !c.kind().has_lifecycle())
                .cloned()
                .collect(),
            ..kept.model.clone()
        };
        self.snapshot.send_if_modified(|s| {
            let next = Snapshot {
                accepted: s.accepted,
                observed: s.observed,
                subsystem: kept.subsystem.clone(),
                current: Some(current.canonical()),
                statuses,
                local: s.local.clone(),
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    }

    fn publish(&mut self, accepted: &Kept, report: PassReport) {
        tracing::debug!(
            generation = report.generation,
            planned = report.planned,
            "pass done"
        );
        let mut statuses = report.statuses;
        // The bridge's state shows on the gateway component.
        if let (Some(health), Some(gw)) = (
            self.config.engine.routing.health(),
            accepted
                .model
                .components
                .iter()
                .find(|c| c.kind() == continuum_models::Kind::Gateway),
        ) {
            statuses.insert(gw.id.clone(), health.at(report.generation));
        }
        self.snapshot.send_if_modified(|s| {
            let next = Snapshot {
                accepted: accepted.generation,
                observed: report.generation,
                subsystem: accepted.subsystem.clone(),
                current: Some(report.current),
                statuses,
                local: accepted.local.clone().map(|n| (n, accepted.model.clone())),
            };
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::admit;
    use crate::runtime::fake::FakeRuntime;
    use std::path::Path;

    const MODEL: &str = r#"{"id":"s","components":[
        {"id":"gw","kind":"gateway"},
        {"id":"web","kind":"service","resources":{"container":{"image":"web:1"}}}],
        "links":[{"kind":"hosting","component":"web","host":"gw"}]}"#;

    fn agent(rt: Arc<FakeRuntime>, dir: &Path) -> (Agent<FakeRuntime>, watch::Receiver<Snapshot>) {
        let (progress, _rx) = mpsc::unbounded_channel();
        let config = AgentConfig {
            fencing: None,
            accept_older: false,
            policy: Arc::default(),
            driver: Driver::Docker,
            interval: Duration::from_secs(60),
            engine: Arc::new(EngineConfig {
                metrics: Default::default(),
                context_root: dir.to_owned(),
                build_args: Default::default(),
                blobs: None,
                workload_env: Default::default(),
                secrets_dir: dir.join("secrets"),
                step_timeout: Duration::from_secs(5),
                settle: Duration::ZERO,
                routing: Arc::new(crate::routing::MemoryRouting::default()),
                deployers: None,
                device_ports: Default::default(),
            }),
        };
        Agent::new(rt, Store::open(dir).unwrap(), config, progress).unwrap()
    }

    fn offer(generation: u64, model: &str) -> (Offer, oneshot::Receiver<Result<(), Refusal>>) {
        let (reply, answer) = oneshot::channel();
        let offer = Offer {
            generation,
            subsystem: "s".into(),
            model: model.as_bytes().to_vec(),
            local: None,
            reply,
        };
        (offer, answer)
    }

    #[tokio::test]
    async fn a_failed_generation_rolls_back_explicitly_until_a_newer_target() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("web:1");
        let (mut a, snap) = agent(Arc::clone(&rt), dir.path());
        let model = |image: &str| {
            MODEL
                .replace(r#""id":"s","#, r#""id":"s","on_failure":"rollback","#)
                .replace("web:1", image)
        };
        let (o, _) = offer(1, &model("web:1"));
        a.offer(o);
        a.pass().await;
        assert_eq!(a.enforcing, Enforcing::Accepted);
        // Generation 2 names an image the engine lacks: it fails and 1 runs again.
        let (o, _) = offer(2, &model("web:missing"));
        a.offer(o);
        a.pass().await;
        let Enforcing::RolledBack { from, to, failed } = &a.enforcing else {
            panic!("{:?}", a.enforcing);
        };
        assert_eq!((*from, *to), (2, 1));
        assert!(failed.contains_key("web"), "{failed:?}");
        let s = snap.borrow().clone();
        assert_eq!((s.accepted, s.observed), (2, 1));
        assert_eq!(s.statuses["web"].state, State::Failed);
        assert_eq!(
            s.statuses["web"].generation, 2,
            "the failure is generation 2's"
        );
        assert_eq!(
            s.statuses["web"].rolled_back_to, 1,
            "the status says what runs instead"
        );
        // It stays rolled back across passes, until a newer target arrives.
        a.pass().await;
        assert!(matches!(a.enforcing, Enforcing::RolledBack { from: 2, .. }));
        let (o, _) = offer(3, &model("web:1"));
        a.offer(o);
        a.pass().await;
        assert_eq!(a.enforcing, Enforcing::Accepted);
        assert_eq!(snap.borrow().observed, 3);
    }

    #[tokio::test]
    async fn a_replayed_older_target_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("web:1");
        let (mut a, snap) = agent(Arc::clone(&rt), dir.path());
        let (o, answer) = offer(5, MODEL);
        a.offer(o);
        answer.await.unwrap().unwrap();
        let (o, answer) = offer(3, &MODEL.replace("web:1", "web:old"));
        a.offer(o);
        let refused = answer.await.unwrap().unwrap_err().to_string();
        assert!(
            refused.contains("generation 3 of `s` is older than generation 5"),
            "{refused}"
        );
        assert_eq!(snap.borrow().accepted, 5);
        assert_eq!(a.accepted.as_ref().unwrap().generation, 5);
        // The same generation again, or a newer one, is taken.
        let (o, answer) = offer(5, MODEL);
        a.offer(o);
        answer.await.unwrap().unwrap();
        // Told to, it takes an older one (an orchestrator restored from a backup).
        a.config.accept_older = true;
        let (o, answer) = offer(3, MODEL);
        a.offer(o);
        answer.await.unwrap().unwrap();
        assert_eq!(snap.borrow().accepted, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failed_pass_engine_events_wait_a_growing_delay() {
        let mut p = Pacing::new();
        assert!(p.may_pass());
        p.after(true);
        // An engine event during the hold defers the pass to the hold's end.
        assert!(!p.may_pass());
        let first = p.resume_at().expect("a deferred pass is due");
        tokio::time::advance(first - tokio::time::Instant::now()).await;
        assert!(p.may_pass());
        p.after(true);
        let second = p.hold.unwrap() - tokio::time::Instant::now();
        assert!(second >= Duration::from_secs(1), "{second:?}");
        // A pass that fails nothing, or a new target, lifts the hold.
        p.after(false);
        assert!(p.may_pass() && p.resume_at().is_none());
        p.after(true);
        p.reset();
        assert!(p.may_pass());
    }

    #[tokio::test]
    async fn an_unreachable_engine_reports_unknown_and_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("web:1");
        let (mut a, snap) = agent(Arc::clone(&rt), dir.path());
        let (o, answer) = offer(1, MODEL);
        a.offer(o);
        assert_eq!(answer.await.unwrap(), Ok(()));
        a.pass().await;
        assert_eq!(snap.borrow().statuses["web"].state, State::Running);
        rt.set_unreachable(true);
        a.pass().await;
        let s = snap.borrow().clone();
        assert_eq!(s.statuses["web"].state, State::Unknown);
        assert!(
            s.statuses["web"].reason.contains("unreachable"),
            "{:?}",
            s.statuses
        );
        let current = s.current.unwrap();
        assert!(
            current.component("web").is_none(),
            "not reported as running"
        );
        assert!(current.component("gw").is_some());
    }

    #[tokio::test]
    async fn a_target_is_persisted_before_it_is_acknowledged_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.add_image("web:1");
        {
            let (mut a, _snap) = agent(Arc::clone(&rt), dir.path());
            let (o, answer) = offer(7, MODEL);
            a.offer(o);
            assert_eq!(answer.await.unwrap(), Ok(()));
        }
        let (mut a, snap) = agent(Arc::clone(&rt), dir.path());
        assert_eq!(snap.borrow().accepted, 7);
        a.pass().await;
        assert_eq!(snap.borrow().observed, 7);
        assert_eq!(rt.workloads().len(), 1);
    }

    #[tokio::test]
    async fn an_invalid_or_unrunnable_target_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        let (mut a, snap) = agent(rt, dir.path());
        let (o, answer) = offer(1, r#"{"id":"s","components":[{"id":"x","kind":"nope"}]}"#);
        a.offer(o);
        let refused = answer.await.unwrap().unwrap_err();
        assert!(
            matches!(&refused, Refusal::Invalid(r) if r.contains("nope")),
            "{refused}"
        );
        let flash = r#"{"id":"s","components":[
            {"id":"gw","kind":"gateway"},{"id":"uno","kind":"device","board":"uno"},
            {"id":"fw","kind":"firmware","resources":{"flash":{"artefact":"a.hex"}}}],
            "links":[{"kind":"hosting","component":"fw","host":"uno"},
                     {"kind":"communication","from":"gw","to":"uno","physical":true}]}"#;
        let (o, answer) = offer(2, flash);
        a.offer(o);
        let refused = answer.await.unwrap().unwrap_err();
        assert_eq!(refused, Refusal::NoDeployAgent("fw".into()));
        assert!(refused.to_string().contains("no deploy agent"), "{refused}");
        assert_eq!(snap.borrow().accepted, 0);
        assert!(a.store.get(Slot::Accepted).unwrap().is_none());
    }

    #[test]
    fn a_model_that_needs_the_bridge_is_refused_without_one() {
        let (m, _) = continuum_models::parse::parse_deployment_model(
            "t.json",
            r#"{"id":"s","components":[{"id":"gw","kind":"gateway"},
                {"id":"f","kind":"function","triggers":["a/#"],
                 "resources":{"container":{"image":"f:1"}}}],
                "links":[{"kind":"hosting","component":"f","host":"gw"}]}"#,
        )
        .unwrap();
        let why = admit(&m, Driver::Docker, false, false).unwrap_err();
        assert!(matches!(&why, Refusal::NoBridge { owner, .. } if owner == "f"));
        let why = why.to_string();
        assert!(
            why.contains("`f` needs the bridge") && why.contains("--no-bridge"),
            "{why}"
        );
        assert_eq!(admit(&m, Driver::Docker, true, false), Ok(()));
    }

    #[test]
    fn the_gateway_enforces_its_own_workload_policy() {
        let m = continuum_models::load::load_deployment_model(
            "t.json",
            r#"{"id":"s","components":[{"id":"gw","kind":"gateway"},
                {"id":"svc","kind":"service","resources":{"container":{"image":"x:1",
                 "network":"host","mounts":[{"source":"/etc","target":"/e"}]}}}],
                "links":[{"kind":"hosting","component":"svc","host":"gw"}]}"#,
        )
        .unwrap();
        let why = admit(&m, Driver::Docker, true, false)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("`svc` of subsystem `s`: resources.container.mounts[0].source `/etc` needs rule `system-paths`"),
            "{why}"
        );
        let strict = continuum_models::policy::Policy::from_json(
            r#"{"default": {"allow": ["system-paths"]}}"#,
        )
        .unwrap();
        let why = admit_with(&m, Driver::Docker, true, false, &strict)
            .unwrap_err()
            .to_string();
        assert!(why.contains("`host` needs rule `host-network`"), "{why}");
    }
}
