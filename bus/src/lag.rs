//! Messages the embedded broker skipped for subscribers that fell behind
//! its backlog ([`crate::BrokerConfig::backlog`]).
//!
//! rumqttd keeps one log per subscription filter; a session whose read
//! cursor points before the oldest segment still kept jumps to it, and the
//! messages in between are gone for that session. rumqttd reports this only
//! as a warning event with both cursors (its alert carries no count and is
//! sent on a timer it keeps private), so the count is taken from that event:
//! [`layer`] is part of every binary's log subscriber, and the test suite
//! checks the count against what a lagging session really missed.

use std::sync::atomic::{AtomicU64, Ordering};

static SKIPPED: AtomicU64 = AtomicU64::new(0);
static JUMPS: AtomicU64 = AtomicU64::new(0);

/// Messages skipped so far, over every subscriber of every embedded broker in
/// this process.
pub fn skipped() -> u64 {
    SKIPPED.load(Ordering::Relaxed)
}

/// How many times a subscriber was moved past messages it had not read.
pub fn jumps() -> u64 {
    JUMPS.load(Ordering::Relaxed)
}

/// Where rumqttd reports a read cursor that jumped.
#[cfg(feature = "logs")]
const TARGET: &str = "rumqttd::router::routing";

/// The layer that counts rumqttd's cursor jumps; it sees rumqttd's warnings
/// whatever the log filter says.
#[cfg(feature = "logs")]
pub fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    Counter.with_filter(
        tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::WARN),
    )
}

#[cfg(feature = "logs")]
struct Counter;

#[cfg(feature = "logs")]
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut cursors = Cursors::default();
        event.record(&mut cursors);
        if let (Some(from), Some(to)) = (cursors.request, cursors.start) {
            let lost = to.saturating_sub(from);
            SKIPPED.fetch_add(lost, Ordering::Relaxed);
            JUMPS.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                lost,
                what = cursors.what.as_deref().unwrap_or(""),
                "a subscriber of the embedded broker fell behind its backlog and lost its oldest messages (raise --mqtt-backlog-mib)"
            );
        }
    }
}

/// The two cursors of rumqttd's event: (segment, absolute offset), written
/// with `Debug`.
#[cfg(feature = "logs")]
#[derive(Default)]
struct Cursors {
    request: Option<u64>,
    start: Option<u64>,
    what: Option<String>,
}

#[cfg(feature = "logs")]
impl tracing::field::Visit for Cursors {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "request_cursor" => self.request = offset(&format!("{value:?}")),
            "start_cursor" => self.start = offset(&format!("{value:?}")),
            "error" => self.what = Some(format!("{value:?}").trim_matches('"').to_owned()),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "error" {
            self.what = Some(value.to_owned());
        }
    }
}

/// The absolute offset of a cursor written as `(segment, offset)`.
#[cfg(feature = "logs")]
fn offset(cursor: &str) -> Option<u64> {
    let inner = cursor.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (_, offset) = inner.split_once(',')?;
    offset.trim().parse().ok()
}

#[cfg(all(test, feature = "logs"))]
mod tests {
    use super::*;

    #[test]
    fn reads_rumqttd_cursors() {
        assert_eq!(offset("(3, 12345)"), Some(12345));
        assert_eq!(offset("(0,0)"), Some(0));
        assert_eq!(offset("12345"), None);
        assert_eq!(offset("(1, x)"), None);
    }
}
