//! Serverless figures of the whole system: the orchestrator and its global bus,
//! gateway agents as processes, functions deployed by `continuum apply`.
//!
//! * **Cold path**: from `continuum apply` of a model with a new function to
//!   its first output on the global bus — once on a gateway that has never run
//!   a function (the function host image is assembled), once for a second
//!   function with a new source (the base image cached). On Docker when the
//!   engine is usable, else under the process driver.
//! * **Multi-cluster experiment**: an event workload of rising rate against
//!   one function on one gateway, then against three replicas of it that
//!   Continuum's placement spreads by load over three gateways, sharing the
//!   workload through an MQTT 5 shared subscription on the global bus. Each
//!   gateway's function host runs at most 2 invocations at once and each
//!   takes 50 ms (the handler sleeps): a gateway's capacity, the same for
//!   all three gateways. For each rate: the success rate (outputs within 1 s of
//!   the publish) and the p99 latency.
//!
//! `cargo bench --bench faas`. The static function host comes from
//! `CONTINUUM_FUNCTION_HOST` or is built by scripts/build-function-host.sh.
//! `FAAS_BENCH_RATES` (messages per second, comma-separated; default
//! `20,40,60,80,100,120`) and `FAAS_BENCH_STEP` (seconds per rate; default 4)
//! change the workload. Under `cargo test --benches` (smoke) one rate of 20
//! for 1 s.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/report.rs"]
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{docker_ready, function_gateway, orchestrator, remove_docker_objects, unique, Serve};
use continuum_bus::testing::Probe;
use continuum_bus::BrokerUrl;
use report::{pick, Report};

/// An output later than this after its publish is a failure.
const DEADLINE: Duration = Duration::from_secs(1);
/// Invocations at once on one gateway.
const CONCURRENCY: u32 = 2;
/// The work of one invocation.
const HANDLER: &str = "sleep 0.05\nexec cat\n";
const TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/templates/shell-function.json"
);

fn main() {
    let host = common::built_function_host();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut report = Report::new("faas");
    rt.block_on(async {
        cold_path(&host, &mut report).await;
        experiment(&host, &mut report).await;
    });
}

fn write(path: &Path, value: &serde_json::Value) -> String {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path.display().to_string()
}

/// A function's source directory holding `handler`.
fn source(dir: &Path, name: &str, handler: &str) -> String {
    let src = dir.join(name);
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), handler).unwrap();
    src.display().to_string()
}

/// `continuum apply -f model` as a child process, not waited for.
fn apply(serve: &Serve, model: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["apply", "-f", model])
        .env("CONTINUUM_SERVER", &serve.addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runs continuum apply")
}

async fn probe(url: &BrokerUrl, name: &str) -> Probe {
    let p = Probe::connect(url, &unique(name), false);
    p.connected(Duration::from_secs(10)).await;
    p
}

