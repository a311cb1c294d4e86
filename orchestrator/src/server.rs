//! Starting and stopping the orchestrator's gRPC server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_proto::v1::blob_service_server::BlobServiceServer;
use continuum_proto::v1::gateway_link_server::GatewayLinkServer;
use continuum_proto::v1::model_service_server::ModelServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blobs::{BlobStore, Blobs};
use crate::core::{Core, CoreConfig};
use crate::handle::Orchestrator;
use crate::store::etcd::EtcdStore;
use crate::store::{Store, StoreError};

/// Settings of `continuum serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients and gateways reach it (gRPC).
    pub listen: SocketAddr,
    /// Where its database lives.
    pub data_dir: PathBuf,
    /// How often gateways must send a heartbeat.
    pub heartbeat_interval: Duration,
    /// The largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Events kept for `Watch` resume.
    pub event_retention: u64,
    /// The global bus to embed (none: an external broker is used, or none).
    pub bus: Option<continuum_bus::BrokerConfig>,
    /// An external global bus (`mqtt://host:port`), told to gateways.
    pub bus_url: Option<String>,
    /// How long a gateway may hold no link before the functions placement put
    /// on it are moved to other gateways (zero: never).
    pub placement_grace: Duration,
    /// What workloads may reach of their hosts (mounts, devices, networks).
    pub policy: continuum_models::policy::Policy,
    /// TLS on the gRPC port (none: plain text); with a client CA, gateways
    /// must present a certificate naming their id.
    pub tls: Option<continuum_proto::tls::ServerTls>,
    /// Who may call the client API.
    pub api: crate::access::ApiAccess,
    /// Gateway ids admitted although no model names them.
    pub allow_gateways: std::collections::BTreeSet<String>,
    /// Commits wait for the disk (fsync). Off only to measure what that costs
    /// (the benchmarks): a crash could then lose accepted revisions.
    pub fsync: bool,
    /// Keep the state in etcd, shared with standby orchestrators, instead of
    /// the data directory's redb file (blobs stay in the data directory).
    pub etcd: Option<crate::store::etcd::EtcdConfig>,
}

impl Config {
    /// The settings of `continuum serve` with these addresses and defaults otherwise.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            heartbeat_interval: Duration::from_secs(5),
            max_message_bytes: 16 << 20,
            event_retention: 100_000,
            bus: None,
            bus_url: None,
            placement_grace: Duration::from_secs(300),
            policy: continuum_models::policy::Policy::default(),
            tls: None,
            api: crate::access::ApiAccess::Open,
            allow_gateways: std::collections::BTreeSet::new(),
            fsync: true,
            etcd: None,
        }
    }
}

/// Why the orchestrator did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded global bus did not start.
    #[error("the global bus: {0}")]
    Bus(#[from] continuum_bus::BrokerError),
    /// The blob store cannot be opened.
    #[error("the blob store in {dir}: {cause}")]
    Blobs {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC address cannot be listened on.
    #[error("cannot listen on {addr}: {cause}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
}

/// Why a running orchestrator stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// Its etcd lease ended: another orchestrator may lead now.
    #[error("this orchestrator no longer leads: its etcd lease ended (another orchestrator may lead now); it stopped serving")]
    Deposed,
}

/// A running orchestrator.
#[derive(Debug)]
pub struct Running {
    local_addr: SocketAddr,
    /// Cancelled when it may no longer lead (etcd only).
    deposed: Option<CancellationToken>,
    access: crate::access::SharedAccess,
    /// The handle the process may use in-process (see [`crate::embed`]).
    orchestrator: Orchestrator,
    stop: CancellationToken,
    tasks: TaskTracker,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    closed: tokio::sync::oneshot::Receiver<()>,
}

