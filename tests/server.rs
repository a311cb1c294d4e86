//! The CLI against a real `continuum serve` process on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{err, example, json, ok, Guard, Serve, WITHIN};

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    (dir, data)
}

#[test]
fn apply_then_inspect_history_models_diffs_and_rollback() {
    let (_dir, data) = data_dir();
    let s = Serve::start(&data);
    let applied = ok(s.cli(&["apply", "-f", &example("smart-building/v1.json")]));
    assert!(applied.contains("applied revision 1"), "{applied}");
    assert!(
        applied.contains("waiting for smart-gw to connect"),
        "{applied}"
    );
    let applied = json(s.cli(&[
        "apply",
        "-f",
        &example("smart-building/v2.json"),
        "-m",
        "firmware v2",
        "-o",
        "json",
    ]));
    assert_eq!(applied["revision"]["number"], 2);
    assert_eq!(applied["targets"].as_array().unwrap().len(), 2);
    let again = ok(s.cli(&["apply", "-f", &example("smart-building/v2.json")]));
    assert!(again.contains("no change"), "{again}");

    let history = json(s.cli(&["history", "-o", "json"]));
    let revs = history["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0]["message"], "firmware v2");
    assert_eq!(revs[0]["author"], "tester");
    let table = ok(s.cli(&["history"]));
    assert!(
        table.lines().next().unwrap().starts_with("REVISION"),
        "{table}"
    );

    let got = json(s.cli(&[
        "get",
        "--revision",
        "1",
        "--subsystem",
        "sensors",
        "-o",
        "json",
    ]));
    assert_eq!(got["revision"], 1);
    let firmware = &got["model"]["json"]["components"][0];
    // The firmware image travelled as a blob: the reference is pinned to it.
    let image = std::fs::read(example("smart-building/firmware/arduino-flow-v1.hex")).unwrap();
    let digest: String = <sha2::Sha256 as sha2::Digest>::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        firmware["resources"]["flash"]["artefact"],
        format!("firmware/arduino-flow-v1.hex@sha256:{digest}")
    );

    let diff = ok(s.cli(&["diff", "--from", "1", "--to", "2"]));
    assert!(diff.contains("occupancy-log"), "{diff}");
    assert!(diff.contains("/resources/flash/artefact"), "{diff}");
    let live = json(s.cli(&["diff", "--live", "-o", "json"]));
    assert_eq!(live["subsystems"].as_array().unwrap().len(), 2);

    let status = json(s.cli(&["status", "-o", "json"]));
    assert_eq!(status["head"], 2);
    let human = ok(s.cli(&["status"]));
    assert!(
        human.contains("SUBSYSTEM") && human.contains("never"),
        "{human}"
    );
    let gateways = ok(s.cli(&["gateways"]));
    assert!(
        gateways.contains("no gateway has registered yet"),
        "{gateways}"
    );

    let back = ok(s.cli(&["rollback", "--to", "1"]));
    assert!(
        back.contains("applied revision 3 (restores revision 1)"),
        "{back}"
    );

    // Watch from the start: the three revisions, in order, as JSON lines.
    let mut watch = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["watch", "-o", "json"])
            .env("CONTINUUM_SERVER", &s.addr)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().unwrap()).lines();
    for n in 1..=3 {
        let e: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(e["seq"], n);
        assert_eq!(e["kind"]["revision"]["number"], n);
    }
}

#[test]
fn an_invalid_model_is_reported_with_paths_and_nothing_is_stored() {
    let (dir, data) = data_dir();
    let s = Serve::start(&data);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "bad", "subsystems": [{"id": "s", "components": [
  {"id": "gw", "kind": "gateway"},
  {"id": "web", "kind": "service", "imagee": "x"}]}]}"#,
    )
    .unwrap();
    let o = s.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("bad.json:3:"), "{e}");
    assert!(e.contains("subsystems[0].components[1].imagee"), "{e}");
    assert!(!e.contains("Status {"), "no debug dump: {e}");
    let history = ok(s.cli(&["history"]));
    assert!(history.contains("no revision yet"), "{history}");
}

