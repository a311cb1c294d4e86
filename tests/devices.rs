//! Leaf devices end to end: the orchestrator and a gateway agent as processes,
//! the simulated Arduino Uno wired to the gateway's host. The gateway starts
//! its deploy agent, which flashes the firmware the model names (uploaded
//! and fetched as a blob), confirms it by its health line, and the current
//! model and `continuum status` say what the device runs; a new firmware is
//! flashed, one that never confirms is rolled back and reported failed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::devices::{apply_converged, component_status, gateway, short_digest};
use common::{ok, orchestrator, unique, Serve};
use continuum_bus::testing::{eventually, within};
use continuum_deploy_agent::sim::{from_env as sim_board, SimBoard};

const FIRMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/smart-building/firmware"
);

fn model(dir: &Path, name: &str, gw: &str, port: &Path, firmware: &Path) -> String {
    let mm = serde_json::json!({"name": "devices", "subsystems": [{"id": gw, "components": [
        {"id": gw, "kind": "gateway", "equipped_with_deployer": true},
        {"id": "uno", "kind": "device", "board": "uno", "port": port, "need_deployer": true},
        {"id": "flow", "kind": "firmware", "resources": {"flash": {
            "artefact": firmware, "health": "^\\{\"pir\":", "confirm_within": "5s"}}},
        {"id": "uno-proxy", "kind": "proxy", "device": "uno", "topic_prefix": "/sensors/uno"}
    ], "links": [
        {"kind": "communication", "from": gw, "to": "uno", "physical": true},
        {"kind": "hosting", "component": "flow", "host": "uno"},
        {"kind": "hosting", "component": "uno-proxy", "host": gw}
    ]}]});
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&mm).unwrap()).unwrap();
    path.display().to_string()
}

