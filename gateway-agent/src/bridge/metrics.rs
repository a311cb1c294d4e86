//! The bridge's counters in Prometheus' text format, served by the agent on
//! `--metrics-listen` (`GET /metrics`).

use std::fmt::Write as _;

use super::stats::LinkState;
use super::{BridgeStatus, DirectionStatus};

/// Renders `status` as Prometheus metrics for gateway `gateway`.
pub fn render(gateway: &str, status: &BridgeStatus) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{gateway=\"{gateway}\"{labels}}} {v}");
        }
    };
    let dirs: [(&str, &DirectionStatus); 2] = [("in", &status.inbound), ("out", &status.outbound)];
    let per = |f: fn(&DirectionStatus) -> u64| -> Vec<(String, u64)> {
        dirs.iter()
            .map(|(d, s)| (format!(",direction=\"{d}\""), f(s)))
            .collect()
    };
    family(
        "continuum_bridge_received_total",
        "counter",
        "Messages taken into the outbox from the source broker.",
        &per(|s| s.received),
    );
    family(
        "continuum_bridge_forwarded_total",
        "counter",
        "Messages acknowledged by the destination broker.",
        &per(|s| s.forwarded),
    );
    family(
        "continuum_bridge_duplicates_total",
        "counter",
        "Redelivered messages recognised by their id and not taken again.",
        &per(|s| s.duplicates),
    );
    family(
        "continuum_bridge_dead_lettered_total",
        "counter",
        "Messages sent to a dead-letter topic.",
        &per(|s| s.dead_lettered),
    );
    family(
        "continuum_bridge_dropped_total",
        "counter",
        "Messages dropped because the outbox was full (oldest first).",
        &per(|s| s.dropped),
    );
    family(
        "continuum_bridge_queued",
        "gauge",
        "Messages waiting in the outbox.",
        &per(|s| s.queued),
    );
    family(
        "continuum_bridge_dead_letters_lost_total",
        "counter",
        "Dead letters that could not be published either.",
        &[(String::new(), status.dead_letters_lost)],
    );
    let up = |l: &LinkState| u64::from(*l == LinkState::Connected);
    family(
        "continuum_bridge_connected",
        "gauge",
        "Whether the bridge is connected to the broker (1) or not (0).",
        &[
            (",bus=\"global\"".to_owned(), up(&status.global)),
            (",bus=\"local\"".to_owned(), up(&status.local)),
        ],
    );
    out
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
        assert!(text.contains("# TYPE continuum_bridge_queued gauge"));
    }
}
