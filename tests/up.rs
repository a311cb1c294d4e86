//! `continuum up` driven as a user would: started, its output read until the
//! presence function's replies cross the global bus, stopped with Ctrl-C
//! (SIGINT), and nothing it started left behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{docker_ready, function_host, pids, Guard};

/// Runs `continuum up` with `driver` until the function answers, then
/// interrupts it; returns everything it printed.
fn up_until_the_function_answers(host: &std::path::Path, driver: &str) -> String {
    let data = tempfile::tempdir().unwrap();
    // If the test fails half-way, the agents go too (the guard kills `up` alone).
    let _reap = common::Reap(format!("{}/gateway-", data.path().display()));
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["up", "--listen", "127.0.0.1:0", "--mqtt-port", "0"])
            .args(["--sensor-interval", "300ms", "--color", "never"])
            .args(["--driver", driver])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--function-host")
            .arg(host)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("continuum up starts"),
    );
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + continuum_bus::testing::within(Duration::from_secs(120));
    // Until the rollout converged and the function answered.
    let (mut replied, mut converged) = (false, false);
    let answered = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                replied |= line.contains("bus /presence/out/occupancy")
                    && line.contains("\"location\":\"building-a\"");
                converged |= line.contains("running; Ctrl-C stops everything");
                seen.push(line);
                if replied && converged {
                    break true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(_) => break false,
        }
    };
    let agents = format!("{}/gateway-", data.path().display());
    let gateways_while_up = pids(&format!("gateway --id .*{agents}"));
    // The sensor gateway's deploy agent flashed the simulated Uno.
    let deployers_while_up = pids(&format!("continuum-agent serve .*{agents}"));
    // Ctrl-C.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let stop_deadline = Instant::now() + continuum_bus::testing::within(Duration::from_secs(60));
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < stop_deadline,
            "continuum up did not stop:\n{}",
            seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.push(line);
    }
    let out = seen.join("\n");
    assert!(answered, "no reply of the function:\n{out}");
    assert!(status.success(), "{status:?}\n{out}");
    assert_eq!(
        gateways_while_up.len(),
        2,
        "two gateway agents ran: {gateways_while_up:?}"
    );
    assert_eq!(
        deployers_while_up.len(),
        1,
        "one deploy agent ran: {deployers_while_up:?}"
    );
    assert!(
        out.contains("a simulated Arduino Uno for device `uno`"),
        "{out}"
    );
    // The flash showed its progress as it went.
    assert!(
        out.contains("flash firmware arduino-flow onto uno: writing")
            && out.contains("flash firmware arduino-flow (sha256:"),
        "{out}"
    );
    assert!(
        pids(&agents).is_empty(),
        "a gateway agent outlived continuum up:\n{out}"
    );
    assert!(
        pids(&format!(
            "continuum-sim-uno --link {}",
            data.path().display()
        ))
        .is_empty(),
        "the simulated board outlived continuum up:\n{out}"
    );
    let left = common::working_in(&data.path().display().to_string());
    assert!(
        left.is_empty(),
        "processes left running in its data directory: {left:?}"
    );
    out
}

/// Removes the example's function image (and the function host image once
/// nothing else is built from it) when the test ends, however it ends.
struct RemoveImages;

impl Drop for RemoveImages {
    fn drop(&mut self) {
        common::remove_docker_objects("building-a", &["presence".to_owned()]);
    }
}

#[test]
fn up_runs_the_smart_building_with_containers_and_ctrl_c_leaves_nothing() {
    let (Some(host), true) = (function_host(), docker_ready()) else {
        return;
    };
    // `up` keeps the images it built for the next time; the test does not.
    let _images = RemoveImages;
    let out = up_until_the_function_answers(&host, "docker");
    // Readings crossed from the sensor gateway, and the rollout was shown.
    assert!(out.contains("bus /presence/presenceIndicators"), "{out}");
    assert!(out.contains("removed 1 container(s)"), "{out}");
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=continuum.subsystem=building-a",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "containers left"
    );
}

#[test]
fn up_runs_the_smart_building_as_processes_without_docker() {
    let Some(host) = function_host() else {
        return;
    };
    let out = up_until_the_function_answers(&host, "process");
    assert!(out.contains("removed 0 container(s)"), "{out}");
}
