//! `continuum serve`: the orchestrator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use continuum_orchestrator::access::ApiAccess;
use continuum_orchestrator::Config;
use continuum_proto::tls::ServerTls;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on for clients and gateways.
    #[arg(long, env = "CONTINUUM_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the orchestrator keeps its database (created if missing).
    #[arg(long, env = "CONTINUUM_DATA_DIR", default_value = "continuum-data")]
    pub data_dir: PathBuf,
    /// Gateways send a heartbeat this often; three missed end the link.
    #[arg(long, default_value = "5s", value_parser = continuum_bus::args::duration, value_name = "DURATION")]
    pub heartbeat_interval: Duration,
    /// The largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message_bytes: usize,
    /// How many events are kept for `watch --after` to resume from.
    #[arg(long, default_value_t = 100_000)]
    pub event_retention: u64,
    /// How long a gateway may hold no link before the functions placement put
    /// on it move to other gateways (0s: never).
    #[arg(long, default_value = "5m", value_parser = continuum_bus::args::duration_or_zero, value_name = "DURATION")]
    pub placement_grace: Duration,
    #[command(flatten)]
    pub bus: continuum_bus::args::BusArgs,
    /// An external global bus (`mqtt://host[:port]`) instead of the embedded
    /// one; gateways are told where it is (they bring their own credentials).
    #[arg(long, env = "CONTINUUM_BUS_URL", value_name = "URL")]
    pub bus_url: Option<continuum_bus::BrokerUrl>,
    /// Serve the API and the embedded bus on addresses other than loopback
    /// although they are plain text or unauthenticated (a trusted network
    /// only; said loudly at start).
    #[arg(long)]
    pub insecure: bool,
    /// The orchestrator's TLS certificate (PEM, chain first); with
    /// --tls-key, the API and the gateway links are served over TLS.
    #[arg(
        long,
        env = "CONTINUUM_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(
        long,
        env = "CONTINUUM_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The CA gateways' certificates come from (`continuum certs init`):
    /// a gateway then registers only as the id its certificate names.
    #[arg(
        long,
        env = "CONTINUUM_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// The bearer tokens the client API accepts, with their roles
    /// (`continuum token`), read again on SIGHUP; without it anyone who
    /// reaches the API may use it.
    #[arg(long, env = "CONTINUUM_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// A gateway id admitted although no model names it (repeatable); other
    /// unnamed ids wait, unregistered, until a revision names them.
    #[arg(long = "allow-gateway", value_name = "ID")]
    pub allow_gateways: Vec<String>,
    /// The workload policy (JSON): which subsystems' containers may mount
    /// host paths, the Docker socket or system directories, map devices, or
    /// share the host's or another container's network. Without one: none
    /// of these.
    #[arg(long, env = "CONTINUUM_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Keep the state in etcd instead of the data directory's database:
    /// `etcd://[user:password@]host:port[,host:port…][/prefix]`. Orchestrators given the same
    /// store elect one leader; the others stand by (not listening) and one
    /// of them takes over when it stops or dies. Uploaded blobs stay in each
    /// one's data directory.
    #[arg(long, env = "CONTINUUM_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// With an etcd store: how long a leader that can no longer renew its
    /// lease (it died, or lost etcd) keeps the lead before a standby takes over.
    #[arg(long, default_value = "5s", value_parser = continuum_bus::args::duration, value_name = "DURATION")]
    pub lease_ttl: Duration,
    /// Serve as the gateways of a higher orchestrator (a tier above; `host:port`
    /// or a URL, several separated by commas): every gateway that dials
    /// this one unnamed is registered above under its id, the targets above
    /// sends for it are applied here, and how it runs is reported up.
    #[arg(
        long,
        env = "CONTINUUM_UPSTREAM",
        value_name = "URL",
        requires = "region"
    )]
    pub upstream: Option<String>,
    /// This orchestrator's name, shown by the tier above as where its gateways are.
    #[arg(long, env = "CONTINUUM_REGION", value_name = "NAME")]
    pub region: Option<String>,
    /// The CA (PEM) the tier above's certificate is checked against.
    #[arg(long, value_name = "FILE", requires = "upstream")]
    pub upstream_ca: Option<PathBuf>,
}

