//! The gateway's deploy agents: one per machine that leaf devices are wired
//! to. From the target model the gateway works out which machine each
//! device hangs off (an `is_deployer` link, else its single physical link),
//! runs an agent there — a child process on its own machine, a container on
//! the machine's Docker engine with the serial ports passed through, or a
//! copy started over SSH — hands it its proxies and sends it flash orders.
//! Agents no device needs any more are removed; an agent whose executable is
//! not the one the gateway deploys is upgraded.

mod child;
mod container;
mod launch;
mod ssh;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::BrokerUrl;
use continuum_deploy_agent::job::Request;
use continuum_deploy_agent::proxy::ProxySpec;
use continuum_deploy_agent::service::DeviceReport;
use continuum_models::component::Access;
use continuum_models::{Component, ComponentSpec, DeploymentModel};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::devices::{AgentLink, DeviceView};

pub use container::{image as container_image, name as container_name};
pub use launch::Placement;

/// How the gateway runs its deploy agents.
#[derive(Debug, Clone)]
pub struct DeployersConfig {
    /// The agent executable the gateway deploys (static, to run in a
    /// container FROM scratch).
    pub program: PathBuf,
    /// The gateway's id: the agent on its own machine has it, others are
    /// `<gateway>.<machine>`.
    pub gateway: String,
    /// The local broker, as the gateway reaches it.
    pub broker: BrokerUrl,
    /// The local broker as agents on other machines reach it (the gateway's
    /// own address by default).
    pub agent_broker: Option<BrokerUrl>,
    /// Where the child agent keeps its records (the one agent on the
    /// gateway's own machine; others keep theirs on their machine).
    pub state_dir: PathBuf,
    /// The key firmware must be signed with, if any.
    pub trusted_key: Option<String>,
    /// Flashes at once across all of this gateway's agents.
    pub max_flashes: usize,
    /// An OpenSSH client configuration for machines reached over SSH.
    pub ssh_config: Option<PathBuf>,
    /// Where agents copied over SSH live on their machine (relative to the
    /// login's home unless absolute).
    pub remote_dir: String,
}

/// What one agent is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    placement: Placement,
    ports: BTreeSet<PathBuf>,
    proxies: Vec<ProxySpec>,
}

/// A running agent: its link and its supervisor.
struct Agent {
    link: Arc<AgentLink>,
    placement: Placement,
    ports: BTreeSet<PathBuf>,
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
}

/// The gateway's deploy agents.
pub struct Deployers {
    config: DeployersConfig,
    agents: Mutex<BTreeMap<String, Agent>>,
    /// The running agents' links, readable while `agents` is busy.
    links: std::sync::Mutex<BTreeMap<String, Arc<AgentLink>>>,
    /// The agent each device was last found behind.
    device_agent: std::sync::Mutex<BTreeMap<String, String>>,
    flashes: Semaphore,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Deployers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployers")
            .field("gateway", &self.config.gateway)
            .finish_non_exhaustive()
    }
}

impl Deployers {
    /// No agent runs until a target needs one.
    pub fn new(config: DeployersConfig, shutdown: CancellationToken) -> Arc<Deployers> {
        let flashes = Semaphore::new(config.max_flashes.max(1));
        Arc::new(Deployers {
            config,
            agents: Mutex::new(BTreeMap::new()),
            links: std::sync::Mutex::new(BTreeMap::new()),
            device_agent: std::sync::Mutex::new(BTreeMap::new()),
            flashes,
            shutdown,
        })
    }

    /// The agent that serves devices wired to `machine`, and how it runs.
    fn placement(&self, model: &DeploymentModel, machine: &Component) -> (String, Placement) {
        let own = matches!(machine.spec, ComponentSpec::Gateway(_))
            && model
                .components
                .iter()
                .filter(|c| matches!(c.spec, ComponentSpec::Gateway(_)))
                .count()
                <= 1;
        let access = match &machine.spec {
            ComponentSpec::Host(h) => &h.access,
            ComponentSpec::Gateway(g) => &g.access,
            _ => &Access::Local,
        };
        match access {
            _ if own => (self.config.gateway.clone(), Placement::Child),
            Access::Local => (self.config.gateway.clone(), Placement::Child),
            Access::Docker { endpoint } => (
                format!("{}.{}", self.config.gateway, machine.id),
                Placement::Container {
                    endpoint: endpoint.clone(),
                },
            ),
            Access::Ssh {
                address,
                port,
                user,
            } => (
                format!("{}.{}", self.config.gateway, machine.id),
                Placement::Ssh {
                    address: address.clone(),
                    port: *port,
                    user: user.clone(),
                },
            ),
        }
    }

    /// Which agent serves `device` in `model`.
    fn agent_for(
        &self,
        model: &DeploymentModel,
        device: &str,
    ) -> Result<(String, Placement), String> {
        let machine = crate::firmware::wired_to(model, device)?;
        Ok(self.placement(model, machine))
    }

