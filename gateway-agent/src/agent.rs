//! The agent's loop: it accepts targets (persisting each before it is
//! acknowledged), reconciles on every new target and periodically, applies the
//! model's failure policy, and publishes what it observes for the link to report.
//! It needs the orchestrator for nothing: cut off, it keeps enforcing the last
//! target it accepted, across its own restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use continuum_models::{DeploymentModel, FailurePolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::{reconcile, EngineConfig, PassReport, State, Status};
use crate::exec::Progress;
use crate::routing::Routing;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::store::{Kept, LocalNote, Slot, Store};
use continuum_models::route::routes_of;

/// A target offered by the orchestrator (or the local API); `reply` says
/// whether it was accepted, and why not.
#[derive(Debug)]
pub struct Offer {
    pub generation: u64,
    pub subsystem: String,
    pub model: Vec<u8>,
    /// Set for a model applied through the gateway's local API.
    pub local: Option<LocalNote>,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What the agent knows now, for the link to report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The generation accepted last (persisted).
    pub accepted: u64,
    /// The generation whose model the last pass enforced.
    pub observed: u64,
    pub subsystem: String,
    /// The current model after the last pass (`None` before the first).
    pub current: Option<DeploymentModel>,
    pub statuses: BTreeMap<String, Status>,
    /// Set while the agent enforces a model applied locally.
    pub local: Option<(LocalNote, DeploymentModel)>,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// What runs the workloads (decides what can be admitted).
    pub driver: Driver,
    /// Where build contexts named in models are found.
    pub context_root: std::path::PathBuf,
    pub step_timeout: Duration,
    pub settle: Duration,
    /// Reconcile this often even when nothing is announced (drift repair).
    pub interval: Duration,
    /// The bridge's routes (`NoBridge` when the gateway runs none).
    pub routing: Arc<dyn Routing>,
}