/// What of the gRPC port is left open to whoever reaches it.
fn gaps(tls: Option<&ServerTls>, api: &ApiAccess) -> Vec<&'static str> {
    let mut gaps = Vec::new();
    match tls {
        None => gaps.push("plain text (no --tls-cert): tokens and models cross the network readable"),
        Some(t) if !t.verifies_clients() => {
            gaps.push("gateways are not authenticated (no --tls-client-ca): any client may register as any gateway")
        }
        Some(_) => {}
    }
    if api.is_open() {
        gaps.push("the client API takes no token (no --tokens): anyone may apply and roll back");
    }
    gaps
}

/// The warnings to print for the API's address, or why not to start: with
/// every gap closed it may listen anywhere; with gaps, on loopback (said
/// loudly), or elsewhere only with --insecure.
fn api_exposure(listen: SocketAddr, gaps: &[&str], insecure: bool) -> anyhow::Result<Vec<String>> {
    if gaps.is_empty() {
        return Ok(Vec::new());
    }
    let list = gaps.join("; ");
    if listen.ip().is_loopback() {
        return Ok(vec![format!(
            "NOTE: local development mode on {listen}: {list}. Only this machine can reach it."
        )]);
    }
    anyhow::ensure!(
        insecure,
        "refusing to serve the API on {listen}: {list}. Close these (continuum certs init, continuum token), listen on a loopback address, or pass --insecure on a network you trust"
    );
    Ok(vec![format!(
        "WARNING: the API on {listen} is exposed: {list}. Use this only on a network you trust."
    )])
}

/// The tokens file's tokens; a file that lists none is refused (nobody
/// could use the API).
fn tokens(path: &std::path::Path) -> anyhow::Result<ApiAccess> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the tokens file {}", path.display()))?;
    let tokens = continuum_orchestrator::access::Tokens::from_json(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        !tokens.is_empty(),
        "{} lists no token: nobody could use the API (add one with `continuum token`)",
        path.display()
    );
    Ok(ApiAccess::Tokens(tokens))
}

/// Reads the tokens file again on every SIGHUP: a token added or removed
/// counts from then on, without a restart. A file that does not read keeps
/// the tokens held.
fn reload_on_hangup(
    path: PathBuf,
    access: continuum_orchestrator::access::SharedAccess,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tokens(&path) {
                Ok(t) => {
                    access.replace(t);
                    eprintln!("tokens reloaded from {}", path.display());
                }
                Err(e) => eprintln!("tokens kept: {e:#}"),
            }
        }
    });
    Ok(())
}

