//! The bridge's throughput and latency (issue #6): 100,000 messages of 256 B,
//! global → local, through the Continuum bridge and, in the same run between
//! the same two Mosquitto brokers, through Mosquitto's own bridge; the
//! Continuum bridge with its durable outbox (fsync on every commit) and
//! with durability off (commits not synced).
//!
//! `cargo bench -p continuum-gateway --bench bridge` (needs `mosquitto`).
//! `BRIDGE_BENCH_N` changes the count.

use std::time::{Duration, Instant};

use continuum_bus::testing::{require, unix_nanos, Mosquitto, Probe};
use continuum_gateway::bridge::{Bridge, BridgeConfig};
use continuum_models::route::{Destination, Direction, Origin, Route, StaticRoute};

const SIZE: usize = 256;
/// The steady rate of the latency runs, in messages per second.
const PACE: u64 = 5_000;

struct Figures {
    delivered: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
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
    local: &Mosquitto,
    topic: &str,
    n: u64,
    rate: Option<u64>,
    tag: &str,
) -> Figures {
    let sub = Probe::connect(&local.url(), &format!("bench-sub-{tag}"), false);
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
    let mut lat: Vec<u64> = got.iter().filter_map(|r| r.latency_nanos()).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |v| *v as f64 / 1e6)
    };
    Figures {
        delivered: got.len() as u64,
        seconds: (end.saturating_sub(start)) as f64 / 1e9,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// Mosquitto's bridge from the local broker to `global`, for `mosq/#`.
fn bridge_config(global: &str) -> String {
    format!(
        "connection bench\naddress {global}\ntopic mosq/# in 1\nbridge_protocol_version mqttv311\ncleansession true\ntry_private true\n"
    )
}

fn continuum(
    global: &Mosquitto,
    local: &Mosquitto,
    dir: &std::path::Path,
    durable: bool,
) -> Bridge {
    let mut c = BridgeConfig::new("bench", global.url(), local.url());
    c.data_dir = Some(dir.to_owned());
    c.durable = durable;
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
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let n: u64 = std::env::var("BRIDGE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("a directory");
        let global = Mosquitto::start(dir.path(), "global", "");
        let address = global.addr.to_string();
        let local = Mosquitto::start(dir.path(), "local", &bridge_config(&address));
        let mosq = run(&global, &local, "mosq", n, None, "mosquitto").await;
        let continuum_run = |durable: bool, rate: Option<u64>, n: u64| {
            let d = dir
                .path()
                .join(if durable { "durable" } else { "no-fsync" });
            std::fs::create_dir_all(&d).expect("bridge dir");
            let (global, local) = (&global, &local);
            async move {
                let b = continuum(global, local, &d, durable);
                let tag = format!("{}-{rate:?}", if durable { "durable" } else { "nofsync" });
                let f = run(global, local, "cont", n, rate, &tag).await;
                b.stop().await;
                f
            }
        };
        let durable = continuum_run(true, None, n).await;
        let memory = continuum_run(false, None, n).await;
        // Latency when neither bridge is saturated: a steady rate.
        let paced_n = (n / 5).max(1);
        let paced_mosq = run(
            &global,
            &local,
            "mosq",
            paced_n,
            Some(PACE),
            "mosquitto-paced",
        )
        .await;
        let paced_durable = continuum_run(true, Some(PACE), paced_n).await;
        // Mosquitto with its default queue limits, for the record.
        let dir2 = tempfile::tempdir().expect("a directory");
        let defaults = "max_queued_messages 1000\nmax_inflight_messages 20\n";
        let g2 = Mosquitto::start(dir2.path(), "global", defaults);
        let l2 = Mosquitto::start(
            dir2.path(),
            "local",
            &format!("{defaults}{}", bridge_config(&g2.addr.to_string())),
        );
        let mosq_default = run(&g2, &l2, "mosq", n, None, "mosquitto-defaults").await;

        println!(
            "bridge: {n} messages of {SIZE} B, global → local, QoS 1, same two Mosquitto brokers"
        );
        println!(
            "{:<44} {:>9} {:>11} {:>9} {:>9} {:>8}",
            "", "delivered", "msg/s", "p50 ms", "p99 ms", "ratio"
        );
        let row = |name: &str, f: &Figures| {
            println!(
                "{name:<44} {:>9} {:>11.0} {:>9.1} {:>9.1} {:>7.2}×",
                f.delivered,
                f.rate(),
                f.p50_ms,
                f.p99_ms,
                f.rate() / mosq.rate()
            );
        };
        row("Mosquitto's bridge (baseline, unbounded queues)", &mosq);
        row("Continuum bridge, durable outbox", &durable);
        row("Continuum bridge, outbox without fsync", &memory);
        row("Mosquitto's bridge, default queue limits", &mosq_default);
        println!("\nlatency at a steady {PACE} msg/s ({paced_n} messages)");
        println!(
            "{:<44} {:>9} {:>11} {:>9} {:>9} {:>8}",
            "", "delivered", "msg/s", "p50 ms", "p99 ms", "p99 ×"
        );
        for (name, f) in [
            ("Mosquitto's bridge (baseline)", &paced_mosq),
            ("Continuum bridge, durable outbox", &paced_durable),
        ] {
            println!(
                "{name:<44} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>7.2}×",
                f.delivered,
                f.rate(),
                f.p50_ms,
                f.p99_ms,
                f.p99_ms / paced_mosq.p99_ms
            );
        }
        if mosq_default.delivered < n {
            println!(
                "  Mosquitto with its default limits lost {} of {n} messages, silently",
                n - mosq_default.delivered
            );
        }
    });
}
