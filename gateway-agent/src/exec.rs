//! Executing a plan: steps run concurrently as soon as the steps they follow
//! are done, each with a timeout; a failed step fails its component, and every
//! step that follows it (transitively) is skipped, never left hanging.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use continuum_models::route::routes_of;
use continuum_models::{Action, Component, DeploymentModel, Plan, Step};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::engine::EngineConfig;
use crate::observe::is_workload;
use crate::routing::RoutingError;
use crate::runtime::{
    is_custom_network, ContainerRuntime, ContextPart, ImageSource, RunState, RuntimeError,
    Workload, WorkloadSpec,
};
use crate::spec::{
    hex, sha256_hex, spec_hash, LABEL_COMPONENT, LABEL_DEFINITION, LABEL_GENERATION,
    LABEL_SPEC_HASH, LABEL_SUBSYSTEM,
};

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The container engine (or the process supervisor) refused or failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The bridge could not carry the component's routes.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The plan names a component the target lacks (a bug in planning).
    #[error("`{0}` is not in the target")]
    NotInTarget(String),
    /// A secret the component names cannot be given.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// A failure whose message quoted a secret, which is replaced by its name.
    #[error("{0}")]
    Redacted(String),
    /// A workload component without a container resource.
    #[error("`{0}` has no container resource")]
    NoContainer(String),
    /// A container resource with neither an image nor a build.
    #[error("`{0}` names neither an image nor a build")]
    NoImage(String),
    /// A path of the model leads outside the directory it is read from.
    #[error("`{component}`: `{path}` is refused: {why}")]
    OutsideRoot {
        /// The component.
        component: String,
        /// The path as the model gives it.
        path: String,
        /// How it leads out.
        why: String,
    },
    /// An artefact the component is pinned to is not in the gateway's cache.
    #[error(transparent)]
    Artefact(#[from] crate::blobs::BlobError),
    /// The build context cannot be read.
    #[error("cannot read the build context {path}: {cause}")]
    Context {
        /// The directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Nothing to start: the workload is gone.
    #[error("no workload of `{0}` to start")]
    NoWorkload(String),
    /// Started, and exited (or restarted) within the settle window.
    #[error("exited at once with code {}{}", code.map_or("unknown".to_owned(), |c| c.to_string()), if logs.is_empty() { String::new() } else { format!(": {logs}") })]
    ExitedAtOnce {
        /// Its exit code, when known.
        code: Option<i64>,
        /// The last lines it wrote.
        logs: String,
    },
    /// Started, and in a state that is not running.
    #[error("did not start: {0}")]
    DidNotStart(String),
    /// A firmware could not be flashed (which, and why).
    #[error("flashing `{0}`: {1}")]
    Flash(String, String),
    /// The step took longer than the step timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The task running the step panicked or was cancelled.
    #[error("step task failed: {0}")]
    Task(String),
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepState {
    /// Running.
    Started,
    /// Done.
    Succeeded,
    /// Failed, and why.
    Failed(String),
}

/// Reported as steps run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The step, as a sentence.
    pub step: String,
    /// The component it acts on.
    pub component: Option<String>,
    /// Where it is.
    pub state: StepState,
    /// Steps finished so far in the plan.
    pub done: usize,
    /// Steps in the plan.
    pub total: usize,
}

/// What a plan's execution left.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Components whose step failed, with why.
    pub failed: BTreeMap<String, String>,
    /// Components whose steps did not run because a step they follow failed.
    pub blocked: BTreeMap<String, String>,
    /// Steps that succeeded.
    pub succeeded: usize,
}

/// What one pass enacts: a subsystem at a generation, with the engine's settings.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The subsystem.
    pub subsystem: String,
    /// The generation enforced.
    pub generation: u64,
    /// The engine's settings.
    pub config: Arc<EngineConfig>,
}

/// The workload name of a component: `continuum-<subsystem>_<component>`,
/// one name per (subsystem, component) pair on one engine. Ids are DNS labels
/// (`a-z`, `0-9`, `-`), so `_` cannot occur in them and the name is
/// unambiguous (`a` + `b-c` and `a-b` + `c` differ); any other character is
/// escaped as `.` and its hex code, keeping the mapping one to one.
pub fn workload_name(subsystem: &str, component: &str) -> String {
    let escape = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!(".{b:02x}"));
                }
            }
        }
        out
    };
    format!("continuum-{}_{}", escape(subsystem), escape(component))
}

