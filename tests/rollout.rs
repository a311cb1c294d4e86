//! Staged rollouts end to end: `continuum serve`, two fleets of simulated
//! gateways (`continuum gateway sim`, the first two labelled as the canary
//! ring), and the CLI — a revision that reaches every gateway wave by wave,
//! one that fails in its canary and is rolled back before it reaches the
//! rest, and a halted one resumed and then aborted.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::Browser;
use common::{err, ok, out, Guard, Serve, WITHIN};
use serde_json::Value;

const GATEWAYS: usize = 8;

/// The fleet's megamodel; `broken` makes one service of every subsystem fail
/// to start on a simulated gateway.
fn megamodel(version: u32, broken: bool) -> String {
    let text = continuum_models::generate::fleet_megamodel(GATEWAYS, 2, version);
    if !broken {
        return text;
    }
    let mut mm: Value = serde_json::from_str(&text).unwrap();
    for s in mm["subsystems"].as_array_mut().unwrap() {
        for c in s["components"].as_array_mut().unwrap() {
            if c["id"].as_str().is_some_and(|id| id.ends_with("-0")) {
                c["resources"]["container"]["env"]["CONTINUUM_SIM_FAIL"] =
                    format!("version {version} crashes at start").into();
            }
        }
    }
    mm.to_string()
}

fn write(dir: &Path, name: &str, text: String) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `continuum gateway sim` for gateways `sim-FIRST..`, with these flags.
fn fleet(serve: &Serve, dir: &Path, first: usize, count: usize, flags: &[&str]) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["gateway", "sim", "--orchestrator", &serve.addr])
        .args(["--first", &first.to_string(), "--count", &count.to_string()])
        .args(["--step-time", "1ms..10ms", "--interval", "300ms"])
        .args(["--max-backoff", "1s", "--summary-every", "0"])
        .arg("--data-dir")
        .arg(dir.join(format!("fleet-{first}")))
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts continuum gateway sim");
    Guard(child)
}

fn json(serve: &Serve, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(serve.cli(&all))).unwrap()
}

/// A number of each subsystem's status (`field` a JSON pointer in it), by
/// subsystem.
fn per_subsystem(serve: &Serve, field: &str) -> Vec<(String, u64)> {
    let s = json(serve, &["status"]);
    s["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["subsystem"].as_str().unwrap().to_owned(),
                s.pointer(field).and_then(Value::as_u64).unwrap_or(0),
            )
        })
        .collect()
}

/// Each subsystem's target generation.
fn targets(serve: &Serve) -> Vec<(String, u64)> {
    per_subsystem(serve, "/target_generation")
}

/// The generation last sent to each subsystem's gateway.
fn sent(serve: &Serve) -> Vec<(String, u64)> {
    per_subsystem(serve, "/gateway/sent_generation")
}

