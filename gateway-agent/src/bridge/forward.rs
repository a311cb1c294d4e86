//! One direction's forwarder: publishes the outbox, oldest first, to the
//! destination broker at QoS 1 with the message's id, and forgets a message
//! only once the broker has acknowledged it. After a lost connection it
//! starts again from the oldest message not acknowledged, with the same ids,
//! so consumers recognise what they already have.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use continuum_models::route::Direction;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deadletter::{DeadLetter, DeadLetters};
use super::mqtt::{connect, explain, pump, ClientSpec, Conn};
use super::outbox::{Message, Outbox};
use super::stats::{add, Stats};

#[derive(Debug)]
pub struct Forwarder {
    pub direction: Direction,
    pub spec: ClientSpec,
    pub outbox: Outbox,
    pub notify: Arc<Notify>,
    pub stats: Arc<Stats>,
    pub dead: DeadLetters,
    /// Names this outbox's sequence in message ids (`<gateway>/<direction>/<epoch>`).
    pub origin: String,
    /// Messages published and not yet acknowledged, at most.
    pub window: usize,
}

struct Inflight {
    pos: u64,
    pkid: Option<u16>,
    done: bool,
    topic: String,
    owner: String,
    payload: Vec<u8>,
}

impl Forwarder {
    pub async fn run(self, cancel: CancellationToken) {
        let mut attempt = 0u32;
        loop {
            let (client, eventloop) = connect(&self.spec, self.window * 2);
            let mut events = pump(eventloop);
            match self
                .connected(&client, &mut events, &cancel, &mut attempt)
                .await
            {
                None => return,
                Some(why) => {
                    tracing::warn!(direction = self.direction.as_str(), %why, "forwarder connection lost")
                }
            }
            let wait = crate::link::backoff(attempt, Duration::from_secs(10));
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn connected(
        &self,
        client: &AsyncClient,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
        cancel: &CancellationToken,
        attempt: &mut u32,
    ) -> Option<String> {
        let url = self.spec.url.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                ev = events.recv() => match ev {
                    Some(Conn::Connected) => break,
                    Some(Conn::Publish(_) | Conn::Sent(_) | Conn::Acked(..)) => {}
                    Some(Conn::Lost(e)) => return Some(explain(&url, &e)),
                    None => return Some(format!("{url}: connection ended")),
                }
            }
        }
        *attempt = 0;
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        let mut last_sent = 0u64;
        loop {
            // Fill the window, in chunks: one read of the outbox for many
            // messages, not one per acknowledgement.
            let room = self.window - inflight.len().min(self.window);
            if room > 0 && (inflight.is_empty() || room >= self.window / 4) {
                let more = match self
                    .outbox
                    .peek_after(last_sent, self.window - inflight.len())
                {
                    Ok(m) => m,
                    Err(e) => return Some(e.to_string()),
                };
                for (pos, m) in more {
                    if let Err(e) = self.publish(client, pos, &m).await {
                        return Some(e);
                    }
                    last_sent = pos;
                    inflight.push_back(Inflight {
                        pos,
                        pkid: None,
                        done: false,
                        topic: m.topic,
                        owner: m.owner,
                        payload: m.payload,
                    });
                }
            }
            let room = inflight.len() < self.window;
            let ev = tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = client.disconnect().await;
                    return None;
                }
                _ = self.notify.notified(), if room => continue,
                ev = events.recv() => ev,
            };
            let mut next = ev;
            loop {
                match next {
                    Some(Conn::Sent(pkid)) => {
                        if let Some(f) = inflight.iter_mut().find(|f| f.pkid.is_none()) {
                            f.pkid = Some(pkid);
                        }
                    }
                    Some(Conn::Acked(pkid, reason)) => {
                        if let Some(f) = inflight
                            .iter_mut()
                            .find(|f| f.pkid == Some(pkid) && !f.done)
                        {
                            f.done = true;
                            if !matches!(
                                reason,
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                            ) {
                                self.dead.send(
                                    self.direction,
                                    DeadLetter {
                                        topic: format!("/{}/dlq", f.owner),
                                        original_topic: f.topic.clone(),
                                        reason: format!("refused by {url}: {reason:?}"),
                                        payload: std::mem::take(&mut f.payload),
                                    },
                                );
                            }
                        }
                    }
                    Some(Conn::Lost(e)) => return Some(explain(&url, &e)),
                    None => return Some(format!("{url}: connection ended")),
                    _ => {}
                }
                match events.try_recv() {
                    Ok(ev) => next = Some(ev),
                    Err(_) => break,
                }
            }
            // Forget what the broker has, oldest first, in one commit.
            let mut upto = None;
            let mut n = 0u64;
            while inflight.front().is_some_and(|f| f.done) {
                upto = inflight.pop_front().map(|f| f.pos);
                n += 1;
            }
            if let Some(upto) = upto {
                if let Err(e) = self.outbox.ack(upto) {
                    return Some(e.to_string());
                }
                add(&self.stats.of(self.direction).forwarded, n);
            }
        }
    }

    async fn publish(&self, client: &AsyncClient, pos: u64, m: &Message) -> Result<(), String> {
        let mut user_properties = Vec::with_capacity(m.properties.len() + 1);
        user_properties.push((
            continuum_bus::ID_PROPERTY.to_owned(),
            format!("{}:{pos}", self.origin),
        ));
        user_properties.extend(
            m.properties
                .iter()
                .map(|p| (p.key.clone(), p.value.clone())),
        );
        let props = PublishProperties {
            user_properties,
            ..PublishProperties::default()
        };
        client
            .publish_with_properties(
                m.topic.clone(),
                QoS::AtLeastOnce,
                m.retain,
                m.payload.clone(),
                props,
            )
            .await
            .map_err(|e| format!("cannot publish: {e}"))
    }
}
