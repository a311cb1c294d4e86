//! A gateway agent under steady traffic for a long time, compressed: the
//! agent (`continuum gateway`, process driver) with its embedded broker, its
//! bridge and one function, fed from the global bus at a constant rate, its
//! replies taken back on the global bus. Sampled every few seconds: the
//! agent's resident memory (VmRSS, and RssAnon: without the pages of its
//! executable), its open file descriptors, its bridge's
//! outboxes (`continuum_bridge_queued`) and its function's invocations.
//! Reported: first, middle and last (each the median of a tenth of the
//! samples), the peak, the growth and the growth over the second half (a
//! bounded quantity has stopped growing by then); nothing may be lost, and
//! the local broker may skip nothing for a lagging subscriber.
//!
//! `cargo bench --bench soak`: 10 minutes at 200 messages a second — an hour
//! of 20 a second, 120,000 messages. `SOAK_SECONDS` and `SOAK_RATE` change
//! it. Under `cargo test --benches`: 10 seconds at 50 a second (smoke).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/report.rs"]
mod report;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::http_get;
use common::{function_gateway, metric, orchestrator, unique};
use continuum_bus::testing::Probe;
use report::{pick, Report};

const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/templates/shell-function.json"
);

fn setting(name: &str, full: u64, smoke: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(pick(full, smoke))
}

/// VmRSS and RssAnon in MiB, and open descriptors, of process `pid`.
/// VmRSS also counts the pages of the executable that ran (RssFile: shared
/// with the file, dropped and read again under memory pressure); RssAnon is
/// the memory the agent itself holds.
fn process(pid: u32) -> (f64, f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (kib("VmRSS:") / 1024.0, kib("RssAnon:") / 1024.0, fds)
}

/// The sum of every sample of `name` in a Prometheus text exposition.
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Sample {
    rss: f64,
    anon: f64,
    fds: usize,
    queued: f64,
}

/// The median of the first and of the last tenth (at least one sample each).
/// The first, middle and last tenths of the samples, each as its median: a
/// bounded quantity stops growing between the middle and the end.
fn tenths(v: &[f64]) -> (f64, f64, f64) {
    let k = (v.len() / 10).max(1);
    let median = |s: &[f64]| {
        let mut s = s.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let mid = (v.len() - k) / 2;
    (
        median(&v[..k]),
        median(&v[mid..mid + k]),
        median(&v[v.len() - k..]),
    )
}

fn write_model(dir: &Path, gateway: &str, function: &str, trigger: &str) -> String {
    let src = dir.join("handler");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), "exec cat\n").unwrap();
    let model = serde_json::json!({"name": "soak", "subsystems": [{"id": gateway, "components": [
        {"id": gateway, "kind": "gateway", "equipped_with_bridge": true},
        {"id": function, "kind": "function", "triggers": [trigger], "outputs": ["r"],
         "runtime": TEMPLATE, "src": src.display().to_string(),
         "invocation": {"concurrency": 4, "timeout": "10s"}}
    ], "links": [{"kind": "hosting", "component": function, "host": gateway}]}]});
    let path = dir.join("soak.json");
    std::fs::write(&path, model.to_string()).unwrap();
    path.display().to_string()
}

