//! The MQTT brokers Continuum embeds (DESIGN §4): the global bus in the
//! orchestrator and the local broker of each gateway, both rumqttd, listening
//! for MQTT 3.1.1 and 5 on addresses of their own, with optional
//! username/password authentication. External brokers (Mosquitto) are used
//! through their URL instead.

pub mod args;
pub mod broker;

pub use broker::{BrokerConfig, BrokerError, EmbeddedBroker};
