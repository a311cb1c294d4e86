//! Many simulated gateway agents in one process (`continuum gateway sim`).
//!
//! Each is a whole agent — its own store, link, admission, reconcile passes,
//! reports and fencing — on a simulated engine (`runtime::sim`) instead of
//! Docker, and without a local broker or a bridge: routes are kept in memory,
//! as a bridge would carry them. What the orchestrator sees is a fleet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use continuum_bus::args::{duration, duration_or_zero};
use continuum_proto::v1::Capabilities;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentConfig, Driver, Snapshot};
use crate::engine::EngineConfig;
use crate::link::{self, LinkConfig};
use crate::routing::MemoryRouting;
use crate::runtime::sim::{failure_rate, SimBehaviour, SimRuntime, StepTime};
use crate::store::Store;

/// The settings of `continuum gateway sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many gateways to run.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub count: usize,
    /// Their ids are PREFIX-1 to PREFIX-N (the ids of the gateway components
    /// of the megamodel's subsystems).
    #[arg(long, default_value = "sim", value_name = "PREFIX")]
    pub prefix: String,
    /// The number of the first (to run a fleet across several processes).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub first: usize,
    /// The orchestrator to dial (`host:port` or a URL; `https://` for TLS);
    /// several, separated by commas, of which one leads.
    #[arg(long, env = "CONTINUUM_SERVER", default_value = "127.0.0.1:7070")]
    pub orchestrator: String,
    /// The CA (PEM) the orchestrator's certificate is checked against.
    #[arg(long, env = "CONTINUUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Where the gateways keep their stores, one directory each.
    #[arg(long, default_value = "continuum-sim-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// How long each step of the simulated engine takes (pulling an image,
    /// creating, starting, stopping, removing a workload): a duration, or a
    /// range each step's time is drawn from.
    #[arg(long, default_value = "20ms..200ms", value_name = "MIN..MAX")]
    pub step_time: StepTime,
    /// The share of steps that fail (0 to 1).
    #[arg(long, default_value = "0", value_parser = failure_rate, value_name = "RATE")]
    pub failure_rate: f64,
    /// Seeds the draws of the step times and failures (gateway i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Reconcile at least this often (drift repair).
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub interval: Duration,
    /// How long a started workload must keep running to count as started.
    #[arg(long, default_value = "0", value_parser = duration_or_zero, value_name = "DURATION")]
    pub settle: Duration,
    /// The longest wait between two dials of the orchestrator.
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub max_backoff: Duration,
    /// A label every gateway reports with its capabilities (`key=value`,
    /// repeatable; rollouts pick canaries by label).
    #[arg(long = "label", value_parser = crate::cli::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print how many gateways are connected and on which generation this
    /// often (0: never).
    #[arg(long, default_value = "10s", value_parser = duration_or_zero, value_name = "DURATION")]
    pub summary_every: Duration,
}

impl SimArgs {
    /// The id of gateway number `n`.
    pub fn id(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }
}

/// One simulated gateway's running state, as the fleet follows it.
struct Member {
    snapshot: watch::Receiver<Snapshot>,
    connected: watch::Receiver<bool>,
}

