//! The function host: the small runtime inside a Continuum function's
//! container (or process). It subscribes to the function's inputs on the
//! local broker, runs the handler once per message — the payload on standard
//! input, the reply on standard output — and publishes the replies, with
//! per-run timeouts, a concurrency limit, retries with backoff, a dead-letter
//! topic, de-duplication by message id that survives restarts, and metrics.

#![warn(missing_docs)]

pub mod host;
pub mod invoke;
pub mod ledger;
pub mod metrics;

pub use host::{run, Config, HostError};
pub use metrics::Metrics;
