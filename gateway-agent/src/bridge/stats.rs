//! What the bridge has done and how its connections are: counted, never guessed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use continuum_models::route::Direction;

/// A broker connection's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LinkState {
    /// Connecting, or reconnecting.
    #[default]
    Connecting,
    /// Connected.
    Connected,
    /// Not connected, and why (retried with backoff).
    Down(String),
    /// The broker refused the bridge's credentials (retried with backoff:
    /// they may be fixed on the broker's side).
    Refused(String),
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct Counters {
    /// Taken into the outbox from the source broker.
    pub received: AtomicU64,
    /// Acknowledged by the destination broker.
    pub forwarded: AtomicU64,
    /// Redelivered by the source and recognised by their id.
    pub duplicates: AtomicU64,
    /// Published to a dead-letter topic (or failed to be, see `dead_letter_lost`).
    pub dead_lettered: AtomicU64,
}

/// The bridge's live statistics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Global bus to local broker.
    pub inbound: Counters,
    /// Local broker to global bus.
    pub outbound: Counters,
    /// Dead letters that could not be published either (counted, logged).
    pub dead_letter_lost: AtomicU64,
    /// The connection to the global bus.
    pub global: Mutex<LinkState>,
    /// The connection to the local broker.
    pub local: Mutex<LinkState>,
}

impl Stats {
    /// The counters of one direction.
    pub fn of(&self, d: Direction) -> &Counters {
        match d {
            Direction::In => &self.inbound,
            Direction::Out => &self.outbound,
        }
    }

    /// Records the state of one connection (`global`: the global bus's).
    pub fn set_link(&self, global: bool, state: LinkState) {
        let slot = if global { &self.global } else { &self.local };
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        if *s != state {
            match &state {
                LinkState::Down(why) | LinkState::Refused(why) => {
                    tracing::warn!(bus = if global { "global" } else { "local" }, %why, "bridge connection down")
                }
                LinkState::Connected => tracing::info!(
                    bus = if global { "global" } else { "local" },
                    "bridge connected"
                ),
                LinkState::Connecting => {}
            }
            *s = state;
        }
    }

    /// The state of one connection.
    pub fn link(&self, global: bool) -> LinkState {
        let slot = if global { &self.global } else { &self.local };
        slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Adds to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
