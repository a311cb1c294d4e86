//! Damaged stores: random bytes over part of the orchestrator's store, or a
//! store file emptied, must stop `serve` and `gateway` with an error that
//! names the file — never a panic's exit, never a silent start on an empty
//! store that would forget every accepted revision.

mod common;

use std::io::Write;
use std::path::Path;

use common::{example, ok, Serve};

/// How `continuum serve` on `data` ended up: started (and stopped), or its
/// exit code and what it said.
fn serve_outcome(data: &Path) -> Result<(), (i32, String)> {
    Serve::try_start_with(data, &["--no-mqtt", "--listen", "127.0.0.1:0"]).map(drop)
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
        // Started: repaired from its last good commit (or the bytes fell
        // where nothing live was).
        if let Err((code, said)) = serve_outcome(&data) {
            assert_ne!(code, 101, "offset {at}: a panic's exit\n{said}");
            assert!(
                said.contains(&data.join("orchestrator.redb").display().to_string()),
                "offset {at}: the file is not named\n{said}"
            );
            refused += 1;
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
        Err((code, said)) => {
            assert_ne!(code, 0);
            assert!(said.contains("orchestrator.redb is empty"), "{said}");
        }
        Ok(()) => panic!("serve started on an empty store file"),
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
