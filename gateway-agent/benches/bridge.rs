//! The bridge's throughput and latency (issue #6): 100,000 messages of 256 B,
//! global → local, through the Continuum bridge and, in the same run between
//! the same two Mosquitto brokers, through Mosquitto's own bridge; the
//! Continuum bridge with its durable outbox (fsync on every commit) and
//! with durability off (commits not synced).
//!
//! `cargo bench -p continuum-gateway --bench bridge` (needs `mosquitto`).
//! `BRIDGE_BENCH_N` changes the count; `cargo test --benches` sends 2,000
//! (smoke).
//!
//! The Continuum bridge is measured into the same local Mosquitto over TCP,
//! and — as the agent runs it by default — attached in-process to an
//! embedded local broker, the subscriber reading from that broker; this
//! compares the two gateways' whole local stacks (Mosquitto's bridge also
//! lives inside its local broker).
//!
//! Mosquitto's bridge with its default queue limits is measured too, with
//! the limits on the global broker only, where the bridge is a client: the
//! bench's own subscriber on the local broker keeps unbounded queues, so
//! what is lost is the bridge's. The numbers missing are listed.

use std::time::{Duration, Instant};

use continuum_bus::testing::{free_port, unix_nanos, Mosquitto, Probe};
use continuum_bus::{Attach, BrokerConfig, BrokerUrl, EmbeddedBroker};
use continuum_gateway::bridge::{Bridge, BridgeConfig};
use continuum_models::route::{Destination, Direction, Origin, Route, StaticRoute};

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

const SIZE: usize = 256;
/// The steady rate of the latency runs, in messages per second.
const PACE: u64 = 5_000;

struct Figures {
    delivered: u64,
    seconds: f64,
    latency: Summary,
    /// The numbers published and never received.
    missing: Vec<u64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
}

