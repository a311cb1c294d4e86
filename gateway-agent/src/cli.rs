//! The agent as a command: its settings (flags and environment) and the run
//! that wires the store, the driver, the agent loop and the link together.
//! Used by `continuum-gateway` and by `continuum gateway`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentConfig, Driver};
use crate::bridge::{Bridge, BridgeConfig};
use crate::engine::EngineConfig;
use crate::link::{self, LinkConfig};
use crate::local::LocalApi;
use crate::routing::{NoBridge, Routing};
use crate::runtime::docker::DockerRuntime;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::ContainerRuntime;
use crate::store::Store;
use anyhow::Context;
use continuum_bus::args::{duration, duration_or_zero};
use continuum_bus::BrokerUrl;
use continuum_proto::v1::model_service_server::ModelServiceServer;
use continuum_proto::v1::Capabilities;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The settings of `continuum gateway`.
#[derive(Debug, Clone, clap::Args)]
#[command(subcommand_negates_reqs = true)]
pub struct Args {
    /// Run simulated gateways instead of this one.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
    /// This gateway's id: the id of its gateway component in the megamodel.
    #[arg(long, env = "CONTINUUM_GATEWAY_ID", required = true)]
    pub id: Option<String>,
    /// The orchestrator to dial (`host:port` or a URL; `https://` for TLS);
    /// several, separated by commas, when orchestrators share an etcd store
    /// (the gateway dials them in turn until the leader answers).
    #[arg(long, env = "CONTINUUM_SERVER", default_value = "127.0.0.1:7070")]
    pub orchestrator: String,
    /// The CA (PEM) the orchestrator's certificate is checked against
    /// (default: the system's roots).
    #[arg(long, env = "CONTINUUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This gateway's certificate (`continuum certs gateway ID`): it may
    /// register only as the id it names.
    #[arg(
        long,
        env = "CONTINUUM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(
        long,
        env = "CONTINUUM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Take a target older than the one held (once, after the orchestrator
    /// was restored from an older backup); otherwise it is refused as a replay.
    #[arg(long)]
    pub accept_older_targets: bool,
    /// Where the secrets models name are, one file per secret (default:
    /// `secrets` in the data directory).
    #[arg(long, env = "CONTINUUM_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Where the agent keeps the target it enforces.
    #[arg(
        long,
        env = "CONTINUUM_GATEWAY_DATA",
        default_value = "continuum-gateway-data"
    )]
    pub data_dir: PathBuf,
    /// Read the build contexts and sources models name from this directory
    /// instead of fetching the blobs they are pinned to from the
    /// orchestrator (a local override, for development).
    #[arg(long, value_name = "DIR")]
    pub context_root: Option<PathBuf>,
    /// The function host (a static executable) that function images are built
    /// with. Default: `continuum-function-host` beside the agent, else on PATH.
    #[arg(long, env = "CONTINUUM_FUNCTION_HOST", value_name = "PATH")]
    pub function_host: Option<PathBuf>,
    /// The deploy agent (`continuum-agent`) the gateway runs for the devices
    /// of its subsystem: beside itself for devices wired to its own machine,
    /// in a container or copied over SSH for those wired to another host
    /// (build it static for containers: scripts/build-static.sh
    /// continuum-deploy-agent). Default: beside the agent, else on PATH.
    #[arg(long, env = "CONTINUUM_DEPLOY_AGENT", value_name = "PATH")]
    pub deploy_agent: Option<PathBuf>,
    /// The local broker as deploy agents on other hosts reach it
    /// (`mqtt://address:port`). Default: the address it listens on.
    #[arg(long, value_name = "URL")]
    pub agent_broker: Option<BrokerUrl>,
    /// Devices flashed at once across this gateway's deploy agents.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_flashes: usize,
    /// The OpenSSH client configuration used to reach hosts over SSH
    /// (default: the user's own).
    #[arg(long, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Where deploy agents copied over SSH live on their host (relative to
    /// the login's home unless absolute).
    #[arg(long, default_value = ".continuum/agents", value_name = "DIR")]
    pub remote_agent_dir: String,
    /// The public key (ed25519, hex) firmware must be signed with: the
    /// deploy agent refuses unsigned or badly signed firmware before writing.
    #[arg(long, env = "CONTINUUM_TRUSTED_KEY", value_name = "HEX")]
    pub trusted_key: Option<String>,
    /// The public key (ed25519, hex) agent builds the orchestrator offers
    /// must be signed with (a signature of their SHA-256); without it a
    /// build is taken on its hash alone.
    #[arg(long, env = "CONTINUUM_AGENT_KEY", value_name = "HEX")]
    pub agent_key: Option<String>,
    /// How long a new agent build has to register and re-adopt what runs
    /// before this one takes over again.
    #[arg(long, default_value = "60s", value_parser = duration, value_name = "DURATION")]
    pub upgrade_deadline: Duration,
    /// Where a device of the model is wired on this host, when it is not the
    /// port the model names (`DEVICE=PATH`, repeatable): udev names differ
    /// from host to host.
    #[arg(long = "device-port", value_name = "DEVICE=PATH", value_parser = device_port)]
    pub device_ports: Vec<(String, PathBuf)>,
    /// Debian's static busybox, the shell of function images.
    #[arg(long, default_value = "/bin/busybox", value_name = "PATH")]
    pub busybox: PathBuf,
    /// Serve the local API (`continuum apply --server` pointed at the gateway,
    /// for changes while the orchestrator is cut off) on this address.
    #[arg(long, value_name = "ADDR")]
    pub local_api: Option<std::net::SocketAddr>,
    /// Serve the local broker and the local API on addresses other than
    /// loopback although they are plain text and unauthenticated (a trusted
    /// network only; said loudly at start). Deploy agents on other hosts
    /// reach the local broker this way.
    #[arg(long)]
    pub insecure: bool,
    /// The workload policy (JSON) this gateway enforces besides the
    /// orchestrator's (see `continuum serve --policy`).
    #[arg(long, env = "CONTINUUM_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The embedded local broker.
    #[command(flatten)]
    pub broker: continuum_bus::args::BusArgs,
    /// The bridge to the global bus.
    #[command(flatten)]
    pub bridge: BridgeArgs,
    /// Where this gateway is (reported to the orchestrator).
    #[arg(long, default_value = "")]
    pub location: String,
    /// A label reported with the capabilities (`key=value`, repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// What runs the workloads: Docker containers, or child processes on a host
    /// without Docker.
    #[arg(long, value_enum, default_value_t = Driver::Docker)]
    pub driver: Driver,
    /// Reconcile at least this often (drift repair).
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub interval: Duration,
    /// The longest a step may take.
    #[arg(long, default_value = "5m", value_parser = duration, value_name = "DURATION")]
    pub step_timeout: Duration,
    /// How long a started container must keep running to count as started.
    #[arg(long, default_value = "500ms", value_parser = duration_or_zero, value_name = "DURATION")]
    pub settle: Duration,
    /// The longest wait between two dials of the orchestrator.
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub max_backoff: Duration,
}

