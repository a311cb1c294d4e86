//! Leaf devices, reached through a deploy agent: the gateway runs
//! `continuum-agent serve` beside itself (a child process, for devices wired
//! to the gateway's own host), sends it flash orders over the local broker
//! and reads back what each device runs, which makes the current model's
//! firmware components.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::BrokerUrl;
use continuum_deploy_agent::job::Request;
use continuum_deploy_agent::service::{topics, DeviceReport, Order};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How the gateway reaches its deploy agent.
#[derive(Debug, Clone)]
pub struct DeployerConfig {
    /// The agent's executable.
    pub program: PathBuf,
    /// Its id (the gateway's).
    pub id: String,
    /// The local broker.
    pub broker: BrokerUrl,
    /// Where the agent keeps its records.
    pub state_dir: PathBuf,
    /// The key firmware must be signed with, if any.
    pub trusted_key: Option<String>,
}

/// What the deploy agent last said: each device's state (by device id) and
/// whether its port is open to a proxy (by device key).
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    /// Flash states, by device id.
    pub reports: BTreeMap<String, DeviceReport>,
    /// Proxy ports open or not, by device key.
    pub ports: BTreeMap<String, bool>,
}

impl DeviceView {
    /// Whether `device`'s port is open to its proxy, if the agent said.
    pub fn port_open(&self, device: &str) -> Option<bool> {
        self.ports
            .get(&continuum_deploy_agent::state::key(device))
            .copied()
    }
}

/// The deploy agent beside the gateway, and what it says of each device.
#[derive(Debug)]
pub struct Deployer {
    id: String,
    client: AsyncClient,
    reports: watch::Receiver<BTreeMap<String, DeviceReport>>,
    /// Proxy ports open or not, by device key.
    ports: watch::Receiver<BTreeMap<String, bool>>,
    /// The proxies last handed to the agent.
    proxies: tokio::sync::Mutex<Option<String>>,
    /// Whether the agent says it is online (it takes orders only then).
    online: watch::Receiver<bool>,
    /// The agent process starts with the first order.
    agent: std::sync::Once,
    config: DeployerConfig,
    shutdown: CancellationToken,
}

