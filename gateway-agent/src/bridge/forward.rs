//! One direction's forwarder: publishes the outbox, oldest first, to the
//! destination broker at QoS 1 with the message's id, and forgets a message
//! only once the broker has acknowledged it. After a lost connection it
//! starts again from the oldest message not acknowledged, with the same ids,
//! so consumers recognise what they already have.

use std::collections::VecDeque;

use rumqttc::v5::mqttbytes::v5::PubAckReason;
use tokio_util::sync::CancellationToken;

use super::deadletter::DeadLetter;
use super::mqtt::{establish, pause, Client, ClientSpec, Conn, Ended};
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

/// A message in flight each time the destination closed the connection.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    pos: u64,
    strikes: u32,
}

/// Connections lost with the same message alone in flight before it is
/// dead-lettered: some brokers close the connection instead of refusing a
/// publish (Mosquitto does after an ACL denial), which would otherwise stall
/// the bridge on that message for ever.
const POISON_STRIKES: u32 = 3;

impl Forwarder {
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = crate::bridge::mqtt::reconnect_backoff();
        let mut suspect: Option<Suspect> = None;
        loop {
            if let Some(s) = suspect.filter(|s| s.strikes >= POISON_STRIKES) {
                suspect = None;
                if let Err(e) = self.set_aside(s) {
                    tracing::error!(error = %e, "cannot set a poison message aside");
                }
            }
            let direction = self.lane.direction.as_str();
            let open = self
                .spec
                .until_open(&cancel, |why| {
                    tracing::warn!(direction, %why, "forwarder off the global bus while fenced");
                })
                .await;
            if !open {
                return;
            }
            let ended = match establish(&self.spec, self.window * 2, &cancel).await {
                Ok((client, mut events)) => {
                    self.connected(&client, &mut events, &cancel, &mut backoff, &mut suspect)
                        .await
                }
                Err(ended) => ended,
            };
            match ended {
                Ended::Cancelled => return,
                Ended::Lost(why) | Ended::Refused(why) => {
                    tracing::warn!(direction = self.lane.direction.as_str(), %why, "forwarder connection lost")
                }
            }
            if !pause(&mut backoff, &cancel).await {
                return;
            }
        }
    }

    /// Dead-letters the message the destination keeps closing the connection on.
    fn set_aside(&self, s: Suspect) -> Result<(), String> {
        let head = self.lane.outbox.peek(1).map_err(|e| e.to_string())?;
        let Some((pos, m)) = head.into_iter().next().filter(|(pos, _)| *pos == s.pos) else {
            return Ok(());
        };
        self.lane.dead.send(
            self.lane.direction,
            DeadLetter {
                topic: format!("/{}/dlq", m.owner),
                original_topic: m.topic,
                reason: format!(
                    "refused by {}: the connection was closed each time it was sent ({} times)",
                    self.spec.current_url(),
                    s.strikes
                ),
                payload: m.payload,
            },
        );
        self.lane.outbox.ack(pos).map_err(|e| e.to_string())
    }

    async fn connected(
        &self,
        client: &Client,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
        cancel: &CancellationToken,
        backoff: &mut crate::backoff::Backoff,
        suspect: &mut Option<Suspect>,
    ) -> Ended {
        let url = self.spec.current_url();
        let moved = self.spec.moved();
        tokio::pin!(moved);
        let fenced = self.spec.fenced();
        tokio::pin!(fenced);
        backoff.reset();
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        let mut last_sent = 0u64;
        let ended = 'serve: loop {
            // After a connection was lost with messages in flight, the oldest
            // goes alone until the broker takes it: a broker that closes the
            // connection on it shows which message it is.
            let window = if suspect.is_some() { 1 } else { self.window };
            // Fill the window, in chunks: one read of the outbox for many
            // messages, not one per acknowledgement.
            let room = window - inflight.len().min(window);
            if room > 0 && (inflight.is_empty() || room >= window / 4) {
                let more = match self
                    .lane
                    .outbox
                    .peek_after(last_sent, window - inflight.len())
                {
                    Ok(m) => m,
                    Err(e) => break Ended::Lost(e.to_string()),
                };
                for (pos, m) in more {
                    if let Err(e) = self.publish(client, pos, &m).await {
                        break 'serve Ended::Lost(e);
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
            let room = inflight.len() < window;
            let ev = tokio::select! {
                _ = cancel.cancelled() => {
                    client.disconnect().await;
                    break Ended::Cancelled;
                }
                _ = &mut moved => {
                    client.disconnect().await;
                    break Ended::Lost(format!("the bus moved from {url}"));
                }
                why = &mut fenced => {
                    client.disconnect().await;
                    break Ended::Lost(format!("fenced: {why}"));
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
                    Some(Conn::Lost(why) | Conn::Refused(why)) => {
                        ended = Some(Ended::Lost(why));
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
                if suspect.is_some_and(|s| s.pos <= upto) {
                    *suspect = None;
                }
                if let Err(e) = self.lane.outbox.ack(upto) {
                    break Ended::Lost(e.to_string());
                }
                add(&self.lane.stats.of(self.lane.direction).forwarded, n);
            }
            if let Some(ended) = ended {
                break ended;
            }
        };
        if let (Ended::Lost(_) | Ended::Refused(_), Some(head)) = (&ended, inflight.front()) {
            *suspect = Some(match *suspect {
                Some(s) if s.pos == head.pos => Suspect {
                    pos: s.pos,
                    strikes: s.strikes + 1,
                },
                _ => Suspect {
                    pos: head.pos,
                    strikes: 1,
                },
            });
        }
        ended
    }

    async fn publish(&self, client: &Client, pos: u64, m: &Message) -> Result<(), String> {
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
        client
            .publish(
                m.topic.clone(),
                m.retain,
                m.payload.clone().into(),
                user_properties,
            )
            .await
    }
}