/// What `continuum gateway` runs instead of one gateway agent.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GatewayCommand {
    /// Run many simulated gateway agents in this process: each registers,
    /// keeps its own store and enforces its targets, on a simulated engine
    /// (no containers; every step takes a random time and may fail), without
    /// a broker or a bridge. For trying a fleet's rollouts and measuring the
    /// orchestrator at fleet size.
    Sim(crate::fleet::SimArgs),
}

impl Args {
    /// This gateway's id (empty when none was given, which is refused).
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }
}

/// The bridge between the local broker and the global bus.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    /// The global bus (`mqtt://[user:password@]host[:port]`, MQTT 5). Default:
    /// the one the orchestrator names when the gateway registers (its embedded
    /// bus, or the external one it was given), remembered across restarts;
    /// before the first registration, port 1884 on the orchestrator's host.
    #[arg(long, env = "CONTINUUM_BUS_URL", value_name = "URL")]
    pub bus_url: Option<BrokerUrl>,
    /// An external local broker (Mosquitto) instead of the embedded one.
    #[arg(long, env = "CONTINUUM_LOCAL_BUS_URL", value_name = "URL")]
    pub local_bus_url: Option<BrokerUrl>,
    /// Credentials for a global bus the orchestrator names (`user:password`).
    #[arg(long, env = "CONTINUUM_BUS_CREDENTIALS", value_name = "USER:PASSWORD", value_parser = parse_credentials)]
    pub bus_credentials: Option<(String, String)>,
    /// The CA (PEM) an `mqtts://` global bus's certificate is checked
    /// against (default: --tls-ca, else the system's roots).
    #[arg(long, env = "CONTINUUM_BUS_CA", value_name = "FILE")]
    pub bus_ca: Option<PathBuf>,
    /// Run no bridge (models with functions or routes are then refused).
    #[arg(long)]
    pub no_bridge: bool,
    /// Messages each direction's outbox keeps at most while its destination
    /// is unreachable; beyond, the oldest are dropped and counted.
    #[arg(long, default_value_t = 1_000_000)]
    pub outbox_capacity: u64,
    /// The largest message payload the bridge carries, in bytes; larger
    /// ones are dead-lettered.
    #[arg(long, default_value_t = 256 * 1024)]
    pub bridge_max_payload: usize,
    /// Serve the agent's metrics for Prometheus on this address (`GET
    /// /metrics`: reconcile passes, steps, flashes, components by state, the
    /// functions' invocations, the bridge's counters), with `/healthz` and
    /// `/readyz`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// MQTT keep-alive of the bridge's connections, at least 5s (a cut link
    /// is noticed after 1.5 times this).
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub bus_keepalive: Duration,
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The global bus named in the orchestrator's welcome, as this gateway reaches it.
fn named_bus(url: &str, port: u32, tls: bool, orchestrator: &str) -> Option<BrokerUrl> {
    if !url.is_empty() {
        return url.parse().ok();
    }
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    format!(
        "{}://{}:{port}",
        if tls { "mqtts" } else { "mqtt" },
        bracketed(&orchestrator_host(orchestrator))
    )
    .parse()
    .ok()
}

