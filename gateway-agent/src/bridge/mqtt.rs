//! Connecting the bridge's MQTT 5 clients, and saying why a connection failed.

use std::time::Duration;

use continuum_bus::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, Packet, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Messages a broker may send a session before it acknowledges them.
pub const RECEIVE_MAXIMUM: u16 = 1024;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub url: BrokerUrl,
    /// Where the broker is when it can move (the global bus, learned from the
    /// orchestrator): read at every connection, and a move ends the current one.
    pub follow: Option<tokio::sync::watch::Receiver<BrokerUrl>>,
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
    /// The agent's fence: while it holds (another agent took this gateway's
    /// id, or this one was paused and is not admitted again yet), a client of
    /// the global bus stays off it, so two bridges with one id never take the
    /// same session from each other.
    pub fence: Option<std::sync::Arc<crate::fence::Fencing>>,
    /// The CA (PEM) an `mqtts://` broker's certificate is checked against
    /// (none: the system's roots).
    pub ca: Option<std::sync::Arc<Vec<u8>>>,
    /// The broker is the embedded one, in this process: attach to it
    /// directly instead of over `url`.
    pub attach: Option<continuum_bus::Attach>,
}

impl ClientSpec {
    /// The broker's address now.
    pub fn current_url(&self) -> BrokerUrl {
        match &self.follow {
            Some(rx) => rx.borrow().clone(),
            None => self.url.clone(),
        }
    }

    /// Resolves when the broker's address changes (never for a fixed one).
    pub fn moved(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut follow = self.follow.clone();
        async move {
            match follow.as_mut() {
                Some(rx) => {
                    rx.borrow_and_update();
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

impl ClientSpec {
    /// Waits while the fence holds (false: told to stop meanwhile); `held`
    /// hears why, once per reason.
    pub async fn until_open(&self, cancel: &CancellationToken, held: impl Fn(&str)) -> bool {
        let Some(fencing) = &self.fence else {
            return true;
        };
        let mut fence = fencing.subscribe();
        let mut said = String::new();
        loop {
            // Asked directly: a pause the fence's clock has not noticed yet counts.
            let Some(why) = fencing.holds() else {
                return true;
            };
            if why != said {
                held(&why);
                said = why;
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                changed = fence.changed() => if changed.is_err() { return true },
            }
        }
    }

    /// Resolves with the reason when the fence closes (never without one).
    pub fn fenced(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let fence = self.fence.as_ref().map(|f| f.subscribe());
        async move {
            let Some(mut fence) = fence else {
                return std::future::pending().await;
            };
            loop {
                if let Some(why) = fence.borrow_and_update().holds() {
                    return why;
                }
                if fence.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// A connection to a broker: over the network, or attached to the embedded
/// broker in this process. Either way its events come as [`Conn`]s.
#[derive(Debug)]
pub enum Client {
    Network(AsyncClient),
    Attached(super::attached::Attached),
}

impl Client {
    /// Opens a connection; the first event says whether it is up.
    pub async fn open(
        spec: &ClientSpec,
        capacity: usize,
    ) -> (Option<Client>, tokio::sync::mpsc::UnboundedReceiver<Conn>) {
        match &spec.attach {
            Some(attach) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let attached = super::attached::Attached::connect(
                    attach,
                    &spec.client_id,
                    spec.persistent,
                    tx,
                )
                .await;
                (attached.map(Client::Attached), rx)
            }
            None => {
                let (client, eventloop) = connect(spec, capacity);
                (
                    Some(Client::Network(client)),
                    pump(eventloop, spec.current_url()),
                )
            }
        }
    }

    /// Publishes at QoS 1.
    pub async fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: bytes::Bytes,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        match self {
            Client::Network(c) => {
                let props = PublishProperties {
                    user_properties,
                    ..PublishProperties::default()
                };
                c.publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, props)
                    .await
                    .map_err(|e| format!("cannot publish: {e}"))
            }
            Client::Attached(a) => a.publish(topic, retain, payload, user_properties),
        }
    }

    /// Acknowledges received messages.
    pub async fn ack(&self, received: &[Publish]) -> Result<(), String> {
        match self {
            Client::Network(c) => {
                for p in received {
                    c.ack(p)
                        .await
                        .map_err(|e| format!("cannot acknowledge: {e}"))?;
                }
                Ok(())
            }
            Client::Attached(a) => a.ack(received),
        }
    }

    /// Subscribes to `filters` at QoS 1.
    pub async fn subscribe(&self, filters: Vec<String>) -> Result<(), String> {
        match self {
            Client::Network(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f, QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| format!("cannot subscribe: {e}")),
            Client::Attached(a) => a.subscribe(filters),
        }
    }

    pub async fn unsubscribe(&self, filter: String) -> Result<(), String> {
        match self {
            Client::Network(c) => c
                .unsubscribe(filter)
                .await
                .map_err(|e| format!("cannot unsubscribe: {e}")),
            Client::Attached(a) => a.unsubscribe(filter),
        }
    }

    /// Ends the connection cleanly (no will).
    pub async fn disconnect(&self) {
        match self {
            Client::Network(c) => {
                let _ = c.disconnect().await;
            }
            Client::Attached(a) => a.disconnect(),
        }
    }
}

fn connect(spec: &ClientSpec, capacity: usize) -> (AsyncClient, EventLoop) {
    let url = spec.current_url();
    let mut o = MqttOptions::new(&spec.client_id, &url.host, url.port);
    // rumqttc refuses keep-alives under 5 s.
    o.set_keep_alive(spec.keep_alive.max(Duration::from_secs(5)))
        .set_clean_start(!spec.persistent)
        .set_manual_acks(spec.manual_acks)
        .set_connection_timeout(10)
        .set_max_packet_size(Some(spec.max_packet))
        .set_outgoing_inflight_upper_limit(capacity.min(u16::MAX as usize) as u16);
    o.set_network_options(continuum_bus::client::network_options(10));
    if spec.persistent {
        // 0xFFFFFFFF: the session never expires (MQTT 5 §3.1.2.11.2).
        o.set_session_expiry_interval(Some(u32::MAX));
    }
    if spec.manual_acks {
        o.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    }
    if let Some((u, p)) = &url.credentials {
        o.set_credentials(u, p);
    }
    if let Some(w) = &spec.will {
        o.set_last_will(w.clone());
    }
    if url.tls {
        let tls = match &spec.ca {
            Some(ca) => rumqttc::TlsConfiguration::Simple {
                ca: ca.to_vec(),
                alpn: None,
                client_auth: None,
            },
            None => rumqttc::TlsConfiguration::default(),
        };
        o.set_transport(rumqttc::Transport::tls_with_config(tls));
    }
    AsyncClient::new(o, capacity)
}

/// How serving one connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Told to stop.
    Cancelled,
    /// The connection failed or was lost, and why.
    Lost(String),
    /// The broker refused the credentials.
    Refused(String),
}

/// Opens a connection and waits for the broker's welcome.
pub async fn establish(
    spec: &ClientSpec,
    capacity: usize,
    cancel: &CancellationToken,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Conn>), Ended> {
    let (client, mut events) = Client::open(spec, capacity).await;
    welcomed(&mut events, cancel, &spec.current_url()).await?;
    match client {
        Some(c) => Ok((c, events)),
        None => Err(Ended::Lost(format!(
            "{}: connection ended",
            spec.current_url()
        ))),
    }
}

/// Waits for the broker's welcome (CONNACK) on a new connection.
async fn welcomed(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
    cancel: &CancellationToken,
    url: &BrokerUrl,
) -> Result<(), Ended> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Err(Ended::Cancelled),
            ev = events.recv() => match ev {
                Some(Conn::Connected) => return Ok(()),
                Some(Conn::Publish(_) | Conn::Sent(_) | Conn::Acked(..)) => {}
                Some(Conn::Lost(why)) => return Err(Ended::Lost(why)),
                Some(Conn::Refused(why)) => return Err(Ended::Refused(why)),
                None => return Err(Ended::Lost(format!("{url}: connection ended"))),
            }
        }
    }
}

/// The backoff between two connection attempts to a broker.
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

/// Waits before the next reconnection; false when told to stop meanwhile.
pub async fn pause(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    backoff.pause(cancel.cancelled()).await
}

/// Whether the broker refused the credentials.
fn refused_credentials(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        )
    )
}