fn main() {
    let bench = "soak";
    let mut report = Report::new(bench);
    let seconds = setting("SOAK_SECONDS", 600, 10);
    let rate = setting("SOAK_RATE", 200, 50);
    let every = Duration::from_secs(pick(5, 1));
    let host = common::built_function_host();
    let dir = tempfile::tempdir().unwrap();
    let (serve, global) = orchestrator(dir.path());
    let _reap = common::Reap(dir.path().display().to_string());
    let gateway = unique("soak");
    let (agent, _local, metrics) = function_gateway(dir.path(), &serve, &gateway, "process", &host);
    let pid = agent.0.id();
    let function = unique("sf");
    let model = write_model(
        dir.path(),
        &gateway,
        &function,
        &format!("/soak/{function}"),
    );
    let out = serve.cli(&["apply", "-f", &model, "--wait", "120s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let replies = format!("/{function}/out/r");
        let watch = Probe::connect(&global, &unique("soak-watch"), false);
        watch.connected(Duration::from_secs(10)).await;
        watch.subscribe(&replies).await;
        let client = Probe::connect(&global, &unique("soak-client"), false);
        client.connected(Duration::from_secs(10)).await;
        let send = format!("/soak/{function}");
        // Until the route is up end to end.
        let give_up = Instant::now() + Duration::from_secs(120);
        while watch.received_on(&replies).is_empty() {
            assert!(Instant::now() < give_up, "the function never answered");
            client.publish_numbered(&send, 0..=0, 64, None).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        watch.clear();
        let n = rate * seconds;
        println!("soak: {seconds} s at {rate} msg/s ({n} messages), sampled every {every:?}");
        let publisher = {
            let (c, topic) = (client.clone(), send.clone());
            tokio::spawn(async move {
                let t0 = tokio::time::Instant::now();
                let mut k = 1;
                while k <= n {
                    // Chunks of a tenth of a second, on a schedule.
                    let last = (k + rate / 10).min(n);
                    c.publish_numbered(&topic, k..=last, 64, None).await;
                    k = last + 1;
                    tokio::time::sleep_until(
                        t0 + Duration::from_secs_f64((k - 1) as f64 / rate as f64),
                    )
                    .await;
                }
            })
        };
        let mut samples = Vec::new();
        let mut next = tokio::time::Instant::now();
        loop {
            let (rss, anon, fds) = process(pid);
            let addr = metrics.clone();
            let (_, text) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics", &[]))
                .await
                .unwrap();
            samples.push(Sample {
                rss,
                anon,
                fds,
                queued: sum_of(&text, "continuum_bridge_queued"),
            });
            if publisher.is_finished() {
                break;
            }
            next += every;
            tokio::time::sleep_until(next).await;
        }
        publisher.await.unwrap();
        // Every reply back, or a minute of silence.
        let drain = Instant::now() + Duration::from_secs(60);
        loop {
            let got: HashSet<u64> = watch
                .received_on(&replies)
                .iter()
                .filter_map(|r| r.number())
                .collect();
            let missing = (1..=n).filter(|k| !got.contains(k)).count();
            if missing == 0 || Instant::now() > drain {
                let case = format!("{n} messages through the bridge and the function");
                report.add(&case, "lost", missing as f64, "msgs", 1);
                assert_eq!(missing, 0, "{missing} of {n} replies never came");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The function's host reports its counters about once a second.
        let series = format!(
            "continuum_function_invocations_total{{function=\"{function}\",outcome=\"ok\"}}"
        );
        let counted = loop {
            let addr = metrics.clone();
            let (_, text) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics", &[]))
                .await
                .unwrap();
            let ok = metric(&text, &series).unwrap_or(0.0);
            if ok >= n as f64 || Instant::now() > drain {
                break ok;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        report.add(
            "the agent's count of the function's runs (warm-up included)",
            "runs",
            counted,
            "runs",
            1,
        );
        assert!(
            counted >= n as f64,
            "the agent counted {counted} runs of {n}"
        );
        // What the local broker dropped for a subscriber behind its backlog
        // (the bridge's own session included): bounded memory must not cost
        // messages at this rate.
        let addr = metrics.clone();
        let (_, text) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics", &[]))
            .await
            .unwrap();
        let skipped = metric(&text, "continuum_local_broker_skipped_total").unwrap_or(f64::NAN);
        report.add(
            "messages the local broker skipped for a lagging subscriber",
            "skipped",
            skipped,
            "msgs",
            1,
        );
        assert_eq!(skipped, 0.0, "the local broker skipped messages");
        let rss: Vec<f64> = samples.iter().map(|s| s.rss).collect();
        let anon: Vec<f64> = samples.iter().map(|s| s.anon).collect();
        let fds: Vec<f64> = samples.iter().map(|s| s.fds as f64).collect();
        let queued: Vec<f64> = samples.iter().map(|s| s.queued).collect();
        let k = samples.len();
        for (case, v, unit) in [
            (
                "agent VmRSS (embedded broker, bridge, one function)",
                &rss,
                "MiB",
            ),
            (
                "agent RssAnon (VmRSS without the executable's pages)",
                &anon,
                "MiB",
            ),
            ("agent open file descriptors", &fds, "fds"),
            ("bridge outboxes, messages queued", &queued, "msgs"),
        ] {
            let (first, middle, last) = tenths(v);
            let peak = v.iter().copied().fold(f64::MIN, f64::max);
            report.add(case, "first", first, unit, k);
            report.add(case, "middle", middle, unit, k);
            report.add(case, "last", last, unit, k);
            report.add(case, "peak", peak, unit, k);
            report.add(case, "growth", last - first, unit, k);
            report.add(case, "growth, second half", last - middle, unit, k);
        }
    });
    drop(agent);
}