/// The orchestrator's host, from `host:port` or a URL.
fn orchestrator_host(orchestrator: &str) -> String {
    let rest = orchestrator
        .split_once("://")
        .map_or(orchestrator, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_owned();
    }
    hostport
        .rsplit_once(':')
        .map_or(hostport, |(h, _)| h)
        .to_owned()
}

fn parse_credentials(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .filter(|(u, _)| !u.is_empty())
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .ok_or_else(|| format!("`{s}` is not user:password"))
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

pub(crate) fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the agent until SIGTERM or Ctrl-C (or, when it upgrades itself,
/// hands the process over to the new build).
pub fn run(config: Args) -> anyhow::Result<()> {
    // A process replaced for an upgrade's trial runs only that.
    crate::upgrade::trial_if_asked();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("stopping");
            stop.cancel();
        });
        match config.command {
            Some(GatewayCommand::Sim(sim)) => crate::fleet::run_until(sim, shutdown).await,
            None => {
                let slot = crate::upgrade::Slot::default();
                // An upgrade stops the agent as SIGTERM would, then hands over.
                let stop = shutdown.child_token();
                run_upgradable(config, stop, Some(Arc::clone(&slot))).await?;
                let handover = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
                match handover {
                    Some(h) if !shutdown.is_cancelled() => Err(crate::upgrade::hand_over(&h))
                        .context("cannot hand over to the new agent build"),
                    _ => Ok(()),
                }
            }
        }
    })
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run_until(config: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_upgradable(config, shutdown, None).await
}

