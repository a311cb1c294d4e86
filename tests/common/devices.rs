//! Helpers of the leaf-device tests: a gateway with its local broker, and
//! what `continuum status` says of one component.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{free_port, ok, Guard, Serve};

/// A process-driver gateway with its local broker, reconciling every second;
/// `flags` go after the rest (`--deploy-agent`, `--ssh-config`...). Without
/// `--deploy-agent`, the one beside the `continuum` executable is used.
pub fn gateway(dir: &Path, serve: &Serve, id: &str, flags: &[&str]) -> (Guard, String) {
    let local = free_port();
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "gateway",
            "--id",
            id,
            "--orchestrator",
            &serve.addr,
            "--driver",
            "process",
        ])
        .args(["--mqtt-listen", &free_port(), "--mqtt5-listen", &local])
        .arg("--data-dir")
        .arg(dir.join(id))
        .args(["--interval", "1s", "--max-backoff", "2s"])
        .args(["--policy", &super::single_machine_policy()])
        .args(flags)
        .env("CONTINUUM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starts continuum gateway");
    (Guard(child), format!("mqtt://{local}"))
}

/// A component's status in `continuum status -o json`.
pub fn component_status(serve: &Serve, id: &str) -> String {
    let status: serde_json::Value =
        serde_json::from_str(&ok(serve.cli(&["status", "-o", "json"]))).unwrap_or_default();
    status["subsystems"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["components"].as_array().cloned().unwrap_or_default())
        .find(|c| c["component"] == id)
        .map(|c| c.to_string())
        .unwrap_or_default()
}

/// The first 12 hex digits of a file's SHA-256, as statuses show it.
pub fn short_digest(path: &Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(std::fs::read(path).unwrap());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Applies `model` and waits for convergence, showing the gateway's log
/// when it does not converge.
pub fn apply_converged(serve: &Serve, dir: &Path, gw: &str, model: &str) -> String {
    let out = serve.cli(&["apply", "-f", model, "--wait", "120s"]);
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join(format!("{gw}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{}\n{}\n--- gateway log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            ok(serve.cli(&["status"])),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the Uno's JSON lines arrive on `/sensors/uno` (`probe` is
/// subscribed to it).
pub async fn readings_arrive(probe: &continuum_bus::testing::Probe) {
    use continuum_bus::testing::{eventually, within};
    eventually(
        "the board's lines through the agent's proxy",
        within(std::time::Duration::from_secs(30)),
        || {
            probe
                .received_on("/sensors/uno")
                .iter()
                .any(|r| r.payload.starts_with(br#"{"pir":"#))
                .then_some(())
        },
    )
    .await;
}