/// glibc's malloc gives each thread that contends an arena of its own, up to
/// eight per core, and keeps what is freed in each: an orchestrator serving
/// thousands of links grew half again in resident size that way (324 against
/// 248 MiB at 1,000 gateways with two arenas, the same rollout time). glibc
/// reads `MALLOC_ARENA_MAX` only as the process starts, so when it is not set
/// the server starts itself again (same process) with two.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let Ok(me) = std::env::current_exe() else {
            return;
        };
        let e = std::process::Command::new(me)
            .args(std::env::args_os().skip(1))
            .env("MALLOC_ARENA_MAX", "2")
            .exec();
        // Not replaced: serve as it is.
        tracing::debug!(error = %e, "cannot restart with two malloc arenas");
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::load(cert, key, args.tls_client_ca.as_deref())
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let api = match &args.tokens {
        None => ApiAccess::Open,
        Some(path) => tokens(path)?,
    };
    for id in &args.allow_gateways {
        continuum_orchestrator::core::check_gateway_id(id).map_err(anyhow::Error::msg)?;
    }
    let mut warnings = api_exposure(args.listen, &gaps(tls.as_ref(), &api), args.insecure)?;
    if args.bus_url.is_none() {
        warnings.extend(
            args.bus
                .exposure(args.insecure)
                .map_err(anyhow::Error::msg)?,
        );
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    let mut config = Config::new(args.listen, args.data_dir);
    if let Some(url) = &args.store {
        let mut etcd =
            continuum_orchestrator::store::etcd::EtcdConfig::parse(url, &args.listen.to_string())
                .map_err(anyhow::Error::msg)?;
        etcd.lease_ttl = args.lease_ttl;
        config.etcd = Some(etcd);
    }
    config.tls = tls;
    config.api = api;
    config.allow_gateways = args.allow_gateways.into_iter().collect();
    if let Some(path) = &args.policy {
        config.policy = continuum_models::policy::Policy::load(path).map_err(anyhow::Error::msg)?;
    }
    config.heartbeat_interval = args.heartbeat_interval;
    config.max_message_bytes = args.max_message_bytes;
    config.event_retention = args.event_retention;
    config.placement_grace = args.placement_grace;
    config.bus = args.bus.config().filter(|_| args.bus_url.is_none());
    config.bus_url = args.bus_url.as_ref().map(|u| {
        // Without credentials: each gateway has its own.
        let mut u = u.clone();
        u.credentials = None;
        u.to_string()
    });
    let tier = match &args.upstream {
        None => None,
        Some(list) => Some(crate::tier::TierConfig {
            above: continuum_gateway::orchestrators::Orchestrators::parse(list)
                .map_err(|e| anyhow::anyhow!("--upstream: {e}"))?,
            tls: args
                .upstream_ca
                .as_deref()
                .map(|ca| continuum_proto::tls::ClientTls::load(Some(ca), None))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--upstream-ca: {e}"))?,
            region: match args.region.as_deref().map(str::trim) {
                Some(r) if !r.is_empty() => r.to_owned(),
                _ => anyhow::bail!(
                    "--region: a name is needed (the tier above shows it as where the gateways are)"
                ),
            },
            data_dir: config.data_dir.join("tier"),
            max_backoff: Duration::from_secs(10),
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let running = continuum_orchestrator::start(config.clone()).await?;
        if let Some(tier) = tier {
            eprintln!(
                "serving as the gateways of {} (region {})",
                tier.above, tier.region
            );
            crate::tier::start(running.orchestrator(), tier)?;
        }
        if let Some(path) = &args.tokens {
            reload_on_hangup(path.clone(), running.access())?;
        }
        eprintln!(
            "continuum orchestrator listening on {} ({}; {})",
            running.local_addr(),
            match &config.tls {
                Some(t) if t.verifies_clients() => "TLS, gateways by certificate",
                Some(_) => "TLS",
                None => "plain text",
            },
            match &args.store {
                Some(url) => format!("leading, state in {url}"),
                None => format!("data in {}", config.data_dir.display()),
            }
        );
        eprintln!(
            "dashboard, metrics and health on {}://{}/ (/metrics, /healthz, /readyz)",
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            running.local_addr()
        );
        if let Some(url) = &config.bus_url {
            eprintln!("global bus (MQTT): {url} (external)");
        }
        if let Some(bus) = &config.bus {
            eprintln!(
                "global bus (MQTT) on {} (3.1.1) and {} (5){}",
                bus.v4.map(|a| a.to_string()).unwrap_or_default(),
                bus.v5.map(|a| a.to_string()).unwrap_or_default(),
                bus.tls
                    .as_ref()
                    .map(|t| format!(", {} (5 over TLS)", t.listen))
                    .unwrap_or_default()
            );
        }
        let signal = shutdown_signal()?;
        running
            .run_until(async move {
                signal.await;
                eprintln!("stopping: closing links and the store");
            })
            .await
            .context("the server failed")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Completes on Ctrl-C or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
