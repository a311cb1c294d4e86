//! What operators watch besides the dashboard: a gateway agent's metrics and
//! health endpoints, the orchestrator's metrics with a real gateway, and
//! JSON log lines that carry the span fields of the step they come from.

mod common;

use std::process::Stdio;

use common::browser::http_get;
use common::{free_port, process_gateway, unique, Guard, Reap, Serve, WITHIN};

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

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
