//! A crash on purpose, for the tests that prove what a crash between the
//! outbox's commit and the acknowledgement to the source broker does: with
//! `CONTINUUM_FAULT_ABORT_AFTER_COMMIT=TOPIC` in its environment, the agent
//! aborts right after it committed a message on TOPIC, before acknowledging
//! it. Unset (always, outside those tests), this does nothing.

use std::sync::LazyLock;

use super::outbox::Message;

/// The variable that arms it.
pub const VARIABLE: &str = "CONTINUUM_FAULT_ABORT_AFTER_COMMIT";

static TOPIC: LazyLock<Option<String>> =
    LazyLock::new(|| std::env::var(VARIABLE).ok().filter(|t| !t.is_empty()));

/// Aborts the process if a committed message is on the armed topic.
pub fn after_commit(messages: &[Message]) {
    if let Some(topic) = TOPIC.as_deref() {
        if messages.iter().any(|m| m.topic == topic) {
            eprintln!("{VARIABLE}: aborting after committing a message on {topic}, before acknowledging it");
            std::process::abort();
        }
    }
}
