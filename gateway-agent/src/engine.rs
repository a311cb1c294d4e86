//! One reconcile pass, level-triggered: observe what runs, rebuild the current
//! model, diff it with the target, plan, execute, observe again, and say what
//! each component's status is. Nothing is remembered between passes but the
//! statuses' timestamps: reality says what is done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use continuum_models::{plan, DeploymentModel};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::exec::{execute, Outcome, Pass, Progress};
use crate::observe::{current_model, is_workload};
use crate::routing::Routing;
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::spec::LABEL_SUBSYSTEM;

/// A component's state, as the orchestrator shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Not deployed yet.
    Pending,
    /// Being deployed.
    Deploying,
    /// Runs as the target says.
    Running,
    /// A step of it failed (the reason says why).
    Failed,
    /// Nothing tells (the engine cannot be reached, or no driver runs it).
    Unknown,
}

/// What a component's status says: its state, why, and for the gateway
/// component the one-line state of its bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Where it is.
    pub state: State,
    /// Why it is in this state (set when it failed).
    pub reason: String,
    /// More about a component that works (the gateway's bridge: links,
    /// counts, losses).
    pub detail: String,
    /// The generation this status is about: the one the pass enforced, or for
    /// a failure that was rolled back, the generation that failed.
    pub generation: u64,
    /// Set when that failure was rolled back: the generation running instead.
    pub rolled_back_to: u64,
}

impl Status {
    /// A status in `state`, for `reason`.
    pub fn new(state: State, reason: impl Into<String>) -> Status {
        Status {
            state,
            reason: reason.into(),
            detail: String::new(),
            generation: 0,
            rolled_back_to: 0,
        }
    }

    /// The same status, about `generation`.
    pub fn at(mut self, generation: u64) -> Status {
        self.generation = generation;
        self
    }
}

/// What one pass found and did.
#[derive(Debug, Clone)]
pub struct PassReport {
    /// The generation the pass enforced.
    pub generation: u64,
    /// The current model after the pass.
    pub current: DeploymentModel,
    /// Steps planned (0: nothing to do: already converged).
    pub planned: usize,
    /// What the plan's execution left.
    pub outcome: Outcome,
    /// Every component with a lifecycle in the target or in what runs.
    pub statuses: BTreeMap<String, Status>,
}

impl PassReport {
    /// The pass ran the target fully.
    pub fn converged(&self) -> bool {
        self.outcome.failed.is_empty()
            && self.outcome.blocked.is_empty()
            && self.statuses.values().all(|s| s.state == State::Running)
    }
}

/// How subsystems are enacted: one set of settings, shared by the agent, every
/// pass and every step.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where build contexts named in models are found, when they are not
    /// pinned to blobs (or `blobs` is none: the gateway reads its own disk).
    pub context_root: std::path::PathBuf,
    /// The blobs pinned artefacts are fetched into.
    pub blobs: Option<Arc<crate::blobs::BlobCache>>,
    /// Build arguments every build gets unless the model sets them (the
    /// function host's image, `FUNCTION_HOST_IMAGE`).
    pub build_args: BTreeMap<String, String>,
    /// Environment every workload gets unless the model sets it (where the
    /// local broker is, `CONTINUUM_BROKER`).
    pub workload_env: BTreeMap<String, String>,
    /// Where the secrets models name are (one file per secret).
    pub secrets_dir: std::path::PathBuf,
    /// The longest a step may take.
    pub step_timeout: Duration,
    /// How long a started workload must keep running to count as started.
    pub settle: Duration,
    /// The bridge route steps act on.
    pub routing: Arc<dyn Routing>,
    /// The deploy agents that flash devices, when the gateway has them.
    pub deployers: Option<Arc<crate::deployers::Deployers>>,
    /// Device ports on this host that differ from the model's, by device id.
    pub device_ports: BTreeMap<String, std::path::PathBuf>,
    /// What passes, steps and flashes came to, for `/metrics`.
    pub metrics: Arc<crate::metrics::AgentMetrics>,
}

