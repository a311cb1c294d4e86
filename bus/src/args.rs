//! The command-line settings of an embedded broker, shared by `continuum
//! serve` (the global bus) and `continuum gateway` (the local broker).

use std::net::SocketAddr;

#[cfg(feature = "broker")]
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
    /// Also serve MQTT 5 over TLS here (with --mqtt-tls-cert and
    /// --mqtt-tls-key): for clients on other machines.
    #[arg(long, value_name = "ADDR", requires_all = ["mqtt_tls_cert", "mqtt_tls_key"])]
    pub mqtts_listen: Option<SocketAddr>,
    /// The TLS listener's certificate (PEM; `continuum certs init` makes one).
    #[arg(long, value_name = "FILE", requires = "mqtts_listen")]
    pub mqtt_tls_cert: Option<std::path::PathBuf>,
    /// The TLS listener's key (PEM).
    #[arg(long, value_name = "FILE", requires = "mqtts_listen")]
    pub mqtt_tls_key: Option<std::path::PathBuf>,
    /// What the embedded broker keeps, per subscription, for subscribers
    /// that are offline or lag behind, in MiB. A persistent session that
    /// falls further behind loses its oldest messages; they are counted
    /// (`continuum_local_broker_skipped` on the gateway's metrics) and logged.
    #[arg(long, value_name = "MIB", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mqtt_backlog_mib: u32,
    /// Embed no broker.
    #[arg(long)]
    pub no_mqtt: bool,
}

impl BusArgs {
    /// The embedded broker's listeners, checked with [`exposure`]: the
    /// warnings to print, or why not to start.
    pub fn exposure(&self, insecure: bool) -> Result<Vec<String>, String> {
        if self.no_mqtt {
            return Ok(Vec::new());
        }
        let mut warnings = Vec::new();
        for (what, addr) in [
            ("the embedded MQTT broker (3.1.1)", self.mqtt_listen),
            ("the embedded MQTT broker (5)", self.mqtt5_listen),
        ] {
            warnings.extend(exposure(what, addr, insecure)?);
        }
        if let Some(addr) = self.mqtts_listen {
            // Encrypted; with accounts it is closed to strangers too.
            if self.users.is_empty() {
                warnings.extend(exposure(
                    "the embedded MQTT broker over TLS without --mqtt-user accounts",
                    addr,
                    insecure,
                )?);
            }
        }
        Ok(warnings)
    }
}

/// Whether `addr` may serve `what` in plain text, without authentication:
/// on a loopback address always (nothing beyond this machine reaches it);
/// elsewhere only when the operator said `--insecure`, and then with a
/// warning to print (`Ok(Some(..))`). Otherwise the error to stop with.
pub fn exposure(what: &str, addr: SocketAddr, insecure: bool) -> Result<Option<String>, String> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    if insecure {
        return Ok(Some(format!(
            "WARNING: {what} on {addr} is plain text and unauthenticated: anyone who reaches that address can use it. Use this only on a network you trust."
        )));
    }
    Err(format!(
        "refusing to serve {what} on {addr}: it would be plain text and unauthenticated, open to anyone who reaches that address. Listen on a loopback address, or pass --insecure on a network you trust"
    ))
}

/// A duration on the command line, as every flag of Continuum takes one: a
/// number and a unit (`10s`, `500ms`, `2m`, `1h 30m`), more than zero.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    match duration_or_zero(s)? {
        d if d.is_zero() => Err("a duration must be more than zero".to_owned()),
        d => Ok(d),
    }
}

/// A duration on the command line that may be zero (`0s`: none).
pub fn duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|_| {
        format!("`{s}` is not a duration: give a number and a unit, such as 10s, 500ms or 2m")
    })
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))
        .ok_or_else(|| format!("`{s}` is not name:password"))
}

#[cfg(feature = "broker")]
impl BusArgs {
    /// The broker to embed, if any.
    pub fn config(&self) -> Option<BrokerConfig> {
        if self.no_mqtt {
            return None;
        }
        let mut c = BrokerConfig::new(Some(self.mqtt_listen), Some(self.mqtt5_listen));
        c.users = self.users.iter().cloned().collect();
        c.backlog = self.mqtt_backlog_mib as usize * (1 << 20);
        if let (Some(listen), Some(cert), Some(key)) =
            (self.mqtts_listen, &self.mqtt_tls_cert, &self.mqtt_tls_key)
        {
            c.tls = Some(crate::BrokerTls {
                listen,
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_loopback_listens_without_insecure() {
        let lo: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let v6: SocketAddr = "[::1]:7070".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert_eq!(exposure("the API", lo, false), Ok(None));
        assert_eq!(exposure("the API", v6, false), Ok(None));
        let e = exposure("the API", any, false).unwrap_err();
        assert!(
            e.contains("refusing to serve the API on 0.0.0.0:7070") && e.contains("--insecure"),
            "{e}"
        );
        let w = exposure("the API", any, true).unwrap().unwrap();
        assert!(w.starts_with("WARNING: the API on 0.0.0.0:7070"), "{w}");
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(duration("0.5")
            .unwrap_err()
            .contains("give a number and a unit"));
        assert!(duration("0s").is_err());
    }
}
