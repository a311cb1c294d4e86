//! A full disk: the orchestrator's and a gateway's stores live on a small
//! tmpfs of the test's own, filled up. A write that does not fit fails with
//! a clear error and changes nothing; once space is freed, writes succeed
//! again without a restart (redb refuses every transaction after an I/O
//! error until the file is reopened, which the stores now do).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, out, Serve};

/// A tmpfs of `size` mounted at a directory of the test's, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let at = dir.join("small-disk");
        std::fs::create_dir_all(&at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        if !o.status.success() {
            let why = String::from_utf8_lossy(&o.stderr);
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cannot mount a tmpfs (root is needed): {why}"
            );
            eprintln!("skipped: cannot mount a tmpfs: {why}");
            return None;
        }
        Some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system holding `dir` with one file, returned.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // What is left is less than a chunk: take it too, byte by byte.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// A megamodel of one service whose environment says `version` (no
/// artefacts: what is written is the store's alone).
fn model(dir: &Path, version: u32) -> String {
    let mm = serde_json::json!({"name": "disk", "subsystems": [{"id": "s", "components": [
        {"id": "gw", "kind": "gateway"},
        {"id": "svc", "kind": "service", "resources": {"container": {
            "image": "example:1", "env": {"VERSION": version.to_string()}}}}
    ], "links": [{"kind": "hosting", "component": "svc", "host": "gw"}]}]});
    let path = dir.join(format!("v{version}.json"));
    std::fs::write(&path, mm.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn a_full_disk_fails_the_write_clearly_and_writes_resume_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "16m") else {
        return;
    };
    let serve = Serve::start(&disk.0.join("orchestrator"));
    ok(serve.cli(&["apply", "-f", &model(dir.path(), 1), "-m", "one"]));
    let filler = fill(&disk.0);

    let two = model(dir.path(), 2);
    let o = serve.cli(&["apply", "-f", &two, "-m", "two"]);
    assert!(!o.status.success(), "applied on a full disk: {}", out(&o));
    let said = common::err(&o);
    assert!(
        said.contains("orchestrator.redb") && said.to_lowercase().contains("space"),
        "{said}"
    );
    // Nothing half-applied: history still ends at revision 1, and reads work.
    let history = ok(serve.cli(&["history"]));
    assert!(
        history.contains("one") && !history.contains("two"),
        "{history}"
    );

    // Space again: the next write succeeds, no restart.
    std::fs::remove_file(&filler).unwrap();
    ok(serve.cli(&["apply", "-f", &two, "-m", "two"]));
    let history = ok(serve.cli(&["history"]));
    assert!(history.contains("two"), "{history}");
    assert!(serve.terminate().success());
}

#[test]
fn a_gateway_on_a_full_disk_refuses_the_target_then_takes_the_next_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(dir.path(), "16m") else {
        return;
    };
    let _reap = common::Reap(dir.path().display().to_string());
    let serve = Serve::start(&dir.path().join("orchestrator"));
    let model = |version: u32| {
        let script = format!("echo {version}; exec sleep 3600");
        let mm = serde_json::json!({"name": "disk", "subsystems": [{"id": "gw-disk", "components": [
            {"id": "gw-disk", "kind": "gateway"},
            {"id": "svc", "kind": "service", "resources": {"container": {
                "image": "none", "command": ["sh", "-c", script]}}}
        ], "links": [{"kind": "hosting", "component": "svc", "host": "gw-disk"}]}]});
        let path = dir.path().join(format!("g{version}.json"));
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    let _gateway = common::Guard(
        common::process_gateway("gw-disk", &serve.addr, &disk.0.join("gateway"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let one = ok(serve.cli(&["apply", "-f", &model(1), "--wait", "60s"]));
    assert!(one.contains("converged"), "{one}");
    let filler = fill(&disk.0);

    // The target cannot be kept: refused, with the reason.
    ok(serve.cli(&["apply", "-f", &model(2)]));
    let status = continuum_bus::testing::wait_for(
        "the refusal",
        continuum_bus::testing::within(std::time::Duration::from_secs(30)),
        || {
            let s = ok(serve.cli(&["status"]));
            (s.contains("refused") && s.contains("gateway.redb")).then_some(s)
        },
    );
    assert!(status.to_lowercase().contains("space"), "{status}");

    // Space again: the next target is taken and runs, no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    let three = ok(serve.cli(&["apply", "-f", &model(3), "--wait", "60s"]));
    assert!(three.contains("converged"), "{three}");
    common::record(
        "disk-full",
        "a gateway's disk full (a 16 MiB tmpfs), then space freed",
        "the target refused naming the file; the next taken without a restart",
        freed.elapsed(),
    );
}
