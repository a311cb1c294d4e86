//! How the dashboard holds up at fleet size, in headless Chromium: a
//! megamodel of 100 subsystems × 10 components (1,000 components) and 100
//! simulated gateways on loopback. Printed figures (no peer exists, so no
//! ratio):
//!
//! 1. first load: from navigation to all 1,000 nodes drawn and coloured
//!    running; the graph's own drawing time as the page measured it;
//! 2. rollouts: an apply that changes every subsystem, each gateway
//!    converging at once → until the page shows the new head with every
//!    node running again and an empty live diff (the page refreshes once
//!    per burst of events, however many arrive);
//! 3. responsiveness during those rollouts: the time the page takes to
//!    answer an evaluation over DevTools, sampled every 50 ms (a busy page,
//!    or a machine busy with the rollout, answers late), and the longest
//!    task the page's main thread ran, by its own `longtask` observer.
//!
//! Run with `cargo bench --bench dashboard` (needs Chromium). Under
//! `cargo test --benches` one rollout (smoke).

// The tests' browser harness; the bench uses part of it.
#[allow(dead_code)]
#[path = "../tests/common/browser.rs"]
mod browser;

use std::time::{Duration, Instant};

#[path = "support/report.rs"]
mod report;

use report::{pick, Report, Summary};

use continuum_orchestrator::sim::{register, SimGateway};
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{ApplyRequest, Document};

/// How long any wait may take (the browser harness reads it).
const WITHIN: Duration = Duration::from_secs(120);

const SUBSYSTEMS: usize = 100;
const PER_SUBSYSTEM: usize = 10;

fn megamodel(round: usize) -> String {
    let subs: Vec<serde_json::Value> = (0..SUBSYSTEMS)
        .map(|s| {
            let gw = format!("gw-{s}");
            let mut components = vec![serde_json::json!({"id": gw, "kind": "gateway"})];
            let mut links = Vec::new();
            for i in 1..PER_SUBSYSTEM {
                let id = format!("svc-{s}-{i}");
                components.push(serde_json::json!({
                    "id": id, "name": format!("service {i} of site {s}"), "kind": "service",
                    "resources": {"container": {"image": "continuum/bench:1",
                        "env": {"ROUND": round.to_string()}}}
                }));
                links.push(serde_json::json!({"kind": "hosting", "component": id, "host": gw}));
                if i > 1 {
                    links.push(serde_json::json!({"kind": "communication",
                        "from": format!("svc-{s}-{}", i - 1), "to": id}));
                }
            }
            serde_json::json!({"id": format!("site-{s}"), "components": components, "links": links})
        })
        .collect();
    serde_json::json!({"name": "fleet", "subsystems": subs}).to_string()
}

async fn apply(endpoint: &str, round: usize) {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ModelServiceClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    client
        .apply(ApplyRequest {
            megamodel: Some(Document {
                name: "fleet.json".into(),
                json: megamodel(round).into_bytes(),
            }),
            ..ApplyRequest::default()
        })
        .await
        .unwrap();
}

/// Every node drawn, running, under revision `head`, with nothing left to do.
fn settled(head: usize) -> String {
    format!(
        "document.getElementById('head').textContent === 'revision {head}' && \
         document.querySelectorAll('#graph .node').length === {} && \
         document.querySelectorAll('#graph .node.s-running').length === {} && \
         document.getElementById('live-diff').textContent.includes('Nothing to do')",
        SUBSYSTEMS * PER_SUBSYSTEM,
        SUBSYSTEMS * PER_SUBSYSTEM
    )
}