/// A connection error as a sentence a user can act on.
fn explain(url: &BrokerUrl, e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) if refused_credentials(e) => format!(
            "{url} refused the bridge's credentials ({code:?}): check the user and password in the URL"
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
    /// A message from the broker.
    Publish(Box<Publish>),
    /// A publication went out with this packet id.
    Sent(u16),
    /// The broker acknowledged the publication with this packet id.
    Acked(u16, PubAckReason),
    /// The connection ended, and why; the owner reconnects with a fresh client.
    Lost(String),
    /// The broker refused the credentials, and said so.
    Refused(String),
}

/// Polls `eventloop` until its connection ends, passing every event on.
/// Ends quietly when the owner is gone.
///
/// The channel is unbounded so that the event loop never waits for its
/// owner: the owner sends acknowledgements through the event loop, and a
/// full channel each way would deadlock them. MQTT's flow control bounds it
/// instead: a broker sends at most `RECEIVE_MAXIMUM` unacknowledged
/// messages, and a forwarder has at most its window in flight.
fn pump(mut eventloop: EventLoop, url: BrokerUrl) -> tokio::sync::mpsc::UnboundedReceiver<Conn> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let msg = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Conn::Connected,
                Ok(Event::Incoming(Packet::Publish(p))) => Conn::Publish(Box::new(p)),
                Ok(Event::Incoming(Packet::PubAck(a))) => Conn::Acked(a.pkid, a.reason),
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => Conn::Sent(pkid),
                Ok(_) => continue,
                Err(e) => {
                    let why = explain(&url, &e);
                    let _ = tx.send(if refused_credentials(&e) {
                        Conn::Refused(why)
                    } else {
                        Conn::Lost(why)
                    });
                    return;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    rx
}
