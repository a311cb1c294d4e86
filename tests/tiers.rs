//! Two tiers end to end: a top orchestrator, a regional one serving as the
//! gateways of the top (`serve --upstream`), and simulated gateways that
//! dial the region. Applied at the top, the model converges at the leaves
//! and their status flows back to the top. Cut off from the top (killed),
//! the region keeps its subtree running and takes local applies; when the
//! top is back, it learns the region diverged and its target wins again.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{err, ok, out, Guard, Serve};
use serde_json::Value;

const GATEWAYS: usize = 3;

fn status(serve: &Serve) -> Option<Value> {
    let o = serve.cli(&["status", "-o", "json"]);
    o.status
        .success()
        .then(|| serde_json::from_str(&out(&o)).unwrap())
}

/// Every subsystem runs its target, and the target's generation is
/// `generation` (any, when 0).
fn converged(serve: &Serve, generation: u64) -> bool {
    let Some(s) = status(serve) else {
        return false;
    };
    let subsystems = s["subsystems"].as_array().unwrap();
    subsystems.len() == GATEWAYS
        && subsystems.iter().all(|s| {
            (generation == 0 || s["target_generation"].as_u64() == Some(generation))
                && s["converged"] == true
        })
}

fn wait_converged(what: &str, serve: &Serve, generation: u64) {
    continuum_bus::testing::wait_for(what, Duration::from_secs(90), || {
        converged(serve, generation).then_some(())
    });
}

/// The image tag of the function of subsystem `site`, as `serve` targets it.
fn function_tag(serve: &Serve, site: &str) -> String {
    let o = serve.cli(&["get", "--subsystem", site]);
    let model: Value = serde_json::from_str(&ok(o)).unwrap();
    let f = model["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "function")
        .unwrap()
        .clone();
    f["resources"]["container"]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The step events `continuum watch` shows at `serve` (a line each), and
/// the watcher (killed when dropped).
fn watch(serve: &Serve) -> (Guard, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["watch", "-o", "json", "--server", &serve.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts continuum watch");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            // Only step progress has a count of steps done.
            if line.contains("\"done\"") && tx.send(line).is_err() {
                return;
            }
        }
    });
    (Guard(child), rx)
}

