//! A function's figures, between two Mosquitto brokers (global and local)
//! joined by the Continuum bridge, with the function host as its own process
//! and `cat` as the handler:
//!
//! * warm invocation latency — a publish on the trigger on the global bus to
//!   the reply on the global bus — at a steady rate, against the same round
//!   trip without a function (global → bridge → local → bridge → global, by
//!   static routes), measured in the same run;
//! * the throughput of one function (messages published as fast as they go).
//!
//! `cargo bench -p continuum-function-host --bench function` (needs
//! `mosquitto`). `FUNCTION_BENCH_N` changes the count (default 2,000;
//! 200 under `cargo test --benches`, the smoke run).

use std::time::{Duration, Instant};

use continuum_bus::testing::{unix_nanos, Mosquitto, Probe};
use continuum_gateway::bridge::{Bridge, BridgeConfig};
use continuum_models::route::{routes_of, Direction, Route, StaticRoute};
use continuum_models::Component;

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

const HOST: &str = env!("CARGO_BIN_EXE_continuum-function-host");
const SIZE: usize = 64;
/// The steady rate of the latency runs, in messages per second.
const PACE: u64 = 200;

struct Figures {
    delivered: usize,
    seconds: f64,
    latency: Summary,
}

/// Publishes `n` numbered messages on `send` (at `rate` per second, or as fast
/// as they go) and collects what arrives on `receive`.
async fn run(
    client: &Probe,
    watch: &Probe,
    send: &str,
    receive: &str,
    n: u64,
    rate: Option<u64>,
) -> Figures {
    watch.clear();
    let start = unix_nanos();
    let (c, topic) = (client.clone(), send.to_owned());
    tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        for k in 1..=n {
            c.publish_numbered(&topic, k..=k, SIZE, None).await;
            if let Some(rate) = rate {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / rate as f64))
                    .await;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while (watch.received_on(receive).len() as u64) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = watch.received_on(receive);
    let end = got.iter().map(|r| r.at_unix_nanos).max().unwrap_or(start);
    let lat: Vec<Duration> = got
        .iter()
        .filter_map(|r| r.latency_nanos())
        .map(Duration::from_nanos)
        .collect();
    assert_eq!(
        got.len() as u64,
        n,
        "{receive}: {} of {n} arrived",
        got.len()
    );
    Figures {
        delivered: got.len(),
        seconds: end.saturating_sub(start) as f64 / 1e9,
        latency: Summary::of(&lat),
    }
}