#[test]
fn a_revision_reaches_the_fleet_wave_by_wave_and_a_failing_one_stops_at_its_canary() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"));
    let _canaries = fleet(&serve, dir.path(), 1, 2, &["--label", "ring=canary"]);
    let _rest = fleet(&serve, dir.path(), 3, GATEWAYS - 2, &[]);

    // Revision 1, all at once.
    let v1 = write(dir.path(), "v1.json", megamodel(1, false));
    ok(serve.cli(&["apply", "-f", &v1, "--wait", "120s"]));

    // Revision 2 in waves: the labelled canary, then a quarter at a time.
    let v2 = write(dir.path(), "v2.json", megamodel(2, false));
    let o = serve.cli(&[
        "apply",
        "-f",
        &v2,
        "--canary-label",
        "ring=canary",
        "--wave",
        "25%",
        "--wait",
        "120s",
    ]);
    let said = out(&o);
    assert_eq!(o.status.code(), Some(0), "{said}{}", err(&o));
    assert!(said.contains("held for a later wave"), "{said}");
    assert!(
        said.contains("staged: 2 subsystem(s) in the first wave, 6 held"),
        "{said}"
    );
    let r = json(&serve, &["rollout", "status"]);
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["revision"], 2);
    let waves = r["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 4, "canary of 2, then 2, 2, 2: {r}");
    assert_eq!(waves[0]["canary"], true);
    assert_eq!(
        waves[0]["subsystems"],
        serde_json::json!(["site-1", "site-2"])
    );
    for pair in waves.windows(2) {
        let settled = pair[0]["settled_unix_ms"].as_i64().unwrap();
        assert!(settled > 0, "{r}");
        assert!(
            pair[1]["started_unix_ms"].as_i64().unwrap() >= settled,
            "each wave starts once the one before settled: {r}"
        );
    }
    assert!(targets(&serve).iter().all(|(_, g)| *g == 2));
    let history = ok(serve.cli(&["history"]));
    assert!(
        history.contains("staged in 4 wave(s): completed"),
        "{history}"
    );

    // Revision 3 is broken everywhere: its canary fails and the rollout is
    // rolled back (revision 4) before any other gateway is sent it.
    let v3 = write(dir.path(), "v3.json", megamodel(3, true));
    let o = serve.cli(&[
        "apply",
        "-f",
        &v3,
        "--canary",
        "2",
        "--wave",
        "50%",
        "--rollback-on-failure",
        "--wait",
        "120s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("rolled back"), "{}", err(&o));
    let r = json(&serve, &["rollout", "status"]);
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert_eq!(r["ended_by"], 4, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("failed"), "{r}");
    // The canary runs revision 2's model again, as generation 4; the rest
    // were never sent anything after generation 2.
    for (s, g) in targets(&serve) {
        let expected = if s == "site-1" || s == "site-2" { 4 } else { 2 };
        assert_eq!(g, expected, "{s}");
    }
    for (s, g) in sent(&serve) {
        let expected = if s == "site-1" || s == "site-2" { 4 } else { 2 };
        assert_eq!(g, expected, "{s}");
    }
    let o = serve.cli(&["get", "--subsystem", "site-1"]);
    assert!(out(&o).contains("fleet/count:2"), "{}", out(&o));

    // Revision 5, broken too, without rollback: the rollout halts; pausing
    // it is refused, resuming goes on (and halts again at the next failures),
    // aborting rolls back.
    let v5 = write(dir.path(), "v5.json", megamodel(5, true));
    let o = serve.cli(&[
        "apply", "-f", &v5, "--canary", "1", "--wave", "50%", "--wait", "120s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("halted"), "{}", err(&o));
    let o = serve.cli(&["rollout", "pause"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("halted"), "{}", err(&o));
    let r = json(
        &serve,
        &["rollout", "resume", "-m", "the canary is a known flake"],
    );
    assert_eq!(r["tolerated"], 1, "{r}");
    continuum_bus::testing::wait_for(
        "the resumed rollout halts at the next wave's failures",
        Duration::from_secs(60),
        || {
            let r = json(&serve, &["rollout", "status"]);
            (r["state"] == "halted" && r["waves"].as_array().unwrap().len() == 2).then_some(())
        },
    );
    let r = json(&serve, &["rollout", "abort", "-m", "version 5 is broken"]);
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert_eq!(r["reason"], "aborted by tester: version 5 is broken", "{r}");
    // The canary and one wave of four were sent 5, and now 6 (revision 2's
    // models again); the three held never left what they ran.
    let restored: Vec<String> = sent(&serve)
        .into_iter()
        .filter(|(_, g)| *g == 6)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(restored, ["site-1", "site-2", "site-3", "site-4", "site-5"]);
    for (s, g) in sent(&serve).into_iter().skip(5) {
        assert_eq!(g, 2, "{s}");
    }
    let o = serve.cli(&["rollout", "abort"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("rolled back: there is nothing to abort"),
        "{}",
        err(&o)
    );
    // Every gateway ends on revision 2's model again.
    ok(serve.cli(&["apply", "-f", &v2, "--wait", "120s"]));
}

#[test]
fn the_dashboard_shows_a_halted_rollout_and_resumes_and_aborts_it() {
    let Some(mut browser) = Browser::launch() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"));
    let _fleet = fleet(&serve, dir.path(), 1, GATEWAYS, &[]);
    let v1 = write(dir.path(), "v1.json", megamodel(1, false));
    ok(serve.cli(&["apply", "-f", &v1, "--wait", "120s"]));
    let v2 = write(dir.path(), "v2.json", megamodel(2, true));
    let o = serve.cli(&[
        "apply", "-f", &v2, "--canary", "1", "--wave", "50%", "--wait", "120s",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));

    browser.open(&format!("http://{}/", serve.addr));
    let shown = browser.wait_for(
        "the halted rollout with resume and abort",
        "(() => { const s = document.getElementById('staged'); return !s.hidden && s.querySelector('[data-action=\"resume\"]') && s.querySelector('[data-action=\"abort\"]') && !s.querySelector('[data-action=\"pause\"]') && s.textContent; })()",
        WITHIN,
    );
    let shown = shown.as_str().unwrap().to_owned();
    assert!(shown.contains("Rollout of revision 2"), "{shown}");
    assert!(shown.contains("halted"), "{shown}");
    assert!(shown.contains("1 of 8 released"), "{shown}");
    browser.wait_for(
        "the held subsystems shown pending",
        "document.querySelectorAll('#subsystems .badge.p-pending').length === 7",
        WITHIN,
    );

    // Resumed from the page: the next wave starts, and halts again.
    browser.click("#staged [data-action=\"resume\"]");
    continuum_bus::testing::wait_for(
        "the resumed rollout halting at its second wave",
        Duration::from_secs(60),
        || {
            let r = json(&serve, &["rollout", "status"]);
            (r["state"] == "halted" && r["waves"].as_array().unwrap().len() == 2).then_some(())
        },
    );
    let r = json(&serve, &["rollout", "status"]);
    assert_eq!(r["tolerated"], 1, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("failed"), "{r}");

    // Aborted from the page: rolled back, and the page says so.
    browser.click("#staged [data-action=\"abort\"]");
    browser.wait_for(
        "the rollout shown rolled back, with nothing left to press",
        "(() => { const s = document.getElementById('staged'); return s.textContent.includes('rolled back') && !s.querySelector('button'); })()",
        WITHIN,
    );
    let r = json(&serve, &["rollout", "status"]);
    assert_eq!(r["state"], "rolled_back", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("aborted by dashboard"),
        "{r}"
    );
    browser.wait_for(
        "the rollout in the activity",
        "document.getElementById('activity').textContent.includes('rollout of revision 2: rolled back')",
        WITHIN,
    );
}
