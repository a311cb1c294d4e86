//! Connecting the bridge's MQTT 5 clients, and saying why a connection failed.

use std::time::Duration;

use continuum_bus::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill};
use rumqttc::v5::{AsyncClient, ConnectionError, EventLoop, MqttOptions};

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub url: BrokerUrl,
    pub client_id: String,
    /// Keep the session (subscriptions, unacknowledged messages) across
    /// disconnections, for ever.
    pub persistent: bool,
    /// Acknowledge received messages only when told to.
    pub manual_acks: bool,
    pub keep_alive: Duration,
    pub will: Option<LastWill>,
    /// The largest packet accepted, in bytes.
    pub max_packet: u32,
}

pub fn connect(spec: &ClientSpec, capacity: usize) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(&spec.client_id, &spec.url.host, spec.url.port);
    // rumqttc refuses keep-alives under 5 s.
    o.set_keep_alive(spec.keep_alive.max(Duration::from_secs(5)))
        .set_clean_start(!spec.persistent)
        .set_manual_acks(spec.manual_acks)
        .set_connection_timeout(10)
        .set_max_packet_size(Some(spec.max_packet))
        .set_outgoing_inflight_upper_limit(capacity.min(u16::MAX as usize) as u16);
    if spec.persistent {
        // 0xFFFFFFFF: the session never expires (MQTT 5 §3.1.2.11.2).
        o.set_session_expiry_interval(Some(u32::MAX));
    }
    if let Some((u, p)) = &spec.url.credentials {
        o.set_credentials(u, p);
    }
    if let Some(w) = &spec.will {
        o.set_last_will(w.clone());
    }
    AsyncClient::new(o, capacity)
}

/// A connection error as a sentence a user can act on.
pub fn explain(url: &BrokerUrl, e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => format!(
            "{url} refused the bridge's credentials ({}): check the user and password in the URL",
            match e {
                ConnectionError::ConnectionRefused(c) => format!("{c:?}"),
                _ => String::new(),
            }
        ),
        ConnectionError::ConnectionRefused(code) => {
            format!("{url} refused the connection: {code:?}")
        }
        ConnectionError::Io(io) => format!("cannot reach {url}: {io}"),
        ConnectionError::Timeout(_) => format!("{url} did not answer in time"),
        other => format!("{url}: {other}"),
    }
}

/// What a connection's event loop tells its owner.
#[derive(Debug)]
pub enum Conn {
    Connected,
    Event(rumqttc::v5::Event),
    /// The connection ended; the owner reconnects with a fresh client.
    Lost(ConnectionError),
}

/// Polls `eventloop` until its connection ends, passing every event on.
/// Ends quietly when the owner is gone.
pub fn pump(mut eventloop: EventLoop) -> tokio::sync::mpsc::Receiver<Conn> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let msg = match eventloop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                    _,
                ))) => Conn::Connected,
                Ok(ev) => Conn::Event(ev),
                Err(e) => {
                    let _ = tx.send(Conn::Lost(e)).await;
                    return;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    rx
}