    /// Makes the agents match `target`: one for every machine a flashed or
    /// proxied device is wired to (started, restarted with new ports, handed
    /// its proxies); the others are removed.
    pub async fn sync(&self, target: &DeploymentModel, ports: &BTreeMap<String, PathBuf>) {
        let mut needs: BTreeMap<String, Need> = BTreeMap::new();
        let mut placed: BTreeMap<String, String> = BTreeMap::new();
        let proxies = crate::proxies::specs(target, ports);
        let mut devices: BTreeSet<&str> = target
            .components
            .iter()
            .filter(|c| crate::firmware::is_firmware(c))
            .filter_map(|c| crate::firmware::device_of(target, &c.id))
            .map(|d| d.id.as_str())
            .collect();
        devices.extend(proxies.iter().map(|p| p.device.as_str()));
        for device in devices {
            let (id, placement) = match self.agent_for(target, device) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(device, "no deploy agent can reach it: {e}");
                    continue;
                }
            };
            let port = target
                .components
                .iter()
                .find(|c| c.id == device)
                .and_then(|c| match &c.spec {
                    ComponentSpec::Device(d) => Some(crate::firmware::port_of(c, d, ports)),
                    _ => None,
                });
            let need = needs.entry(id.clone()).or_insert_with(|| Need {
                placement,
                ports: BTreeSet::new(),
                proxies: Vec::new(),
            });
            need.ports.extend(port);
            need.proxies
                .extend(proxies.iter().filter(|p| p.device == device).cloned());
            placed.insert(device.to_owned(), id);
        }
        *self.device_agent.lock().expect("not poisoned") = placed;
        let mut agents = self.agents.lock().await;
        let stale: Vec<String> = agents
            .iter()
            .filter(|(id, a)| {
                needs
                    .get(*id)
                    .is_none_or(|n| n.placement != a.placement || n.ports != a.ports)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(agent) = agents.remove(&id) {
                let gone = !needs.contains_key(&id);
                tracing::info!(agent = %id, "{}", if gone { "no device needs the deploy agent any more: removing it" } else { "the deploy agent's machine or ports changed: starting it again" });
                retire(agent, gone).await;
            }
        }
        for (id, need) in needs {
            let agent = agents
                .entry(id.clone())
                .or_insert_with(|| self.start(&id, &need));
            agent.link.set_proxies(&need.proxies).await;
        }
        *self.links.lock().expect("not poisoned") = agents
            .iter()
            .map(|(id, a)| (id.clone(), Arc::clone(&a.link)))
            .collect();
    }

    fn start(&self, id: &str, need: &Need) -> Agent {
        let stop = self.shutdown.child_token();
        let link = AgentLink::connect(id, &self.config.broker, self.shutdown.child_token());
        let launch = launch::Launch {
            id: id.to_owned(),
            placement: need.placement.clone(),
            ports: need.ports.iter().cloned().collect(),
            program: self.config.program.clone(),
            broker: match need.placement {
                Placement::Child => self.config.broker.clone(),
                _ => self
                    .config
                    .agent_broker
                    .clone()
                    .unwrap_or_else(|| self.config.broker.clone()),
            },
            state_dir: self.config.state_dir.clone(),
            trusted_key: self.config.trusted_key.clone(),
            ssh_config: self.config.ssh_config.clone(),
            remote_dir: self.config.remote_dir.clone(),
        };
        let supervisor = tokio::spawn(launch::supervise(launch, Arc::clone(&link), stop.clone()));
        Agent {
            link,
            placement: need.placement.clone(),
            ports: need.ports.clone(),
            stop,
            supervisor,
        }
    }

    /// What the agents last said of each device.
    pub fn view(&self) -> DeviceView {
        let links = self.links.lock().expect("not poisoned").clone();
        let mut view = DeviceView::default();
        for link in links.values() {
            let v = link.view();
            view.reports.extend(v.reports);
            view.ports.extend(v.ports);
        }
        view
    }

    /// Flashes firmware onto `request.device` through the agent of the
    /// machine it is wired to, at most `max_flashes` at once on this gateway.
    pub async fn flash(
        &self,
        model: &DeploymentModel,
        request: Request,
        within: Duration,
        progress: &(dyn Fn(&str, u8) + Send + Sync),
    ) -> Result<DeviceReport, String> {
        let known = self
            .device_agent
            .lock()
            .expect("not poisoned")
            .get(&request.device)
            .cloned();
        let id = match known {
            Some(id) => id,
            None => self.agent_for(model, &request.device)?.0,
        };
        let link = self
            .links
            .lock()
            .expect("not poisoned")
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no deploy agent `{id}` runs for `{}`", request.device))?;
        let _permit = self
            .flashes
            .acquire()
            .await
            .map_err(|_| "the gateway is stopping".to_owned())?;
        link.flash(request, within, progress).await
    }

    /// The agents running now: id and where.
    pub async fn running(&self) -> Vec<(String, Placement)> {
        self.agents
            .lock()
            .await
            .iter()
            .map(|(id, a)| (id.clone(), a.placement.clone()))
            .collect()
    }
}

/// Stops an agent and waits for its supervisor to remove it; `forget` also
/// clears what the broker keeps for it (it is not coming back).
async fn retire(agent: Agent, forget: bool) {
    agent.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent.supervisor).await;
    if forget {
        agent.link.forget().await;
    } else {
        agent.link.close();
    }
}