fn main() {
    let bench = "dashboard";
    let mut report = Report::new(bench);
    let rounds = pick(8, 1);
    let page = browser::Browser::launch();
    if !report::require("Chromium (Debian's chromium)", page.is_some(), bench) {
        return;
    }
    let mut page = page.expect("checked above");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = rt
        .block_on(continuum_orchestrator::start(
            continuum_orchestrator::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().into()),
        ))
        .unwrap();
    let addr = running.local_addr().to_string();
    let endpoint = format!("http://{addr}");
    rt.block_on(apply(&endpoint, 1));
    // Each simulated gateway converges on every target it is sent.
    for g in 0..SUBSYSTEMS {
        let endpoint = endpoint.clone();
        rt.spawn(async move {
            let mut gw = SimGateway::connect(&endpoint, register(&format!("gw-{g}")))
                .await
                .unwrap();
            loop {
                let Ok(t) = gw.target(Duration::from_secs(3600)).await else {
                    return;
                };
                if gw.converge(&t).await.is_err() {
                    return;
                }
            }
        });
    }

    let t0 = Instant::now();
    page.open(&format!("http://{addr}/"));
    page.wait_for("the fleet drawn and running", &settled(1), WITHIN);
    let first = t0.elapsed();
    let longest_loading = page
        .eval("window.continuum.stats.longestTaskMs")
        .as_f64()
        .unwrap_or(0.0);
    page.eval("window.continuum.stats.longestTaskMs = 0; window.continuum.stats.longTasks = 0");
    let graph = page
        .eval("window.continuum.stats.lastGraphMs")
        .as_f64()
        .unwrap_or(0.0);

    let mut rollouts = Vec::new();
    let mut lags = Vec::new();
    let mut refreshes = Vec::new();
    for round in 2..2 + rounds {
        let before = page
            .eval("window.continuum.stats.renders")
            .as_u64()
            .unwrap_or(0);
        let t0 = Instant::now();
        rt.block_on(apply(&endpoint, round));
        loop {
            let asked = Instant::now();
            let done = page.eval(&settled(round)) == serde_json::Value::Bool(true);
            lags.push(asked.elapsed());
            if done {
                break;
            }
            assert!(t0.elapsed() < WITHIN, "round {round} did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
        rollouts.push(t0.elapsed());
        let after = page
            .eval("window.continuum.stats.renders")
            .as_u64()
            .unwrap_or(0);
        refreshes.push(after - before);
        refreshes.sort();
    }
    let status_ms = page
        .eval("window.continuum.stats.lastStatusMs")
        .as_f64()
        .unwrap_or(0.0);
    let events = page
        .eval("window.continuum.stats.events")
        .as_u64()
        .unwrap_or(0);
    let longest = page
        .eval("window.continuum.stats.longestTaskMs")
        .as_f64()
        .unwrap_or(0.0);
    let long_tasks = page
        .eval("window.continuum.stats.longTasks")
        .as_u64()
        .unwrap_or(0);
    println!(
        "dashboard: {} components, {SUBSYSTEMS} gateways (simulated), {rounds} rollouts, {events} events shown in all",
        SUBSYSTEMS * PER_SUBSYSTEM
    );
    let case = |what: &str| {
        format!(
            "{what} ({} components, {SUBSYSTEMS} gateways)",
            SUBSYSTEMS * PER_SUBSYSTEM
        )
    };
    report.add(
        &case("first load to all nodes running"),
        "time",
        report::ms(first),
        "ms",
        1,
    );
    report.add(
        &case("graph drawing, the page's own measure"),
        "time",
        graph,
        "ms",
        1,
    );
    report.add(
        &case("one state refresh, fetch + repaint"),
        "time",
        status_ms,
        "ms",
        1,
    );
    report.latency(
        &case("rollout: apply to page settled"),
        &Summary::of(&rollouts),
        None,
    );
    report.latency(
        &case("page answers DevTools during rollouts"),
        &Summary::of(&lags),
        None,
    );
    report.add(
        &case("longest main-thread task while loading"),
        "time",
        longest_loading,
        "ms",
        1,
    );
    report.add(
        &case("longest main-thread task during rollouts"),
        "time",
        longest,
        "ms",
        1,
    );
    report.add(
        &case("main-thread tasks over 50 ms during rollouts"),
        "count",
        long_tasks as f64,
        "tasks",
        rounds,
    );
    report.add(
        &case("state refreshes per rollout"),
        "median",
        refreshes[refreshes.len() / 2] as f64,
        "refreshes",
        rounds,
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard/fleet.png");
    page.screenshot(&shot);
    drop(page);
    rt.block_on(running.stop()).unwrap();
}
