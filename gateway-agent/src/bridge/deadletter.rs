//! Dead letters: messages the bridge cannot carry (malformed, oversized, or
//! refused by the destination) go to `/<owner>/dlq` on the local broker, with
//! the reason and the original topic in user properties. Counted and logged;
//! the bridge never stalls on them.

use std::sync::Arc;

use continuum_models::route::Direction;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::mqtt::{establish, pause, ClientSpec, Conn, Ended};
use super::stats::{add, Stats};

pub use continuum_bus::letters::{REASON_PROPERTY, TOPIC_PROPERTY};

#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `/<owner>/dlq`.
    pub topic: String,
    pub original_topic: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct DeadLetters {
    tx: mpsc::Sender<DeadLetter>,
    stats: Arc<Stats>,
    /// Payloads longer than this are cut to it (the reason keeps the size).
    pub max_payload: usize,
}

impl DeadLetters {
    /// Sends `letter` (met going `direction`) to its dead-letter topic; never waits.
    pub fn send(&self, direction: Direction, mut letter: DeadLetter) {
        add(&self.stats.of(direction).dead_lettered, 1);
        tracing::warn!(topic = %letter.original_topic, reason = %letter.reason, dlq = %letter.topic, "dead-lettered");
        letter.payload.truncate(self.max_payload);
        if self.tx.try_send(letter).is_err() {
            add(&self.stats.dead_letter_lost, 1);
            tracing::error!("dead-letter queue full: a dead letter is lost (counted)");
        }
    }
}

pub fn start(
    spec: ClientSpec,
    stats: Arc<Stats>,
    max_payload: usize,
    cancel: CancellationToken,
) -> DeadLetters {
    let (tx, mut rx) = mpsc::channel::<DeadLetter>(1024);
    let handle = DeadLetters {
        tx,
        stats: Arc::clone(&stats),
        max_payload,
    };
    tokio::spawn(async move {
        let mut backoff = crate::bridge::mqtt::reconnect_backoff();
        loop {
            let opened = establish(&spec, 64, &cancel).await;
            if let Err(Ended::Cancelled) = opened {
                return;
            }
            if let Ok((client, mut events)) = opened {
                backoff.reset();
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        ev = events.recv() => match ev {
                            Some(Conn::Lost(_) | Conn::Refused(_)) | None => break,
                            _ => {}
                        },
                        letter = rx.recv() => {
                            let Some(l) = letter else { return };
                            let props = vec![
                                (REASON_PROPERTY.to_owned(), l.reason.clone()),
                                (TOPIC_PROPERTY.to_owned(), l.original_topic.clone()),
                            ];
                            match client
                                .publish(l.topic.clone(), false, l.payload.into(), props)
                                .await
                            {
                                Ok(()) => {}
                                Err(e) => {
                                    add(&stats.dead_letter_lost, 1);
                                    tracing::error!(error = %e, "a dead letter could not be published (counted)");
                                }
                            }
                        }
                    }
                }
            }
            if !pause(&mut backoff, &cancel).await {
                return;
            }
        }
    });
    handle
}