/// Follows the engine's events for a subsystem's workloads, re-subscribing
/// after a failure (the engine restarting, say).
async fn watch_engine<R: ContainerRuntime>(
    runtime: Arc<R>,
    subsystem: String,
    changes: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::from_millis(200);
    loop {
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
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// The kinds of driver an agent can run workloads with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// Containers on the local Docker engine.
    Docker,
    /// Child processes running each container's `command` (no Docker).
    Process,
}

/// Checks that this gateway can run a model; the reason when it cannot.
pub fn admit(model: &DeploymentModel, driver: Driver, bridge: bool) -> Result<(), String> {
    if !bridge {
        if let Some(r) = model.components.iter().flat_map(routes_of).next() {
            return Err(format!(
                "`{}` needs the bridge ({r}), and this gateway agent runs none (started with --no-bridge)",
                r.owner
            ));
        }
    }
    for c in model.components.iter().filter(|c| c.kind().has_lifecycle()) {
        let resources = c.spec.resources();
        if resources.is_some_and(|r| r.flash.is_some()) {
            return Err(format!(
                "`{}` must be flashed onto a device, and this gateway has no deploy agent",
                c.id
            ));
        }
        if resources.is_some_and(|r| r.commands.is_some() && r.container.is_none()) {
            return Err(format!(
                "`{}` is installed by commands, which this gateway's drivers do not run",
                c.id
            ));
        }
        let Some(c_spec) = resources.and_then(|r| r.container.as_ref()) else {
            return Err(format!(
                "`{}` has nothing this gateway can run (no container)",
                c.id
            ));
        };
        if driver == Driver::Process {
            let refuse = |what: &str| {
                Err(format!(
                    "`{}` needs {what}, which the process driver of this gateway cannot provide",
                    c.id
                ))
            };
            if c_spec.build.is_some() {
                return refuse("an image build");
            }
            if c_spec.command.is_empty() {
                return refuse("an image's own entry point (give it a `command`)");
            }
            if !c_spec.mounts.is_empty() {
                return refuse("mounts");
            }
            if c_spec
                .network
                .as_deref()
                .is_some_and(crate::runtime::is_custom_network)
            {
                return refuse("a network of its own");
            }
        }
        for d in &c_spec.devices {
            if !Path::new(&d.host).exists() {
                return Err(format!(
                    "`{}` needs the device {}, which is not present on this gateway",
                    c.id, d.host
                ));
            }
        }
    }
    Ok(())
}

/// Reads an offered model.
fn read(offer: &Offer) -> Result<DeploymentModel, String> {
    let name = format!("target {} of `{}`", offer.generation, offer.subsystem);
    let text = std::str::from_utf8(&offer.model).map_err(|_| format!("the {name} is not UTF-8"))?;
    let (model, problems) =
        continuum_models::parse::parse_deployment_model(&name, text).map_err(|e| e.to_string())?;
    if !problems.is_empty() {
        return Err(continuum_models::Invalid::from_problems(&name, text, problems).to_string());
    }
    let problems = continuum_models::validate_deployment_model(&model);
    if !problems.is_empty() {
        return Err(continuum_models::Invalid::from_problems(&name, text, problems).to_string());
    }
    Ok(model.canonical())
}

#[derive(Debug)]
pub struct Agent<R> {
    runtime: Arc<R>,
    store: Store,
    config: AgentConfig,
    snapshot: watch::Sender<Snapshot>,
    progress: mpsc::UnboundedSender<Progress>,
    /// A generation that failed under the rollback policy: not retried until a
    /// newer target arrives.
    failed: Option<(u64, BTreeMap<String, String>)>,
}

impl<R: ContainerRuntime> Agent<R> {
    pub fn new(
        runtime: Arc<R>,
        store: Store,
        config: AgentConfig,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Result<(Agent<R>, watch::Receiver<Snapshot>), crate::store::StoreError> {
        let accepted = store.get(Slot::Accepted)?;
        let initial = Snapshot {
            accepted: accepted.as_ref().map_or(0, |k| k.generation),
            subsystem: accepted
                .as_ref()
                .map(|k| k.subsystem.clone())
                .unwrap_or_default(),
            local: accepted.and_then(|k| k.local.map(|n| (n, k.model))),
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
                failed: None,
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
            tokio::select! {
                () = shutdown.cancelled() => break,
                offer = offers.recv() => {
                    let Some(offer) = offer else { break };
                    self.offer(offer);
                    self.pass().await;
                    tick.reset();
                }
                Some(()) = changes.recv() => {
                    tracing::debug!("the engine reported a change");
                    self.pass().await;
                }
                _ = tick.tick() => self.pass().await,
            }
        }
        if let Some((_, task)) = watching {
            task.abort();
        }
    }

    fn offer(&mut self, offer: Offer) {
        let result = read(&offer)
            .and_then(|model| {
                admit(&model, self.config.driver, self.config.routing.enabled()).map(|()| model)
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
                    .map_err(|e| format!("cannot persist the target: {e}"))
            });
        let result = match result {
            Ok(kept) => {
                tracing::info!(
                    generation = offer.generation,
                    local = kept.local.is_some(),
                    "target accepted"
                );
                // A new target: a failed one is no longer held back.
                self.failed = None;
                self.snapshot.send_modify(|s| {
                    s.accepted = offer.generation;
                    s.subsystem = offer.subsystem.clone();
                    s.local = kept.local.clone().map(|n| (n, kept.model.clone()));
                });
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
    /// rollback policy, of the last good one).
    async fn pass(&mut self) {
        let accepted = match self.store.get(Slot::Accepted) {
            Ok(Some(k)) => k,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the accepted target");
                return;
            }
        };
        let good = self.store.get(Slot::Good).ok().flatten();
        let rolled_back = self
            .failed
            .as_ref()
            .filter(|(g, _)| *g == accepted.generation)
            .cloned();
        let enforce = match (&rolled_back, &good) {
            (Some(_), Some(good)) => good.clone(),
            _ => accepted.clone(),
        };
        let report = self.enforce(&enforce).await;
        let Some(mut report) = report else { return };
        if report.converged() {
            if enforce.generation == accepted.generation {
                self.failed = None;
            }
            if good
                .as_ref()
                .is_none_or(|g| g.generation != enforce.generation)
            {
                if let Err(e) = self.store.put(Slot::Good, &enforce) {
                    tracing::error!(error = %e, "cannot record the last good generation");
                }
            }
        } else if enforce.generation == accepted.generation
            && enforce.model.on_failure == Some(FailurePolicy::Rollback)
            && !report.outcome.failed.is_empty()
        {
            if let Some(good) = good.filter(|g| g.generation != accepted.generation) {
                tracing::warn!(
                    failed = accepted.generation,
                    to = good.generation,
                    "rolling back to the last good generation"
                );
                self.failed = Some((accepted.generation, report.outcome.failed.clone()));
                match self.enforce(&good).await {
                    Some(r) => report = r,
                    None => return,
                }
            }
        }
        // Under a rollback, say why on the components that failed.
        if let Some((generation, failed)) = &self.failed {
            for (component, reason) in failed {
                report.statuses.insert(
                    component.clone(),
                    Status {
                        state: State::Failed,
                        reason: format!(
                            "generation {generation} failed: {reason}; rolled back to generation {}",
                            report.generation
                        ),
                    },
                );
            }
        }
        self.publish(&accepted, report);
    }

    async fn enforce(&mut self, kept: &Kept) -> Option<PassReport> {
        let config = EngineConfig {
            subsystem: kept.subsystem.clone(),
            context_root: self.config.context_root.clone(),
            step_timeout: self.config.step_timeout,
            settle: self.config.settle,
            routing: Arc::clone(&self.config.routing),
        };
        match reconcile(
            &self.runtime,
            &config,
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
                (
                    c.id.clone(),
                    Status {
                        state: State::Unknown,
                        reason: e.to_string(),
                    },
                )
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
            self.config.routing.health(),
            accepted
                .model
                .components
                .iter()
                .find(|c| c.kind() == continuum_models::Kind::Gateway),
        ) {
            statuses.insert(gw.id.clone(), health);
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
    use crate::runtime::fake::FakeRuntime;

    const MODEL: &str = r#"{"id":"s","components":[
        {"id":"gw","kind":"gateway"},
        {"id":"web","kind":"service","resources":{"container":{"image":"web:1"}}}],
        "links":[{"kind":"hosting","component":"web","host":"gw"}]}"#;

    fn agent(rt: Arc<FakeRuntime>, dir: &Path) -> (Agent<FakeRuntime>, watch::Receiver<Snapshot>) {
        let (progress, _rx) = mpsc::unbounded_channel();
        let config = AgentConfig {
            driver: Driver::Docker,
            context_root: dir.to_owned(),
            step_timeout: Duration::from_secs(5),
            settle: Duration::ZERO,
            interval: Duration::from_secs(60),
            routing: Arc::new(crate::routing::MemoryRouting::default()),
        };
        Agent::new(rt, Store::open(dir).unwrap(), config, progress).unwrap()
    }

    fn offer(generation: u64, model: &str) -> (Offer, oneshot::Receiver<Result<(), String>>) {
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
        assert!(answer.await.unwrap().unwrap_err().contains("nope"));
        let flash = r#"{"id":"s","components":[
            {"id":"gw","kind":"gateway"},{"id":"uno","kind":"device","board":"uno"},
            {"id":"fw","kind":"firmware","resources":{"flash":{"artefact":"a.hex"}}}],
            "links":[{"kind":"hosting","component":"fw","host":"uno"},
                     {"kind":"communication","from":"gw","to":"uno","physical":true}]}"#;
        let (o, answer) = offer(2, flash);
        a.offer(o);
        let reason = answer.await.unwrap().unwrap_err();
        assert!(reason.contains("no deploy agent"), "{reason}");
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
        let why = admit(&m, Driver::Docker, false).unwrap_err();
        assert!(
            why.contains("`f` needs the bridge") && why.contains("--no-bridge"),
            "{why}"
        );
        assert_eq!(admit(&m, Driver::Docker, true), Ok(()));
    }
}
