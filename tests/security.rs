//! Identity and access end to end: an orchestrator serving TLS with the
//! certificates `continuum certs` makes and the tokens `continuum token`
//! makes; real gateway agents admitted by their certificates, and CLI clients
//! by their tokens' roles.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{err, free_port, json, ok, out, process_gateway, Guard, Serve, WITHIN};
use continuum_bus::testing::wait_for;

/// `continuum ARGS` run in `dir`.
fn continuum(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_continuum"))
        .current_dir(dir)
        .args(args)
        .env("USER", "tester")
        .env_remove("CONTINUUM_TOKEN")
        .env_remove("CONTINUUM_SERVER")
        .output()
        .expect("runs continuum")
}

fn fails(o: Output) -> String {
    assert_ne!(o.status.code(), Some(0), "succeeded:\n{}", out(&o));
    err(&o)
}

const TWO_GATEWAYS: &str = r#"{"name":"secure","subsystems":[
    {"id":"north","components":[{"id":"north-gw","kind":"gateway"}]},
    {"id":"south","components":[{"id":"south-gw","kind":"gateway"}]}]}"#;

/// A process-driver gateway with these TLS flags, logging to `<dir>/<name>.log`.
fn gateway(
    dir: &Path,
    id: &str,
    url: &str,
    name: &str,
    tls: &[String],
) -> (Guard, std::path::PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let child = process_gateway(id, url, &dir.join(format!("{name}-data")))
        .args(tls)
        .env("CONTINUUM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starts continuum gateway");
    (Guard(child), log)
}

fn log_says(log: &Path, needle: &str) {
    wait_for(&format!("`{needle}` in {}", log.display()), WITHIN, || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|t| t.contains(needle))
            .map(drop)
    });
}

