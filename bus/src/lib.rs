//! Continuum's MQTT plumbing: the brokers it embeds (the global
//! bus in the orchestrator and the local broker of each gateway, both
//! rumqttd, MQTT 3.1.1 and 5, optional username/password), broker URLs for
//! external brokers (Mosquitto), and the message ids consumers de-duplicate by.

#![warn(missing_docs)]

pub mod args;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "client")]
pub mod client;
pub mod id;
#[cfg(feature = "broker")]
pub mod lag;
pub mod letters;
#[cfg(feature = "logs")]
pub mod logs;
pub mod stats;
#[cfg(feature = "testing")]
pub mod testing;
pub mod url;

#[cfg(feature = "broker")]
pub use broker::{Attach, BrokerConfig, BrokerError, BrokerTls, EmbeddedBroker};
pub use id::{Dedup, MessageId, ID_PROPERTY};
pub use url::BrokerUrl;
