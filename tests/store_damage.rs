//! Damaged stores: random bytes over part of the orchestrator's store, or a
//! store file emptied, must stop `serve` and `gateway` with an error that
//! names the file — never a panic's exit, never a silent start on an empty
//! store that would forget every accepted revision.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, ok, Serve};

/// How `continuum serve` on `data` ended up: started (and was stopped), or
/// its exit code and what it said.
enum Outcome {
    Started,
    Exited(i32, String),
}

fn serve_outcome(data: &Path) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "serve",
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + continuum_bus::testing::within(Duration::from_secs(20));
    let mut said = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Started;
            }
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
            }
            // Its stderr closed: it exited.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return Outcome::Exited(status.code().unwrap_or(-1), said);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("serve neither started nor exited within the deadline:\n{said}");
            }
        }
    }
}

/// A store with a few revisions, the server stopped.
fn store_with_history(dir: &Path) {
    let serve = Serve::start(dir);
    for m in ["smart-building/v1.json", "smart-building/v2.json"] {
        ok(serve.cli(&["apply", "-f", &example(m)]));
    }
    assert!(serve.terminate().success());
}

#[test]
fn random_bytes_in_the_orchestrators_store_are_an_error_naming_it_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    store_with_history(&clean);
    let bytes = std::fs::read(clean.join("orchestrator.redb")).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut refused = 0;
    for k in 0..8 {
        let data = dir.path().join(format!("damaged-{k}"));
        std::fs::create_dir_all(&data).unwrap();
        let mut damaged = bytes.clone();
        let at = bytes.len() * k / 8;
        for b in damaged.iter_mut().skip(at).take(4096) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::fs::File::create(data.join("orchestrator.redb"))
            .unwrap()
            .write_all(&damaged)
            .unwrap();
        match serve_outcome(&data) {
            Outcome::Exited(code, said) => {
                assert_ne!(code, 101, "offset {at}: a panic's exit\n{said}");
                assert!(
                    said.contains(&data.join("orchestrator.redb").display().to_string()),
                    "offset {at}: the file is not named\n{said}"
                );
                refused += 1;
            }
            // Repaired from its last good commit (or the bytes fell where
            // nothing live was): it serves.
            Outcome::Started => {}
        }
    }
    eprintln!("{refused} of 8 damaged stores refused, the others repaired");
    assert!(refused > 0, "the damage was never noticed");
}

#[test]
fn an_empty_store_file_is_refused_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orchestrator.redb"), b"").unwrap();
    match serve_outcome(dir.path()) {
        Outcome::Exited(code, said) => {
            assert_ne!(code, 0);
            assert!(said.contains("orchestrator.redb is empty"), "{said}");
        }
        Outcome::Started => panic!("serve started on an empty store file"),
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("orchestrator.redb"))
            .unwrap()
            .len(),
        0,
        "the file is left as it was"
    );

    // The gateway's store likewise.
    let data = dir.path().join("gw");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("gateway.redb"), b"").unwrap();
    let out = common::process_gateway("empty", "127.0.0.1:9", &data)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("gateway.redb is empty"), "{said}");
}
