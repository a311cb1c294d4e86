//! One direction's session on its source broker: subscribes to the filters of
//! the direction's routes (persistent session, QoS 1, manual acknowledgements)
//! and takes each message into the outbox before acknowledging it, so a crash
//! at any point loses nothing; a message redelivered with an id already taken
//! is recognised and acknowledged without being taken twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::MessageId;
use continuum_models::route::Direction;
use continuum_models::topic;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::deadletter::DeadLetter;
use super::mqtt::{establish, pause, Client, ClientSpec, Conn, Ended};
use super::outbox::{Message, Property};
use super::stats::{add, LinkState};
use super::table::{filters, RouteSet};
use super::Lane;

/// Announces the gateway on the global bus: a retained status, replaced by
/// the broker with the last will when the connection is lost.
#[derive(Debug, Clone)]
pub struct Announce {
    pub topic: String,
    pub online: Vec<u8>,
    pub offline: Vec<u8>,
}

#[derive(Debug)]
pub struct Session {
    pub lane: Lane,
    pub spec: ClientSpec,
    pub routes: watch::Receiver<RouteSet>,
    pub max_payload: usize,
    /// Origins of this gateway's own forwarders in the other direction: what
    /// they published comes back here only through a loop, and is not taken.
    pub own_origin: String,
    pub announce: Option<Announce>,
}

const BATCH: usize = 512;

impl Session {
    fn global(&self) -> bool {
        self.lane.direction == Direction::In
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = crate::bridge::mqtt::reconnect_backoff();
        loop {
            let (stats, global) = (Arc::clone(&self.lane.stats), self.global());
            let open = self
                .spec
                .until_open(&cancel, |why| {
                    tracing::warn!(%why, "off the global bus while fenced");
                    stats.set_link(global, LinkState::Down(format!("fenced: {why}")));
                })
                .await;
            if !open {
                return;
            }
            self.lane
                .stats
                .set_link(self.global(), LinkState::Connecting);
            let opened = establish(
                &self.spec,
                usize::from(super::mqtt::RECEIVE_MAXIMUM) * 2,
                &cancel,
            )
            .await;
            let ended = match opened {
                Ok((client, mut events)) => {
                    self.connected(&client, &mut events, &cancel, &mut backoff)
                        .await
                }
                Err(ended) => ended,
            };
            match ended {
                Ended::Cancelled => return,
                Ended::Lost(why) => self
                    .lane
                    .stats
                    .set_link(self.global(), LinkState::Down(why)),
                Ended::Refused(why) => self
                    .lane
                    .stats
                    .set_link(self.global(), LinkState::Refused(why)),
            }
            if !pause(&mut backoff, &cancel).await {
                return;
            }
        }
    }