impl Deployer {
    /// Follows the agent's reports until `shutdown`; the agent itself is
    /// started (and restarted if it exits) once there is something to flash.
    pub fn start(config: DeployerConfig, shutdown: CancellationToken) -> Arc<Deployer> {
        let mut o = MqttOptions::new(
            format!("continuum-gateway-deployer-{}", config.id),
            &config.broker.host,
            config.broker.port,
        );
        o.set_keep_alive(Duration::from_secs(15))
            .set_clean_start(true)
            .set_max_packet_size(Some(4 << 20));
        if let Some((u, p)) = &config.broker.credentials {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        let (tx, reports) = watch::channel(BTreeMap::new());
        let (online_tx, online) = watch::channel(false);
        let (ports_tx, ports) = watch::channel(BTreeMap::new());
        let ports_filter = format!("{}/port", topics::devices(&config.id));
        let filter = topics::devices(&config.id);
        let status = topics::status(&config.id);
        let sub = client.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => return,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        let _ = sub.subscribe(status.clone(), QoS::AtLeastOnce).await;
                        let _ = sub.subscribe(ports_filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status.as_bytes() => {
                        let up = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .is_ok_and(|v| v["state"] == "online");
                        online_tx.send_replace(up);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with(b"/port") => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let key = topic.rsplit('/').nth(1).unwrap_or_default().to_owned();
                        let open = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .is_ok_and(|v| v["open"] == true);
                        ports_tx.send_modify(|m| {
                            m.insert(key, open);
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(r) = serde_json::from_slice::<DeviceReport>(&p.payload) {
                            tx.send_modify(|m| {
                                m.insert(r.device.clone(), r);
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        });
        Arc::new(Deployer {
            id: config.id.clone(),
            client,
            reports,
            ports,
            proxies: tokio::sync::Mutex::new(None),
            online,
            agent: std::sync::Once::new(),
            config,
            shutdown,
        })
    }

    /// What the agent last said of each device.
    pub fn view(&self) -> DeviceView {
        DeviceView {
            reports: self.reports.borrow().clone(),
            ports: self.ports.borrow().clone(),
        }
    }

    fn ensure_agent(&self) {
        self.agent.call_once(|| {
            tokio::spawn(supervise(self.config.clone(), self.shutdown.clone()));
        });
    }

    /// Hands the agent the proxies to run (retained, so a restarted agent
    /// finds them); nothing is sent when they did not change.
    pub async fn set_proxies(&self, specs: &[continuum_deploy_agent::proxy::ProxySpec]) {
        let body = serde_json::to_string(specs).unwrap_or_default();
        let mut last = self.proxies.lock().await;
        if last.as_deref() == Some(body.as_str()) || (last.is_none() && specs.is_empty()) {
            return;
        }
        if !specs.is_empty() {
            self.ensure_agent();
        }
        match self
            .client
            .publish(
                topics::proxies(&self.id),
                QoS::AtLeastOnce,
                true,
                body.clone(),
            )
            .await
        {
            Ok(()) => *last = Some(body),
            Err(e) => tracing::warn!(error = %e, "cannot hand the proxies to the deploy agent"),
        }
    }

    /// Sends a flash order and waits (at most `within`) for its result,
    /// telling `progress` each stage and percent the agent reports.
    pub async fn flash(
        &self,
        request: Request,
        within: Duration,
        progress: &(dyn Fn(&str, u8) + Send + Sync),
    ) -> Result<DeviceReport, String> {
        self.ensure_agent();
        let mut online = self.online.clone();
        tokio::time::timeout(Duration::from_secs(30), online.wait_for(|up| *up))
            .await
            .map_err(|_| "the deploy agent did not come online within 30s".to_owned())?
            .map_err(|_| "the gateway is stopping".to_owned())?;
        let order = Order {
            request: format!(
                "{}-{}",
                request.device,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            flash: request,
        };
        let device = order.flash.device.clone();
        let body = serde_json::to_vec(&order).map_err(|e| e.to_string())?;
        let mut reports = self.reports.clone();
        self.client
            .publish(topics::flash(&self.id), QoS::AtLeastOnce, false, body)
            .await
            .map_err(|e| format!("cannot send the flash order: {e}"))?;
        let deadline = tokio::time::Instant::now() + within;
        let mut said: Option<(String, u8)> = None;
        loop {
            let current = reports
                .borrow_and_update()
                .get(&device)
                .filter(|r| r.request == order.request)
                .cloned();
            match current {
                Some(r) if r.state != "flashing" => return Ok(r),
                Some(r) => {
                    let now = (r.stage.clone().unwrap_or_default(), r.percent);
                    if said.as_ref() != Some(&now) {
                        progress(&now.0, now.1);
                        said = Some(now);
                    }
                }
                None => {}
            }
            match tokio::time::timeout_at(deadline, reports.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the gateway is stopping".into()),
                Err(_) => {
                    return Err(format!(
                        "the deploy agent did not finish flashing `{device}` within {within:?} (is it running?)"
                    ))
                }
            }
        }
    }
}

/// Runs the agent, and runs it again when it exits, until `shutdown`.
async fn supervise(config: DeployerConfig, shutdown: CancellationToken) {
    loop {
        let child = tokio::process::Command::new(&config.program)
            .args(["serve", "--id", &config.id])
            // In its environment, not its arguments: a password in the
            // broker's URL would show in the process list.
            .env(
                "CONTINUUM_BROKER",
                config.broker.to_string_with_credentials(),
            )
            .arg("--state-dir")
            .arg(&config.state_dir)
            .args(
                config
                    .trusted_key
                    .iter()
                    .flat_map(|k| ["--trusted-key", k.as_str()]),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(program = %config.program.display(), error = %e, "cannot start the deploy agent");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        tracing::info!(program = %config.program.display(), pid = child.id(), "deploy agent started");
        tokio::select! {
            () = shutdown.cancelled() => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return;
            }
            status = child.wait() => {
                tracing::warn!(?status, "the deploy agent exited; starting it again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