#[test]
fn a_source_that_is_missing_or_leads_outside_itself_is_refused_at_apply_with_its_path() {
    let (dir, data) = data_dir();
    let s = Serve::start(&data);
    let template = example("templates/shell-function.json");
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "m", "subsystems": [{"id": "s", "components": [
            {"id": "gw", "kind": "gateway", "equipped_with_bridge": true},
            {"id": "f", "kind": "function", "triggers": ["/t"], "runtime": template, "src": "./src"}
        ], "links": [{"kind": "hosting", "component": "f", "host": "gw"}]}]})
        .to_string(),
    )
    .unwrap();
    let apply = || s.cli(&["apply", "-f", model.to_str().unwrap()]);
    // Missing.
    let o = apply();
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("component `f` names src `./src`") && e.contains("No such file"),
        "{e}"
    );
    // A link leading outside the source.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), "cat\n").unwrap();
    std::os::unix::fs::symlink("../m.json", src.join("peek")).unwrap();
    let o = apply();
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains(&format!("{}", src.join("peek").display())) && e.contains("outside"),
        "{e}"
    );
    let history = ok(s.cli(&["history"]));
    assert!(history.contains("no revision yet"), "{history}");
    // Without it, the source travels and the model is pinned to it.
    std::fs::remove_file(src.join("peek")).unwrap();
    let out = ok(apply());
    assert!(out.contains("applied revision 1"), "{out}");
    let target = ok(s.cli(&["get"]));
    assert!(target.contains("./src@sha256:"), "{target}");
}

#[test]
fn a_function_no_gateway_can_run_is_refused_at_apply_and_explain_says_why() {
    let (dir, data) = data_dir();
    let s = Serve::start(&data);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), "cat\n").unwrap();
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "m",
            "subsystems": [
                {"id": "a", "components": [{"id": "gw-a", "kind": "gateway", "equipped_with_bridge": true,
                    "capabilities": {"labels": {"location": "hall"}}}]},
                {"id": "b", "components": [{"id": "gw-b", "kind": "gateway",
                    "capabilities": {"labels": {"location": "lab"}}}]}
            ],
            "components": [{"id": "f", "kind": "function", "triggers": ["/t"],
                "runtime": example("templates/shell-function.json"), "src": "./src",
                "context": {"location": "lab"}}]})
        .to_string(),
    )
    .unwrap();
    let o = s.cli(&["apply", "-f", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("no gateway can run function `f`"), "{e}");
    assert!(
        e.contains("gw-a: its location is hall, the function's context wants lab"),
        "{e}"
    );
    assert!(e.contains("gw-b: it has no bridge"), "{e}");
    let history = ok(s.cli(&["history"]));
    assert!(history.contains("no revision yet"), "{history}");
    let o = s.cli(&["explain", "f", "-f", model.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("no gateway can run function `f`") && out.contains("excluded"),
        "{out}"
    );
}

#[test]
fn a_killed_orchestrator_keeps_every_accepted_revision() {
    let (_dir, data) = data_dir();
    let s = Serve::start(&data);
    ok(s.cli(&["apply", "-f", &example("smart-building/v1.json")]));
    ok(s.cli(&["apply", "-f", &example("smart-building/v2.json")]));
    drop(s); // SIGKILL: no chance to flush anything
    let s = Serve::start(&data);
    let history = json(s.cli(&["history", "-o", "json"]));
    let numbers: Vec<u64> = history["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let o = s.cli(&[
        "apply",
        "-f",
        &example("smart-building/v1.json"),
        "--base",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("the head is revision 2, not revision 1"),
        "{}",
        err(&o)
    );
    // SIGTERM stops cleanly, and the data directory opens again.
    assert!(s.terminate().success());
    let s = Serve::start(&data);
    assert_eq!(json(s.cli(&["status", "-o", "json"]))["head"], 2);
}

#[test]
fn an_unreachable_orchestrator_is_a_readable_error() {
    // Port 9 (discard) on loopback: nothing listens there in these tests.
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["status", "--server", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("cannot reach the orchestrator at http://127.0.0.1:9"),
        "{e}"
    );
    assert!(e.contains("continuum serve"), "{e}");
}

#[test]
fn a_data_directory_that_is_not_a_store_is_refused_by_name() {
    let (_dir, data) = data_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("orchestrator.redb"), b"definitely not a database").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "serve",
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut e = String::new();
    child.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(e.contains("orchestrator.redb"), "{e}");
    // Nothing was reset: the file is as it was.
    assert_eq!(
        std::fs::read(data.join("orchestrator.redb")).unwrap(),
        b"definitely not a database"
    );
}

