//! The gateway's side of one deploy agent: it sends the agent flash orders
//! and proxies over the local broker and reads back what each device runs
//! (which makes the current model's firmware components) and what the agent
//! says of itself (online, which build). Where the agent runs and how it is
//! started is [`crate::deployers`]'s business.

use std::collections::BTreeMap;
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

/// What an agent says of itself (its retained status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// It takes orders.
    pub online: bool,
    /// The SHA-256 of its executable.
    pub build: Option<String>,
}

/// One deploy agent, seen from the gateway.
#[derive(Debug)]
pub struct AgentLink {
    id: String,
    client: AsyncClient,
    reports: watch::Receiver<BTreeMap<String, DeviceReport>>,
    /// Proxy ports open or not, by device key.
    ports: watch::Receiver<BTreeMap<String, bool>>,
    /// The proxies last handed to the agent.
    proxies: tokio::sync::Mutex<Option<String>>,
    status: watch::Receiver<AgentStatus>,
    /// Ends the link's connection.
    stop: CancellationToken,
}

impl AgentLink {
    /// Follows agent `id`'s reports on `broker` until `stop`.
    pub fn connect(id: &str, broker: &BrokerUrl, stop: CancellationToken) -> Arc<AgentLink> {
        let mut o = MqttOptions::new(
            format!("continuum-gateway-deployer-{id}"),
            &broker.host,
            broker.port,
        );
        o.set_keep_alive(Duration::from_secs(15))
            .set_clean_start(true)
            .set_max_packet_size(Some(4 << 20))
            .set_network_options(continuum_bus::client::network_options(10));
        if let Some((u, p)) = &broker.credentials {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        let (tx, reports) = watch::channel(BTreeMap::new());
        let (status_tx, status_rx) = watch::channel(AgentStatus::default());
        let (ports_tx, ports) = watch::channel(BTreeMap::new());
        let ports_filter = format!("{}/port", topics::devices(id));
        let filter = topics::devices(id);
        let status = topics::status(id);
        let sub = client.clone();
        let ended = stop.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    () = ended.cancelled() => {
                        // What was queued (a forget's clearing) goes out first.
                        let _ = sub.disconnect().await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Ok(ev) = eventloop.poll().await {
                                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                                    break;
                                }
                            }
                        })
                        .await;
                        return;
                    }
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                        let _ = sub.subscribe(status.clone(), QoS::AtLeastOnce).await;
                        let _ = sub.subscribe(ports_filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == status.as_bytes() => {
                        let v = serde_json::from_slice::<serde_json::Value>(&p.payload)
                            .unwrap_or_default();
                        status_tx.send_replace(AgentStatus {
                            online: v["state"] == "online",
                            build: v["build"].as_str().map(str::to_owned),
                        });
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
        Arc::new(AgentLink {
            id: id.to_owned(),
            client,
            reports,
            ports,
            proxies: tokio::sync::Mutex::new(None),
            status: status_rx,
            stop,
        })
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the agent says of itself, as it changes.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Ends the link.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Forgets the agent: its retained proxies and status are cleared (a
    /// later agent with this id starts from nothing) and the link ends.
    pub async fn forget(&self) {
        for topic in [topics::proxies(&self.id), topics::status(&self.id)] {
            let _ = self
                .client
                .publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
                .await;
        }
        self.stop.cancel();
    }

    /// What the agent last said of each device.
    pub fn view(&self) -> DeviceView {
        DeviceView {
            reports: self.reports.borrow().clone(),
            ports: self.ports.borrow().clone(),
        }
    }

    /// Hands the agent the proxies to run (retained, so a restarted agent
    /// finds them); nothing is sent when they did not change.
    pub async fn set_proxies(&self, specs: &[continuum_deploy_agent::proxy::ProxySpec]) {
        let body = serde_json::to_string(specs).unwrap_or_default();
        let mut last = self.proxies.lock().await;
        if last.as_deref() == Some(body.as_str()) || (last.is_none() && specs.is_empty()) {
            return;
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
        let mut status = self.status.clone();
        // The agent may still be on its way: copied over SSH (tens of MB on a
        // slow link) or imported into a host's engine, then started.
        tokio::time::timeout(Duration::from_secs(120), status.wait_for(|s| s.online))
            .await
            .map_err(|_| "the deploy agent did not come online within 2m".to_owned())?
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