/// Moves the functions placed on gateways that stay away past `grace`,
/// checking a few times per grace period.
async fn move_from_away(orch: Orchestrator, grace: Duration, stop: CancellationToken) {
    let every = (grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    let mut last_stuck = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match orch
            .transact(move |core, _, now| core.move_from_away(now, grace_ms))
            .await
        {
            Ok(crate::core::Moved::Nothing) => {}
            Ok(crate::core::Moved::Moved(message)) => tracing::info!(%message, "functions moved"),
            Ok(crate::core::Moved::Stuck(why)) if why != last_stuck => {
                tracing::warn!(%why, "functions on a gateway that went away cannot move");
                last_stuck = why;
            }
            Ok(crate::core::Moved::Stuck(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot move functions off gateways that went away")
            }
        }
    }
}

/// How long a blob no revision names is kept (an upload is followed by its apply).
const BLOB_GRACE: Duration = Duration::from_secs(3600);

/// Removes the blobs no stored revision names (kept: every revision's, and
/// the agent build on offer).
fn collect_blobs(store: &Store, blobs: &BlobStore, head: u64, offered: Option<String>) {
    let mut keep: std::collections::HashSet<String> = offered.into_iter().collect();
    for n in 1..=head {
        let Ok(Some(r)) = store.revision(n) else {
            continue;
        };
        if let Ok(mm) = serde_json::from_slice::<continuum_models::Megamodel>(&r.megamodel) {
            keep.extend(
                continuum_models::artefact::of_megamodel(&mm)
                    .into_iter()
                    .filter_map(|r| r.digest),
            );
        }
    }
    match blobs.collect(&keep, BLOB_GRACE) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "blobs no revision names were removed"),
        Err(e) => tracing::warn!(error = %e, "cannot collect unused blobs"),
    }
}