/// `rel` (a path of the model) under `root`, the directory a gateway reads
/// contexts and artefacts from: an absolute path, one that climbs out with
/// `..`, or one that leads out through a symbolic link is refused (a model
/// must not make the gateway read its host's files).
pub fn within_root(root: &Path, rel: &str) -> Result<PathBuf, String> {
    use std::path::Component as Part;
    let given = Path::new(rel);
    if given.is_absolute() {
        return Err(format!(
            "an absolute path; paths are read under {}",
            root.display()
        ));
    }
    let mut inside = PathBuf::new();
    for part in given.components() {
        match part {
            Part::Normal(p) => inside.push(p),
            Part::CurDir => {}
            Part::ParentDir if inside.pop() => {}
            _ => return Err(format!("it climbs out of {} with `..`", root.display())),
        }
    }
    let joined = root.join(&inside);
    if let (Ok(real), Ok(base)) = (joined.canonicalize(), root.canonicalize()) {
        if !real.starts_with(&base) {
            return Err(format!(
                "it leads out of {} through a symbolic link (to {})",
                root.display(),
                real.display()
            ));
        }
    }
    Ok(joined)
}

/// The SHA-256 of a build context (hex): every file's relative path and
/// bytes, in path order.
pub fn context_hash(dir: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        let mut file = std::fs::File::open(entry.path())?;
        std::io::copy(&mut file, &mut hash)?;
        hash.update([0]);
    }
    Ok(hex(&hash.finalize()))
}

/// Where the image of a workload component comes from. Build contexts (and
/// the directories included in them) are found under `config.context_root`;
/// the engine's build arguments are given unless the model sets them.
pub fn image_source(c: &Component, config: &EngineConfig) -> Result<ImageSource, StepError> {
    let container = c
        .spec
        .resources()
        .and_then(|r| r.container.as_ref())
        .ok_or_else(|| StepError::NoContainer(c.id.clone()))?;
    if let Some(image) = &container.image {
        return Ok(ImageSource::Named(image.clone()));
    }
    let build = container
        .build
        .as_ref()
        .ok_or_else(|| StepError::NoImage(c.id.clone()))?;
    // A pinned reference is the blob it is pinned to (fetched before the
    // pass), unless the gateway reads contexts from its own disk.
    let local = |reference: &str| -> Result<PathBuf, StepError> {
        let (path, digest) = continuum_models::artefact::split(reference);
        match (&config.blobs, digest) {
            (Some(cache), Some(_)) => {
                Ok(cache.resolve(reference, continuum_models::artefact::Kind::Directory)?)
            }
            _ => within_root(&config.context_root, path).map_err(|why| StepError::OutsideRoot {
                component: c.id.clone(),
                path: path.to_owned(),
                why,
            }),
        }
    };
    let mut context = vec![ContextPart {
        at: String::new(),
        dir: local(&build.context)?,
    }];
    for (at, dir) in &build.include {
        context.push(ContextPart {
            at: at.clone(),
            dir: local(dir)?,
        });
    }
    let mut args = config.build_args.clone();
    args.extend(build.args.clone());
    // The tag is the whole content hash of what the build reads: every part
    // of the context and where it goes, the build arguments and the
    // Dockerfile's name.
    let mut inputs = Vec::new();
    for part in &context {
        let hash = context_hash(&part.dir).map_err(|cause| StepError::Context {
            path: part.dir.clone(),
            cause,
        })?;
        inputs.extend_from_slice(format!("{}\0{hash}\0", part.at).as_bytes());
    }
    for (k, v) in &args {
        inputs.extend_from_slice(format!("\0{k}={v}").as_bytes());
    }
    inputs.push(0);
    inputs.extend_from_slice(
        build
            .dockerfile
            .as_deref()
            .unwrap_or("Dockerfile")
            .as_bytes(),
    );
    let tag = format!("continuum/{}:{}", c.id, sha256_hex(&inputs));
    Ok(ImageSource::Build {
        context,
        dockerfile: build.dockerfile.clone(),
        args,
        tag,
    })
}

