//! Where components run: one trait for every driver (Docker, child processes,
//! an in-memory fake for unit tests, and a simulated engine for fleets of
//! simulated gateways). A driver knows nothing of models: it creates, starts,
//! stops and removes labelled workloads and lists them back.

pub mod context;
pub mod docker;
pub mod fake;
pub mod process;
pub mod sim;

use std::collections::BTreeMap;
use std::future::Future;

pub use continuum_models::resources::{DeviceMapping, Mount, PortBinding, RestartPolicy};

/// What a workload is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Ended, with its exit code when known.
    Exited(Option<i64>),
    /// Restarting, paused, dead...: the driver's own word.
    Other(String),
}

/// A workload this agent created, as the driver sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The driver's id (a container id, a process key).
    pub id: String,
    /// Its name on the engine.
    pub name: String,
    /// Its labels (what Continuum put there).
    pub labels: BTreeMap<String, String>,
    /// Whether it runs.
    pub state: RunState,
}

/// Where an image comes from: already on the engine, or built from a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image the engine has.
    Named(String),
    /// An image to build (once: the tag is its content's hash).
    Build {
        /// What the build context is made of, in order (a later part wins
        /// where two put the same file).
        context: Vec<ContextPart>,
        /// The Dockerfile, if not `Dockerfile`.
        dockerfile: Option<String>,
        /// Build arguments.
        args: BTreeMap<String, String>,
        /// The tag to give the result (content-addressed by the caller).
        tag: String,
    },
}

/// One part of a build context: a directory put at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextPart {
    /// Where in the context (`""`: its top).
    pub at: String,
    /// The directory whose content goes there.
    pub dir: std::path::PathBuf,
}

impl ImageSource {
    /// The image name a workload refers to.
    pub fn reference(&self) -> &str {
        match self {
            ImageSource::Named(n) => n,
            ImageSource::Build { tag, .. } => tag,
        }
    }
}

/// Everything needed to create a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// Its name on the engine.
    pub name: String,
    /// The image it runs.
    pub image: String,
    /// Its command (the image's entry point when empty).
    pub command: Vec<String>,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// Ports published on the host.
    pub ports: Vec<PortBinding>,
    /// Host devices mapped in.
    pub devices: Vec<DeviceMapping>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// What happens when it exits.
    pub restart: RestartPolicy,
    /// The network it joins.
    pub network: Option<String>,
    /// Other names it answers to on a network of its own (its component id:
    /// the workloads of a subsystem find each other by the ids of the model).
    pub aliases: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What a driver reports when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine cannot be reached at all.
    #[error("the container engine is unreachable: {0}")]
    Unreachable(String),
    #[error("image `{image}` cannot be built: {reason}")]
    /// The image cannot be built.
    Build {
        /// The image.
        image: String,
        /// Why, from the build's output.
        reason: String,
    },
    /// The image is not there and cannot be pulled.
    #[error("image `{0}` is not on this gateway (no registry is used; build it or load it first)")]
    NoImage(String),
    /// No such workload.
    #[error("no workload `{0}`")]
    NotFound(String),
    /// Anything else the engine said.
    #[error("{0}")]
    Failed(String),
}

/// A driver. Every operation is idempotent where it can be: stopping a stopped
/// workload or removing a missing one succeeds.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// The workloads carrying `label=value`.
    fn list(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<Workload>, RuntimeError>> + Send;
    /// Makes sure the image exists (building it if it must).
    fn ensure_image(
        &self,
        source: &ImageSource,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates a workload (not started); returns its id.
    fn create(
        &self,
        spec: &WorkloadSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
    /// Starts a created or stopped workload.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops a workload (a stopped one stays stopped).
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a workload (a missing one is gone already).
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Whether a workload runs.
    fn state(&self, id: &str) -> impl Future<Output = Result<RunState, RuntimeError>> + Send;
    /// Makes sure a network exists, creating it with `labels` if it does not.
    fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes the networks carrying `label=value` except those in `keep`
    /// (a network still in use stays; it goes on a later pass).
    fn prune_networks(
        &self,
        label: &str,
        value: &str,
        keep: &[String],
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Sends `()` on `changes` whenever a workload carrying `label=value`
    /// changes state (created, started, died, destroyed...), until the engine
    /// stream ends or `changes` closes. Returns why it ended.
    fn watch(
        &self,
        label: &str,
        value: &str,
        changes: tokio::sync::mpsc::Sender<()>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// How many times the engine restarted the workload by its restart policy,
    /// and the exit code of its last run (a crash loop can look `Running`).
    fn restarts(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(u64, Option<i64>), RuntimeError>> + Send;
    /// The last lines the workload wrote, for failure reasons.
    fn logs(
        &self,
        id: &str,
        lines: usize,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
}

/// Whether `network` names a network to create (rather than a mode such as
/// `host`, `none`, `bridge` or `container:<id>`).
pub fn is_custom_network(network: &str) -> bool {
    !matches!(network, "host" | "none" | "bridge" | "default") && !network.starts_with("container:")
}