/// Opens the store, loads the state and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let (mut store, deposed) = match &config.etcd {
        None => {
            if !config.fsync {
                tracing::warn!(
                    "commits do not wait for the disk: a crash may lose accepted changes"
                );
            }
            (Store::open_redb(&config.data_dir, config.fsync)?, None)
        }
        Some(etcd) => {
            tracing::info!(store = %etcd.endpoints.join(","), prefix = %etcd.prefix, "campaigning to lead");
            let leading = EtcdStore::lead(etcd.clone(), |leader| {
                tracing::warn!(%leader, "standing by: another orchestrator leads");
            })
            .await?;
            tracing::info!("leading: loading the state from etcd");
            let lost = leading.lost();
            (Store::with_backend(leading), Some(lost))
        }
    };
    let closed = store.on_close();
    let store = Arc::new(store);
    let snapshot = store.load()?;
    let oldest = store.first_seq()?;
    let core = Core::from_snapshot(
        snapshot,
        oldest,
        CoreConfig {
            event_retention: config.event_retention,
            heartbeat_interval_ms: u64::try_from(config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            bus_url: config.bus_url.clone().unwrap_or_default(),
            // The TLS listener when there is one: gateways are on other machines.
            bus_port: config
                .bus
                .as_ref()
                .and_then(|b| b.tls.as_ref().map(|t| t.listen).or(b.v5))
                .map_or(0, |a| u32::from(a.port())),
            bus_tls: config.bus.as_ref().is_some_and(|b| b.tls.is_some()),
        },
    )
    .map_err(|what| StoreError::Corrupt {
        at: store.location(),
        what,
    })?;
    let blobs = Arc::new(
        BlobStore::open(&config.data_dir)
            .map_err(|cause| StartError::Blobs {
                dir: config.data_dir.join("blobs"),
                cause,
            })?
            .shared_through(Arc::clone(&store)),
    );
    let offered = core.agent_offer().map(|o| o.sha256.clone());
    collect_blobs(&store, &blobs, core.head_number(), offered);
    if let Some(bus) = &config.bus {
        continuum_bus::EmbeddedBroker::start(bus.clone())?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|cause| StartError::Listen {
            addr: config.listen,
            cause,
        })?;
    let local_addr = listener.local_addr().map_err(|cause| StartError::Listen {
        addr: config.listen,
        cause,
    })?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let orch = Orchestrator::new(
        core,
        store,
        stop.clone(),
        tasks.clone(),
        config.heartbeat_interval,
    )
    .with_blobs(Arc::clone(&blobs))
    .with_policy(config.policy.clone());
    let certified_gateways = config
        .tls
        .as_ref()
        .is_some_and(continuum_proto::tls::ServerTls::verifies_clients);
    let access = crate::access::SharedAccess::new(config.api.clone());
    let orch = orch.with_access(
        access.clone(),
        crate::admission::GatewayAdmission {
            require_certificate: certified_gateways,
            allow: config.allow_gateways.clone(),
        },
    );
    let blob_service =
        BlobServiceServer::new(Blobs::new(blobs).with_access(orch.api.clone(), certified_gateways));
    if !config.placement_grace.is_zero() {
        tasks.spawn(move_from_away(
            orch.clone(),
            config.placement_grace,
            stop.clone(),
        ));
    }
    let limit = config.max_message_bytes;
    let models = ModelServiceServer::new(orch.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let http = crate::http::router(orch.clone());
    let link = GatewayLinkServer::new(orch.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let until = stop.clone();
    // The store is open and the state loaded: both services are ready.
    let (health, health_service) = continuum_proto::serving::health();
    health
        .set_serving::<ModelServiceServer<Orchestrator>>()
        .await;
    health
        .set_serving::<GatewayLinkServer<Orchestrator>>()
        .await;
    health.set_serving::<BlobServiceServer<Blobs>>().await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.config())
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    // One port for both: gRPC (HTTP/2) and the dashboard, metrics and
    // health checks (HTTP/1.1 or HTTP/2), under the same TLS.
    let routes = tonic::service::Routes::from(http)
        .add_service(models)
        .add_service(link)
        .add_service(blob_service)
        .add_service(health_service)
        .add_service(continuum_proto::serving::reflection());
    let task = tokio::spawn(
        builder
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                continuum_proto::serving::incoming(listener),
                async move {
                    until.cancelled().await;
                },
            ),
    );
    tracing::info!(%local_addr, data_dir = %config.data_dir.display(), "orchestrator serving");
    Ok(Running {
        local_addr,
        orchestrator: orch,
        deposed,
        access,
        stop,
        tasks,
        task,
        closed,
    })
}

impl Running {
    /// Where it listens (the port chosen, when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The client API's access, to replace while serving (new tokens).
    pub fn access(&self) -> crate::access::SharedAccess {
        self.access.clone()
    }

    /// The orchestrator, to ask in-process (see [`crate::embed`]).
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// Ends every stream, stops serving, and returns once the store is closed.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.run_until(std::future::ready(())).await
    }

    /// Serves until `signal` completes (then stops as [`Running::stop`] does),
    /// the server fails, or it may no longer lead.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Running {
            stop,
            tasks,
            mut task,
            closed,
            deposed,
            ..
        } = self;
        let lost = async {
            match &deposed {
                Some(d) => d.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let mut was_deposed = false;
        let finished = tokio::select! {
            r = &mut task => Some(r),
            () = signal => None,
            () = lost => {
                was_deposed = true;
                None
            }
        };
        stop.cancel();
        let served = match finished {
            Some(r) => r,
            None => (&mut task).await,
        };
        tasks.close();
        tasks.wait().await;
        // The connections the server spawned may still be dropping what they
        // hold (the store among it) after it returns: the file is closed, and
        // may be opened again, only once the store is gone.
        if tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .is_err()
        {
            tracing::warn!("the store is still in use 10 s after the server stopped");
        }
        if was_deposed {
            return Err(ServeError::Deposed);
        }
        match served {
            Ok(r) => Ok(r?),
            Err(e) => {
                tracing::error!(error = %e, "the server task failed");
                Ok(())
            }
        }
    }
}
