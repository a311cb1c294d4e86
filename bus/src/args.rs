//! The command-line settings of an embedded broker, shared by `continuum
//! serve` (the global bus) and `continuum gateway` (the local broker).

use std::net::SocketAddr;

use crate::BrokerConfig;

/// The embedded MQTT broker's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BusArgs {
    /// Where the embedded broker serves MQTT 3.1.1.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Where the embedded broker serves MQTT 5.
    #[arg(long, default_value = "127.0.0.1:1884")]
    pub mqtt5_listen: SocketAddr,
    /// A user the broker accepts (`name:password`, repeatable); none: anonymous.
    #[arg(long = "mqtt-user", value_parser = parse_user)]
    pub users: Vec<(String, String)>,
    /// Embed no broker.
    #[arg(long)]
    pub no_mqtt: bool,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .ok_or_else(|| format!("`{s}` is not name:password"))
}

impl BusArgs {
    /// The broker to embed, if any.
    pub fn config(&self) -> Option<BrokerConfig> {
        if self.no_mqtt {
            return None;
        }
        let mut c = BrokerConfig::new(Some(self.mqtt_listen), Some(self.mqtt5_listen));
        c.users = self.users.iter().cloned().collect();
        Some(c)
    }
}
