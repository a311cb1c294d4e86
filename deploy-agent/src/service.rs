//! The agent as a service (`continuum-agent serve`): it joins the gateway's
//! local MQTT broker and takes its orders there.
//!
//! * `continuum/agents/<id>/flash` — a flash order (a [`Request`] and a
//!   `request` id). Orders run a few at once; each takes its port from the
//!   device's proxy for the time it runs.
//! * `continuum/agents/<id>/devices/<device>` (retained) — the device's
//!   state as the agent last saw it: flashing (stage, percent), running,
//!   unchanged, failed or rolled back, with the firmware's hash and why.
//! * `continuum/agents/<id>/proxies` (retained, written by the gateway) —
//!   the proxies to run; a proxy publishes its device's lines on its topic
//!   and writes what arrives on `<topic>/in` to the device.
//! * `continuum/agents/<id>/status` (retained) — online, with the agent's
//!   version; offline by its will.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::flash::{Outcome, Stage};
use crate::job::{self, Request};
use crate::proxy::{self, Leases, ProxySpec};
use crate::state::{key, State};

/// The topics of agent `id`.
pub mod topics {
    /// Flash orders.
    pub fn flash(id: &str) -> String {
        format!("continuum/agents/{id}/flash")
    }
    /// The state of `device` (retained).
    pub fn device(id: &str, device: &str) -> String {
        format!(
            "continuum/agents/{id}/devices/{}",
            crate::state::key(device)
        )
    }
    /// Every device's state.
    pub fn devices(id: &str) -> String {
        format!("continuum/agents/{id}/devices/+")
    }
    /// The proxies to run (retained).
    pub fn proxies(id: &str) -> String {
        format!("continuum/agents/{id}/proxies")
    }
    /// The agent's presence (retained).
    pub fn status(id: &str) -> String {
        format!("continuum/agents/{id}/status")
    }
}

/// A flash order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The orderer's id for it, repeated in every report.
    pub request: String,
    /// What to flash.
    #[serde(flatten)]
    pub flash: Request,
}

/// What the agent says of a device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The order this report answers (empty: the port's state only).
    #[serde(default)]
    pub request: String,
    /// The device.
    pub device: String,
    /// `flashing`, `running`, `unchanged`, `failed`, `rolled_back`.
    pub state: String,
    /// The stage while flashing, or where it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// How far a flash is.
    #[serde(default)]
    pub percent: u8,
    /// The firmware's SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Why it failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The health line that confirmed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

impl DeviceReport {
    fn of(request: &str, report: &job::Report) -> DeviceReport {
        let mut r = DeviceReport {
            request: request.to_owned(),
            device: report.device.clone(),
            firmware: Some(report.firmware.clone()),
            percent: 100,
            ..DeviceReport::default()
        };
        match &report.outcome {
            Outcome::Done { health } => {
                r.state = "running".into();
                r.health = health.clone();
            }
            Outcome::Unchanged => r.state = "unchanged".into(),
            Outcome::RolledBack { reason } => {
                r.state = "rolled_back".into();
                r.reason = Some(reason.clone());
            }
            Outcome::Failed { stage, reason } => {
                r.state = "failed".into();
                r.stage = Some(stage.to_string());
                r.reason = Some(reason.clone());
            }
        }
        r
    }
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's id (its topics).
    pub id: String,
    /// The gateway's local broker.
    pub broker: BrokerUrl,
    /// Where it remembers devices.
    pub state_dir: PathBuf,
    /// The key firmware must be signed with, if any.
    pub trusted_key: Option<String>,
    /// Flashes at once.
    pub max_flashes: usize,
    /// What the agent's executable hashes to ([`own_build`]): the gateway
    /// upgrades an agent whose build is not the one it deploys.
    pub build: String,
}

/// The SHA-256 of the running executable, in hex (empty if it cannot be read).
pub fn own_build() -> String {
    std::env::current_exe()
        .and_then(std::fs::read)
        .map(|bytes| build_of(&bytes))
        .unwrap_or_default()
}

/// The build id of an agent executable's bytes.
pub fn build_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another agent serves from the same state directory.
    #[error("another deploy agent runs on {0} (it holds agent.lock): two agents would fight over the same devices")]
    Taken(PathBuf),
    /// The state directory cannot be used.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A running proxy.
