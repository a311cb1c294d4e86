//! The bridge's counters for Prometheus, read from the bridge at each scrape
//! and encoded by `prometheus-client`; served by the agent on
//! `--metrics-listen` (`GET /metrics`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::stats::LinkState;
use super::{BridgeStatus, DirectionStatus};

/// Reads the bridge's status at each scrape.
pub struct BridgeCollector {
    gateway: String,
    status: Box<dyn Fn() -> BridgeStatus + Send + Sync>,
}

impl std::fmt::Debug for BridgeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeCollector")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl BridgeCollector {
    pub fn new(
        gateway: impl Into<String>,
        status: impl Fn() -> BridgeStatus + Send + Sync + 'static,
    ) -> BridgeCollector {
        BridgeCollector {
            gateway: gateway.into(),
            status: Box::new(status),
        }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
            _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for BridgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = (self.status)();
        let g = self.gateway.as_str();
        let dirs: [(&str, &DirectionStatus); 2] =
            [("in", &status.inbound), ("out", &status.outbound)];
        let per = |f: fn(&DirectionStatus) -> u64| -> Vec<(Labels<'_>, u64)> {
            dirs.iter()
                .map(|(d, s)| (vec![("gateway", g), ("direction", *d)], f(s)))
                .collect()
        };
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        family(
            e,
            "continuum_bridge_received",
            "Messages taken into the outbox from the source broker.",
            Counter,
            &per(|s| s.received),
        )?;
        family(
            e,
            "continuum_bridge_forwarded",
            "Messages acknowledged by the destination broker.",
            Counter,
            &per(|s| s.forwarded),
        )?;
        family(
            e,
            "continuum_bridge_duplicates",
            "Redelivered messages recognised by their id and not taken again.",
            Counter,
            &per(|s| s.duplicates),
        )?;
        family(
            e,
            "continuum_bridge_dead_lettered",
            "Messages sent to a dead-letter topic.",
            Counter,
            &per(|s| s.dead_lettered),
        )?;
        family(
            e,
            "continuum_bridge_dropped",
            "Messages dropped because the outbox was full (oldest first).",
            Counter,
            &per(|s| s.dropped),
        )?;
        family(
            e,
            "continuum_bridge_queued",
            "Messages waiting in the outbox.",
            Gauge,
            &per(|s| s.queued),
        )?;
        family(
            e,
            "continuum_bridge_dead_letters_lost",
            "Dead letters that could not be published either.",
            Counter,
            &[(vec![("gateway", g)], status.dead_letters_lost)],
        )?;
        let up = |l: &LinkState| u64::from(*l == LinkState::Connected);
        family(
            e,
            "continuum_bridge_connected",
            "Whether the bridge is connected to the broker (1) or not (0).",
            Gauge,
            &[
                (vec![("gateway", g), ("bus", "global")], up(&status.global)),
                (vec![("gateway", g), ("bus", "local")], up(&status.local)),
            ],
        )
    }
}

/// A registry holding `collector`, ready to encode.
pub fn registry(collector: BridgeCollector) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    registry
}

/// Encodes a registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Renders `status` as Prometheus metrics for gateway `gateway`.
#[cfg(test)]
pub fn render(gateway: &str, status: &BridgeStatus) -> String {
    let status = status.clone();
    encode(&registry(BridgeCollector::new(gateway, move || {
        status.clone()
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_with_its_labels() {
        let s = BridgeStatus {
            global: LinkState::Connected,
            local: LinkState::Down("no".into()),
            inbound: DirectionStatus {
                received: 5,
                forwarded: 4,
                duplicates: 1,
                dead_lettered: 0,
                queued: 1,
                dropped: 7,
            },
            outbound: DirectionStatus::default(),
            dead_letters_lost: 0,
        };
        let text = render("gw", &s);
        assert!(
            text.contains("continuum_bridge_dropped_total{gateway=\"gw\",direction=\"in\"} 7"),
            "{text}"
        );
        assert!(text.contains("continuum_bridge_connected{gateway=\"gw\",bus=\"global\"} 1"));
        assert!(text.contains("continuum_bridge_connected{gateway=\"gw\",bus=\"local\"} 0"));
        assert!(
            text.contains("# TYPE continuum_bridge_queued gauge"),
            "{text}"
        );
    }
}