/// Runs the agent until `shutdown` is cancelled; with `upgrades`, an agent
/// build the orchestrator offers is taken: put in the slot, and `shutdown`
/// cancelled for the caller to hand over.
async fn run_upgradable(
    config: Args,
    shutdown: CancellationToken,
    upgrades: Option<crate::upgrade::Slot>,
) -> anyhow::Result<()> {
    if !continuum_models::validate::is_valid_id(config.id()) {
        anyhow::bail!(
            "`{}` is not a valid gateway id: expected 1 to 63 lowercase letters, digits and dashes",
            config.id()
        );
    }
    // Plain-text, unauthenticated listeners beyond loopback only when asked.
    let mut exposed = Vec::new();
    if config.bridge.local_bus_url.is_none() {
        exposed.extend(
            config
                .broker
                .exposure(config.insecure)
                .map_err(anyhow::Error::msg)?,
        );
    }
    if let Some(addr) = config.local_api {
        exposed.extend(
            continuum_bus::args::exposure("the local API", addr, config.insecure)
                .map_err(anyhow::Error::msg)?,
        );
    }
    for w in &exposed {
        eprintln!("{w}");
    }
    let (interval, step_timeout, max_backoff) =
        (config.interval, config.step_timeout, config.max_backoff);
    // Whether this agent may act: the bridge and the engine both heed it.
    let fencing = crate::fence::Fencing::start(shutdown.clone());
    // A corrupt data directory stops the agent here, naming the file: it is
    // never silently reset.
    let store = Store::open(&config.data_dir)?;
    // The local broker keeps the subsystem's traffic going while cut off.
    let embedded = config
        .broker
        .config()
        .filter(|_| config.bridge.local_bus_url.is_none());
    let mut attach = None;
    if let Some(broker) = embedded {
        let running =
            continuum_bus::EmbeddedBroker::start(broker.clone()).context("the local broker")?;
        attach = Some(running.attach());
        eprintln!(
            "local broker (MQTT) on {} (3.1.1) and {} (5)",
            broker.v4.map(|a| a.to_string()).unwrap_or_default(),
            broker.v5.map(|a| a.to_string()).unwrap_or_default()
        );
    }
    // Where the local broker is, for the bridge and for the workloads.
    let local = match (&config.bridge.local_bus_url, config.broker.config()) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(b)) => b.v5.or(b.v4).map(|a| BrokerUrl {
            host: a.ip().to_string(),
            port: a.port(),
            credentials: b.users.iter().next().map(|(u, p)| (u.clone(), p.clone())),
            tls: false,
        }),
        (None, None) => None,
    };
    let bridge = if config.bridge.no_bridge {
        None
    } else {
        let local = match (&config.bridge.local_bus_url, config.broker.config()) {
            (Some(_), _) => local.clone().expect("an external local broker"),
            (None, Some(b)) if b.v5.is_none() => anyhow::bail!("the bridge speaks MQTT 5: give the embedded broker an --mqtt5-listen address"),
            (None, Some(_)) => local.clone().expect("an embedded local broker"),
            (None, None) => anyhow::bail!(
                "the bridge needs a local broker: drop --no-mqtt, give --local-bus-url, or run with --no-bridge"
            ),
        };
        let global = match &config.bridge.bus_url {
            Some(url) => url.clone(),
            None => {
                let mut u: BrokerUrl = format!(
                    "mqtt://{}:1884",
                    bracketed(&orchestrator_host(
                        config.orchestrator.split(',').next().unwrap_or_default()
                    ))
                )
                .parse()
                .map_err(|e| anyhow::anyhow!("the default global bus: {e}; give --bus-url"))?;
                u.credentials = config.bridge.bus_credentials.clone();
                u
            }
        };
        let mut bc = BridgeConfig::new(config.id(), global, local);
        bc.global_pinned = config.bridge.bus_url.is_some();
        bc.data_dir = Some(config.data_dir.clone());
        bc.capacity = config.bridge.outbox_capacity;
        bc.max_payload = config.bridge.bridge_max_payload;
        bc.keep_alive = config.bridge.bus_keepalive;
        if bc.keep_alive < Duration::from_secs(5) {
            anyhow::bail!("--bus-keepalive must be at least 5 seconds");
        }
        bc.fencing = Some(Arc::clone(&fencing));
        // The broker is in this process: no socket between it and the bridge.
        bc.local_attach = attach;
        if let Some(ca) = config.bridge.bus_ca.as_ref().or(config.tls_ca.as_ref()) {
            let pem =
                continuum_proto::tls::read_pem(ca, "CERTIFICATE").map_err(anyhow::Error::msg)?;
            bc.global_ca = Some(Arc::new(pem));
        }
        let b = Bridge::start(bc).context("the bridge")?;
        Some(Arc::new(b))
    };
    let mut settings = Settings {
        bridge,
        fencing,
        interval,
        step_timeout,
        max_backoff,
        build_args: BTreeMap::new(),
        workload_env: BTreeMap::new(),
        deployers: None,
        local_bus: local.clone(),
        upgrades,
    };
    if let (Some(url), Some(program)) = (
        &local,
        crate::function_image::find_program("continuum-agent", config.deploy_agent.as_deref()),
    ) {
        settings.deployers = Some(crate::deployers::Deployers::new(
            crate::deployers::DeployersConfig {
                program,
                gateway: config.id().to_owned(),
                broker: url.clone(),
                agent_broker: config.agent_broker.clone(),
                state_dir: config.data_dir.join("deploy-agent"),
                trusted_key: config.trusted_key.clone(),
                max_flashes: config.max_flashes,
                ssh_config: config.ssh_config.clone(),
                remote_dir: config.remote_agent_dir.clone(),
            },
            shutdown.clone(),
        ));
    }
    if let Some(url) = &local {
        settings.workload_env.insert(
            "CONTINUUM_BROKER".to_owned(),
            url.to_string_with_credentials(),
        );
    }
    match config.driver {
        Driver::Sim => {
            anyhow::bail!("the simulated engine runs under `continuum gateway sim`")
        }
        Driver::Docker => {
            let docker = Arc::new(DockerRuntime::lazy());
            let up = docker.list("continuum.probe", "1").await.is_ok();
            if !up {
                tracing::warn!("the Docker engine is not reachable now; the agent keeps trying");
            }
            match function_image(&docker, &config).await {
                Ok(tag) => {
                    settings
                        .build_args
                        .insert(crate::function_image::BUILD_ARG.to_owned(), tag);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "functions cannot be built on this gateway until the function host image exists"
                ),
            }
            serve(docker, up, store, config, settings, shutdown).await
        }
        Driver::Process => {
            // The function host runs as the process of a function here.
            let host_dir = crate::function_image::find_binary(config.function_host.as_deref())
                .and_then(|p| p.parent().map(std::path::Path::to_path_buf));
            let processes = ProcessRuntime::with_state_file(config.data_dir.join("processes.json"))
                .with_images_dir(config.data_dir.join("contexts"))
                .with_path_dirs(host_dir.into_iter().collect());
            serve(
                Arc::new(processes),
                false,
                store,
                config,
                settings,
                shutdown,
            )
            .await
        }
    }
}