#[test]
fn watch_follows_across_an_orchestrator_restart_without_missing_an_event() {
    let (_dir, data) = data_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let s = Serve::start_on(&data, &listen);
    let mut watch = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["watch", "-o", "json"])
            .env("CONTINUUM_SERVER", &listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel();
    let stdout = watch.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || -> serde_json::Value {
        serde_json::from_str(&lines.recv_timeout(WITHIN).expect("an event line")).unwrap()
    };
    ok(s.cli(&["apply", "-f", &example("smart-building/v1.json")]));
    assert_eq!(next()["seq"], 1);
    drop(s); // killed
    let s = Serve::start_on(&data, &listen);
    ok(s.cli(&["apply", "-f", &example("smart-building/v2.json")]));
    let e = next();
    assert_eq!(e["seq"], 2, "{e}");
    assert_eq!(e["kind"]["revision"]["number"], 2);
}

#[test]
fn serve_embeds_the_global_bus_with_its_users() {
    if Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but mosquitto_pub is not installed"
        );
        eprintln!("skipped: mosquitto_pub is not installed");
        return;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (v4, v5) = (free(), free());
    let (_dir, data) = data_dir();
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--mqtt-listen", &format!("127.0.0.1:{v4}")])
            .args(["--mqtt5-listen", &format!("127.0.0.1:{v5}")])
            .args(["--mqtt-user", "gw:pw"])
            .arg("--data-dir")
            .arg(&data)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let bus = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("global bus")))
        .expect("the bus is announced")
        .unwrap();
    assert!(bus.contains(&v4.to_string()), "{bus}");
    for (port, version) in [(v4, "mqttv311"), (v5, "mqttv5")] {
        let publish = |user: &str, pass: &str| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
                .args(["-u", user, "-P", pass, "-t", "t", "-m", "1", "-q", "1"])
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(publish("gw", "pw"), "{version}");
        assert!(!publish("gw", "nope"), "{version}");
    }
    // A port already taken is a clear error at start.
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--mqtt-listen", &format!("127.0.0.1:{v4}")])
        .args(["--mqtt5-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(_dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!("cannot listen on 127.0.0.1:{v4}")),
        "{e}"
    );
}