/// The deploy agent's record of the device (in the gateway's data directory).
fn agent_report(dir: &Path, gw: &str) -> serde_json::Value {
    let record = dir.join(gw).join("deploy-agent/devices/uno.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let last = v["last"].as_str().unwrap_or_default().to_owned();
    v["state"] = if last.starts_with("rolled back") {
        "rolled_back".into()
    } else {
        last.into()
    };
    v
}

/// The firmware component's status line in `continuum status -o json`.
fn flow_status(serve: &Serve) -> String {
    component_status(serve, "flow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_flashes_through_its_deploy_agent_and_rolls_back_what_does_not_confirm() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _reap = common::Reap(dir.path().display().to_string());
    let port = dir.path().join("uno");
    let _uno = SimBoard::start(&sim, &port, &[]).expect("starts the simulated board");
    let (serve, _) = orchestrator(dir.path());
    let gw = unique("dev");
    let (_gateway, local) = gateway(dir.path(), &serve, &gw, &[]);
    let local: continuum_bus::BrokerUrl = local.parse().unwrap();
    let v1 = format!("{FIRMWARE}/arduino-flow-v1.hex");
    let m1 = model(dir.path(), "v1.json", &gw, &port, Path::new(&v1));
    apply_converged(&serve, dir.path(), &gw, &m1);
    let status = flow_status(&serve);
    assert!(
        status.contains("on `uno`, firmware sha256:"),
        "{status} in {}",
        ok(serve.cli(&["status", "-o", "json"]))
    );
    assert!(
        status.contains(r#"says {\"pir\""#) || status.contains("says {"),
        "{status}"
    );
    // Its readings come through the proxy the agent runs, on the local broker.
    let probe = continuum_bus::testing::Probe::connect(&local, &unique("probe"), false);
    probe.connected(within(Duration::from_secs(10))).await;
    probe.subscribe("/sensors/uno").await;
    common::devices::readings_arrive(&probe).await;
    let proxy = component_status(&serve, "uno-proxy");
    assert!(proxy.contains("lines on /sensors/uno"), "{proxy}");
    drop(probe);

    // A new firmware is flashed.
    let v2 = format!("{FIRMWARE}/arduino-flow-v2.hex");
    let m2 = model(dir.path(), "v2.json", &gw, &port, Path::new(&v2));
    let out = ok(serve.cli(&["apply", "-f", &m2, "--wait", "120s"]));
    assert!(out.contains("converged"), "{out}");
    let status = flow_status(&serve);
    assert!(
        status.contains(&format!("sha256:{}", short_digest(Path::new(&v2)))),
        "{status}"
    );

    // One that never prints its health line is rolled back to v2, and failed.
    let quiet = dir.path().join("quiet.hex");
    std::fs::write(&quiet, ":02000000FFCF30\n:00000001FF\n").unwrap();
    let m3 = model(dir.path(), "quiet.json", &gw, &port, &quiet);
    ok(serve.cli(&["apply", "-f", &m3]));
    let status = eventually(
        "the quiet firmware rolled back",
        within(Duration::from_secs(120)),
        || {
            let s = flow_status(&serve);
            s.contains("rolled back").then_some(s)
        },
    )
    .await;
    assert!(status.contains("did not confirm within 5s"), "{status}");
    // The device runs v2 again, as the agent's record says.
    let report = agent_report(dir.path(), &gw);
    assert_eq!(report["state"], "rolled_back", "{report}");
    assert!(
        report["flashed"]
            .as_str()
            .is_some_and(|h| h.starts_with(&short_digest(Path::new(&v2)))),
        "{report}"
    );
}

/// Waits until the firmware's status says it failed with every `expected`
/// piece of reason, checking it never says running meanwhile.
async fn failed_with(serve: &Serve, expected: &[&str]) -> String {
    let last = std::cell::RefCell::new(String::new());
    let found = tokio::time::timeout(within(Duration::from_secs(120)), async {
        loop {
            let s = flow_status(serve);
            assert!(!s.contains("\"running\""), "running after all: {s}");
            if s.contains("\"failed\"") && expected.iter().all(|e| s.contains(e)) {
                return s;
            }
            *last.borrow_mut() = s;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no failure saying {expected:?}; last: {}", last.borrow()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_image_a_verify_mismatch_and_a_mute_board_fail_with_stage_and_reason() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let _reap = common::Reap(dir.path().display().to_string());
    // A board whose flash cell 0x10 always reads 0xFF.
    let worn = dir.path().join("worn");
    let _board = SimBoard::start(&sim, &worn, &["--stuck", "0x10"]).expect("starts the board");
    let (serve, _) = orchestrator(dir.path());
    let gw = unique("bad");
    let (_gateway, _) = gateway(dir.path(), &serve, &gw, &[]);

    // An image with a bad checksum: refused before the port is opened.
    let corrupt = dir.path().join("corrupt.hex");
    let mut text = std::fs::read_to_string(format!("{FIRMWARE}/arduino-flow-v1.hex")).unwrap();
    let at = text.find(['\r', '\n']).unwrap() - 2;
    text.replace_range(at..at + 2, "00");
    std::fs::write(&corrupt, text).unwrap();
    let m = model(dir.path(), "corrupt.json", &gw, &worn, &corrupt);
    ok(serve.cli(&["apply", "-f", &m]));
    failed_with(
        &serve,
        &["the image is refused, nothing was written", "checksum"],
    )
    .await;

    // A good image onto the worn cell: the read-back names the address.
    let v1 = format!("{FIRMWARE}/arduino-flow-v1.hex");
    let m = model(dir.path(), "worn.json", &gw, &worn, Path::new(&v1));
    ok(serve.cli(&["apply", "-f", &m]));
    failed_with(
        &serve,
        &["while verifying", "verify mismatch at address 0x0010"],
    )
    .await;

    // A port with nothing behind it (a bare pty pair): no answer.
    let mute = dir.path().join("mute");
    let _pair = common::Guard(
        std::process::Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", mute.display()))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                dir.path().join("mute-other").display()
            ))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)"),
    );
    continuum_bus::testing::wait_for("the pty pair", within(Duration::from_secs(10)), || {
        mute.exists().then_some(())
    });
    let m = model(dir.path(), "mute.json", &gw, &mute, Path::new(&v1));
    ok(serve.cli(&["apply", "-f", &m]));
    failed_with(&serve, &["while syncing", "no answer"]).await;
}