struct Settings {
    bridge: Option<Arc<Bridge>>,
    fencing: Arc<crate::fence::Fencing>,
    interval: Duration,
    step_timeout: Duration,
    max_backoff: Duration,
    build_args: BTreeMap<String, String>,
    workload_env: BTreeMap<String, String>,
    deployers: Option<Arc<crate::deployers::Deployers>>,
    /// The local broker, where the functions report their counters.
    local_bus: Option<BrokerUrl>,
    /// Where an upgrade decided is put (none: this agent does not upgrade).
    upgrades: Option<crate::upgrade::Slot>,
}

fn device_port(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((d, p)) if !d.is_empty() && !p.is_empty() => Ok((d.to_owned(), p.into())),
        _ => Err(format!("`{s}` is not DEVICE=PATH")),
    }
}

/// Makes (once) the image functions are built FROM, and returns its name.
async fn function_image(docker: &DockerRuntime, config: &Args) -> anyhow::Result<String> {
    let binary = crate::function_image::find_binary(config.function_host.as_deref())
        .ok_or(crate::function_image::FunctionImageError::NotFound)?;
    let busybox = config.busybox.clone();
    let (tag, rootfs) =
        tokio::task::spawn_blocking(move || crate::function_image::rootfs(&binary, Some(&busybox)))
            .await??;
    docker.import(&tag, rootfs).await?;
    tracing::info!(image = %tag, "function host image ready");
    Ok(tag)
}

