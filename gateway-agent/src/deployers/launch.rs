//! Keeping one deploy agent running where it belongs: started, watched,
//! started again when it stops, upgraded when the gateway's agent executable
//! is not the build it runs, removed when retired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use continuum_bus::BrokerUrl;
use tokio_util::sync::CancellationToken;

use crate::devices::AgentLink;

/// Where an agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A child process of the gateway.
    Child,
    /// A container on a Docker engine.
    Container {
        /// The engine (`unix:///var/run/docker.sock`, `tcp://host:2375`).
        endpoint: String,
    },
    /// A copy started over SSH.
    Ssh {
        /// The machine.
        address: String,
        /// Its SSH port.
        port: u16,
        /// The login.
        user: Option<String>,
    },
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Child => f.write_str("a child process"),
            Placement::Container { endpoint } => write!(f, "a container on {endpoint}"),
            Placement::Ssh {
                address,
                port,
                user,
            } => write!(
                f,
                "ssh {}{address}:{port}",
                user.as_deref().map_or(String::new(), |u| format!("{u}@"))
            ),
        }
    }
}

/// Everything needed to start one agent.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Its id.
    pub id: String,
    /// Where.
    pub placement: Placement,
    /// The serial ports it needs (passed through into a container).
    pub ports: Vec<PathBuf>,
    /// The executable the gateway deploys.
    pub program: PathBuf,
    /// The broker as the agent reaches it.
    pub broker: BrokerUrl,
    /// A child agent's state directory.
    pub state_dir: PathBuf,
    /// The key firmware must be signed with.
    pub trusted_key: Option<String>,
    /// OpenSSH client configuration.
    pub ssh_config: Option<PathBuf>,
    /// Where SSH copies live.
    pub remote_dir: String,
}

impl Launch {
    /// The agent's arguments after `serve`, wherever it runs (`state` is its
    /// state directory there).
    pub fn serve_args(&self, state: &str) -> Vec<String> {
        let mut args = vec![
            "serve".to_owned(),
            "--id".to_owned(),
            self.id.clone(),
            "--state-dir".to_owned(),
            state.to_owned(),
        ];
        if let Some(k) = &self.trusted_key {
            args.extend(["--trusted-key".to_owned(), k.clone()]);
        }
        args
    }
}

/// An agent started by one of the placements.
pub enum Running {
    /// A child process (its standard input held open: the agent stops when
    /// the gateway goes).
    Child(super::child::Child),
    /// A container.
    Container(super::container::Container),
    /// A process on another machine.
    Ssh(super::ssh::Remote),
}

impl Running {
    /// Returns when the agent stopped by itself.
    async fn exited(&mut self, link: &AgentLink) {
        match self {
            Running::Child(c) => c.exited().await,
            Running::Container(c) => c.exited().await,
            // Over SSH the broker tells: the agent's will says offline.
            Running::Ssh(_) => {
                let mut status = link.status();
                let _ = status.wait_for(|s| s.online).await;
                let _ = status.wait_for(|s| !s.online).await;
            }
        }
    }

    /// Stops it, removing what was started.
    async fn remove(self) {
        match self {
            Running::Child(c) => c.stop().await,
            Running::Container(c) => c.remove().await,
            Running::Ssh(r) => r.stop().await,
        }
    }
}

/// The build id of the agent executable at `program` now, remembered by its
/// size and modification time so it is hashed only when it changed.
#[derive(Default)]
struct Builds {
    seen: Option<(u64, SystemTime, String)>,
}

impl Builds {
    fn of(&mut self, program: &std::path::Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(program)?;
        let stamp = (meta.len(), meta.modified()?);
        if let Some((len, at, build)) = &self.seen {
            if (*len, *at) == stamp {
                return Ok(build.clone());
            }
        }
        let build = continuum_deploy_agent::service::build_of(&std::fs::read(program)?);
        self.seen = Some((stamp.0, stamp.1, build.clone()));
        Ok(build)
    }
}

/// Runs agent `launch` until `stop`, then removes it.
pub async fn supervise(launch: Launch, link: Arc<AgentLink>, stop: CancellationToken) {
    let span = tracing::info_span!("deploy_agent", agent = %launch.id, on = %launch.placement);
    let mut builds = Builds::default();
    let mut backoff = Duration::from_secs(1);
    loop {
        let build = match builds.of(&launch.program) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(parent: &span, program = %launch.program.display(), error = %e, "cannot read the deploy agent's executable");
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        let started = tokio::select! {
            () = stop.cancelled() => return,
            r = start(&launch, &build) => r,
        };
        let mut running = match started {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(parent: &span, error = %e, "cannot start the deploy agent");
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(parent: &span, build = &build[..build.len().min(12)], "deploy agent running");
        let upgrade = async {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut status = link.status();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = status.changed() => {}
                }
                let now = match builds.of(&launch.program) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                let reported = status.borrow().clone();
                // A new executable, or an agent that says it runs another
                // build than the one started (an old one left running).
                if now != build
                    || (reported.online && reported.build.as_ref().is_some_and(|b| *b != build))
                {
                    return now;
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => {
                running.remove().await;
                tracing::info!(parent: &span, "deploy agent removed");
                return;
            }
            () = running.exited(&link) => {
                tracing::warn!(parent: &span, "the deploy agent stopped; starting it again");
                if pause(&stop, &mut backoff).await {
                    running.remove().await;
                    return;
                }
            }
            next = upgrade => {
                tracing::info!(parent: &span, from = &build[..build.len().min(12)], to = &next[..next.len().min(12)], "upgrading the deploy agent");
                running.remove().await;
                backoff = Duration::from_secs(1);
            }
        }
    }
}

/// Waits `backoff` (doubling it, up to 30 s); true if stopped meanwhile.
async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(30));
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

async fn start(launch: &Launch, build: &str) -> Result<Running, String> {
    match &launch.placement {
        Placement::Child => super::child::start(launch).map(Running::Child),
        Placement::Container { endpoint } => super::container::start(launch, endpoint, build)
            .await
            .map(Running::Container),
        Placement::Ssh { .. } => super::ssh::start(launch, build).await.map(Running::Ssh),
    }
}
