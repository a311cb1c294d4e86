//! A client in another language: the example Python client (stubs generated
//! from `proto/` by grpcio-tools) applies models with their templates, follows
//! `Watch` to convergence through a real gateway agent, and reads a refusal's
//! problems with gRPC's standard status helper.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{err, free_port, out, pids, unique, Guard, Reap, Serve};

/// The Python that has grpcio (made by scripts/setup.sh); in CI its absence is
/// a failure.
fn python() -> Option<String> {
    let python = std::env::var("CONTINUUM_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("XDG_CACHE_HOME")
            .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/continuum/python/bin/python")
    });
    let usable = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, grpc_status"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {python} cannot import grpc, grpc_tools and grpc_status (scripts/setup.sh installs them)");
        }
        eprintln!("skipped: {python} has no grpcio (run scripts/setup.sh)");
        return None;
    }
    Some(python)
}

fn client(python: &str, server: &str, args: &[&str]) -> Output {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clients/python/continuum_client.py");
    Command::new(python)
        .arg(script)
        .args(["--server", server])
        .args(args)
        .output()
        .expect("runs the Python client")
}

#[test]
fn the_python_client_applies_follows_watch_and_reads_refusals() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = Serve::start(&dir.path().join("orchestrator"));

    // A model with a function: its runtime template travels with it.
    let smart = common::example("smart-building/v1.json");
    let o = client(&python, &s.addr, &["apply", &smart]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", out(&o), err(&o));
    assert!(
        out(&o).contains("applied revision 1: building-a@1, sensors@1"),
        "{}",
        out(&o)
    );

    // Invalid: every problem, through the standard status helper.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "bad", "subsystems": [{"id": "s", "components": [
            {"id": "gw", "kind": "gateway"},
            {"id": "web", "kind": "service", "imagee": "x"},
            {"id": "Bad_Id", "kind": "external"}],
          "links": [{"kind": "hosting", "component": "web", "host": "nowhere"}]}]}"#,
    )
    .unwrap();
    let o = client(&python, &s.addr, &["apply", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", out(&o), err(&o));
    let e = err(&o);
    assert!(e.contains("refused: INVALID_ARGUMENT"), "{e}");
    for path in [
        "subsystems[0].components[1].imagee",
        "subsystems[0].components[2].id",
        "subsystems[0].links[0].host",
    ] {
        assert!(
            e.contains(&format!("  {path}: {}:", bad.display())),
            "{path} missing:\n{e}"
        );
    }
    // Nothing was stored.
    let history = common::json(s.cli(&["history", "-o", "json"]));
    assert_eq!(
        history["revisions"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    // Follow Watch to convergence through a real gateway agent (process driver).
    let subsystem = unique("py");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("pymark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s2 = Serve::start_on(&dir.path().join("orchestrator2"), &listen);
    let _agent = Guard(
        common::process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .spawn()
            .unwrap(),
    );
    let model: PathBuf = dir.path().join("process.json");
    let mm = serde_json::json!({"name": "py", "subsystems": [{
        "id": subsystem,
        "components": [{"id": gateway, "kind": "gateway"}, {
            "id": "worker", "kind": "service",
            "resources": {"container": {"image": "none",
                "command": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 3600 & wait # {marker}")]}}
        }],
        "links": [{"kind": "hosting", "component": "worker", "host": gateway}]}]});
    std::fs::write(&model, mm.to_string()).unwrap();
    let o = client(
        &python,
        &s2.addr,
        &["apply", model.to_str().unwrap(), "--wait", "60"],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", out(&o), err(&o));
    let shown = out(&o);
    assert!(shown.contains("converged: revision 1"), "{shown}");
    assert!(
        shown.contains(&format!("{subsystem}/worker running")),
        "{shown}"
    );
    assert_eq!(pids(&marker).len(), 1, "the worker runs once");
}