/// A child process, killed when dropped (even by a panic).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let bench = "function";
    let mut report = Report::new(bench);
    if !report::require(
        "mosquitto (Debian's mosquitto)",
        report::installed("mosquitto", "-h"),
        bench,
    ) {
        return;
    }
    let n: u64 = std::env::var("FUNCTION_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pick(2_000, 200));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("a directory");
        let global = Mosquitto::start(dir.path(), "global", "");
        let local = Mosquitto::start(dir.path(), "local", "");
        let mut config = BridgeConfig::new("bench", global.url(), local.url());
        std::fs::create_dir_all(dir.path().join("bridge")).expect("a directory");
        config.data_dir = Some(dir.path().join("bridge"));
        let bridge = Bridge::start(config).expect("the bridge starts");
        // The function's routes, as the model gives them.
        let function: Component = serde_json::from_value(serde_json::json!({
            "id": "f", "kind": "function", "triggers": ["/bench/trigger"], "outputs": ["o"],
            "resources": {"container": {"image": "unused"}}
        }))
        .expect("a function");
        bridge.set_routes("f", routes_of(&function)).expect("routes");
        // The same round trip without a function.
        let looped = |direction, local_prefix: &str, remote_prefix: &str| {
            let s = StaticRoute {
                topic: "#".into(),
                direction,
                local_prefix: local_prefix.into(),
                remote_prefix: remote_prefix.into(),
            };
            let gw: Component = serde_json::from_value(serde_json::json!({
                "id": "gw", "kind": "gateway", "routes": [s]
            }))
            .expect("a gateway");
            routes_of(&gw)
        };
        // The two legs of the round trip, each on its own: global → local,
        // and local → global (the bridge carries nothing back to where it
        // came from, so the legs cannot be chained without a function).
        let mut base: Vec<Route> = looped(Direction::In, "/loop/", "/base/");
        base.extend(looped(Direction::Out, "/echo/", "/back/"));
        bridge.set_routes("gw", base).expect("routes");

        let host = Kill(std::process::Command::new(HOST)
            .env("CONTINUUM_FUNCTION", "f")
            .env("CONTINUUM_BROKER", local.url().to_string())
            .env("CONTINUUM_OUTPUTS", "o")
            .env("CONTINUUM_CONCURRENCY", "4")
            .env("CONTINUUM_STATE_DIR", dir.path().join("host"))
            .env("RUST_LOG", "warn")
            .args(["--", "/bin/cat"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the function host starts"));

        let probe = |url: continuum_bus::BrokerUrl, name: &'static str| async move {
            let p = Probe::connect(&url, name, false);
            p.connected(Duration::from_secs(10)).await;
            p
        };
        let watch = probe(global.url(), "bench-watch").await;
        watch.subscribe("/f/out/#").await;
        watch.subscribe("/back/#").await;
        let client = probe(global.url(), "bench-client").await;
        let local_watch = probe(local.url(), "bench-local-watch").await;
        local_watch.subscribe("/loop/#").await;
        let local_client = probe(local.url(), "bench-local-client").await;
        // Warm up every path: until one message makes it.
        let paths = [
            (&client, &watch, "/bench/trigger", "/f/out/o"),
            (&client, &local_watch, "/base/x", "/loop/x"),
            (&local_client, &watch, "/echo/x", "/back/x"),
        ];
        for (c, w, send, receive) in paths {
            let deadline = Instant::now() + Duration::from_secs(30);
            while w.received_on(receive).is_empty() {
                assert!(Instant::now() < deadline, "nothing arrives on {receive}");
                c.publish_numbered(send, 0..=0, SIZE, None).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let paced_n = (n / 4).max(1);
        // Each path once to warm the outboxes and the brokers up, then measured.
        let mut figures = Vec::new();
        for _ in 0..2 {
            figures.clear();
            for (c, w, send, receive) in paths {
                figures.push(run(c, w, send, receive, paced_n, Some(PACE)).await);
            }
        }
        let (warm, inbound, outbound) = (&figures[0], &figures[1], &figures[2]);
        let flood = run(&client, &watch, "/bench/trigger", "/f/out/o", n, None).await;
        drop(host);
        bridge.stop().await;

        println!("function: a {SIZE} B message, handler `cat`, Mosquitto global and local brokers, the Continuum bridge, at a steady {PACE} msg/s, {paced_n} messages each");
        report.latency("global -> local (bridge, in)", &inbound.latency, None);
        report.latency("local -> global (bridge, out)", &outbound.latency, None);
        // The baseline: the two legs added up (each figure of one plus the
        // same figure of the other).
        let base = "the bridge's two legs added up (baseline)";
        let (a, b) = (&inbound.latency, &outbound.latency);
        let samples = a.n.min(b.n);
        report.add(base, "p50", report::ms(a.p50 + b.p50), "ms", samples);
        let tail = if a.tail_name() == b.tail_name() { a.tail_name() } else { "max" };
        let (ta, tb) = if tail == a.tail_name() && tail == b.tail_name() { (a.tail, b.tail) } else { (a.max, b.max) };
        report.add(base, tail, report::ms(ta + tb), "ms", samples);
        let w = &warm.latency;
        report.vs("global -> function -> global (warm)", "p50", report::ms(w.p50), "ms", w.n, base);
        let wt = if tail == w.tail_name() { w.tail } else { w.max };
        report.vs("global -> function -> global (warm)", tail, report::ms(wt), "ms", w.n, base);
        report.add(
            "one function's throughput (concurrency 4)",
            "msg/s",
            flood.delivered as f64 / flood.seconds,
            "msg/s",
            1,
        );
    });
}