/// The workload that runs component `c` at `generation`.
pub fn workload_spec(
    c: &Component,
    subsystem: &str,
    generation: u64,
    image: &str,
) -> Result<WorkloadSpec, StepError> {
    let container = c
        .spec
        .resources()
        .and_then(|r| r.container.as_ref())
        .ok_or_else(|| StepError::NoContainer(c.id.clone()))?;
    let labels = BTreeMap::from([
        (LABEL_COMPONENT.to_owned(), c.id.clone()),
        (LABEL_SUBSYSTEM.to_owned(), subsystem.to_owned()),
        (LABEL_GENERATION.to_owned(), generation.to_string()),
        (LABEL_SPEC_HASH.to_owned(), spec_hash(c)),
        (
            LABEL_DEFINITION.to_owned(),
            serde_json::to_string(c).expect("components serialize"),
        ),
    ]);
    Ok(WorkloadSpec {
        name: workload_name(subsystem, &c.id),
        image: image.to_owned(),
        command: container.command.clone(),
        env: container.env.clone(),
        ports: container.ports.clone(),
        devices: container.devices.clone(),
        mounts: container.mounts.clone(),
        restart: container.restart,
        network: container.network.clone(),
        aliases: vec![c.id.clone()],
        labels,
    })
}

/// Tells how a long step is going, as more `Started` progress of it.
struct Reporter {
    tx: mpsc::UnboundedSender<Progress>,
    component: Option<String>,
    done: usize,
    total: usize,
}

impl Reporter {
    fn say(&self, step: String) {
        let _ = self.tx.send(Progress {
            step,
            component: self.component.clone(),
            state: StepState::Started,
            done: self.done,
            total: self.total,
        });
    }
}

struct Context<R> {
    runtime: Arc<R>,
    pass: Pass,
    target: HashMap<String, Component>,
    /// The whole target (firmware finds its device through its links).
    model: DeploymentModel,
    /// The workloads seen before the plan, by component.
    workloads: HashMap<String, Vec<Workload>>,
}

impl<R: ContainerRuntime> Context<R> {
    fn workloads_of(&self, component: &str) -> &[Workload] {
        self.workloads.get(component).map_or(&[], Vec::as_slice)
    }

    /// The runtime's current workloads of a component (steps of the same plan may
    /// have created some since the snapshot).
    async fn live_workloads(&self, component: &str) -> Result<Vec<Workload>, StepError> {
        let all = self
            .runtime
            .list(LABEL_SUBSYSTEM, &self.pass.subsystem)
            .await?;
        Ok(all
            .into_iter()
            .filter(|w| {
                w.labels
                    .get(LABEL_COMPONENT)
                    .is_some_and(|c| c == component)
            })
            .collect())
    }

    async fn run(&self, action: &Action, reporter: &Reporter) -> Result<(), StepError> {
        match action {
            Action::Stop { component } => {
                for w in self.workloads_of(component) {
                    self.runtime.stop(&w.id).await?;
                }
                Ok(())
            }
            Action::Remove { component } => {
                for w in self.live_workloads(component).await? {
                    self.runtime.stop(&w.id).await?;
                    self.runtime.remove(&w.id).await?;
                }
                Ok(())
            }
            Action::Add { component } => self.add(component, reporter).await,
            Action::Start { component } => self.start(component).await,
            Action::Route { component } => {
                let routes = routes_of(self.target(component)?);
                Ok(self.pass.config.routing.set(component, routes)?)
            }
            Action::Unroute { component } => {
                Ok(self.pass.config.routing.set(component, Vec::new())?)
            }
            // Metadata only: what runs does not change; communication links
            // are the components' own business.
            Action::Update { .. } | Action::Bind { .. } | Action::Unbind { .. } => Ok(()),
        }
    }

    fn target(&self, component: &str) -> Result<&Component, StepError> {
        self.target
            .get(component)
            .ok_or_else(|| StepError::NotInTarget(component.to_owned()))
    }