#[test]
fn a_region_runs_its_subtree_for_the_top_and_alone_when_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let top_addr = common::free_port();
    let top_flags = ["--no-mqtt", "--listen", top_addr.as_str()];
    let top = Serve::start_with(&dir.path().join("top"), &top_flags);
    let region_addr = common::free_port();
    let region_flags = [
        "--no-mqtt",
        "--listen",
        region_addr.as_str(),
        "--upstream",
        top_addr.as_str(),
        "--region",
        "eu-west",
        "--log",
        "warn,continuum_gateway::link=info",
    ];
    let region = Serve::start_with(&dir.path().join("region"), &region_flags);
    let _fleet = common::sim_fleet(
        &region.addr,
        GATEWAYS,
        "20ms..60ms",
        &dir.path().join("fleet"),
    );
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let v1 = write(
        "v1.json",
        continuum_models::generate::fleet_megamodel(GATEWAYS, 2, 1),
    );

    // Applied at the top; `--wait` follows the top's status, so it returns
    // only once the leaves' reports came back up through the region.
    let o = top.cli(&["apply", "-f", &v1, "--wait", "90s"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    wait_converged("the top to see every leaf converged", &top, 0);
    let s = status(&top).unwrap();
    for sub in s["subsystems"].as_array().unwrap() {
        let location = sub["gateway"]["location"].as_str().unwrap_or_default();
        assert!(location.contains("via eu-west"), "{sub}");
        let running = sub["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "running")
            .count();
        assert_eq!(running, 3, "two services and the function: {sub}");
    }
    wait_converged("the region to run the subtree", &region, 0);
    assert_eq!(function_tag(&region, "site-2"), "fleet/count:1");

    // Linked, the region refuses local changes to what the top runs.
    let v2 = write(
        "v2.json",
        continuum_models::generate::fleet_megamodel(GATEWAYS, 2, 2),
    );
    let o = region.cli(&["apply", "-f", &v2]);
    assert!(!o.status.success(), "a linked region takes no local change");
    assert!(err(&o).contains("tier above runs"), "{}", err(&o));

    // Cut off: the subtree keeps running, and a local apply goes through.
    let region_history = |serve: &Serve| -> usize {
        let o = serve.cli(&["history", "-o", "json"]);
        let h: Value = serde_json::from_str(&ok(o)).unwrap();
        h["revisions"].as_array().unwrap().len()
    };
    drop(top); // SIGKILL
    continuum_bus::testing::wait_for(
        "the region to see the top gone",
        Duration::from_secs(60),
        || {
            let o = region.cli(&["apply", "-f", &v2, "--wait", "60s"]);
            o.status.success().then_some(())
        },
    );
    wait_converged("the local change to converge at the leaves", &region, 0);
    assert_eq!(function_tag(&region, "site-2"), "fleet/count:2");
    let before = region_history(&region);

    // The top is back: it learns the region diverged; its target wins.
    let top = Serve::start_with(&dir.path().join("top"), &top_flags);
    continuum_bus::testing::wait_for(
        "the top to record the divergence",
        Duration::from_secs(60),
        || {
            let o = top.cli(&["history", "-o", "json"]);
            let h: Value = serde_json::from_str(&ok(o)).unwrap();
            (h["divergences"].as_array().map_or(0, Vec::len) >= GATEWAYS).then_some(())
        },
    );
    wait_converged("the top's target to run again", &top, 0);
    continuum_bus::testing::wait_for(
        "the region to run the top's model again",
        Duration::from_secs(60),
        || (function_tag(&region, "site-2") == "fleet/count:1").then_some(()),
    );
    assert!(region_history(&region) > before);

    // And a new apply at the top reaches the leaves; the steps they take
    // are seen at the top.
    let (_watcher, steps) = watch(&top);
    let o = top.cli(&["apply", "-f", &v2, "--wait", "90s"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    wait_converged("the second revision at the top", &top, 0);
    assert_eq!(function_tag(&region, "site-3"), "fleet/count:2");
    let step = steps
        .recv_timeout(continuum_bus::testing::within(Duration::from_secs(30)))
        .expect("a step of a leaf is seen at the top");
    assert!(step.contains("count-"), "a step on the function: {step}");

    // A model pinned to a blob: the CLI uploads it to the top, the region
    // fetches it from there (its gateways fetch from the region).
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let mut v3: Value =
        serde_json::from_str(&continuum_models::generate::fleet_megamodel(GATEWAYS, 2, 2)).unwrap();
    v3["subsystems"][0]["components"][1]["resources"]["container"] =
        serde_json::json!({"build": {"context": "ctx"}});
    let v3 = write("v3.json", v3.to_string());
    let o = top.cli(&["apply", "-f", &v3, "--wait", "90s"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let site1: Value =
        serde_json::from_str(&ok(region.cli(&["get", "--subsystem", "site-1"]))).unwrap();
    let svc = site1["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "svc-1-0")
        .unwrap();
    let pinned = svc["resources"]["container"]["build"]["context"]
        .as_str()
        .unwrap_or_else(|| panic!("{svc}"))
        .to_owned();
    let digest = pinned
        .rsplit_once('@')
        .map(|(_, d)| d.trim_start_matches("sha256:"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(digest.len(), 64, "pinned to a blob: {pinned}");
    assert!(
        dir.path()
            .join("region")
            .join("blobs")
            .join("sha256")
            .join(&digest)
            .is_file(),
        "the region holds blob {digest}"
    );

    // The region restarts (killed): it stands in for the same gateways from
    // what it recorded, and the top, told what it holds, sends nothing again.
    let revisions = region_history(&region);
    drop(region);
    let region = Serve::start_with(&dir.path().join("region"), &region_flags);
    // Each uplink says so once the top welcomed it (the first welcome may
    // be refused while the top still holds the killed region's links).
    for _ in 0..GATEWAYS {
        region.line_with("registered with the orchestrator");
    }
    wait_converged("the top to see the subtree converged again", &top, 0);
    assert_eq!(
        region_history(&region),
        revisions,
        "nothing was sent again: the region said what it holds"
    );
}
