//! Dead letters: a message that cannot be carried or processed goes to
//! `/<owner>/dlq` on the local broker, with why in its user properties. The
//! bridge (messages it cannot forward) and the function host (messages whose
//! handler failed for the last time) write them the same way, so one
//! subscriber reads both.

/// The user property holding why the message was dead-lettered.
pub const REASON_PROPERTY: &str = "continuum-dlq-reason";
/// The user property holding the topic the message was received on.
pub const TOPIC_PROPERTY: &str = "continuum-dlq-topic";
/// The user property holding how many times the handler was tried.
pub const ATTEMPTS_PROPERTY: &str = "continuum-dlq-attempts";

/// The dead-letter topic of `owner` (a function or a gateway).
pub fn dead_letter_topic(owner: &str) -> String {
    format!("/{owner}/dlq")
}
