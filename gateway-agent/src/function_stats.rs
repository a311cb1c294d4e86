//! Reads what the subsystem's function hosts report of their work (their
//! retained counters on the local broker, see [`continuum_bus::stats`]) into
//! the agent's metrics: a function runs in a container Prometheus cannot
//! reach, while the agent's `/metrics` is where operators already look.

use std::sync::Arc;
use std::time::Duration;

use continuum_bus::stats::{function_of, FunctionStats, STATS_FILTER};
use continuum_bus::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;

/// Follows the functions' reports on `broker` into `metrics` until `stop`.
pub fn follow(
    gateway: &str,
    broker: &BrokerUrl,
    metrics: Arc<AgentMetrics>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut o = MqttOptions::new(
        format!("continuum-gateway-stats-{gateway}"),
        &broker.host,
        broker.port,
    );
    // A new session each time: the retained reports bring the latest counts.
    o.set_keep_alive(Duration::from_secs(15))
        .set_clean_start(true)
        .set_network_options(continuum_bus::client::network_options(10));
    if let Some((u, p)) = &broker.credentials {
        o.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            let ev = tokio::select! {
                () = stop.cancelled() => {
                    let _ = client.try_disconnect();
                    return;
                }
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    pause = Duration::from_millis(100);
                    if let Err(e) = client.try_subscribe(STATS_FILTER, QoS::AtMostOnce) {
                        tracing::warn!(error = %e, "cannot follow the functions' counters");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic);
                    let Some(function) = function_of(&topic) else {
                        continue;
                    };
                    // An empty retained message clears a report.
                    if p.payload.is_empty() {
                        continue;
                    }
                    match serde_json::from_slice::<FunctionStats>(&p.payload) {
                        Ok(stats) => metrics.function_report(function, stats),
                        Err(e) => tracing::debug!(%topic, error = %e, "not a function's counters"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "the local broker, for the functions' counters");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    })
}
