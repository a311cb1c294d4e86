//! What operators watch besides the dashboard: a gateway agent's metrics and
//! health endpoints, the orchestrator's metrics with a real gateway, and
//! JSON log lines that carry the span fields of the step they come from.

mod common;

use std::process::Stdio;

use common::browser::http_get;
use common::{free_port, metric, process_gateway, unique, Guard, Reap, Serve, WITHIN};

#[test]
fn a_gateway_serves_metrics_health_and_json_logs_with_span_fields() {
    let dir = tempfile::tempdir().unwrap();
    let subsystem = unique("obs");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("obsmark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&dir.path().join("orchestrator"), &listen);
    let metrics = free_port();
    let log = dir.path().join("agent.log");
    let _agent = Guard(
        process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .args(["--metrics-listen", &metrics, "--log-format", "json"])
            .env("CONTINUUM_LOG", "info")
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    common::wait_for_port(&metrics);
    let mm = serde_json::json!({"name": "obs", "subsystems": [{"id": subsystem, "components": [
        {"id": gateway, "kind": "gateway"},
        {"id": "worker", "kind": "service", "resources": {"container": {"image": "none",
            "command": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 3600 & wait # {marker}")]}}}],
        "links": [{"kind": "hosting", "component": "worker", "host": gateway}]}]});
    let path = dir.path().join("m.json");
    std::fs::write(&path, mm.to_string()).unwrap();
    common::ok(s.cli(&["apply", "-f", path.to_str().unwrap(), "--wait", "60s"]));

    let (code, text) = http_get(&metrics, "/metrics", &[]);
    assert_eq!(code, 200, "{text}");
    assert!(
        metric(&text, "continuum_reconcile_passes_total{outcome=\"ok\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "continuum_steps_total{kind=\"start\",outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "continuum_components{state=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "continuum_observed_generation"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("continuum_reconcile_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(http_get(&metrics, "/healthz", &[]).0, 200);
    let (code, ready) = http_get(&metrics, "/readyz", &[]);
    assert_eq!(
        (code, ready.trim()),
        (200, "ready: linked to the orchestrator")
    );
    assert_eq!(http_get(&metrics, "/nothing", &[]).0, 404);

    // The orchestrator sees the same fleet.
    let (code, text) = http_get(&listen, "/metrics", &[]);
    assert_eq!(code, 200);
    assert_eq!(
        metric(&text, "continuum_gateways{state=\"connected\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "continuum_components{state=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "continuum_subsystems{phase=\"converged\"}"),
        Some(1.0),
        "{text}"
    );

    // A step's log line is JSON and names its subsystem, generation and component.
    let lines = std::fs::read_to_string(&log).unwrap();
    let step = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "step succeeded" && v["span"]["component"] == "worker")
        .unwrap_or_else(|| panic!("no step line for the worker in\n{lines}"));
    assert_eq!(step["span"]["subsystem"], subsystem.as_str(), "{step}");
    assert_eq!(step["span"]["generation"], 1, "{step}");
    let spans: Vec<&str> = step["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(spans.contains(&"reconcile"), "{step}");

    // Cut off from the orchestrator, without a local bus: not ready.
    let _ = s.terminate();
    continuum_bus::testing::wait_for("the agent to say it is not ready", WITHIN, || {
        let (code, body) = http_get(&metrics, "/readyz", &[]);
        (code == 503 && body.contains("no link")).then_some(())
    });
}

/// Reads a child's stdout lines on a thread, for waiting on them.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line `matches` accepts, or panics with what came.
fn line_where(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + continuum_bus::testing::within(WITHIN);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if matches(&l) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with {what}; saw:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn diff_live_follow_shows_each_new_live_diff_as_json_lines_and_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let subsystem = unique("follow");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("followmark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&dir.path().join("orchestrator"), &listen);
    let model = |name: &str, ids: &[&str]| {
        let mut components = vec![serde_json::json!({"id": gateway, "kind": "gateway"})];
        let mut links = Vec::new();
        for id in ids {
            components.push(serde_json::json!({"id": id, "kind": "service", "resources": {"container": {
                "image": "none", "command": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 3600 & wait # {marker}")]}}}));
            links.push(serde_json::json!({"kind": "hosting", "component": id, "host": gateway}));
        }
        let mm = serde_json::json!({"name": "follow", "subsystems": [{"id": subsystem, "components": components, "links": links}]});
        let path = dir.path().join(name);
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    common::ok(s.cli(&["apply", "-f", &model("v1.json", &["one"])]));
    let follow = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_continuum"));
        c.args(["diff", "--live", "--follow", "--server", &listen]);
        if json {
            c.args(["-o", "json"]);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = lines_of(&mut child);
        (Guard(child), rx)
    };
    let (_json_child, json) = follow(true);
    let (_text_child, text) = follow(false);
    // Before the gateway registers, everything is still to add.
    let adds = |l: &str, id: &str| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["subsystems"][0]["diff"]["added"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["id"] == id))
        })
    };
    line_where(&json, "one component to add", |l| {
        adds(l, "one") && !adds(l, "two")
    });
    line_where(&text, "the live diff's title", |l| {
        l.contains("live diff (current -> target) at")
    });
    line_where(&text, "the component to add", |l| l.contains("one"));

    common::ok(s.cli(&["apply", "-f", &model("v2.json", &["one", "two"])]));
    line_where(&json, "the second component to add", |l| adds(l, "two"));
    line_where(&text, "the second component", |l| l.contains("two"));

    // The gateway comes and runs both: the diff empties.
    let _agent = Guard(
        process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    line_where(&json, "an empty live diff", |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["subsystems"][0]["counts"]
                .as_object()
                .is_some_and(|c| c.values().all(|n| n == 0))
        })
    });
    line_where(&text, "no changes", |l| l.contains("no changes"));
}
