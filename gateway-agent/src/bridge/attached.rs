//! The bridge's clients of the embedded broker, attached to its router in
//! the same process: packets go straight to the router and back, without a
//! socket or MQTT encoding, with the same session and acknowledgement
//! semantics a network client has (QoS 1 is acknowledged once the router
//! holds the message; a persistent session keeps what was not acknowledged).

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as c;
use rumqttc::v5::mqttbytes::QoS as CQoS;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as d;
use tokio::sync::mpsc::UnboundedSender;

use super::mqtt::Conn;

/// One connection to the embedded broker's router.
pub struct Attached {
    tx: Mutex<Sender>,
    events: UnboundedSender<Conn>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attached")
    }
}

struct Sender {
    link: LinkTx,
    /// The last packet id used (ids cycle through 1..=65535; a connection
    /// never has more than its window in flight).
    pkid: u16,
    /// Disconnected already.
    closed: bool,
}

impl Sender {
    fn next_pkid(&mut self) -> u16 {
        self.pkid = self.pkid.checked_add(1).unwrap_or(1);
        self.pkid
    }

    /// Queues packets for the router and tells it once.
    fn send(&mut self, packets: impl IntoIterator<Item = d::Packet>) -> Result<(), String> {
        let mut packets = packets.into_iter().peekable();
        while let Some(p) = packets.next() {
            if packets.peek().is_some() {
                self.link.buffer().push_back(p);
                continue;
            }
            // `LinkTx::send` is async in name only (the router's channel is
            // sent to without waiting on anything async), so one poll
            // finishes it; this keeps the caller's lock out of an await.
            let mut fut = pin!(self.link.send(p));
            return match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(_)) => Ok(()),
                Poll::Ready(Err(e)) => Err(format!("the embedded broker is gone: {e}")),
                Poll::Pending => Err("the embedded broker did not take the packet".to_owned()),
            };
        }
        Ok(())
    }
}

impl Attached {
    /// Connects as `client_id` and starts passing what the router sends to
    /// `events`: [`Conn::Connected`] first, or [`Conn::Lost`] if the broker
    /// refused.
    pub async fn connect(
        attach: &continuum_bus::Attach,
        client_id: &str,
        persistent: bool,
        events: UnboundedSender<Conn>,
    ) -> Option<Attached> {
        let (attach, id) = (attach.clone(), client_id.to_owned());
        // The router's welcome is waited for synchronously.
        let linked = tokio::task::spawn_blocking(move || attach.connect(&id, persistent))
            .await
            .map_err(|e| format!("attaching to the embedded broker: {e}"))
            .and_then(|r| r);
        let (tx, rx) = match linked {
            Ok(l) => l,
            Err(why) => {
                let _ = events.send(Conn::Lost(why));
                return None;
            }
        };
        let _ = events.send(Conn::Connected);
        tokio::spawn(pump(rx, events.clone()));
        Some(Attached {
            tx: Mutex::new(Sender {
                link: tx,
                pkid: 0,
                closed: false,
            }),
            events,
        })
    }

    fn sender(&self) -> std::sync::MutexGuard<'_, Sender> {
        // A panic while holding it cannot leave it half-changed.
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes at QoS 1; the router's acknowledgement comes as [`Conn::Acked`].
    pub fn publish(
        &self,
        topic: String,
        retain: bool,
        payload: Bytes,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        let mut s = self.sender();
        let pkid = s.next_pkid();
        // Before the router can answer: the owner pairs acks with what it sent.
        let _ = self.events.send(Conn::Sent(pkid));
        let mut publish = header(pkid, retain);
        publish.topic = Bytes::from(topic);
        publish.payload = payload;
        let props = (!user_properties.is_empty()).then(|| d::PublishProperties {
            user_properties,
            ..d::PublishProperties::default()
        });
        s.send([d::Packet::Publish(publish, props)])
    }

    /// Acknowledges received messages, with one signal to the router.
    pub fn ack(&self, received: &[c::Publish]) -> Result<(), String> {
        let acks = received
            .iter()
            .filter(|p| p.qos != CQoS::AtMostOnce)
            .map(|p| {
                d::Packet::PubAck(
                    d::PubAck {
                        pkid: p.pkid,
                        reason: d::PubAckReason::Success,
                    },
                    None,
                )
            });
        self.sender().send(acks)
    }