    /// Serves one connection until it ends.
    async fn connected(
        &mut self,
        client: &Client,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
        cancel: &CancellationToken,
        backoff: &mut crate::backoff::Backoff,
    ) -> Ended {
        let url = self.spec.current_url();
        let moved = self.spec.moved();
        tokio::pin!(moved);
        let fenced = self.spec.fenced();
        tokio::pin!(fenced);
        backoff.reset();
        self.lane
            .stats
            .set_link(self.global(), LinkState::Connected);
        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        if let Err(e) = self.resubscribe(client, &mut subscribed).await {
            return Ended::Lost(e);
        }
        if let Some(a) = &self.announce {
            if let Err(e) = client
                .publish(a.topic.clone(), true, a.online.clone().into(), Vec::new())
                .await
            {
                return Ended::Lost(format!("cannot announce the gateway: {e}"));
            }
        }
        let mut batch: Vec<Publish> = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.goodbye(client, events).await;
                    return Ended::Cancelled;
                }
                _ = &mut moved => {
                    self.goodbye(client, events).await;
                    return Ended::Lost(format!("the bus moved from {url} to {}", self.spec.current_url()));
                }
                // No goodbye: the agent that holds the id now is online.
                why = &mut fenced => {
                    client.disconnect().await;
                    return Ended::Lost(format!("fenced: {why}"));
                }
                changed = self.routes.changed() => {
                    if changed.is_err() {
                        return Ended::Cancelled;
                    }
                    if let Err(e) = self.resubscribe(client, &mut subscribed).await {
                        return Ended::Lost(e);
                    }
                }
                ev = events.recv() => {
                    let mut next = ev;
                    // Take every message already here, then commit them together.
                    loop {
                        match next {
                            Some(Conn::Publish(p)) => batch.push(*p),
                            // What was taken but not acknowledged comes again.
                            Some(Conn::Lost(why)) => return Ended::Lost(why),
                            Some(Conn::Refused(why)) => return Ended::Refused(why),
                            None => return Ended::Lost(format!("{url}: connection ended")),
                            _ => {}
                        }
                        if batch.len() >= BATCH {
                            break;
                        }
                        match events.try_recv() {
                            Ok(ev) => next = Some(ev),
                            Err(_) => break,
                        }
                    }
                    if !batch.is_empty() {
                        if let Err(e) = self.take(client, &mut batch).await {
                            return Ended::Lost(e);
                        }
                    }
                }
            }
        }
    }

    /// Subscribes to the filters of the current routes not yet subscribed,
    /// and unsubscribes from those no route needs any more.
    async fn resubscribe(
        &mut self,
        client: &Client,
        subscribed: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let want = filters(&self.routes.borrow_and_update());
        let add: Vec<String> = want.difference(subscribed).cloned().collect();
        if !add.is_empty() {
            client.subscribe(add).await?;
        }
        for gone in subscribed.difference(&want) {
            client.unsubscribe(gone.clone()).await?;
        }
        *subscribed = want;
        Ok(())
    }

    /// Takes a batch into the outbox durably, then acknowledges it.
    async fn take(&mut self, client: &Client, batch: &mut Vec<Publish>) -> Result<(), String> {
        let routes = Arc::clone(&self.routes.borrow());
        let mut messages: Vec<Message> = Vec::with_capacity(batch.len());
        for p in batch.iter() {
            self.route(p, &routes, &mut messages);
        }
        // The commit waits for the disk: off the runtime's workers, so the
        // forwarders (and everything else the agent runs) go on meanwhile.
        let outbox = self.lane.outbox.clone();
        let (pushed, messages) = tokio::task::spawn_blocking(move || {
            outbox.push_new(&messages).map(|pushed| (pushed, messages))
        })
        .await
        .map_err(|e| format!("cannot keep messages: {e}"))?
        .map_err(|e| format!("cannot keep messages: {e}"))?;
        add(
            &self.lane.stats.of(self.lane.direction).received,
            pushed.appended,
        );
        add(
            &self.lane.stats.of(self.lane.direction).duplicates,
            pushed.duplicates,
        );
        if pushed.appended > 0 {
            self.lane.notify.notify_one();
        }
        super::fault::after_commit(&messages);
        client.ack(batch).await?;
        batch.clear();
        Ok(())
    }

    /// The outbox messages one received message becomes: one per route it
    /// matches, or a dead letter.
    fn route(
        &self,
        p: &Publish,
        routes: &[continuum_models::route::Route],
        out: &mut Vec<Message>,
    ) {
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            // A broker never sends this; nothing can route it.
            tracing::warn!("a message with a topic that is not UTF-8 is ignored");
            return;
        };
        let matching: Vec<&continuum_models::route::Route> = routes
            .iter()
            .filter(|r| topic::matches(&r.filter, topic))
            .collect();
        let props: &[(String, String)] = p
            .properties
            .as_ref()
            .map_or(&[], |pr| pr.user_properties.as_slice());
        let dead = |reason: String| {
            for r in &matching {
                self.lane.dead.send(
                    self.lane.direction,
                    DeadLetter {
                        topic: r.dead_letter_topic(),
                        original_topic: topic.to_owned(),
                        reason: reason.clone(),
                        payload: p.payload.to_vec(),
                    },
                );
            }
        };
        let id = match MessageId::from_properties(props) {
            Ok(id) => id,
            Err(e) => return dead(format!("malformed: {e}")),
        };
        if p.payload.len() > self.max_payload {
            return dead(format!(
                "oversized: {} bytes, more than the bridge's limit of {}",
                p.payload.len(),
                self.max_payload
            ));
        }
        if id
            .as_ref()
            .is_some_and(|i| i.origin.starts_with(&self.own_origin))
        {
            return; // our own message, looped back by a route in the other direction
        }
        let properties: Vec<Property> = props
            .iter()
            .filter(|(k, _)| k != continuum_bus::ID_PROPERTY)
            .map(|(k, v)| Property {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        for r in matching {
            let dest = r.destination_topic(topic);
            let (publisher, seq) = match &id {
                Some(i) => (format!("{}\u{1f}{topic}\u{1f}{dest}", i.origin), i.seq),
                None => (String::new(), 0),
            };
            out.push(Message {
                topic: dest,
                payload: p.payload.to_vec(),
                qos: 1,
                retain: p.retain,
                publisher,
                seq,
                properties: properties.clone(),
                owner: r.owner.clone(),
            });
        }
    }

    /// A clean goodbye: the status says offline (a clean disconnect
    /// suppresses the will), then the connection closes.
    async fn goodbye(
        &self,
        client: &Client,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Conn>,
    ) {
        if let Some(a) = &self.announce {
            let _ = client
                .publish(a.topic.clone(), true, a.offline.clone().into(), Vec::new())
                .await;
            // Wait (briefly) for the broker to take it.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(ev) = events.recv().await {
                    match ev {
                        Conn::Acked(..) => break,
                        Conn::Lost(_) | Conn::Refused(_) => return,
                        _ => {}
                    }
                }
            })
            .await;
        }
        client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, Conn::Lost(_) | Conn::Refused(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