/// Publishes `n` messages on the global broker's `topic` and waits for them
/// on the local broker (or until nothing arrives for 10 s).
async fn run(
    global: &Mosquitto,
    local: &BrokerUrl,
    topic: &str,
    n: u64,
    rate: Option<u64>,
    tag: &str,
) -> Figures {
    let sub = Probe::connect(local, &format!("bench-sub-{tag}"), false);
    sub.connected(Duration::from_secs(10)).await;
    sub.subscribe(&format!("{topic}/#")).await;
    let publisher = Probe::connect(&global.url(), &format!("bench-pub-{tag}"), false);
    publisher.connected(Duration::from_secs(10)).await;
    // Warm up: until one message crosses.
    let probe_topic = format!("{topic}/warmup");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sub.received().iter().any(|r| r.topic == probe_topic) {
        assert!(
            Instant::now() < deadline,
            "{tag}: the bridge carries nothing"
        );
        publisher
            .publish_numbered(&probe_topic, 0..=0, SIZE, None)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sub.clear();
    let data = format!("{topic}/data");
    let start = unix_nanos();
    let p = publisher.clone();
    let d = data.clone();
    tokio::spawn(async move {
        match rate {
            None => p.publish_numbered(&d, 1..=n, SIZE, None).await,
            Some(rate) => {
                // Chunks of 50 on a schedule.
                let t0 = tokio::time::Instant::now();
                let mut k = 1;
                while k <= n {
                    let last = (k + 49).min(n);
                    p.publish_numbered(&d, k..=last, SIZE, None).await;
                    k = last + 1;
                    tokio::time::sleep_until(
                        t0 + Duration::from_secs_f64((k - 1) as f64 / rate as f64),
                    )
                    .await;
                }
            }
        }
    });
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = sub.count();
        if count as u64 >= n {
            break;
        }
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let got: Vec<_> = sub
        .received()
        .into_iter()
        .filter(|r| r.topic == data)
        .collect();
    let end = got.iter().map(|r| r.at_unix_nanos).max().unwrap_or(start);
    let lat: Vec<Duration> = got
        .iter()
        .filter_map(|r| r.latency_nanos())
        .map(Duration::from_nanos)
        .collect();
    let seen: std::collections::HashSet<u64> = got.iter().filter_map(|r| r.number()).collect();
    Figures {
        delivered: seen.len() as u64,
        seconds: (end.saturating_sub(start)) as f64 / 1e9,
        latency: Summary::of(if lat.is_empty() {
            &[Duration::ZERO]
        } else {
            &lat
        }),
        missing: (1..=n).filter(|k| !seen.contains(k)).collect(),
    }
}

/// `numbers` (sorted) as ranges: `3-7, 12`.
fn ranges(numbers: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            numbers[i].to_string()
        } else {
            format!("{}-{}", numbers[i], numbers[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Mosquitto's bridge from the local broker to `global`, for `mosq/#`.
fn bridge_config(global: &str) -> String {
    format!(
        "connection bench\naddress {global}\ntopic mosq/# in 1\nbridge_protocol_version mqttv311\ncleansession true\ntry_private true\n"
    )
}

/// Where the Continuum bridge delivers.
#[derive(Clone)]
enum Local {
    /// A Mosquitto broker, over TCP (the one Mosquitto's bridge uses).
    Mosquitto(BrokerUrl),
    /// The agent's default: the embedded broker, attached in-process; the
    /// subscriber connects to it over TCP.
    Embedded(BrokerUrl, Attach),
}

impl Local {
    fn url(&self) -> &BrokerUrl {
        match self {
            Local::Mosquitto(u) | Local::Embedded(u, _) => u,
        }
    }
}

fn continuum(global: &Mosquitto, local: &Local, dir: &std::path::Path, durable: bool) -> Bridge {
    let mut c = BridgeConfig::new("bench", global.url(), local.url().clone());
    c.data_dir = Some(dir.to_owned());
    c.durable = durable;
    if let Local::Embedded(_, attach) = local {
        c.local_attach = Some(attach.clone());
    }
    let b = Bridge::start(c).expect("the bridge starts");
    let route = StaticRoute {
        topic: "cont/#".into(),
        direction: Direction::In,
        local_prefix: String::new(),
        remote_prefix: String::new(),
    };
    b.set_routes(
        "bench",
        vec![Route {
            owner: "bench".into(),
            direction: Direction::In,
            filter: "cont/#".into(),
            destination: Destination::Rewrite {
                strip: String::new(),
                prepend: String::new(),
            },
            origin: Origin::Static(route),
        }],
    )
    .expect("routes");
    b
}

fn main() {
    let bench = "bridge";
    let mut report = Report::new(bench);
    if !report::require(
        "mosquitto (Debian's mosquitto)",
        report::installed("mosquitto", "-h"),
        bench,
    ) {
        return;
    }
    let n: u64 = std::env::var("BRIDGE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pick(100_000, 2_000));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("a directory");
        let global = Mosquitto::start(dir.path(), "global", "");
        let address = global.addr.to_string();
        let local = Mosquitto::start(dir.path(), "local", &bridge_config(&address));
        let local_url = local.url();
        let mosq = run(&global, &local_url, "mosq", n, None, "mosquitto").await;
        let over_tcp = Local::Mosquitto(local.url());
        let embedded = {
            let v5 = free_port();
            let mut config = BrokerConfig::new(
                None,
                Some(format!("127.0.0.1:{v5}").parse().expect("an address")),
            );
            // As the Mosquitto brokers here queue without limit: this
            // measures speed; what limits lose is measured on its own.
            config.backlog = 1 << 30;
            let broker = EmbeddedBroker::start(config).expect("the embedded broker starts");
            Local::Embedded(
                format!("mqtt://127.0.0.1:{v5}").parse().expect("a URL"),
                broker.attach(),
            )
        };
        let runs = std::cell::Cell::new(0);
        let continuum_run = |local: &Local, durable: bool, rate: Option<u64>, n: u64| {
            runs.set(runs.get() + 1);
            let tag = format!("continuum-{}", runs.get());
            let d = dir.path().join(&tag);
            std::fs::create_dir_all(&d).expect("bridge dir");
            let (global, local) = (&global, local.clone());
            async move {
                let b = continuum(global, &local, &d, durable);
                let f = run(global, local.url(), "cont", n, rate, &tag).await;
                b.stop().await;
                f
            }
        };
        let durable = continuum_run(&over_tcp, true, None, n).await;
        let memory = continuum_run(&over_tcp, false, None, n).await;
        let attached = continuum_run(&embedded, true, None, n).await;
        // Latency when neither bridge is saturated: a steady rate.
        let paced_n = (n / 5).max(1);
        let paced_mosq = run(
            &global,
            &local_url,
            "mosq",
            paced_n,
            Some(PACE),
            "mosquitto-paced",
        )
        .await;
        let paced_durable = continuum_run(&over_tcp, true, Some(PACE), paced_n).await;
        let paced_attached = continuum_run(&embedded, true, Some(PACE), paced_n).await;
        // Mosquitto's default limits, on the bridge's session only: the
        // global broker queues for the bridge, the subscriber's local broker
        // stays unbounded.
        let dir2 = tempfile::tempdir().expect("a directory");
        let defaults = "max_queued_messages 1000\nmax_inflight_messages 20\n";
        let g2 = Mosquitto::start(dir2.path(), "global", defaults);
        let l2 = Mosquitto::start(dir2.path(), "local", &bridge_config(&g2.addr.to_string()));
        let mosq_default = run(&g2, &l2.url(), "mosq", n, None, "mosquitto-defaults").await;

        println!(
            "bridge: {n} messages of {SIZE} B, global -> local, QoS 1, same two Mosquitto brokers"
        );
        let base = "Mosquitto's bridge, unbounded queues (baseline)";
        let rows = [
            (base, &mosq),
            ("Continuum bridge, durable outbox", &durable),
            ("Continuum bridge, outbox without fsync", &memory),
            (
                "Continuum bridge, durable outbox, embedded local broker attached",
                &attached,
            ),
            (
                "Mosquitto's bridge, default limits on its session",
                &mosq_default,
            ),
        ];
        for (case, f) in rows {
            if case == base {
                report.add(case, "msg/s", f.rate(), "msg/s", 1);
            } else {
                report.vs(case, "msg/s", f.rate(), "msg/s", 1, base);
            }
            report.add(case, "lost", f.missing.len() as f64, "msgs", 1);
            if !f.missing.is_empty() {
                println!("    missing: {}", ranges(&f.missing));
            }
        }
        println!("latency at a steady {PACE} msg/s ({paced_n} messages)");
        let base = format!("Mosquitto's bridge at {PACE} msg/s (baseline)");
        report.latency(&base, &paced_mosq.latency, None);
        report.latency(
            &format!("Continuum bridge, durable outbox, at {PACE} msg/s"),
            &paced_durable.latency,
            Some(&base),
        );
        report.latency(
            &format!("Continuum bridge, durable, embedded broker attached, at {PACE} msg/s"),
            &paced_attached.latency,
            Some(&base),
        );
        // Nothing may be lost on Continuum's paths.
        for (what, f) in [
            ("durable", &durable),
            ("without fsync", &memory),
            ("paced", &paced_durable),
            ("attached to the embedded broker", &attached),
            ("paced, attached", &paced_attached),
        ] {
            assert!(
                f.missing.is_empty(),
                "the Continuum bridge ({what}) lost {}",
                ranges(&f.missing)
            );
        }
    });
}