    /// Subscribes at QoS 1, retained messages sent on every subscription.
    pub fn subscribe(&self, filters: Vec<String>) -> Result<(), String> {
        let mut s = self.sender();
        let pkid = s.next_pkid();
        let filters = filters
            .into_iter()
            .map(|path| d::Filter {
                path,
                qos: d::QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: d::RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        s.send([d::Packet::Subscribe(d::Subscribe { pkid, filters }, None)])
    }

    pub fn unsubscribe(&self, filter: String) -> Result<(), String> {
        let mut s = self.sender();
        let pkid = s.next_pkid();
        s.send([d::Packet::Unsubscribe(
            d::Unsubscribe {
                pkid,
                filters: vec![filter],
            },
            None,
        )])
    }

    /// Ends the connection (a persistent session stays with the broker).
    pub fn disconnect(&self) {
        let mut s = self.sender();
        if std::mem::replace(&mut s.closed, true) {
            return;
        }
        let _ = s.send([d::Packet::Disconnect(
            d::Disconnect {
                reason_code: d::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        )]);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // The router would otherwise keep the connection (and route to it)
        // until the process ends.
        self.disconnect();
    }
}

/// Passes the router's packets on until the connection ends or its owner is gone.
async fn pump(mut rx: LinkRx, events: UnboundedSender<Conn>) {
    loop {
        let notification = match rx.next().await {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                let _ = events.send(Conn::Lost(format!(
                    "the embedded broker ended the connection: {e}"
                )));
                return;
            }
        };
        let conn = match Option::<d::Packet>::from(notification) {
            Some(d::Packet::Publish(p, props)) => Conn::Publish(Box::new(received(p, props))),
            Some(d::Packet::PubAck(a, _)) => Conn::Acked(a.pkid, reason(a.reason)),
            Some(d::Packet::Disconnect(why, _)) => {
                let _ = events.send(Conn::Lost(format!(
                    "the embedded broker disconnected the bridge: {:?}",
                    why.reason_code
                )));
                return;
            }
            Some(_) => continue,
            // The router stopped sending until told the link is ready again.
            None => {
                if rx.wake().await.is_err() {
                    let _ = events.send(Conn::Lost("the embedded broker is gone".to_owned()));
                    return;
                }
                continue;
            }
        };
        if events.send(conn).is_err() {
            return;
        }
    }
}

/// A QoS 1 publication without topic or payload. rumqttd keeps a
/// publication's QoS, packet id and dup flag to itself (its local clients are
/// meant to publish at QoS 0) but reads them from its own serialisation: a
/// header byte, the packet id, the topic's length.
fn header(pkid: u16, retain: bool) -> d::Publish {
    let [hi, lo] = pkid.to_be_bytes();
    d::Publish::deserialize(Bytes::copy_from_slice(&[
        0x30 | 0b010 | u8::from(retain),
        hi,
        lo,
        0,
        0,
    ]))
}

fn received(p: d::Publish, props: Option<d::PublishProperties>) -> c::Publish {
    // The fields rumqttd keeps private, from its serialisation of the header alone.
    let mut head = p.clone();
    head.topic = Bytes::new();
    head.payload = Bytes::new();
    let h = head.serialize();
    c::Publish {
        dup: h[0] & 0b1000 != 0,
        qos: match (h[0] >> 1) & 0b11 {
            0 => CQoS::AtMostOnce,
            1 => CQoS::AtLeastOnce,
            _ => CQoS::ExactlyOnce,
        },
        retain: p.retain,
        topic: p.topic,
        pkid: u16::from_be_bytes([h[1], h[2]]),
        payload: p.payload,
        properties: props.map(|pr| c::PublishProperties {
            payload_format_indicator: pr.payload_format_indicator,
            message_expiry_interval: pr.message_expiry_interval,
            topic_alias: pr.topic_alias,
            response_topic: pr.response_topic,
            correlation_data: pr.correlation_data,
            user_properties: pr.user_properties,
            subscription_identifiers: pr.subscription_identifiers,
            content_type: pr.content_type,
        }),
    }
}

fn reason(r: d::PubAckReason) -> c::PubAckReason {
    use c::PubAckReason as C;
    use d::PubAckReason as D;
    match r {
        D::Success => C::Success,
        D::NoMatchingSubscribers => C::NoMatchingSubscribers,
        D::UnspecifiedError => C::UnspecifiedError,
        D::ImplementationSpecificError => C::ImplementationSpecificError,
        D::NotAuthorized => C::NotAuthorized,
        D::TopicNameInvalid => C::TopicNameInvalid,
        D::PacketIdentifierInUse => C::PacketIdentifierInUse,
        D::QuotaExceeded => C::QuotaExceeded,
        D::PayloadFormatInvalid => C::PayloadFormatInvalid,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use continuum_bus::testing::free_port;
    use continuum_bus::{BrokerConfig, EmbeddedBroker};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;

    async fn next(rx: &mut UnboundedReceiver<Conn>) -> Conn {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the connection's events go on")
    }

    async fn open(
        a: &continuum_bus::Attach,
        id: &str,
        persistent: bool,
    ) -> (Attached, UnboundedReceiver<Conn>) {
        let (tx, mut rx) = unbounded_channel();
        let c = Attached::connect(a, id, persistent, tx)
            .await
            .expect("attached");
        assert!(matches!(next(&mut rx).await, Conn::Connected));
        (c, rx)
    }

    /// What the bridge's local session relies on: QoS 1 with packet ids and
    /// acknowledgements both ways, user properties kept, and a persistent
    /// session that keeps what was not acknowledged — and what arrived
    /// meanwhile — for the next connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qos1_and_a_persistent_session_through_the_router() {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let broker = EmbeddedBroker::start(BrokerConfig::new(None, Some(addr))).unwrap();
        let attach = broker.attach();
        let (session, mut session_rx) = open(&attach, "attached-session", true).await;
        session.subscribe(vec!["t/#".to_owned()]).unwrap();
        let (publisher, mut publisher_rx) = open(&attach, "attached-publisher", false).await;
        let props = vec![("k".to_owned(), "v".to_owned())];
        publisher
            .publish(
                "t/1".into(),
                false,
                Bytes::from_static(b"one"),
                props.clone(),
            )
            .unwrap();
        let Conn::Sent(sent) = next(&mut publisher_rx).await else {
            panic!("the publication's packet id first")
        };
        match next(&mut publisher_rx).await {
            Conn::Acked(pkid, c::PubAckReason::Success) => assert_eq!(pkid, sent),
            other => panic!("expected the router's acknowledgement, got {other:?}"),
        }
        let Conn::Publish(first) = next(&mut session_rx).await else {
            panic!("the message")
        };
        assert_eq!(
            (&first.topic[..], &first.payload[..]),
            (&b"t/1"[..], &b"one"[..])
        );
        assert_eq!(first.qos, CQoS::AtLeastOnce);
        assert_ne!(first.pkid, 0);
        assert_eq!(first.properties.as_ref().unwrap().user_properties, props);
        // Gone without acknowledging; a message arrives meanwhile.
        drop(session);
        publisher
            .publish("t/2".into(), false, Bytes::from_static(b"two"), Vec::new())
            .unwrap();
        let (session, mut session_rx) = open(&attach, "attached-session", true).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Conn::Publish(p) = next(&mut session_rx).await {
                got.push(*p);
            }
        }
        let topics: Vec<&[u8]> = got.iter().map(|p| &p.topic[..]).collect();
        assert_eq!(topics, [&b"t/1"[..], &b"t/2"[..]], "redelivered, then kept");
        session.ack(&got).unwrap();
        // Acknowledged: a third connection gets nothing old, only what is new.
        drop(session);
        let (_session, mut session_rx) = open(&attach, "attached-session", true).await;
        publisher
            .publish(
                "t/3".into(),
                false,
                Bytes::from_static(b"three"),
                Vec::new(),
            )
            .unwrap();
        loop {
            if let Conn::Publish(p) = next(&mut session_rx).await {
                assert_eq!(&p.topic[..], b"t/3", "nothing acknowledged comes again");
                break;
            }
        }
    }

    /// A persistent session that falls further behind than the broker's
    /// backlog loses its oldest messages — the backlog bounds the broker's
    /// memory — and exactly what it lost is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_behind_its_backlog_loses_the_oldest_and_they_are_counted() {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // The binaries install this with their log subscriber.
        let _ = tracing_subscriber::registry()
            .with(continuum_bus::lag::layer())
            .try_init();
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = BrokerConfig::new(None, Some(addr));
        config.backlog = 16 * 1024;
        let broker = EmbeddedBroker::start(config).unwrap();
        let attach = broker.attach();
        let (session, _) = open(&attach, "lagging-session", true).await;
        session.subscribe(vec!["lag/#".to_owned()]).unwrap();
        drop(session);
        // 400 messages of about 200 bytes while it is away: 80 KB, five
        // times its backlog.
        const SENT: usize = 400;
        let (publisher, mut publisher_rx) = open(&attach, "lag-publisher", false).await;
        for i in 0..SENT {
            let payload = Bytes::from(format!("{i:0>200}"));
            publisher
                .publish(format!("lag/{i}"), false, payload, Vec::new())
                .unwrap();
        }
        let mut acked = 0;
        while acked < SENT {
            if let Conn::Acked(..) = next(&mut publisher_rx).await {
                acked += 1;
            }
        }
        let before = continuum_bus::lag::skipped();
        let lost = || usize::try_from(continuum_bus::lag::skipped() - before).unwrap();
        let (session, mut session_rx) = open(&attach, "lagging-session", true).await;
        let mut got: Vec<usize> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() + lost() < SENT {
            assert!(
                tokio::time::Instant::now() < deadline,
                "received {} and counted {} skipped of {SENT}",
                got.len(),
                lost()
            );
            let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(100), session_rx.recv()).await
            else {
                continue;
            };
            if let Conn::Publish(p) = event {
                let topic = std::str::from_utf8(&p.topic).unwrap();
                got.push(topic["lag/".len()..].parse().unwrap());
                session.ack(&[*p]).unwrap();
            }
        }
        let skipped = lost();
        eprintln!(
            "lost {skipped} of {SENT}; received the newest {}",
            got.len()
        );
        assert!(skipped > 0, "a session five backlogs behind lost nothing");
        assert_eq!(got.len() + skipped, SENT);
        // What it got is the newest, in order, none twice.
        let newest: Vec<usize> = (skipped..SENT).collect();
        assert_eq!(got, newest);
        assert!(continuum_bus::lag::jumps() >= 1);
    }
}