    async fn add(&self, component: &str, reporter: &Reporter) -> Result<(), StepError> {
        let c = self.target(component)?;
        if crate::firmware::is_firmware(c) {
            return self.flash(c, reporter).await;
        }
        if !is_workload(c) {
            return Ok(());
        }
        let source = image_source(c, &self.pass.config)?;
        self.runtime.ensure_image(&source).await?;
        let hash = spec_hash(c);
        let mut keep = false;
        for w in self.live_workloads(component).await? {
            if !keep && w.labels.get(LABEL_SPEC_HASH) == Some(&hash) {
                keep = true;
                continue;
            }
            // A stale or duplicate workload: it would hold the name.
            self.runtime.stop(&w.id).await?;
            self.runtime.remove(&w.id).await?;
        }
        if !keep {
            let mut spec = workload_spec(
                c,
                &self.pass.subsystem,
                self.pass.generation,
                source.reference(),
            )?;
            // What the gateway tells every workload (where its local broker
            // is), unless the model says otherwise.
            for (k, v) in &self.pass.config.workload_env {
                spec.env.entry(k.clone()).or_insert_with(|| v.clone());
            }
            let secrets = c
                .spec
                .resources()
                .and_then(|r| r.container.as_ref())
                .map(|k| k.secrets.as_slice())
                .unwrap_or_default();
            let given =
                crate::secrets::give(&self.pass.config.secrets_dir, &c.id, secrets, &mut spec)?;
            if let Some(network) = spec.network.as_deref().filter(|n| is_custom_network(n)) {
                let labels =
                    BTreeMap::from([(LABEL_SUBSYSTEM.to_owned(), self.pass.subsystem.clone())]);
                self.runtime.ensure_network(network, &labels).await?;
            }
            if let Err(e) = self.runtime.create(&spec).await {
                let said = e.to_string();
                let clean = given.redact(&said);
                return Err(if clean == said {
                    e.into()
                } else {
                    StepError::Redacted(clean)
                });
            }
        }
        Ok(())
    }

    /// Flashes firmware `c` onto its device through the deploy agent.
    async fn flash(&self, c: &Component, reporter: &Reporter) -> Result<(), StepError> {
        let deployers = self.pass.config.deployers.as_ref().ok_or_else(|| {
            StepError::Flash(c.id.clone(), "this gateway has no deploy agent".into())
        })?;
        let device = crate::firmware::device_of(&self.model, &c.id).ok_or_else(|| {
            StepError::Flash(
                c.id.clone(),
                "no device hosts it (a hosting link to a device)".into(),
            )
        })?;
        let reference = c
            .spec
            .resources()
            .and_then(|r| r.flash.as_ref())
            .map(|f| f.artefact.clone())
            .unwrap_or_default();
        let (path, digest) = continuum_models::artefact::split(&reference);
        let file = match (&self.pass.config.blobs, digest) {
            (Some(cache), Some(_)) => {
                cache.resolve(&reference, continuum_models::artefact::Kind::File)?
            }
            _ => within_root(&self.pass.config.context_root, path).map_err(|why| {
                StepError::OutsideRoot {
                    component: c.id.clone(),
                    path: path.to_owned(),
                    why,
                }
            })?,
        };
        let artefact = std::fs::read(&file).map_err(|cause| StepError::Context {
            path: file.clone(),
            cause,
        })?;
        let (request, within) =
            crate::firmware::request(c, device, artefact, &self.pass.config.device_ports)
                .ok_or_else(|| StepError::Flash(c.id.clone(), "no flash resource".into()))?;
        // Sync, write, verify and the confirmation window, with room to spare.
        let id = c.id.clone();
        let onto = device.id.clone();
        let report = deployers
            .flash(
                &self.model,
                request,
                within + Duration::from_secs(120),
                &|stage: &str, percent: u8| {
                    reporter.say(format!(
                        "flash firmware {id} onto {onto}: {stage} {percent}%"
                    ));
                },
            )
            .await;
        let flashed = report
            .as_ref()
            .is_ok_and(|r| matches!(r.state.as_str(), "running" | "unchanged"));
        self.pass.config.metrics.flash(flashed);
        let report = report.map_err(|e| StepError::Flash(c.id.clone(), e))?;
        match report.state.as_str() {
            "running" | "unchanged" => Ok(()),
            other => Err(StepError::Flash(
                c.id.clone(),
                format!(
                    "{} on `{}`{}: {}",
                    other.replace('_', " "),
                    device.id,
                    report
                        .stage
                        .as_deref()
                        .map_or(String::new(), |s| format!(" while {s}")),
                    report.reason.unwrap_or_default()
                ),
            )),
        }
    }