/// Runs one pass of `target`, subsystem `subsystem` at `generation`.
pub async fn reconcile<R: ContainerRuntime>(
    runtime: &Arc<R>,
    config: &Arc<EngineConfig>,
    subsystem: &str,
    generation: u64,
    target: &DeploymentModel,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<PassReport, RuntimeError> {
    let span = tracing::info_span!("reconcile", subsystem = %subsystem, generation);
    let started = std::time::Instant::now();
    let report = async {
        let workloads = runtime.list(LABEL_SUBSYSTEM, subsystem).await?;
        if let Some(d) = &config.deployers {
            d.sync(target, &config.device_ports).await;
        }
        let devices = devices_of(config);
        let current = current_model(target, &workloads, &config.routing.routes(), &devices);
        let steps = plan(&current, target);
        let planned = steps.len();
        let outcome = if steps.is_empty() {
            Outcome::default()
        } else {
            tracing::info!(steps = planned, "enacting");
            let pass = Pass {
                subsystem: subsystem.to_owned(),
                generation,
                config: Arc::clone(config),
            };
            execute(
                Arc::clone(runtime),
                pass,
                &steps,
                target,
                &workloads,
                progress,
            )
            .await
        };
        let after = if planned == 0 {
            workloads
        } else {
            // Networks the target no longer names go (those still in use stay).
            let keep: Vec<String> = target
                .components
                .iter()
                .filter_map(|c| c.spec.resources()?.container.as_ref()?.network.clone())
                .collect();
            if let Err(e) = runtime
                .prune_networks(LABEL_SUBSYSTEM, subsystem, &keep)
                .await
            {
                tracing::warn!(error = %e, "cannot remove unused networks");
            }
            runtime.list(LABEL_SUBSYSTEM, subsystem).await?
        };
        prune_routes(config.routing.as_ref(), target);
        let devices = devices_of(config);
        let current = current_model(target, &after, &config.routing.routes(), &devices);
        let mut statuses = BTreeMap::new();
        for c in target
            .components
            .iter()
            .filter(|c| c.kind().has_lifecycle())
        {
            let status = if let Some(reason) = outcome.failed.get(&c.id) {
                Status::new(State::Failed, reason.clone())
            } else if let Some(reason) = outcome.blocked.get(&c.id) {
                Status::new(State::Pending, format!("not deployed: {reason}"))
            } else if let Some(s) = crate::firmware::status(target, c, &devices.reports) {
                s
            } else if let Some(s) = crate::proxies::status(c, &devices) {
                s
            } else if !is_workload(c) {
                Status::new(State::Unknown, "no driver on this gateway runs it")
            } else if current.components.iter().any(|k| k == c) {
                Status::new(State::Running, crate::lifecycle::running(c))
            } else if c.as_function().is_some() {
                Status::new(State::Deploying, "function under deployment")
            } else {
                Status::new(State::Deploying, "")
            };
            statuses.insert(c.id.clone(), status.at(generation));
        }
        Ok(PassReport {
            generation,
            current,
            planned,
            outcome,
            statuses,
        })
    }
    .instrument(span)
    .await;
    config.metrics.pass(
        started.elapsed(),
        report.as_ref().ok().map(|r| !r.outcome.failed.is_empty()),
    );
    report
}

/// What the deploy agent last said of each device.
fn devices_of(config: &EngineConfig) -> crate::devices::DeviceView {
    config
        .deployers
        .as_ref()
        .map(|d| d.view())
        .unwrap_or_default()
}

/// Routes of components the target no longer has go (the plan removes those
/// of components it saw; these belong to ones that vanished unseen).
fn prune_routes(routing: &dyn Routing, target: &DeploymentModel) {
    let owners: std::collections::HashSet<&str> =
        target.components.iter().map(|c| c.id.as_str()).collect();
    for owner in routing.routes().keys() {
        if !owners.contains(owner.as_str()) {
            if let Err(e) = routing.set(owner, Vec::new()) {
                tracing::warn!(owner, error = %e, "cannot remove stale routes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::RunState;

    fn model(json: &str) -> DeploymentModel {
        let (m, problems) =
            continuum_models::parse::parse_deployment_model("t.json", json).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        m.canonical()
    }

    fn two_services(web_image: &str) -> DeploymentModel {
        model(&format!(
            r#"{{"id":"s","components":[
              {{"id":"gw","kind":"gateway"}},
              {{"id":"db","kind":"service","resources":{{"container":{{"image":"db:1"}}}}}},
              {{"id":"web","kind":"service","resources":{{"container":{{"image":"{web_image}","ports":[{{"container":80,"host":8080}}]}}}}}}],
              "links":[{{"kind":"hosting","component":"db","host":"gw"}},
                       {{"kind":"hosting","component":"web","host":"gw"}},
                       {{"kind":"communication","from":"web","to":"db"}}]}}"#
        ))
    }

    fn config() -> EngineConfig {
        EngineConfig {
            metrics: Default::default(),
            context_root: ".".into(),
            build_args: Default::default(),
            blobs: None,
            workload_env: Default::default(),
            secrets_dir: Default::default(),
            step_timeout: Duration::from_secs(5),
            settle: Duration::ZERO,
            routing: Arc::new(crate::routing::MemoryRouting::default()),
            deployers: None,
            device_ports: BTreeMap::new(),
        }
    }

    async fn pass(rt: &Arc<FakeRuntime>, generation: u64, target: &DeploymentModel) -> PassReport {
        let (tx, _rx) = mpsc::unbounded_channel();
        reconcile(rt, &Arc::new(config()), "s", generation, target, &tx)
            .await
            .unwrap()
    }

    fn fake() -> Arc<FakeRuntime> {
        let rt = Arc::new(FakeRuntime::new());
        for i in ["db:1", "web:1", "web:2"] {
            rt.add_image(i);
        }
        rt
    }

    #[tokio::test]
    async fn a_target_is_deployed_then_a_second_pass_does_nothing() {
        let rt = fake();
        let target = two_services("web:1");
        let r = pass(&rt, 1, &target).await;
        assert!(r.converged(), "{r:?}");
        assert_eq!(r.current, target);
        assert_eq!(rt.workloads().len(), 2);
        assert!(rt.workloads().iter().all(|w| w.state == RunState::Running));
        // db starts before web, which needs it.
        let calls = rt.calls();
        let pos = |s: &str| calls.iter().position(|c| c == s).unwrap();
        assert!(
            pos("start continuum-s_db") < pos("start continuum-s_web"),
            "{calls:?}"
        );
        let before = rt.calls().len();
        let r = pass(&rt, 1, &target).await;
        assert_eq!(r.planned, 0);
        assert_eq!(rt.calls().len(), before, "nothing touched");
    }

    #[tokio::test]
    async fn only_the_changed_component_is_replaced() {
        let rt = fake();
        pass(&rt, 1, &two_services("web:1")).await;
        let db_before = rt
            .workloads()
            .into_iter()
            .find(|w| w.name.ends_with("_db"))
            .unwrap()
            .id;
        let r = pass(&rt, 2, &two_services("web:2")).await;
        assert!(r.converged(), "{r:?}");
        let db_after = rt
            .workloads()
            .into_iter()
            .find(|w| w.name.ends_with("_db"))
            .unwrap()
            .id;
        assert_eq!(db_before, db_after, "db untouched");
        assert_eq!(rt.workloads().len(), 2);
    }

    #[tokio::test]
    async fn drift_is_repaired() {
        let rt = fake();
        let target = two_services("web:1");
        pass(&rt, 1, &target).await;
        let ws = rt.workloads();
        rt.kill(&ws[0].id);
        rt.delete(&ws[1].id);
        let r = pass(&rt, 1, &target).await;
        assert!(r.converged(), "{r:?}");
        assert_eq!(rt.workloads().len(), 2);
        assert!(rt.workloads().iter().all(|w| w.state == RunState::Running));
        assert_eq!(
            rt.workloads()[0].id,
            ws[0].id,
            "a stopped workload is restarted, not recreated"
        );
    }

    #[tokio::test]
    async fn a_failure_fails_its_component_and_blocks_what_needs_it() {
        let rt = fake();
        rt.crash_on_start("db:1");
        let r = pass(&rt, 1, &two_services("web:1")).await;
        assert!(!r.converged());
        assert_eq!(r.statuses["db"].state, State::Failed);
        assert!(
            r.statuses["db"]
                .reason
                .contains("exited at once with code 1"),
            "{:?}",
            r.statuses
        );
        assert!(r.statuses["db"].reason.contains("fatal: cannot start"));
        assert_eq!(r.statuses["web"].state, State::Pending);
        assert!(
            r.statuses["web"].reason.contains("`db` failed"),
            "{:?}",
            r.statuses
        );
        assert!(!rt.calls().iter().any(|c| c == "start continuum-s_web"));
    }

    #[tokio::test]
    async fn a_missing_image_is_a_failure_with_the_reason() {
        let rt = fake();
        let r = pass(&rt, 1, &two_services("web:9")).await;
        assert_eq!(r.statuses["web"].state, State::Failed);
        assert!(
            r.statuses["web"]
                .reason
                .contains("`web:9` is not on this gateway"),
            "{:?}",
            r.statuses
        );
        assert_eq!(r.statuses["db"].state, State::Running);
    }

    #[tokio::test]
    async fn removed_components_are_removed() {
        let rt = fake();
        pass(&rt, 1, &two_services("web:1")).await;
        let only_gw = model(r#"{"id":"s","components":[{"id":"gw","kind":"gateway"}]}"#);
        let r = pass(&rt, 2, &only_gw).await;
        assert!(r.converged(), "{r:?}");
        assert!(rt.workloads().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_an_error_not_a_status() {
        let rt = fake();
        rt.set_unreachable(true);
        let (tx, _rx) = mpsc::unbounded_channel();
        let e = reconcile(
            &rt,
            &Arc::new(config()),
            "s",
            1,
            &two_services("web:1"),
            &tx,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Unreachable(_)));
    }

    fn with_function(triggers: &str) -> DeploymentModel {
        model(&format!(
            r#"{{"id":"s","components":[
              {{"id":"gw","kind":"gateway","equipped_with_bridge":true,
                "routes":[{{"topic":"site/#","direction":"in","local_prefix":"l/"}}]}},
              {{"id":"f","kind":"function","triggers":[{triggers}],"outputs":["o"],
                "resources":{{"container":{{"image":"web:1"}}}}}}],
              "links":[{{"kind":"hosting","component":"f","host":"gw"}}]}}"#
        ))
    }

    #[tokio::test]
    async fn bridge_routes_follow_the_model_as_plan_steps() {
        let rt = fake();
        let routing = Arc::new(crate::routing::MemoryRouting::default());
        let mut cfg = config();
        cfg.routing = routing.clone();
        let cfg = Arc::new(cfg);
        let (tx, _rx) = mpsc::unbounded_channel();
        let target = with_function(r#""a/#""#);
        let r = reconcile(&rt, &cfg, "s", 1, &target, &tx).await.unwrap();
        assert!(r.converged(), "{r:?}");
        // The function's routes and the gateway's static one are carried, and
        // the current model says so.
        let live = routing.routes();
        let filters =
            |owner: &str| -> Vec<String> { live[owner].iter().map(|r| r.filter.clone()).collect() };
        assert_eq!(filters("f"), ["a/#", "/f/out/o"]);
        assert_eq!(filters("gw"), ["site/#"]);
        assert_eq!(r.current, target);
        // A new trigger re-routes the function in place: one route step, and
        // the container keeps running.
        let before = rt.workloads()[0].id.clone();
        let target2 = with_function(r#""a/#","b/+""#);
        let steps = plan(&r.current, &target2);
        let shown: Vec<String> = steps.steps.iter().map(|s| s.action.to_string()).collect();
        assert_eq!(shown, ["route f", "update f"]);
        let r = reconcile(&rt, &cfg, "s", 2, &target2, &tx).await.unwrap();
        assert!(r.converged(), "{r:?}");
        assert_eq!(routing.routes()["f"].len(), 3);
        assert_eq!(rt.workloads()[0].id, before);
        // A route lost (say, a bridge store restored from a backup) shows in
        // the current model, and the next pass carries it again.
        routing.set("f", Vec::new()).unwrap();
        let r = reconcile(&rt, &cfg, "s", 2, &target2, &tx).await.unwrap();
        assert_eq!(r.planned, 2, "update and route f");
        assert_eq!(routing.routes()["f"].len(), 3);
        // The function removed: its routes go with it; the gateway's stay.
        let only_gw = model(
            r#"{"id":"s","components":[{"id":"gw","kind":"gateway","equipped_with_bridge":true,
                "routes":[{"topic":"site/#","direction":"in","local_prefix":"l/"}]}]}"#,
        );
        let plan = plan(&r.current, &only_gw);
        assert!(
            plan.steps
                .iter()
                .any(|s| s.action.to_string() == "unroute f"),
            "{plan}"
        );
        let r = reconcile(&rt, &cfg, "s", 3, &only_gw, &tx).await.unwrap();
        assert!(r.converged(), "{r:?}");
        assert_eq!(routing.routes().keys().collect::<Vec<_>>(), ["gw"]);
        // Routes of an owner the target does not know are pruned.
        routing
            .set(
                "ghost",
                continuum_models::route::routes_of(&with_function("\"x\"").components[0]),
            )
            .unwrap();
        reconcile(&rt, &cfg, "s", 3, &only_gw, &tx).await.unwrap();
        assert!(!routing.routes().contains_key("ghost"));
    }
}