async fn serve<R: ContainerRuntime>(
    runtime: Arc<R>,
    docker_up: bool,
    store: Store,
    config: Args,
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Settings {
        bridge,
        fencing,
        interval,
        step_timeout,
        max_backoff,
        build_args,
        workload_env,
        deployers,
        local_bus,
        upgrades,
    } = settings;
    let upgrade_note = upgrades
        .as_ref()
        .map(|_| crate::upgrade::on_start(&config.data_dir))
        .unwrap_or_default();
    let (note_tx, note_rx) = tokio::sync::watch::channel(upgrade_note);
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let orchestrators = crate::orchestrators::Orchestrators::parse(&config.orchestrator)
        .map_err(anyhow::Error::msg)?;
    let tls = continuum_proto::tls::ClientTls::load(
        config.tls_ca.as_deref(),
        config.tls_cert.as_deref().zip(config.tls_key.as_deref()),
    )
    .map_err(anyhow::Error::msg)?;
    // Refused here rather than at every dial.
    for endpoint in orchestrators.in_turn() {
        continuum_proto::tls::endpoint(endpoint, Some(&tls)).map_err(anyhow::Error::msg)?;
    }
    let blobs = match &config.context_root {
        Some(_) => None,
        None => Some(Arc::new(
            crate::blobs::BlobCache::new(config.data_dir.join("blobs"), orchestrators.clone())
                .with_tls(tls.clone()),
        )),
    };
    let policy = match &config.policy {
        Some(path) => continuum_models::policy::Policy::load(path).map_err(anyhow::Error::msg)?,
        None => continuum_models::policy::Policy::default(),
    };

    let metrics = Arc::new(crate::metrics::AgentMetrics::default());
    let agent_config = AgentConfig {
        fencing: Some(Arc::clone(&fencing)),
        accept_older: config.accept_older_targets,
        policy: Arc::new(policy),
        driver: config.driver,
        interval,
        engine: Arc::new(EngineConfig {
            metrics: Arc::clone(&metrics),
            context_root: config.context_root.clone().unwrap_or_else(|| ".".into()),
            blobs,
            build_args,
            workload_env,
            secrets_dir: config
                .secrets_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("secrets")),
            step_timeout,
            settle: config.settle,
            routing: match &bridge {
                Some(b) => Arc::clone(b) as Arc<dyn Routing>,
                None => Arc::new(NoBridge),
            },
            deployers,
            device_ports: config.device_ports.iter().cloned().collect(),
        }),
    };
    let (agent, snapshot) = Agent::new(runtime, store, agent_config, progress_tx)?;
    let (offers_tx, offers_rx) = mpsc::channel(4);
    let agent_offers = upgrades.as_ref().map(|slot| {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(crate::upgrade::follow_offers(
            rx,
            crate::upgrade::Follow {
                blobs: crate::blobs::BlobCache::new(
                    config.data_dir.join("blobs"),
                    orchestrators.clone(),
                )
                .with_tls(tls.clone()),
                key: config.agent_key.clone(),
                data_dir: config.data_dir.clone(),
                deadline: config.upgrade_deadline,
                slot: Arc::clone(slot),
                note: note_tx,
                stop: shutdown.clone(),
            },
        ));
        tx
    });
    let link_config = LinkConfig {
        bridge: bridge
            .clone()
            .map(|b| link::BridgeCounters(Arc::new(move || b.status().report()))),
        fencing: Some(fencing),
        orchestrators,
        tls: Some(tls),
        gateway_id: config.id().to_owned(),
        version: crate::upgrade::version(),
        location: config.location.clone(),
        capabilities: Capabilities {
            arch: std::env::consts::ARCH.to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: memory_bytes(),
            docker: docker_up,
            labels: config.labels.iter().cloned().collect(),
        },
        max_backoff,
        relayed: None,
        bus: bridge.as_ref().map(|b| {
            let (tx, mut rx) = mpsc::unbounded_channel::<link::NamedBus>();
            let b = Arc::clone(b);
            tokio::spawn(async move {
                while let Some(link::NamedBus {
                    url,
                    port,
                    tls,
                    dialled,
                }) = rx.recv().await
                {
                    match named_bus(&url, port, tls, &dialled) {
                        Some(u) => {
                            if let Err(e) = b.learn_global(u) {
                                tracing::warn!(error = %e, "cannot keep the global bus's address");
                            }
                        }
                        None => tracing::warn!(
                            url,
                            port,
                            "the orchestrator names a global bus that is not a broker URL"
                        ),
                    }
                }
            });
            tx
        }),
        agent_upgrade: Some(note_rx),
        agent_offers,
    };
    let (connected_tx, connected) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::upgrade::signal_ready(
        connected.clone(),
        snapshot.clone(),
    ));
    let local_task = match config.local_api {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the local API"))?;
            let api = LocalApi {
                gateway_id: config.id().to_owned(),
                offers: offers_tx.clone(),
                snapshot: snapshot.clone(),
                connected: connected.clone(),
            };
            eprintln!("local API listening on {}", listener.local_addr()?);
            let stop = shutdown.clone();
            let (health, health_service) = continuum_proto::serving::health();
            health.set_serving::<ModelServiceServer<LocalApi>>().await;
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ModelServiceServer::new(api))
                    .add_service(health_service)
                    .add_service(continuum_proto::serving::reflection())
                    .serve_with_incoming_shutdown(
                        continuum_proto::serving::incoming(listener),
                        async move { stop.cancelled().await },
                    ),
            ))
        }
    };
    let metrics_task = match config.bridge.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            eprintln!(
                "metrics on http://{}/metrics (health: /healthz, /readyz)",
                listener.local_addr()?
            );
            let observed = crate::metrics::Observed::new(
                config.id().to_owned(),
                Arc::clone(&metrics),
                snapshot.clone(),
                connected.clone(),
                bridge.clone(),
            );
            // The functions' own counters join the agent's.
            if let Some(local) = &local_bus {
                crate::function_stats::follow(
                    config.id(),
                    local,
                    Arc::clone(&metrics),
                    shutdown.clone(),
                );
            }
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                observed,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let agent_task = tokio::spawn(agent.run(offers_rx, shutdown.clone()));
    let link_task = tokio::spawn(link::run(
        link_config,
        offers_tx,
        snapshot,
        progress_rx,
        connected_tx,
        shutdown.clone(),
    ));
    eprintln!(
        "continuum gateway `{}` running (data in {})",
        config.id(),
        config.data_dir.display()
    );
    shutdown.cancelled().await;
    let _ = agent_task.await;
    let _ = link_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(b) = bridge {
        b.stop().await;
    }
    if let Some(task) = local_task {
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bus_the_orchestrator_names_is_reached_through_its_host() {
        assert_eq!(orchestrator_host("http://10.0.0.5:7070"), "10.0.0.5");
        assert_eq!(orchestrator_host("edge.example:7070"), "edge.example");
        assert_eq!(orchestrator_host("http://[::1]:7070/"), "::1");
        let u = named_bus("", 1884, false, "http://10.0.0.5:7070").unwrap();
        assert_eq!(u.to_string(), "mqtt://10.0.0.5:1884");
        let u = named_bus("", 1884, false, "[::1]:7070").unwrap();
        assert_eq!(u.to_string(), "mqtt://[::1]:1884");
        let u = named_bus("mqtt://broker.example:1883", 0, false, "x:1").unwrap();
        assert_eq!(u.to_string(), "mqtt://broker.example:1883");
        assert!(named_bus("", 0, false, "x:1").is_none());
        assert!(named_bus("http://nope", 0, false, "x:1").is_none());
    }
}