    async fn start(&self, component: &str) -> Result<(), StepError> {
        let c = self.target(component)?;
        if !is_workload(c) {
            return Ok(());
        }
        let hash = spec_hash(c);
        let w = self
            .live_workloads(component)
            .await?
            .into_iter()
            .find(|w| w.labels.get(LABEL_SPEC_HASH) == Some(&hash))
            .ok_or_else(|| StepError::NoWorkload(component.to_owned()))?;
        if w.state != RunState::Running {
            self.runtime.start(&w.id).await?;
        }
        self.settle(&w.id).await
    }

    /// Watches a started workload for `settle`: one that exits at once failed.
    async fn settle(&self, id: &str) -> Result<(), StepError> {
        let settle = self.pass.config.settle;
        let deadline = tokio::time::Instant::now() + settle;
        let (restarts_before, _) = self.runtime.restarts(id).await?;
        let exited = |code: Option<i64>, logs: String| StepError::ExitedAtOnce {
            code,
            logs: logs.trim().to_owned(),
        };
        loop {
            match self.runtime.state(id).await? {
                RunState::Running => {
                    // Restarted by its policy in between: a crash loop seen running.
                    let (n, code) = self.runtime.restarts(id).await?;
                    if n > restarts_before {
                        let logs = self.runtime.logs(id, 5).await.unwrap_or_default();
                        return Err(exited(code, logs));
                    }
                }
                RunState::Exited(code) => {
                    let logs = self.runtime.logs(id, 5).await.unwrap_or_default();
                    return Err(exited(code, logs));
                }
                other => return Err(StepError::DidNotStart(format!("{other:?}"))),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50).min(settle)).await;
        }
    }
}

/// Runs `plan` from `current` to `target` on `runtime`.
pub async fn execute<R: ContainerRuntime>(
    runtime: Arc<R>,
    pass: Pass,
    plan: &Plan,
    target: &DeploymentModel,
    workloads: &[Workload],
    progress: &mpsc::UnboundedSender<Progress>,
) -> Outcome {
    let mut by_component: HashMap<String, Vec<Workload>> = HashMap::new();
    for w in workloads {
        if let Some(c) = w.labels.get(LABEL_COMPONENT) {
            by_component.entry(c.clone()).or_default().push(w.clone());
        }
    }
    let step_timeout = pass.config.step_timeout;
    let ctx = Arc::new(Context {
        runtime,
        pass,
        target: target
            .components
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect(),
        model: target.clone(),
        workloads: by_component,
    });
    let total = plan.steps.len();
    let mut outcome = Outcome::default();
    let mut states = vec![Run::Waiting; total];
    let mut running: JoinSet<(usize, Result<(), StepError>)> = JoinSet::new();
    let mut finished = 0;
    loop {
        // Start every step whose predecessors are done; block those behind a failure.
        let mut changed = true;
        while changed {
            changed = false;
            for step in &plan.steps {
                if states[step.id] != Run::Waiting {
                    continue;
                }
                let cause = step.after.iter().find_map(|a| match &states[*a] {
                    Run::Failed(cause) | Run::Blocked(cause) => Some(cause.clone()),
                    _ => None,
                });
                if let Some(cause) = cause {
                    finished += 1;
                    if let Some(c) = step.action.component() {
                        outcome.blocked.entry(c.to_owned()).or_insert(cause.clone());
                    }
                    states[step.id] = Run::Blocked(cause);
                    changed = true;
                    continue;
                }
                if step.after.iter().all(|a| states[*a] == Run::Succeeded) {
                    states[step.id] = Run::Running;
                    spawn_step(
                        &mut running,
                        &ctx,
                        step,
                        step_timeout,
                        progress,
                        finished,
                        total,
                    );
                }
            }
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (id, result) =
            joined.unwrap_or_else(|e| (usize::MAX, Err(StepError::Task(e.to_string()))));
        let Some(step) = plan.steps.get(id) else {
            continue;
        };
        finished += 1;
        let component = step.action.component().map(str::to_owned);
        match result {
            Ok(()) => {
                states[id] = Run::Succeeded;
                outcome.succeeded += 1;
                let _ = progress.send(Progress {
                    step: crate::lifecycle::step(&step.action, &ctx.target),
                    component,
                    state: StepState::Succeeded,
                    done: finished,
                    total,
                });
            }
            Err(error) => {
                let reason = error.to_string();
                let who = component.clone().unwrap_or_else(|| step.action.to_string());
                states[id] = Run::Failed(format!("`{who}` failed: {reason}"));
                if let Some(c) = &component {
                    outcome.failed.insert(c.clone(), reason.clone());
                }
                let _ = progress.send(Progress {
                    step: crate::lifecycle::step(&step.action, &ctx.target),
                    component,
                    state: StepState::Failed(reason),
                    done: finished,
                    total,
                });
            }
        }
    }
    outcome
}

/// Where one step of a plan is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Run {
    /// Waiting for the steps it follows.
    Waiting,
    Running,
    Succeeded,
    /// Failed; what the steps that follow it are told.
    Failed(String),
    /// Not run because a step it follows failed or was blocked, and why.
    Blocked(String),
}