/// Runs the fleet until `shutdown` is cancelled.
pub async fn run_until(args: SimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let numbers = args.first..args.first + args.count;
    if let Some(bad) = numbers
        .clone()
        .map(|n| args.id(n))
        .find(|id| !continuum_models::validate::is_valid_id(id))
    {
        anyhow::bail!(
            "`{bad}` is not a valid gateway id: give a --prefix of lowercase letters, digits and dashes"
        );
    }
    raise_open_files(args.count);
    let orchestrators = crate::orchestrators::Orchestrators::parse(&args.orchestrator)
        .map_err(anyhow::Error::msg)?;
    let tls = continuum_proto::tls::ClientTls::load(args.tls_ca.as_deref(), None)
        .map_err(anyhow::Error::msg)?;
    for endpoint in orchestrators.in_turn() {
        continuum_proto::tls::endpoint(endpoint, Some(&tls)).map_err(anyhow::Error::msg)?;
    }
    let behaviour = SimBehaviour {
        step: args.step_time,
        failure_rate: args.failure_rate,
    };
    let mut members = Vec::with_capacity(args.count);
    let mut tasks = tokio::task::JoinSet::new();
    for n in numbers {
        let id = args.id(n);
        let store = Store::open(&args.data_dir.join(&id))
            .with_context(|| format!("the store of simulated gateway `{id}`"))?;
        let runtime = Arc::new(SimRuntime::new(behaviour, args.seed.wrapping_add(n as u64)));
        let fencing = crate::fence::Fencing::start(shutdown.clone());
        let agent_config = AgentConfig {
            driver: Driver::Sim,
            interval: args.interval,
            engine: Arc::new(EngineConfig {
                context_root: ".".into(),
                blobs: Some(Arc::new(
                    crate::blobs::BlobCache::new(
                        args.data_dir.join(&id).join("blobs"),
                        orchestrators.clone(),
                    )
                    .with_tls(tls.clone()),
                )),
                // Function images are built FROM the function host's image,
                // which a simulated engine has.
                build_args: BTreeMap::from([(
                    crate::function_image::BUILD_ARG.to_owned(),
                    "continuum/function-host:sim".to_owned(),
                )]),
                workload_env: BTreeMap::new(),
                secrets_dir: args.data_dir.join(&id).join("secrets"),
                step_timeout: Duration::from_secs(300),
                settle: args.settle,
                routing: Arc::new(MemoryRouting::default()),
                deployers: None,
                device_ports: BTreeMap::new(),
                metrics: Arc::default(),
            }),
            fencing: Some(Arc::clone(&fencing)),
            policy: Arc::default(),
            accept_older: false,
        };
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (agent, snapshot) = Agent::new(runtime, store, agent_config, progress_tx)
            .with_context(|| format!("simulated gateway `{id}`"))?;
        let (offers_tx, offers_rx) = mpsc::channel(4);
        let (connected_tx, connected) = watch::channel(false);
        let link_config = LinkConfig {
            // Each simulated gateway moves on from a dead leader by itself.
            orchestrators: crate::orchestrators::Orchestrators::parse(&args.orchestrator)
                .map_err(anyhow::Error::msg)?,
            tls: Some(tls.clone()),
            gateway_id: id,
            version: crate::upgrade::version(),
            location: "simulated".to_owned(),
            capabilities: Capabilities {
                arch: std::env::consts::ARCH.to_owned(),
                cpus: 1,
                memory_bytes: 1 << 30,
                docker: false,
                labels: args.labels.iter().cloned().collect(),
            },
            max_backoff: args.max_backoff,
            bus: None,
            fencing: Some(fencing),
            bridge: None,
            // Simulated gateways share one process: none upgrades itself.
            agent_upgrade: None,
            agent_offers: None,
            relayed: None,
        };
        members.push(Member {
            snapshot: snapshot.clone(),
            connected: connected.clone(),
        });
        tasks.spawn(agent.run(offers_rx, shutdown.clone()));
        tasks.spawn(link::run(
            link_config,
            offers_tx,
            snapshot,
            progress_rx,
            connected_tx,
            shutdown.clone(),
        ));
    }
    eprintln!(
        "{} simulated gateways `{}` to `{}` dialling {} (steps {}, failure rate {}; data in {}); \
         the orchestrator admits each once a revision names it or --allow-gateway lists it",
        args.count,
        args.id(args.first),
        args.id(args.first + args.count.saturating_sub(1)),
        args.orchestrator,
        args.step_time,
        args.failure_rate,
        args.data_dir.display()
    );
    if !args.summary_every.is_zero() {
        let stop = shutdown.clone();
        let every = args.summary_every;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => eprintln!("{}", summary(&members)),
                }
            }
        });
    }
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How many are connected, and the generations they observe (newest first).
fn summary(members: &[Member]) -> String {
    let connected = members.iter().filter(|m| *m.connected.borrow()).count();
    let mut observed: BTreeMap<u64, usize> = BTreeMap::new();
    for m in members {
        *observed.entry(m.snapshot.borrow().observed).or_default() += 1;
    }
    let generations: Vec<String> = observed
        .iter()
        .rev()
        .map(|(g, n)| format!("{n} on generation {g}"))
        .collect();
    format!(
        "sim: {connected} of {} connected; {}",
        members.len(),
        generations.join(", ")
    )
}

/// A fleet holds a link and a store per gateway: lift the soft limit on open
/// files to the hard one (a shell's default, 1,024, is less than a fleet of
/// 1,000 needs).
fn raise_open_files(count: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = (count as u64).saturating_mul(4).saturating_add(256);
    if soft < wanted && soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(error = %e, soft, hard, "cannot raise the limit on open files");
        }
    }
    if hard < wanted {
        tracing::warn!(
            limit = hard,
            gateways = count,
            "the limit on open files may be too low for this many gateways"
        );
    }
}