#[test]
fn the_gateway_dials_the_global_server_flag_and_refuses_two_orchestrators() {
    let (dir, data) = data_dir();
    // No model names the gateway: the allow-list admits it.
    let id = common::unique("srvflag");
    let s = Serve::start_with(
        &data,
        &[
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--allow-gateway",
            &id,
        ],
    );
    let _agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["--server", &s.addr, "gateway", "--id", &id])
            .args(["--no-mqtt", "--no-bridge", "--driver", "process"])
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .env_remove("CONTINUUM_SERVER")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    continuum_bus::testing::wait_for("the gateway to register", WITHIN, || {
        let gateways = json(s.cli(&["gateways", "-o", "json"]));
        gateways["gateways"]
            .as_array()?
            .iter()
            .any(|g| g["id"] == id.as_str() && g["connected"] == true)
            .then_some(())
    });
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["gateway", "--id", "gw", "--server", "127.0.0.1:1"])
        .args(["--orchestrator", "127.0.0.1:2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("name two orchestrators"), "{}", err(&o));
    let o = s.cli(&["serve", "-o", "json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("reports nothing as JSON"), "{}", err(&o));
}

#[test]
fn beyond_loopback_the_plain_text_api_needs_insecure_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["serve", "--no-mqtt", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("refusing to serve the API") && said.contains("--insecure"),
        "{said}"
    );
    assert!(
        !dir.path().join("refused").exists(),
        "nothing was created before refusing"
    );
    // The embedded bus likewise.
    let refused = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("bus"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr)
        .contains("refusing to serve the embedded MQTT broker"));

    // With --insecure it serves, and says what that means first.
    let serve = Serve::start_with(
        &dir.path().join("insecure"),
        &["--no-mqtt", "--listen", "0.0.0.0:0", "--insecure"],
    );
    assert!(
        serve
            .startup
            .iter()
            .any(|l| l.starts_with("WARNING: the API") && l.contains("takes no token")),
        "{:?}",
        serve.startup
    );
}

#[test]
fn the_workload_policy_refuses_what_would_own_the_host_and_a_policy_file_allows_it() {
    let (dir, data) = data_dir();
    let mm = serde_json::json!({"name": "policy", "subsystems": [{"id": "ops", "components": [
        {"id": "gw", "kind": "gateway"},
        {"id": "agent", "kind": "service", "resources": {"container": {"image": "x:1",
            "mounts": [{"source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
                       {"source": "/", "target": "/host"}]}}}
    ], "links": [{"kind": "hosting", "component": "agent", "host": "gw"}]}]});
    let model = dir.path().join("ops.json");
    std::fs::write(&model, mm.to_string()).unwrap();
    let model = model.display().to_string();

    let s = Serve::start(&data);
    let o = s.cli(&["apply", "-f", &model]);
    assert!(!o.status.success());
    let said = err(&o);
    for needle in [
        "refused by the workload policy",
        "`agent` of subsystem `ops`: resources.container.mounts[0].source `/var/run/docker.sock` needs rule `docker-socket`",
        "resources.container.mounts[1].source `/` needs rule `system-paths`",
    ] {
        assert!(said.contains(needle), "`{needle}` not in {said}");
    }
    assert!(
        ok(s.cli(&["history"])).contains("no revision"),
        "nothing was stored"
    );
    drop(s);

    // A policy file that allows it for that subsystem.
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"subsystems": {"ops": {"allow": ["docker-socket", "system-paths"]}}}"#,
    )
    .unwrap();
    let s = Serve::start_with(
        &data,
        &[
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    ok(s.cli(&["apply", "-f", &model]));
    drop(s);

    // A policy that allows nothing (as no policy at all): even the host's
    // network and a device are refused.
    let nothing = dir.path().join("nothing.json");
    std::fs::write(&nothing, "{}").unwrap();
    let s = Serve::start_with(
        &dir.path().join("strict"),
        &[
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            nothing.to_str().unwrap(),
        ],
    );
    let o = s.cli(&["apply", "-f", &example("smart-building/v1.json")]);
    assert!(!o.status.success());
    let said = err(&o);
    assert!(
        said.contains("needs rule `host-network`") && said.contains("needs rule `devices`"),
        "{said}"
    );
}

#[test]
fn notes_reach_the_terminal_as_text_and_an_oversized_model_is_refused_before_it_is_read() {
    let (dir, data) = data_dir();
    let s = Serve::start(&data);
    // A note that would retitle the terminal and forge a line.
    let note = "fix\u{1b}]0;owned\u{7}\nrevision 99 by root";
    ok(s.cli(&[
        "apply",
        "-f",
        &example("smart-building/v1.json"),
        "-m",
        note,
    ]));
    let history = ok(s.cli(&["history"]));
    assert!(
        !history.contains('\u{1b}') && !history.contains('\u{7}'),
        "{history:?}"
    );
    assert!(
        history.contains("fix\\u{1b}]0;owned\\u{7}\\nrevision 99"),
        "{history}"
    );
    assert_eq!(history.lines().count(), 2, "no forged line: {history}");

    // Refused by its size before it is read or packed: nothing is sent.
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 4096]).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["apply", "-f"])
        .arg(&big)
        .env("CONTINUUM_SERVER", &s.addr)
        .env("CONTINUUM_MAX_MODEL_BYTES", "1000")
        .output()
        .unwrap();
    let said = err(&o);
    assert!(
        !o.status.success()
            && said.contains("4096 bytes, more than the 1000")
            && said.contains("nothing was sent"),
        "{said}"
    );
    let history = json(s.cli(&["history", "-o", "json"]));
    assert_eq!(history["revisions"].as_array().unwrap().len(), 1);
}

#[test]
fn an_offline_gateways_last_bridge_report_is_not_shown_as_the_present() {
    let (dir, _) = data_dir();
    let id = common::unique("offgw");
    let (serve, _) = common::orchestrator_with(
        dir.path(),
        &["--allow-gateway", &id, "--heartbeat-interval", "500ms"],
    );
    let model = serde_json::json!({"name": "off", "subsystems": [{"id": "off", "components": [
        {"id": id, "kind": "gateway", "equipped_with_bridge": true}]}]});
    let file = dir.path().join("off.json");
    std::fs::write(&file, model.to_string()).unwrap();
    ok(serve.cli(&["apply", "-f", file.to_str().unwrap()]));
    let (gateway, _) = common::devices::gateway(dir.path(), &serve, &id, &[]);
    let live = continuum_bus::testing::wait_for("the bridge reported connected", WITHIN, || {
        let s = ok(serve.cli(&["status"]));
        (s.contains("global bus connected") && !s.contains("went offline")).then_some(s)
    });
    assert!(!live.contains("last reported"), "{live}");
    drop(gateway);
    let gone = continuum_bus::testing::wait_for_explained(
        "the gateway offline",
        WITHIN,
        || {
            let s = ok(serve.cli(&["status"]));
            s.contains("went offline").then_some(s)
        },
        || ok(serve.cli(&["status"])),
    );
    let bridge = gone
        .lines()
        .find(|l| l.contains("bridge:"))
        .unwrap_or_default();
    assert!(
        bridge.contains("global bus connected")
            && bridge.ends_with("(last reported before the gateway went offline)"),
        "{gone}"
    );
}