#[test]
fn a_secure_orchestrator_admits_gateways_by_certificate_and_clients_by_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(continuum(dir, &["certs", "init", "--dir", "certs"]));
    let again = fails(continuum(dir, &["certs", "init", "--dir", "certs"]));
    assert!(again.contains("exists already"), "{again}");
    for id in ["north-gw", "south-gw"] {
        ok(continuum(dir, &["certs", "gateway", id, "--dir", "certs"]));
    }
    let bad_id = fails(continuum(
        dir,
        &["certs", "gateway", "Bad_Id", "--dir", "certs"],
    ));
    assert!(bad_id.contains("not a valid gateway id"), "{bad_id}");
    let alice = ok(continuum(
        dir,
        &[
            "token",
            "alice",
            "--role",
            "apply",
            "--tokens",
            "tokens.json",
        ],
    ));
    let reader = ok(continuum(
        dir,
        &["token", "ro", "--role", "read", "--tokens", "tokens.json"],
    ));
    let root = ok(continuum(
        dir,
        &[
            "token",
            "root",
            "--role",
            "admin",
            "--tokens",
            "tokens.json",
        ],
    ));
    let (alice, reader, root) = (
        alice.trim().to_owned(),
        reader.trim().to_owned(),
        root.trim().to_owned(),
    );
    let stored = std::fs::read_to_string(dir.join("tokens.json")).unwrap();
    assert!(
        !stored.contains(&alice),
        "the tokens file holds only hashes"
    );

    let p = |f: &str| dir.join(f).display().to_string();
    let serve = Serve::start_with(
        &dir.join("data"),
        &[
            "--no-mqtt",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &p("certs/server.pem"),
            "--tls-key",
            &p("certs/server.key"),
            "--tls-client-ca",
            &p("certs/ca.pem"),
            "--tokens",
            &p("tokens.json"),
        ],
    );
    assert!(
        !serve
            .startup
            .iter()
            .any(|l| l.contains("NOTE") || l.contains("WARNING")),
        "nothing is left open: {:?}",
        serve.startup
    );
    let url = format!("https://{}", serve.addr);
    let ca = p("certs/ca.pem");
    let client = |token: Option<&str>, args: &[&str]| {
        let mut all = vec!["--server", &url, "--ca", &ca];
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        all.extend(args);
        continuum(dir, &all)
    };

    // Clients: a token is needed, and its role must allow the operation.
    let anonymous = fails(client(None, &["status"]));
    assert!(anonymous.contains("needs a token"), "{anonymous}");
    let forged = fails(client(Some("ctm_forged"), &["status"]));
    assert!(
        forged.contains("not one this orchestrator accepts"),
        "{forged}"
    );
    std::fs::write(dir.join("model.json"), TWO_GATEWAYS).unwrap();
    let read_only = fails(client(Some(&reader), &["apply", "-f", "model.json"]));
    assert!(
        read_only.contains("needs the role apply; `ro` holds read"),
        "{read_only}"
    );
    ok(client(Some(&reader), &["status"]));
    // A client that does not trust the orchestrator's CA does not talk to it.
    let untrusting = fails(continuum(
        dir,
        &["--server", &url, "--token", &alice, "status"],
    ));
    assert!(
        untrusting.contains("cannot reach the orchestrator"),
        "{untrusting}"
    );

    ok(client(
        Some(&alice),
        &["apply", "-f", "model.json", "-m", "first"],
    ));
    let history = json(client(Some(&reader), &["history", "-o", "json"]));
    assert_eq!(
        history["revisions"][0]["author"], "alice",
        "the author is the token's subject, not $USER: {history}"
    );

    // Gateways: each registers only as the id its certificate names.
    let tls = |cert: &str| -> Vec<String> {
        let mut f = vec!["--tls-ca".to_owned(), ca.clone()];
        if !cert.is_empty() {
            f.extend([
                "--tls-cert".to_owned(),
                p(&format!("certs/gateway-{cert}.pem")),
                "--tls-key".to_owned(),
                p(&format!("certs/gateway-{cert}.key")),
            ]);
        }
        f
    };
    let (_impostor, impostor_log) = gateway(dir, "south-gw", &url, "impostor", &tls("north-gw"));
    log_says(
        &impostor_log,
        "the link's certificate is for gateway `north-gw`; it may not register as `south-gw`",
    );
    let (_anonymous_gw, anonymous_log) = gateway(dir, "south-gw", &url, "anonymous", &tls(""));
    log_says(&anonymous_log, "presented no certificate");
    let gateways = json(client(Some(&reader), &["gateways", "-o", "json"]));
    assert!(
        gateways
            .get("gateways")
            .is_none_or(|g| g.as_array().unwrap().is_empty()),
        "refused links registered nothing: {gateways}"
    );

    let (_north, _) = gateway(dir, "north-gw", &url, "north", &tls("north-gw"));
    let (_south, _) = gateway(dir, "south-gw", &url, "south", &tls("south-gw"));
    wait_for(
        "both gateways to register and run generation 1",
        WITHIN,
        || {
            let g = json(client(Some(&reader), &["gateways", "-o", "json"]));
            let observed: Vec<(String, u64)> = g["gateways"]
                .as_array()?
                .iter()
                .filter(|g| g["connected"] == true)
                .map(|g| {
                    (
                        g["id"].as_str().unwrap_or("").to_owned(),
                        g["observed_generation"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            (observed.len() == 2 && observed.iter().all(|(_, g)| *g == 1)).then_some(())
        },
    );

    // Tokens change without a restart: added and revoked on SIGHUP.
    let late = ok(continuum(
        dir,
        &["token", "late", "--role", "read", "--tokens", "tokens.json"],
    ));
    let late = late.trim().to_owned();
    let before = fails(client(Some(&late), &["status"]));
    assert!(
        before.contains("not one this orchestrator accepts"),
        "{before}"
    );
    let hangup = || {
        continuum_bus::testing::signal(serve.child.id(), nix::sys::signal::Signal::SIGHUP).unwrap()
    };
    hangup();
    wait_for("the new token accepted", WITHIN, || {
        client(Some(&late), &["status"])
            .status
            .success()
            .then_some(())
    });
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    file["tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["subject"] != "late");
    std::fs::write(dir.join("tokens.json"), file.to_string()).unwrap();
    hangup();
    wait_for("the revoked token refused", WITHIN, || {
        (!client(Some(&late), &["status"]).status.success()).then_some(())
    });
    ok(client(Some(&reader), &["status"]));

    // Administering gateways takes the admin role.
    let not_admin = fails(client(Some(&alice), &["forget-gateway", "north-gw"]));
    assert!(
        not_admin.contains("needs the role admin; `alice` holds apply"),
        "{not_admin}"
    );
    let connected = fails(client(Some(&root), &["forget-gateway", "north-gw"]));
    assert!(connected.contains("is connected"), "{connected}");
}

#[test]
fn plain_text_is_for_loopback_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let serve = Serve::start_with(
        &tmp.path().join("data"),
        &["--no-mqtt", "--listen", "127.0.0.1:0"],
    );
    let note = serve
        .startup
        .iter()
        .find(|l| l.contains("local development mode"))
        .unwrap_or_else(|| panic!("no loud note: {:?}", serve.startup));
    assert!(
        note.contains("plain text") && note.contains("no token"),
        "{note}"
    );

    // TLS alone does not make a server safe to expose: its gaps are named.
    let dir = tmp.path();
    ok(continuum(dir, &["certs", "init", "--dir", "certs"]));
    let p = |f: &str| dir.join(f).display().to_string();
    let listen = format!("0.0.0.0:{}", free_port().rsplit(':').next().unwrap());
    let (code, said) = Serve::try_start_with(
        &dir.join("data2"),
        &[
            "--no-mqtt",
            "--listen",
            &listen,
            "--tls-cert",
            &p("certs/server.pem"),
            "--tls-key",
            &p("certs/server.key"),
        ],
    )
    .err()
    .expect("refused without --insecure");
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("gateways are not authenticated") && said.contains("takes no token"),
        "{said}"
    );
}

#[test]
fn the_bridge_reaches_the_global_bus_over_tls_with_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(continuum(dir, &["certs", "init", "--dir", "certs"]));
    let p = |f: &str| dir.join(f).display().to_string();
    let tls_port = free_port();
    let serve = Serve::start_with(
        &dir.join("data"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &free_port(),
            "--mqtt5-listen",
            &free_port(),
            "--mqtts-listen",
            &tls_port,
            "--mqtt-tls-cert",
            &p("certs/server.pem"),
            "--mqtt-tls-key",
            &p("certs/server.key"),
            "--mqtt-user",
            "edge:s3cret",
        ],
    );
    let gw = common::unique("tlsgw");
    let model = serde_json::json!({"name": "tls", "subsystems": [{"id": "s", "components": [
        {"id": gw, "kind": "gateway", "equipped_with_bridge": true,
         "routes": [{"topic": "tls/up/#", "direction": "out"}]}]}]});
    std::fs::write(dir.join("model.json"), model.to_string()).unwrap();
    ok(continuum(
        dir,
        &["--server", &serve.addr, "apply", "-f", "model.json"],
    ));
    let local = free_port();
    let log = dir.join("gateway.log");
    let _gateway = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["gateway", "--driver", "process", "--id", &gw])
            .args([
                "--orchestrator",
                &serve.addr,
                "--tls-ca",
                &p("certs/ca.pem"),
            ])
            .args(["--bus-credentials", "edge:s3cret"])
            .args(["--mqtt-listen", &free_port(), "--mqtt5-listen", &local])
            .args(["--max-backoff", "1s"])
            .arg("--data-dir")
            .arg(dir.join("gateway"))
            .env("CONTINUUM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // A standard client reads the global bus over TLS, with the account.
    // The certificate names localhost (the way an operator reaches the bus).
    let port = tls_port.rsplit_once(':').unwrap().1;
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-V",
            "5",
            "-h",
            "localhost",
            "-p",
            port,
            "--cafile",
            &p("certs/ca.pem"),
        ])
        .args([
            "-u", "edge", "-P", "s3cret", "-t", "tls/up/#", "-C", "1", "-W", "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients)");
    let (lhost, lport) = local.rsplit_once(':').unwrap();
    wait_for("a message across the bridge over TLS", WITHIN, || {
        // Refused until the gateway's local broker is up; then sent until
        // the bridge carries one.
        let _ = Command::new("mosquitto_pub")
            .args(["-V", "5", "-h", lhost, "-p", lport, "-q", "1"])
            .args(["-t", "tls/up/hello", "-m", "over-tls"])
            .output()
            .unwrap();
        sub.try_wait().unwrap().map(drop)
    });
    let said = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&said.stdout).trim(),
        "over-tls",
        "{}",
        err(&said)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("mqtts://edge:***@127.0.0.1:{port}")),
        "the bridge went over TLS: {logged}"
    );

    // Without the account, the TLS listener turns a client away.
    let refused = Command::new("mosquitto_pub")
        .args([
            "-V",
            "5",
            "-h",
            "localhost",
            "-p",
            port,
            "--cafile",
            &p("certs/ca.pem"),
        ])
        .args(["-t", "tls/up/x", "-m", "intruder"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "an anonymous client was let in");
}