fn spawn_step<R: ContainerRuntime>(
    running: &mut JoinSet<(usize, Result<(), StepError>)>,
    ctx: &Arc<Context<R>>,
    step: &Step,
    timeout: Duration,
    progress: &mpsc::UnboundedSender<Progress>,
    finished: usize,
    total: usize,
) {
    let _ = progress.send(Progress {
        step: crate::lifecycle::step(&step.action, &ctx.target),
        component: step.action.component().map(str::to_owned),
        state: StepState::Started,
        done: finished,
        total,
    });
    let ctx = Arc::clone(ctx);
    let action = step.action.clone();
    let id = step.id;
    let reporter_tx = progress.clone();
    let span = tracing::info_span!(
        "step",
        subsystem = %ctx.pass.subsystem,
        generation = ctx.pass.generation,
        component = action.component().unwrap_or(""),
        step = %action
    );
    running.spawn(
        async move {
            let reporter = Reporter {
                tx: reporter_tx,
                component: action.component().map(str::to_owned),
                done: finished,
                total,
            };
            let result = match tokio::time::timeout(timeout, ctx.run(&action, &reporter)).await {
                Ok(r) => r,
                Err(_) => Err(StepError::TimedOut(timeout)),
            };
            ctx.pass.config.metrics.step(action.kind(), result.is_ok());
            // Inside the step's span: the line carries its subsystem,
            // generation and component.
            match &result {
                Ok(()) => tracing::info!("step succeeded"),
                Err(e) => tracing::warn!(reason = %e, "step failed"),
            }
            (id, result)
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::{within_root, workload_name};

    #[test]
    fn model_paths_stay_under_the_context_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("ctx")).unwrap();
        assert_eq!(within_root(&root, "ctx").unwrap(), root.join("ctx"));
        assert_eq!(within_root(&root, "./a/../ctx").unwrap(), root.join("ctx"));
        assert!(within_root(&root, "/etc")
            .unwrap_err()
            .contains("an absolute path"));
        assert!(within_root(&root, "../x")
            .unwrap_err()
            .contains("climbs out"));
        assert!(within_root(&root, "ctx/../../x")
            .unwrap_err()
            .contains("climbs out"));
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        assert!(within_root(&root, "out")
            .unwrap_err()
            .contains("through a symbolic link (to /etc)"));
    }

    #[test]
    fn workload_names_never_collide() {
        // The collision Docker refused: `a` + `b-c` and `a-b` + `c`.
        assert_ne!(workload_name("a", "b-c"), workload_name("a-b", "c"));
        assert_eq!(workload_name("a", "b-c"), "continuum-a_b-c");
        // Characters outside the id alphabet are escaped, not folded.
        assert_ne!(workload_name("a.b", "c"), workload_name("a-b", "c"));
        assert_ne!(workload_name("a_b", "c"), workload_name("a", "b_c"));
        let ids = ["a", "b", "a-b", "b-c", "c", "a.b", "a_b", "b_c", "é", "e"];
        let mut names = std::collections::HashSet::new();
        for s in ids {
            for c in ids {
                let n = workload_name(s, c);
                assert!(
                    n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                    "{n} is not a Docker name"
                );
                assert!(names.insert(n), "{s} + {c} collides");
            }
        }
    }
}