struct Running {
    spec: ProxySpec,
    stop: Arc<AtomicBool>,
    writes: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Serves until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let io = |path: PathBuf| move |source| ServeError::Io { path, source };
    let state = Arc::new(State::open(&config.state_dir).map_err(io(config.state_dir.clone()))?);
    // Held for as long as the agent serves: a second agent on these devices
    // (an orphan of a gateway that crashed, a copy started by hand) stops here.
    let lock_path = config.state_dir.join("agent.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(lock_path.clone()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(ServeError::Taken(config.state_dir.clone()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(lock_path)(e)),
    }
    let mut o = MqttOptions::new(
        format!("continuum-agent-{}", config.id),
        &config.broker.host,
        config.broker.port,
    );
    o.set_keep_alive(Duration::from_secs(15))
        .set_clean_start(true)
        .set_network_options(continuum_bus::client::network_options(10))
        // Orders carry their firmware (an Uno's is at most ~90 KB in hex).
        .set_max_packet_size(Some(4 << 20))
        .set_last_will(LastWill::new(
            topics::status(&config.id),
            r#"{"state":"offline"}"#,
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if let Some((u, p)) = &config.broker.credentials {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    let leases = Arc::new(Leases::default());
    let flashes = Arc::new(Semaphore::new(config.max_flashes.max(1)));
    let (proxy_tx, mut proxy_rx) = mpsc::unbounded_channel::<proxy::Event>();
    let mut proxies: HashMap<String, Running> = HashMap::new();
    let id = config.id.clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(ev) = proxy_rx.recv() => match ev {
                proxy::Event::Line { topic, line } => {
                    let _ = client.publish(topic, QoS::AtLeastOnce, false, line).await;
                }
                proxy::Event::Port { device, open, why } => {
                    tracing::info!(%device, open, why = why.as_deref().unwrap_or(""), "device port");
                    let topic = format!("{}/port", topics::device(&id, &device));
                    let body = serde_json::json!({"open": open, "why": why}).to_string();
                    let _ = client.publish(topic, QoS::AtLeastOnce, true, body).await;
                }
            },
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(topics::flash(&id), QoS::AtLeastOnce).await;
                    let _ = client.subscribe(topics::proxies(&id), QoS::AtLeastOnce).await;
                    for r in proxies.values() {
                        let _ = client.subscribe(format!("{}/in", r.spec.topic), QoS::AtLeastOnce).await;
                    }
                    let status = serde_json::json!({
                        "state": "online",
                        "version": env!("CARGO_PKG_VERSION"),
                        "build": config.build,
                        "pid": std::process::id(),
                    });
                    let _ = client.publish(topics::status(&id), QoS::AtLeastOnce, true, status.to_string()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    if topic == topics::flash(&id) {
                        order(&config, &client, &state, &leases, &flashes, &p.payload);
                    } else if topic == topics::proxies(&id) {
                        let specs: Vec<ProxySpec> = match serde_json::from_slice(&p.payload) {
                            Ok(s) => s,
                            Err(e) if p.payload.is_empty() => { let _ = e; Vec::new() }
                            Err(e) => {
                                tracing::warn!(error = %e, "proxies: not a list of proxies; ignored");
                                continue;
                            }
                        };
                        reconcile(&client, &mut proxies, specs, &leases, &proxy_tx).await;
                    } else if let Some(base) = topic.strip_suffix("/in") {
                        if let Some(r) = proxies.values().find(|r| r.spec.topic == base) {
                            let mut bytes = p.payload.to_vec();
                            if !bytes.ends_with(b"\n") {
                                bytes.push(b'\n');
                            }
                            let _ = r.writes.send(bytes);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(broker = %config.broker, error = %e, "broker connection lost");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            },
        }
    }
    let _ = client
        .publish(
            topics::status(&id),
            QoS::AtLeastOnce,
            true,
            r#"{"state":"offline"}"#,
        )
        .await;
    let _ = client.disconnect().await;
    drop(lock);
    Ok(())
}

/// Starts and stops proxies to match `specs`.
async fn reconcile(
    client: &AsyncClient,
    running: &mut HashMap<String, Running>,
    specs: Vec<ProxySpec>,
    leases: &Arc<Leases>,
    events: &mpsc::UnboundedSender<proxy::Event>,
) {
    let wanted: HashMap<String, ProxySpec> =
        specs.into_iter().map(|s| (key(&s.device), s)).collect();
    let gone: Vec<String> = running
        .iter()
        .filter(|(k, r)| wanted.get(*k) != Some(&r.spec))
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        if let Some(r) = running.remove(&k) {
            let _ = client.unsubscribe(format!("{}/in", r.spec.topic)).await;
        }
    }
    for (k, spec) in wanted {
        if running.contains_key(&k) {
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (writes, rx) = std::sync::mpsc::channel();
        let _ = client
            .subscribe(format!("{}/in", spec.topic), QoS::AtLeastOnce)
            .await;
        proxy::spawn(
            spec.clone(),
            Arc::clone(leases),
            events.clone(),
            rx,
            Arc::clone(&stop),
        );
        running.insert(k, Running { spec, stop, writes });
    }
}

/// Takes a flash order: it runs on a blocking thread, its progress and result
/// published as the device's state.
fn order(
    config: &Config,
    client: &AsyncClient,
    state: &Arc<State>,
    leases: &Arc<Leases>,
    flashes: &Arc<Semaphore>,
    payload: &[u8],
) {
    let order: Order = match serde_json::from_slice(payload) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "a flash order that does not read; ignored");
            return;
        }
    };
    let (client, state, leases, flashes) = (
        client.clone(),
        Arc::clone(state),
        Arc::clone(leases),
        Arc::clone(flashes),
    );
    let id = config.id.clone();
    let trusted = config.trusted_key.clone();
    tokio::spawn(async move {
        let Ok(_permit) = flashes.acquire_owned().await else {
            return;
        };
        let topic = topics::device(&id, &order.flash.device);
        let (tx, mut rx) = mpsc::unbounded_channel::<(Stage, u8)>();
        let request = order.request.clone();
        let device = order.flash.device.clone();
        let progress_client = client.clone();
        let progress_topic = topic.clone();
        let progress = tokio::spawn(async move {
            let mut last: Option<(Stage, u8)> = None;
            while let Some((stage, percent)) = rx.recv().await {
                if last.is_some_and(|(s, p)| s == stage && p / 10 == percent / 10) {
                    continue;
                }
                last = Some((stage, percent));
                let r = DeviceReport {
                    request: request.clone(),
                    device: device.clone(),
                    state: "flashing".into(),
                    stage: Some(stage.to_string()),
                    percent,
                    ..DeviceReport::default()
                };
                let body = serde_json::to_string(&r).unwrap_or_default();
                let _ = progress_client
                    .publish(progress_topic.clone(), QoS::AtLeastOnce, true, body)
                    .await;
            }
        });
        let flash = order.flash.clone();
        let done = tokio::task::spawn_blocking(move || {
            leases.exclusively(&flash.port, || {
                job::run(
                    &state,
                    &flash,
                    trusted.as_deref(),
                    &mut |s: Stage, p: u8| {
                        let _ = tx.send((s, p));
                    },
                )
            })
        })
        .await;
        let _ = progress.await;
        let report = match done {
            Ok(Ok(report)) => DeviceReport::of(&order.request, &report),
            Ok(Err(e)) => DeviceReport {
                request: order.request.clone(),
                device: order.flash.device.clone(),
                state: "failed".into(),
                stage: Some(Stage::Connecting.to_string()),
                reason: Some(e.to_string()),
                ..DeviceReport::default()
            },
            Err(e) => DeviceReport {
                request: order.request.clone(),
                device: order.flash.device.clone(),
                state: "failed".into(),
                reason: Some(format!("the flash task failed: {e}")),
                ..DeviceReport::default()
            },
        };
        tracing::info!(device = %report.device, state = %report.state, reason = report.reason.as_deref().unwrap_or(""), "flash order done");
        let body = serde_json::to_string(&report).unwrap_or_default();
        let _ = client.publish(topic, QoS::AtLeastOnce, true, body).await;
    });
}
