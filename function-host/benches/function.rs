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
//! `mosquitto`). `FUNCTION_BENCH_N` changes the count (default 2,000).

use std::time::{Duration, Instant};

use continuum_bus::testing::{require, unix_nanos, Mosquitto, Probe};
use continuum_gateway::bridge::{Bridge, BridgeConfig};
use continuum_models::route::{routes_of, Direction, Route, StaticRoute};
use continuum_models::Component;

const HOST: &str = env!("CARGO_BIN_EXE_continuum-function-host");
const SIZE: usize = 64;
/// The steady rate of the latency runs, in messages per second.
const PACE: u64 = 200;

struct Figures {
    delivered: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
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
    let mut lat: Vec<u64> = got.iter().filter_map(|r| r.latency_nanos()).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |v| *v as f64 / 1e6)
    };
    Figures {
        delivered: got.len(),
        seconds: end.saturating_sub(start) as f64 / 1e9,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
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
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let n: u64 = std::env::var("FUNCTION_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
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

        println!("function: a 64 B message, handler `cat`, Mosquitto global and local brokers, the Continuum bridge");
        println!(
            "{:<48} {:>9} {:>9} {:>9}",
            "", "delivered", "p50 ms", "p99 ms"
        );
        for (name, f) in [
            ("global → local (bridge, in)", inbound),
            ("local → global (bridge, out)", outbound),
            ("global → function → global (warm)", warm),
        ] {
            println!(
                "{name:<48} {:>9} {:>9.2} {:>9.2}",
                f.delivered, f.p50_ms, f.p99_ms
            );
        }
        let legs_p50 = inbound.p50_ms + outbound.p50_ms;
        let legs_p99 = inbound.p99_ms + outbound.p99_ms;
        println!(
            "the two legs without a function: p50 {legs_p50:.2} ms, p99 at most {legs_p99:.2} ms; \
             the function round trip is {:.2}× the legs at p50 and {:.2}× at p99 \
             (the function host adds {:.2} ms at p50: a process per message)",
            warm.p50_ms / legs_p50,
            warm.p99_ms / legs_p99,
            warm.p50_ms - legs_p50
        );
        println!("(at a steady {PACE} msg/s, {paced_n} messages each)");
        println!(
            "throughput of one function (concurrency 4): {} of {n} replies in {:.2} s = {:.0} msg/s",
            flood.delivered,
            flood.seconds,
            flood.delivered as f64 / flood.seconds
        );
    });
}