/// Publishes on `trigger` every 50 ms until an output of `function` reaches
/// `watch`; the time from `since`.
async fn first_output(
    client: &Probe,
    watch: &Probe,
    function: &str,
    trigger: &str,
    since: Instant,
) -> Duration {
    let give_up = since + Duration::from_secs(300);
    let outputs = format!("/{function}/out/");
    loop {
        client.publish_with(trigger, "ping", &[]).await;
        if watch
            .received()
            .iter()
            .any(|r| r.topic.starts_with(&outputs))
        {
            return since.elapsed();
        }
        assert!(Instant::now() < give_up, "no output within 300 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes a cold-path run's containers and images, even on a panic.
struct DockerObjects {
    subsystem: String,
    functions: Vec<String>,
}

impl Drop for DockerObjects {
    fn drop(&mut self) {
        remove_docker_objects(&self.subsystem, &self.functions);
    }
}

async fn cold_path(host: &Path, report: &mut Report) {
    let driver = if docker_ready() { "docker" } else { "process" };
    if driver == "docker" {
        // A fresh gateway: no function host image yet (kept if something
        // else is built from it).
        let _ = Command::new("sh")
            .args([
                "-c",
                "docker images -q continuum/function-host | xargs -r docker rmi >/dev/null 2>&1",
            ])
            .output();
    }
    let dir = tempfile::tempdir().unwrap();
    let (serve, global) = orchestrator(dir.path());
    let gateway = unique("cold-gw");
    let subsystem = unique("cold");
    let functions = [unique("cold-a"), unique("cold-b")];
    let _objects = DockerObjects {
        subsystem: subsystem.clone(),
        functions: functions.to_vec(),
    };
    let _reap = common::Reap(dir.path().display().to_string());
    let (agent, _, _) = function_gateway(dir.path(), &serve, &gateway, driver, host);
    let watch = probe(&global, "cold-watch").await;
    let client = probe(&global, "cold-client").await;
    let mut components =
        vec![serde_json::json!({"id": gateway, "kind": "gateway", "equipped_with_bridge": true})];
    let mut links = Vec::new();
    println!("cold path ({driver} driver): continuum apply → first output on the global bus");
    for (i, f) in functions.iter().enumerate() {
        let src = source(dir.path(), f, &format!("printf '{f}:%s' \"$(cat)\"\n"));
        components.push(
            serde_json::json!({"id": f, "kind": "function", "triggers": [format!("/{f}/go")],
            "outputs": ["out"], "runtime": TEMPLATE, "src": src}),
        );
        links.push(serde_json::json!({"kind": "hosting", "component": f, "host": gateway}));
        let model = write(
            &dir.path().join(format!("cold{i}.json")),
            &serde_json::json!({"name": "cold", "subsystems": [{"id": subsystem, "components": components, "links": links}]}),
        );
        watch.clear();
        watch.subscribe(&format!("/{f}/out/#")).await;
        let started = Instant::now();
        let mut child = apply(&serve, &model);
        let took = first_output(&client, &watch, f, &format!("/{f}/go"), started).await;
        assert!(child.wait().unwrap().success(), "continuum apply failed");
        let what = if i == 0 {
            "first function on a fresh gateway (base image assembled)"
        } else {
            "a new function, base image cached"
        };
        report.add(
            &format!("cold path ({driver} driver): {what}"),
            "apply -> first output",
            took.as_secs_f64(),
            "s",
            1,
        );
    }
    // The agent before the Docker objects, or it would recreate them.
    drop(agent);
}

/// One rate step's figures.
#[derive(Debug, Clone, Copy)]
struct Step {
    sent: u64,
    answered: u64,
    on_time: u64,
    /// p99 of at least 100 jobs, else the slowest; a job never answered is
    /// infinitely late.
    tail_ms: f64,
    tail_name: &'static str,
}

impl Step {
    fn success(&self) -> f64 {
        self.on_time as f64 / self.sent.max(1) as f64 * 100.0
    }
}

/// Publishes numbered jobs `first..first + rate × seconds` at `rate` per
/// second under `jobs/`, then waits until every one is answered (or a minute
/// passes) so the next step starts from an empty queue.
async fn step(
    client: &Probe,
    watch: &Probe,
    jobs: &str,
    first: u64,
    rate: u64,
    seconds: u64,
) -> Step {
    let n = rate * seconds;
    let numbers = first..first + n;
    let t0 = tokio::time::Instant::now();
    for (i, k) in numbers.clone().enumerate() {
        client
            .publish_numbered(&format!("{jobs}/{}", k % 16), k..=k, 64, None)
            .await;
        tokio::time::sleep_until(t0 + Duration::from_secs_f64((i + 1) as f64 / rate as f64)).await;
    }
    let answered = || -> BTreeMap<u64, u64> {
        watch
            .received()
            .iter()
            .filter_map(|r| Some((r.number()?, r.latency_nanos()?)))
            .filter(|(k, _)| numbers.contains(k))
            .collect()
    };
    let drain = Instant::now() + Duration::from_secs(60);
    while (answered().len() as u64) < n && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies: Vec<u64> = answered().into_values().collect();
    latencies.sort_unstable();
    let on_time = latencies
        .iter()
        .filter(|l| **l <= DEADLINE.as_nanos() as u64)
        .count() as u64;
    // A job never answered counts as infinitely late.
    let (index, tail_name) = if n >= 100 {
        (((n as f64 * 0.99).ceil() as usize).saturating_sub(1), "p99")
    } else {
        ((n as usize).saturating_sub(1), "max")
    };
    let tail_ms = latencies
        .get(index)
        .map_or(f64::INFINITY, |l| *l as f64 / 1e6);
    Step {
        sent: n,
        answered: latencies.len() as u64,
        on_time,
        tail_ms,
        tail_name,
    }
}

fn rates() -> Vec<u64> {
    std::env::var("FAAS_BENCH_RATES")
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| pick(vec![20, 40, 60, 80, 100, 120], vec![20]))
}

fn step_seconds() -> u64 {
    std::env::var("FAAS_BENCH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(pick(4, 1))
}

async fn experiment(host: &Path, report: &mut Report) {
    let dir = tempfile::tempdir().unwrap();
    let (serve, global) = orchestrator(dir.path());
    let _reap = common::Reap(dir.path().display().to_string());
    let tag = unique("faas");
    let gws: Vec<String> = (1..=3).map(|n| format!("{tag}-g{n}")).collect();
    let _agents: Vec<common::Guard> = gws
        .iter()
        .map(|id| function_gateway(dir.path(), &serve, id, "process", host).0)
        .collect();
    let src = source(dir.path(), "work", HANDLER);
    let jobs = format!("{tag}/jobs");
    let trigger = format!("$share/{tag}/{jobs}/+");
    let subsystems: Vec<serde_json::Value> = gws
        .iter()
        .map(|g| {
            serde_json::json!({"id": g, "components": [{"id": g, "kind": "gateway",
                "equipped_with_bridge": true, "capabilities": {"cpus": 2}}]})
        })
        .collect();
    let function = |id: &str| {
        serde_json::json!({"id": id, "kind": "function", "triggers": [trigger], "inputs": ["job"],
            "outputs": ["done"], "runtime": TEMPLATE, "src": src,
            "invocation": {"concurrency": CONCURRENCY, "timeout": "30s", "retries": 0}})
    };
    let watch = probe(&global, "faas-watch").await;
    watch.subscribe("/+/out/done").await;
    let client = probe(&global, "faas-client").await;

    let rates = rates();
    let seconds = step_seconds();
    let mut figures: Vec<(&str, Vec<Step>)> = Vec::new();
    let mut next = 1_000_000;
    for (case, ids) in [
        ("one gateway", vec![format!("{tag}-work")]),
        (
            "three gateways",
            (1..=3).map(|n| format!("{tag}-work-{n}")).collect(),
        ),
    ] {
        let model = write(
            &dir.path().join(format!("{}.json", ids.len())),
            &serde_json::json!({"name": "faas", "subsystems": subsystems,
                "components": ids.iter().map(|id| function(id)).collect::<Vec<_>>()}),
        );
        let out = serve.cli(&["apply", "-f", &model, "--wait", "120s"]);
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let placed = placement(&serve, &gws, &ids);
        warm_up(&client, &watch, &jobs, &ids, &mut next).await;
        println!("{case}: {placed}");
        let mut steps = Vec::new();
        for &rate in &rates {
            watch.clear();
            let s = step(&client, &watch, &jobs, next, rate, seconds).await;
            next += s.sent;
            steps.push(s);
        }
        figures.push((case, steps));
    }
    summary(report, &rates, seconds, &figures);
}

/// Where the functions `ids` run: `id@gateway`, one per function.
fn placement(serve: &Serve, gateways: &[String], ids: &[String]) -> String {
    let mut at = Vec::new();
    for g in gateways {
        let out = serve.cli(&["get", "--subsystem", g]);
        let text = String::from_utf8_lossy(&out.stdout);
        for id in ids {
            if text.contains(&format!("\"{id}\"")) {
                at.push(format!("{id}@{g}"));
            }
        }
    }
    at.join(", ")
}

/// Publishes until every function in `ids` has answered: a bridge may
/// subscribe a moment after the rollout converged.
async fn warm_up(client: &Probe, watch: &Probe, jobs: &str, ids: &[String], next: &mut u64) {
    let wanted: BTreeSet<String> = ids.iter().map(|id| format!("/{id}/out/done")).collect();
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        client
            .publish_numbered(&format!("{jobs}/warm"), *next..=*next, 64, None)
            .await;
        *next += 1;
        let seen: BTreeSet<String> = watch.received().into_iter().map(|r| r.topic).collect();
        if wanted.is_subset(&seen) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "not every replica answered: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn summary(report: &mut Report, rates: &[u64], seconds: u64, figures: &[(&str, Vec<Step>)]) {
    println!(
        "rising rate, {seconds} s per step; success = outputs within {} ms; \
         each gateway {CONCURRENCY} invocations at once x 50 ms",
        DEADLINE.as_millis()
    );
    for (i, rate) in rates.iter().enumerate() {
        let base = format!("{} at {rate} msg/s (baseline)", figures[0].0);
        for (k, (case, steps)) in figures.iter().enumerate() {
            let s = steps[i];
            let name = if k == 0 {
                base.clone()
            } else {
                format!("{case} at {rate} msg/s")
            };
            if k == 0 {
                report.add(&name, "success %", s.success(), "%", s.sent as usize);
            } else {
                report.vs(&name, "success %", s.success(), "%", s.sent as usize, &base);
            }
            report.add(&name, s.tail_name, s.tail_ms, "ms", s.answered as usize);
        }
    }
    let (one, three) = (&figures[0].1, &figures[1].1);
    match one.iter().position(|s| s.success() < 90.0) {
        Some(i) => println!(
            "where one gateway falls below 90% ({} msg/s: {:.1}%), three gateways hold {:.1}% (target >= 97%)",
            rates[i],
            one[i].success(),
            three[i].success()
        ),
        None => println!("one gateway stayed at or above 90% at every rate"),
    }
}
