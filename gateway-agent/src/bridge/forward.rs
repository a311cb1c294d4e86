//! One direction's forwarder: publishes the outbox, oldest first, to the
//! destination broker at QoS 1 with the message's id, and forgets a message
//! only once the broker has acknowledged it. After a lost connection it
//! starts again from the oldest message not acknowledged, with the same ids,
//! so consumers recognise what they already have.

use std::collections::VecDeque;

use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio_util::sync::CancellationToken;

use super::deadletter::DeadLetter;
use super::mqtt::{connect, explain, pause, pump, welcomed, ClientSpec, Conn, Ended};
use super::outbox::Message;
use super::stats::add;
use super::Lane;

#[derive(Debug)]
pub struct Forwarder {
    pub lane: Lane,
    pub spec: ClientSpec,
    /// Names this outbox's sequence in message ids (`<gateway>/<direction>/<epoch>`).
    pub origin: String,
    /// Messages published and not yet acknowledged, at most.
    pub window: usize,
}

struct Inflight {
    pos: u64,
    pkid: Option<u16>,
    done: bool,
    /// The broker refused it (it was dead-lettered).
    refused: bool,
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
                Ended::Cancelled => return,
                Ended::Lost(why) => {
                    tracing::warn!(direction = self.lane.direction.as_str(), %why, "forwarder connection lost")
                }
            }
            if !pause(&mut attempt, &cancel).await {
                return;
            }
        }
    }

    async fn connected(
        &self,
        client: &AsyncClient,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
        cancel: &CancellationToken,
        attempt: &mut u32,
    ) -> Ended {
        let url = self.spec.current_url();
        if let Err(ended) = welcomed(events, cancel, &url).await {
            return ended;
        }
        let moved = self.spec.moved();
        tokio::pin!(moved);
        *attempt = 0;
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        let mut last_sent = 0u64;
        loop {
            // Fill the window, in chunks: one read of the outbox for many
            // messages, not one per acknowledgement.
            let room = self.window - inflight.len().min(self.window);
            if room > 0 && (inflight.is_empty() || room >= self.window / 4) {
                let more = match self
                    .lane
                    .outbox
                    .peek_after(last_sent, self.window - inflight.len())
                {
                    Ok(m) => m,
                    Err(e) => return Ended::Lost(e.to_string()),
                };
                for (pos, m) in more {
                    if let Err(e) = self.publish(client, pos, &m).await {
                        return Ended::Lost(e);
                    }
                    last_sent = pos;
                    inflight.push_back(Inflight {
                        pos,
                        pkid: None,
                        done: false,
                        refused: false,
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
                    return Ended::Cancelled;
                }
                _ = &mut moved => {
                    let _ = client.disconnect().await;
                    return Ended::Lost(format!("the bus moved from {url}"));
                }
                _ = self.lane.notify.notified(), if room => continue,
                ev = events.recv() => ev,
            };
            let mut next = ev;
            // What the broker acknowledged before a connection ended is
            // still forgotten below (some brokers close the connection right
            // after refusing a publish).
            let mut ended = None;
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
                                f.refused = true;
                                self.lane.dead.send(
                                    self.lane.direction,
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
                    Some(Conn::Lost(e)) => {
                        ended = Some(Ended::Lost(explain(&url, &e)));
                        break;
                    }
                    None => {
                        ended = Some(Ended::Lost(format!("{url}: connection ended")));
                        break;
                    }
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
            while let Some(f) = inflight.pop_front() {
                if !f.done {
                    inflight.push_front(f);
                    break;
                }
                upto = Some(f.pos);
                n += u64::from(!f.refused);
            }
            if let Some(upto) = upto {
                if let Err(e) = self.lane.outbox.ack(upto) {
                    return Ended::Lost(e.to_string());
                }
                add(&self.lane.stats.of(self.lane.direction).forwarded, n);
            }
            if let Some(ended) = ended {
                return ended;
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
