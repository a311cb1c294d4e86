//! End to end on the real Docker engine: an orchestrator and a gateway agent as
//! separate processes, driven by the CLI. Images are built FROM scratch with
//! Debian's static busybox. Each test has its own subsystem, gateway and
//! component names, and removes its containers and images even when it fails.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{docker_ready, free_port, json, ok, pids, unique, Guard, Reap, Serve};

const CONVERGE: Duration = Duration::from_secs(90);

/// One test's world: a data directory, the model files and build contexts,
/// names, and the Docker objects to remove at the end.
struct World {
    dir: tempfile::TempDir,
    subsystem: String,
    gateway: String,
    /// Component ids start with this (image tags are per component id).
    p: String,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("bb");
        std::fs::create_dir_all(&bb).unwrap();
        std::fs::copy("/bin/busybox", bb.join("busybox")).expect("Debian's busybox-static");
        std::fs::write(
            bb.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        let broken = dir.path().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(
            broken.join("Dockerfile"),
            "FROM scratch\nCOPY missing /missing\n",
        )
        .unwrap();
        World {
            dir,
            subsystem: unique("s"),
            gateway: unique("gw"),
            p: unique("c"),
        }
    }

    fn id(&self, short: &str) -> String {
        format!("{}-{short}", self.p)
    }

    /// Writes a megamodel of one subsystem with `services` (short id, env value,
    /// build context) hosted on the gateway, and returns its path.
    fn model(&self, name: &str, services: &[(&str, &str, &str)], rollback: bool) -> String {
        let mut components = vec![serde_json::json!({"id": self.gateway, "kind": "gateway"})];
        let mut links = Vec::new();
        for (short, value, context) in services {
            let id = self.id(short);
            components.push(serde_json::json!({
                "id": id, "kind": "service",
                "resources": {"container": {
                    "build": {"context": context},
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                    "env": {"VALUE": value}
                }}
            }));
            links.push(
                serde_json::json!({"kind": "hosting", "component": id, "host": self.gateway}),
            );
        }
        let mut mm = serde_json::json!({
            "name": "e2e",
            "subsystems": [{"id": self.subsystem, "components": components, "links": links}]
        });
        if rollback {
            mm["on_failure"] = "rollback".into();
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&mm).unwrap()).unwrap();
        path.display().to_string()
    }

    /// Starts the gateway agent (a `continuum gateway` process).
    fn agent(&self, orchestrator: &str) -> Guard {
        self.agent_as(orchestrator, "agent")
    }

    /// Starts an agent for the gateway with its own data directory and log
    /// (`<name>`, `<name>.log`).
    fn agent_as(&self, orchestrator: &str, name: &str) -> Guard {
        self.agent_with(orchestrator, name, &["--no-mqtt", "--no-bridge"])
    }

    /// [`World::agent_as`] with these flags instead of `--no-mqtt --no-bridge`.
    fn agent_with(&self, orchestrator: &str, name: &str, flags: &[&str]) -> Guard {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        Guard(
            Command::new(env!("CARGO_BIN_EXE_continuum"))
                .arg("gateway")
                .args(flags)
                .args(["--policy", &common::single_machine_policy()])
                .args(["--id", &self.gateway, "--orchestrator", orchestrator])
                .arg("--data-dir")
                .arg(self.dir.path().join(name))
                .arg("--context-root")
                .arg(self.dir.path())
                .args(["--interval", "500ms", "--max-backoff", "1s"])
                .env("CONTINUUM_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starts continuum gateway"),
        )
    }

    fn agent_log(&self) -> String {
        self.log_of("agent")
    }

    fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// component id → (container id, state, spec hash)
    fn containers(&self) -> BTreeMap<String, (String, String, String)> {
        let o = Command::new("docker")
            .args(["ps", "-a", "--filter"])
            .arg(format!("label=continuum.subsystem={}", self.subsystem))
            .args([
                "--format",
                "{{.ID}} {{.State}} {{.Label \"continuum.component\"}} {{.Label \"continuum.spec-hash\"}}",
            ])
            .output()
            .unwrap();
        let mut out = BTreeMap::new();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let previous = out.insert(
                f[2].to_owned(),
                (f[0].to_owned(), f[1].to_owned(), f[3].to_owned()),
            );
            assert!(previous.is_none(), "two containers for `{}`", f[2]);
        }
        out
    }

    fn wait<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        continuum_bus::testing::wait_for_explained(what, CONVERGE, check, || {
            format!("\nagent log:\n{}", self.agent_log())
        })
    }

    /// Waits until every listed component runs, one container each.
    fn wait_running(&self, shorts: &[&str]) -> BTreeMap<String, (String, String, String)> {
        self.wait(&format!("{shorts:?} running"), || {
            let c = self.containers();
            let all = shorts.iter().all(|s| {
                c.get(&self.id(s))
                    .is_some_and(|(_, state, _)| state == "running")
            });
            (all && c.len() == shorts.len()).then_some(c)
        })
    }

    /// Waits until the orchestrator shows the subsystem converged at `generation`.
    fn wait_converged(&self, s: &Serve, generation: u64) -> serde_json::Value {
        self.wait(&format!("convergence at generation {generation}"), || {
            let status = json(s.cli(&["status", "-o", "json"]));
            let sub = status["subsystems"]
                .as_array()?
                .iter()
                .find(|x| x["subsystem"] == self.subsystem.as_str())?
                .clone();
            (sub["converged"] == true && sub["target_generation"] == generation).then_some(sub)
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let ids: Vec<String> = self
            .containers()
            .into_values()
            .map(|(id, _, _)| id)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        if let Ok(o) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        {
            let prefix = format!("continuum/{}-", self.p);
            let mine: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .map(str::to_owned)
                .collect();
            if !mine.is_empty() {
                let _ = Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&mine)
                    .output();
            }
        }
        // Every agent on Docker imports the function host image at start.
        common::remove_function_host_image();
    }
}

fn docker(args: &[&str]) {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn data(w: &World) -> PathBuf {
    w.dir.path().join("orchestrator")
}

#[test]
fn deploy_update_heal_and_keep_healing_without_the_orchestrator() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let listen = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let _agent = w.agent(&listen);

    let v1 = w.model(
        "v1.json",
        &[("a", "1", "bb"), ("b", "1", "bb"), ("c", "1", "bb")],
        false,
    );
    ok(s.cli(&["apply", "-f", &v1]));
    let sub = w.wait_converged(&s, 1);
    assert_eq!(sub["components"].as_array().unwrap().len(), 3);
    let c1 = w.wait_running(&["a", "b", "c"]);

    // v2 changes b only: a and c keep their containers.
    let v2 = w.model(
        "v2.json",
        &[("a", "1", "bb"), ("b", "2", "bb"), ("c", "1", "bb")],
        false,
    );
    ok(s.cli(&["apply", "-f", &v2]));
    w.wait_converged(&s, 2);
    let c2 = w.wait_running(&["a", "b", "c"]);
    assert_eq!(c2[&w.id("a")].0, c1[&w.id("a")].0, "a untouched");
    assert_eq!(c2[&w.id("c")].0, c1[&w.id("c")].0, "c untouched");
    assert_ne!(c2[&w.id("b")].0, c1[&w.id("b")].0, "b replaced");

    // Drift: a container removed by hand comes back.
    docker(&["rm", "-f", &c2[&w.id("a")].0]);
    w.wait("a recreated", || {
        let c = w.wait_running(&["a", "b", "c"]);
        (c[&w.id("a")].0 != c2[&w.id("a")].0).then_some(())
    });

    // The orchestrator goes away: the gateway still heals.
    drop(s);
    let c3 = w.containers();
    docker(&["stop", "-t", "0", &c3[&w.id("c")].0]);
    w.wait("c restarted without the orchestrator", || {
        let c = w.containers();
        (c[&w.id("c")].1 == "running").then_some(())
    });
}

#[test]
fn an_agent_killed_mid_rollout_converges_without_duplicates_even_offline() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let listen = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let agent = w.agent(&listen);
    let shorts = ["a", "b", "c", "d"];
    let services: Vec<(&str, &str, &str)> = shorts.iter().map(|s| (*s, "1", "bb")).collect();
    let v1 = w.model("v1.json", &services, false);
    ok(s.cli(&["apply", "-f", &v1]));
    // Kill -9 as soon as the agent starts enacting.
    w.wait("the rollout to start", || {
        w.agent_log().contains("enacting").then_some(())
    });
    drop(agent);
    let _agent = w.agent(&listen);
    w.wait_converged(&s, 1);
    w.wait_running(&shorts);

    // Restarted while the orchestrator is down, it enforces what it accepted.
    drop(s);
    drop(_agent);
    let before = w.containers();
    docker(&["rm", "-f", &before[&w.id("b")].0]);
    let _agent = w.agent(&listen);
    let after = w.wait_running(&shorts);
    assert_ne!(after[&w.id("b")].0, before[&w.id("b")].0);
    assert_eq!(
        after[&w.id("a")].0,
        before[&w.id("a")].0,
        "a re-adopted, not recreated"
    );
}

#[test]
fn a_broken_image_fails_with_its_reason_and_rollback_restores_the_last_good_generation() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let listen = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let _agent = w.agent(&listen);
    let v1 = w.model("v1.json", &[("a", "1", "bb"), ("b", "1", "bb")], true);
    ok(s.cli(&["apply", "-f", &v1]));
    w.wait_converged(&s, 1);
    let good = w.wait_running(&["a", "b"]);

    // v2 builds b from a context whose Dockerfile cannot work.
    let v2 = w.model("v2.json", &[("a", "1", "bb"), ("b", "2", "broken")], true);
    ok(s.cli(&["apply", "-f", &v2]));
    let b = w.id("b");
    let failed = w.wait("b to be failed, with the reason", || {
        let status = json(s.cli(&["status", "-o", "json"]));
        let sub = status["subsystems"]
            .as_array()?
            .iter()
            .find(|x| x["subsystem"] == w.subsystem.as_str())?
            .clone();
        let c = sub["components"]
            .as_array()?
            .iter()
            .find(|c| c["component"] == b.as_str())?
            .clone();
        (c["state"] == "failed" && sub["gateway"]["observed_generation"] == 1).then_some(c)
    });
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("cannot be built"), "{reason}");
    assert!(reason.contains("rolled back to generation 1"), "{reason}");
    let human = ok(s.cli(&["status"]));
    assert!(human.contains("cannot be built"), "{human}");
    // What runs is generation 1 again.
    let now = w.wait_running(&["a", "b"]);
    assert_eq!(now[&w.id("a")].0, good[&w.id("a")].0);
    assert_eq!(now[&b].2, good[&b].2, "b runs generation 1's specification");
}

#[test]
fn a_target_the_gateway_cannot_run_is_refused_with_the_reason() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let listen = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let _agent = w.agent(&listen);
    let mut mm: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.model("v1.json", &[("a", "1", "bb")], false)).unwrap(),
    )
    .unwrap();
    mm["subsystems"][0]["components"][1]["resources"]["container"]["devices"] =
        serde_json::json!([{"host": "/dev/continuum-no-such-device"}]);
    let path: &Path = &w.dir.path().join("bad.json");
    std::fs::write(path, mm.to_string()).unwrap();
    ok(s.cli(&["apply", "-f", path.to_str().unwrap()]));
    let refused = w.wait("the refusal", || {
        let g = json(s.cli(&["gateways", "-o", "json"]));
        let r = g["gateways"].as_array()?.first()?["rejected"]
            .as_str()?
            .to_owned();
        (!r.is_empty()).then_some(r)
    });
    assert!(
        refused.contains("/dev/continuum-no-such-device"),
        "{refused}"
    );
    assert!(refused.contains("not present"), "{refused}");
    assert!(w.containers().is_empty(), "nothing was started");
}

#[test]
fn a_host_without_docker_runs_processes_and_a_killed_agent_leaves_no_duplicates() {
    let w = World::new();
    let marker = unique("marker");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let agent_args = |w: &World| -> Guard {
        let log = std::fs::File::create(w.dir.path().join("agent.log")).unwrap();
        Guard(
            Command::new(env!("CARGO_BIN_EXE_continuum"))
                .args([
                    "gateway",
                    "--no-mqtt",
                    "--no-bridge",
                    "--driver",
                    "process",
                    "--id",
                    &w.gateway,
                ])
                .args([
                    "--orchestrator",
                    &listen,
                    "--interval",
                    "500ms",
                    "--max-backoff",
                    "1s",
                ])
                .arg("--data-dir")
                .arg(w.dir.path().join("agent"))
                .env("CONTINUUM_LOG", "info")
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let model = |name: &str, value: &str| -> String {
        let svc = |short: &str| {
            serde_json::json!({
                "id": w.id(short), "kind": "service",
                "resources": {"container": {
                    "image": "none",
                    "command": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 3600 & wait # {marker}-{short}")],
                    "env": {"VALUE": value}
                }}
            })
        };
        let mm = serde_json::json!({"name": "p", "subsystems": [{
        "id": w.subsystem,
        "components": [{"id": w.gateway, "kind": "gateway"}, svc("a"), svc("b")],
        "links": [
            {"kind": "hosting", "component": w.id("a"), "host": w.gateway},
            {"kind": "hosting", "component": w.id("b"), "host": w.gateway}
        ]}]});
        let path = w.dir.path().join(name);
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    let agent = agent_args(&w);
    ok(s.cli(&["apply", "-f", &model("v1.json", "1"), "--wait", "60s"]));
    let a1 = pids(&format!("{marker}-a"));
    assert_eq!(a1.len(), 1, "one `a` process: {a1:?}");
    assert_eq!(pids(&format!("{marker}-b")).len(), 1);

    // Killed by hand: the agent brings it back.
    let pid: u32 = a1[0].parse().unwrap();
    continuum_bus::testing::signal(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    w.wait("a back", || {
        let now = pids(&format!("{marker}-a"));
        (now.len() == 1 && now != a1).then_some(())
    });

    // The agent is killed -9; the next one ends what it left and starts anew.
    drop(agent);
    // What the old agent left, read before the new one can replace it (read
    // after, a quick new agent's own processes could be taken for the old).
    let before = (pids(&format!("{marker}-a")), pids(&format!("{marker}-b")));
    let _agent = agent_args(&w);
    // Counted once the new agent has acted on what the old one left, not before.
    w.wait("the new agent to end what the old one left", || {
        w.agent_log()
            .contains("ending a process a previous agent left running")
            .then_some(())
    });
    w.wait_converged(&s, 1);
    w.wait("one process each, started by the new agent", || {
        let (a, b) = (pids(&format!("{marker}-a")), pids(&format!("{marker}-b")));
        (a.len() == 1 && b.len() == 1 && a != before.0 && b != before.1).then_some(())
    });

    // An image's own entry point cannot run here (a build's context can, but
    // only with a command): refused with the reason.
    let mut mm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model("v2.json", "2")).unwrap()).unwrap();
    mm["subsystems"][0]["components"][1]["resources"]["container"] =
        serde_json::json!({"build": {"context": "bb"}});
    let bad = w.dir.path().join("bad.json");
    std::fs::write(&bad, mm.to_string()).unwrap();
    let o = s.cli(&["apply", "-f", bad.to_str().unwrap(), "--wait", "60s"]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("target refused") && e.contains("give it a `command`"),
        "{e}"
    );
}

fn env_of(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .unwrap_or_default()
}

#[test]
fn a_cut_off_gateway_accepts_a_local_model_and_the_orchestrator_wins_on_reconnect() {
    let w = World::new();
    let marker = unique("marker");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let local = free_port();
    let s = Serve::start_on(&data(&w), &listen);
    let log = std::fs::File::create(w.dir.path().join("agent.log")).unwrap();
    let _agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args([
                "gateway",
                "--no-mqtt",
                "--no-bridge",
                "--driver",
                "process",
                "--id",
                &w.gateway,
            ])
            .args(["--orchestrator", &listen, "--local-api", &local])
            .args(["--interval", "500ms", "--max-backoff", "500ms"])
            .arg("--data-dir")
            .arg(w.dir.path().join("agent"))
            .env("CONTINUUM_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let model = |name: &str, value: &str| -> String {
        let mm = serde_json::json!({"name": "p", "subsystems": [{
            "id": w.subsystem,
            "components": [{"id": w.gateway, "kind": "gateway"}, {
                "id": w.id("a"), "kind": "service",
                "resources": {"container": {
                    "image": "none",
                    "command": ["sh", "-c", format!("trap 'exit 0' TERM; sleep 3600 & wait # {marker}")],
                    "env": {"VALUE": value}
                }}
            }],
            "links": [{"kind": "hosting", "component": w.id("a"), "host": w.gateway}]}]});
        let path = w.dir.path().join(name);
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    let value = || -> Option<String> {
        let p = pids(&marker);
        (p.len() == 1).then(|| env_of(&p[0])).and_then(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("VALUE=").map(str::to_owned))
        })
    };
    let v1 = model("v1.json", "orchestrated");
    ok(s.cli(&["apply", "-f", &v1, "--wait", "60s"]));
    assert_eq!(value().as_deref(), Some("orchestrated"));

    // Connected: the local API sends users to the orchestrator.
    let gateway_cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(args)
            .env("CONTINUUM_SERVER", &local)
            .output()
            .unwrap()
    };
    let local_model = model("local.json", "local");
    let o = gateway_cli(&["apply", "-f", &local_model, "-m", "fix on site"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("connected to its orchestrator"));

    // Cut off: the local model is accepted and enforced.
    drop(s);
    let applied = w.wait("the local API to accept a model", || {
        let o = gateway_cli(&["apply", "-f", &local_model, "-m", "fix on site"]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    assert!(applied.contains("applied locally"), "{applied}");
    w.wait("the local model to run", || {
        (value().as_deref() == Some("local")).then_some(())
    });
    let st = String::from_utf8_lossy(&gateway_cli(&["status"]).stdout).into_owned();
    assert!(st.contains(&w.subsystem), "{st}");

    // Back: the gateway reports its divergence and the target replaces it.
    let s = Serve::start_on(&data(&w), &listen);
    w.wait("the orchestrator's model to run again", || {
        (value().as_deref() == Some("orchestrated")).then_some(())
    });
    let status = json(s.cli(&["status", "-o", "json"]));
    let sub = &status["subsystems"][0];
    assert_eq!(sub["gateway"]["diverged"]["base_generation"], 1, "{status}");
    assert_eq!(sub["gateway"]["diverged"]["message"], "fix on site");
    assert_eq!(sub["gateway"]["diverged"]["changes"]["changed"], 1);
    assert!(ok(s.cli(&["status"])).contains("ran a local model"));
    let history = ok(s.cli(&["history"]));
    assert!(
        history.contains("local changes made by gateways while cut off"),
        "{history}"
    );
    assert!(history.contains("fix on site"), "{history}");
    w.wait_converged(&s, 1);
}

#[test]
fn a_corrupt_data_directory_stops_the_agent_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("gateway.redb"), b"this is not a redb file at all").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "gateway",
            "--no-mqtt",
            "--no-bridge",
            "--id",
            "gw-corrupt",
            "--orchestrator",
            "127.0.0.1:9",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("gateway.redb"), "{e}");
    assert_eq!(
        std::fs::read(data.join("gateway.redb")).unwrap(),
        b"this is not a redb file at all",
        "never reset"
    );
}

#[test]
fn a_gateway_embeds_its_local_broker_and_runs_it_while_cut_off() {
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
    let w = World::new();
    let (v4, v5) = (free_port(), free_port());
    // No orchestrator listens on port 9: the gateway is cut off from the start.
    let log = std::fs::File::create(w.dir.path().join("agent.log")).unwrap();
    let _agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["gateway", "--driver", "process", "--id", &w.gateway])
            .args([
                "--orchestrator",
                "127.0.0.1:9",
                "--bus-url",
                "mqtt://127.0.0.1:9",
                "--mqtt-listen",
                &v4,
                "--mqtt5-listen",
                &v5,
            ])
            .arg("--data-dir")
            .arg(w.dir.path().join("agent"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    w.wait("the local broker", || {
        w.agent_log().contains("local broker").then_some(())
    });
    for (addr, version) in [(&v4, "mqttv311"), (&v5, "mqttv5")] {
        let port = addr.rsplit(':').next().unwrap();
        let o = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "local/t",
                "-m",
                "1",
            ])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// libfaketime, which shifts the wall clock of a program it is preloaded into;
/// in CI its absence is a failure.
fn libfaketime() -> Option<String> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but libfaketime is missing (scripts/setup.sh installs faketime)");
        }
        eprintln!("skipped: libfaketime is missing");
    }
    found.map(|p| p.display().to_string())
}

#[test]
fn apply_wait_judges_by_generation_when_the_gateway_clock_is_behind() {
    let Some(faketime) = libfaketime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subsystem = unique("skew");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("skewmark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&dir.path().join("orchestrator"), &listen);
    // The agent's wall clock is an hour behind the orchestrator's (its
    // monotonic clock is left alone, as NTP would).
    let _agent = Guard(
        common::process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .env("LD_PRELOAD", &faketime)
            .env("FAKETIME", "-3600s")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let model = |name: &str, script: &str| -> String {
        let mm = serde_json::json!({"name": "skew", "subsystems": [{
            "id": subsystem,
            "components": [{"id": gateway, "kind": "gateway"}, {
                "id": "worker", "kind": "service",
                "resources": {"container": {"image": "none",
                    "command": ["sh", "-c", format!("{script} # {marker}")]}}
            }],
            "links": [{"kind": "hosting", "component": "worker", "host": gateway}]}]});
        let path = dir.path().join(name);
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    let good = model("good.json", "trap 'exit 0' TERM; sleep 3600 & wait");
    let o = s.cli(&["apply", "-f", &good, "--wait", "60s"]);
    assert_eq!(o.status.code(), Some(0), "{}", common::err(&o));
    assert!(
        common::out(&o).contains("converged:"),
        "{}",
        common::out(&o)
    );
    let status = json(s.cli(&["status", "-o", "json"]));
    let sub = &status["subsystems"][0];
    assert_eq!(sub["phase"], "converged", "{status}");
    let since = sub["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "worker")
        .and_then(|c| c["since_unix_ms"].as_i64())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        now - since > 3_000_000,
        "the gateway's clock is behind: {since} vs {now}"
    );

    // The new generation's failure is stamped an hour before the revision; it
    // is still this revision's failure (generation 2), so the wait ends at once.
    let bad = model("bad.json", "echo broken >&2; exit 3");
    let o = s.cli(&["apply", "-f", &bad, "--wait", "60s"]);
    let e = common::err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains(&format!("failed: {subsystem}/worker")), "{e}");
    assert!(!e.contains("timed out"), "{e}");
    let status = json(s.cli(&["status", "-o", "json"]));
    assert_eq!(status["subsystems"][0]["phase"], "failed", "{status}");
}

#[test]
fn a_paused_agent_whose_id_was_taken_touches_nothing_until_admitted_again() {
    use nix::sys::signal::Signal;
    if !docker_ready() {
        return;
    }
    let w = World::new();
    // Each agent bridges its own local broker to the orchestrator's bus: the
    // bridges of two agents with one id would take the global session from
    // each other.
    let (global, global5) = (free_port(), free_port());
    let s = Serve::start_with(
        &w.dir.path().join("orchestrator"),
        &[
            "--mqtt-listen",
            &global,
            "--mqtt5-listen",
            &global5,
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "500ms",
        ],
    );
    let bridged = |name: &str| {
        let (local, local5) = (free_port(), free_port());
        w.agent_with(
            &s.addr,
            name,
            &["--mqtt-listen", &local, "--mqtt5-listen", &local5],
        )
    };
    let a = bridged("a");
    ok(s.cli(&[
        "apply",
        "-f",
        &w.model("v1.json", &[("web", "1", "bb")], false),
    ]));
    w.wait_converged(&s, 1);
    let running = w.wait_running(&["web"]);

    // A stops running; the orchestrator ends its link; B takes the id.
    let paused_at = std::time::Instant::now();
    continuum_bus::testing::signal(a.0.id(), Signal::SIGSTOP).unwrap();
    w.wait("the paused agent's link ended", || {
        let g = json(s.cli(&["gateways", "-o", "json"]));
        let gw = g["gateways"]
            .as_array()?
            .iter()
            .find(|x| x["id"] == w.gateway.as_str())?
            .clone();
        (gw["connected"] == false).then_some(())
    });
    let b = bridged("b");
    w.wait("the second agent admitted", || {
        w.log_of("b")
            .contains("registered with the orchestrator")
            .then_some(())
    });
    // The scenario is a pause longer than the agent's own pause detection.
    let pause = continuum_gateway::fence::PAUSE + Duration::from_secs(1);
    std::thread::sleep(pause.saturating_sub(paused_at.elapsed()));
    let said_before = w.log_of("a").len();
    continuum_bus::testing::signal(a.0.id(), Signal::SIGCONT).unwrap();
    w.wait("the resumed agent superseded", || {
        w.log_of("a")[said_before..]
            .contains("superseded")
            .then_some(())
    });
    // B holds the id and takes the next revision; A, still holding the
    // previous one, touches nothing (watched for a while): once, the two
    // replaced each other's containers, generation against generation.
    ok(s.cli(&[
        "apply",
        "-f",
        &w.model("v2.json", &[("web", "2", "bb")], false),
    ]));
    w.wait_converged(&s, 2);
    let v2 = w.wait_running(&["web"]);
    assert_ne!(v2[&w.id("web")].0, running[&w.id("web")].0);
    let watch_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < watch_until {
        let now = w.containers();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(
            now[&w.id("web")].0,
            v2[&w.id("web")].0,
            "the container was replaced"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let a_said = w.log_of("a")[said_before..].to_owned();
    assert!(!a_said.contains("enacting"), "{a_said}");
    // A's bridge stays off the global bus; B's holds the session throughout.
    assert!(
        a_said.contains("off the global bus while fenced"),
        "{a_said}"
    );
    let b_said = w.log_of("b");
    assert!(!b_said.contains("fenced"), "{b_said}");
    let status = json(s.cli(&["status", "-o", "json"]));
    let detail = status["subsystems"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == w.gateway.as_str())
        .map(|c| c["detail"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    assert!(detail.contains("global bus connected"), "{status}");

    // B goes: A is admitted again and acts on the next revision.
    drop(b);
    w.wait("the first agent admitted again", || {
        w.log_of("a")[said_before..]
            .contains("acting again")
            .then_some(())
    });
    ok(s.cli(&[
        "apply",
        "-f",
        &w.model("v3.json", &[("web", "3", "bb")], false),
    ]));
    w.wait_converged(&s, 3);
    let v3 = w.wait_running(&["web"]);
    assert_ne!(v3[&w.id("web")].0, v2[&w.id("web")].0);
    drop(a);
}

#[test]
fn secrets_reach_the_container_from_the_gateway_and_nowhere_else() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let secrets = w.dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let (key, cert) = ("hunter2-env-value-7a1c", "CERT-BODY-file-value-93e0");
    std::fs::write(secrets.join("api-key"), format!("{key}\n")).unwrap();
    std::fs::write(secrets.join("cert.pem"), cert).unwrap();
    let s = Serve::start(&w.dir.path().join("orchestrator"));
    let secrets_dir = secrets.display().to_string();
    let _agent = w.agent_with(
        &s.addr,
        "agent",
        &["--no-mqtt", "--no-bridge", "--secrets-dir", &secrets_dir],
    );
    let web = w.id("web");
    let model = |extra_secret: bool| {
        let mut refs = vec![
            serde_json::json!({"name": "api-key", "env": "API_KEY"}),
            serde_json::json!({"name": "cert.pem", "file": "/run/secrets/cert.pem"}),
        ];
        if extra_secret {
            refs.push(serde_json::json!({"name": "db-password", "env": "DB_PASSWORD"}));
        }
        let mm = serde_json::json!({"name": "secrets", "subsystems": [{
            "id": w.subsystem,
            "components": [
                {"id": w.gateway, "kind": "gateway"},
                {"id": web, "kind": "service", "resources": {"container": {
                    "build": {"context": "bb"},
                    "command": ["sh", "-c", "echo key=$API_KEY; cat /run/secrets/cert.pem; echo; trap 'exit 0' TERM; sleep 3600 & wait"],
                    "env": {"VERSION": if extra_secret { "2" } else { "1" }},
                    "secrets": refs
                }}}],
            "links": [{"kind": "hosting", "component": web, "host": w.gateway}]}]});
        let path = w.dir.path().join(format!("secrets-{extra_secret}.json"));
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    };
    ok(s.cli(&["apply", "-f", &model(false)]));
    w.wait_converged(&s, 1);
    let running = w.wait_running(&["web"]);
    let container = running[&web].0.clone();
    let said = w.wait("the container to print its secrets", || {
        let o = Command::new("docker")
            .args(["logs", &container])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.contains(cert).then_some(out)
    });
    assert!(said.contains(&format!("key={key}")), "{said}");

    // A secret the gateway lacks fails the component, naming it and where it
    // belongs; the running generation is left alone.
    ok(s.cli(&["apply", "-f", &model(true)]));
    let reason = w.wait("the missing secret to fail the component", || {
        let status = json(s.cli(&["status", "-o", "json"]));
        let sub = status["subsystems"]
            .as_array()?
            .iter()
            .find(|x| x["subsystem"] == w.subsystem.as_str())?
            .clone();
        sub["components"]
            .as_array()?
            .iter()
            .find(|c| c["component"] == web.as_str() && c["state"] == "failed")
            .map(|c| c["reason"].as_str().unwrap_or("").to_owned())
    });
    assert!(
        reason.contains("needs secret `db-password`")
            && reason.contains(&format!("{secrets_dir}/db-password")),
        "{reason}"
    );

    // The values are on the gateway and in the container, nowhere else.
    let everything = [
        ok(s.cli(&["get", "-o", "json"])),
        ok(s.cli(&["get", "--current", "-o", "json"])),
        ok(s.cli(&["status", "-o", "json"])),
        ok(s.cli(&["history", "-o", "json"])),
        w.agent_log(),
    ]
    .join("\n");
    assert!(everything.contains("api-key"), "the names travel");
    for value in [key, cert] {
        assert!(
            !everything.contains(value),
            "`{value}` leaked: {everything}"
        );
    }
    for file in walk(&w.dir.path().join("orchestrator")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for value in [key, cert] {
            assert!(
                !bytes
                    .windows(value.len())
                    .any(|win| win == value.as_bytes()),
                "`{value}` is in {}",
                file.display()
            );
        }
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A copy of this build of `continuum` that reports `version` instead: the
/// build's version marker rewritten, so a second build needs no compiler.
fn build_reporting(dir: &Path, version: &str) -> String {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_continuum")).unwrap();
    let mark = format!("continuum-agent-version:{}\0", env!("CARGO_PKG_VERSION"));
    let new = format!("continuum-agent-version:{version}\0");
    assert!(new.len() < 96, "the marker holds 96 bytes");
    let at: Vec<usize> = bytes
        .windows(mark.len())
        .enumerate()
        .filter(|(_, w)| *w == mark.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "one version marker in the build");
    bytes[at[0]..at[0] + new.len()].copy_from_slice(new.as_bytes());
    let path = dir.join(format!("continuum-{version}"));
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Without its debug information a debug build is a quarter of the size
    // to upload, fetch and hash (the version marker is data: it stays).
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg(&path)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        eprintln!("strip is missing: the offered build keeps its debug information");
    }
    path.display().to_string()
}

/// The gateway's record as `continuum gateways` shows it.
fn gateway_record(s: &Serve, id: &str) -> Option<serde_json::Value> {
    let all = json(s.cli(&["gateways", "-o", "json"]));
    all["gateways"]
        .as_array()?
        .iter()
        .find(|g| g["id"] == id)
        .cloned()
}

/// When each container of the subsystem last started.
fn started_at(w: &World) -> BTreeMap<String, String> {
    w.containers()
        .into_iter()
        .map(|(component, (id, _, _))| {
            let o = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    "{{.State.StartedAt}} {{.RestartCount}}",
                    &id,
                ])
                .output()
                .unwrap();
            (
                component,
                String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_agent_upgrades_itself_to_an_offered_build_and_falls_back_from_one_that_does_not_come_up() {
    if !docker_ready() {
        return;
    }
    let w = World::new();
    let s = Serve::start(&data(&w));
    let agent = w.agent_with(
        &s.addr,
        "agent",
        &["--no-mqtt", "--no-bridge", "--upgrade-deadline", "30s"],
    );
    let pid = agent.0.id();
    let m = w.model("m.json", &[("web", "1", "bb")], false);
    ok(s.cli(&["apply", "-f", &m, "--wait", "90s"]));
    w.wait_running(&["web"]);
    let running = started_at(&w);
    let first = gateway_record(&s, &w.gateway).unwrap();
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));

    // A second build, offered: the agent tries it beside itself, and it
    // takes over in the same process.
    let v2 = build_reporting(w.dir.path(), "0.99.0-upgrade-test");
    let said = ok(s.cli(&["agent", "offer", &v2, "0.99.0-upgrade-test"]));
    assert!(said.contains("offered agent 0.99.0-upgrade-test"), "{said}");
    let g = w.wait("the gateway runs the offered build", || {
        let g = gateway_record(&s, &w.gateway)?;
        (g["version"] == "0.99.0-upgrade-test"
            && g["connected"] == true
            && g["agent_upgrade"].as_str()?.starts_with(&format!(
                "upgraded from {} to 0.99.0-upgrade-test",
                env!("CARGO_PKG_VERSION")
            )))
        .then_some(g)
    });
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(w.dir.path().join("agent").join("agent")),
        "the agent's process now runs the build it fetched: {} ({g})",
        exe.display()
    );
    w.wait_converged(&s, 1);
    // What ran kept running: the same container, never restarted.
    assert_eq!(started_at(&w), running);
    let log = w.agent_log();
    assert!(log.contains("trying agent 0.99.0-upgrade-test"), "{log}");
    assert!(
        log.contains("agent 0.99.0-upgrade-test came up: it takes over"),
        "{log}"
    );

    // A build that never comes up (it exits at once): tried, then the agent
    // that was running takes over again, and says why.
    let broken = w.dir.path().join("broken-agent");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    ok(s.cli(&[
        "agent",
        "offer",
        &broken.display().to_string(),
        "0.99.1-broken",
    ]));
    let g = w.wait("the failed upgrade reported", || {
        let g = gateway_record(&s, &w.gateway)?;
        (g["connected"] == true
            && g["agent_upgrade"]
                .as_str()?
                .contains("the upgrade to 0.99.1-broken failed: it exited"))
        .then_some(g)
    });
    assert_eq!(g["version"], "0.99.0-upgrade-test", "{g}");
    assert!(w.agent_log().contains("this build is broken"));
    w.wait_converged(&s, 1);
    assert_eq!(started_at(&w), running);
    // The broken build is not tried again: the gateway stays connected, and
    // `continuum gateways` says what happened.
    let table = ok(s.cli(&["gateways"]));
    assert!(
        table.contains("the upgrade to 0.99.1-broken failed"),
        "{table}"
    );
    assert_eq!(
        w.agent_log().matches("trying agent 0.99.1-broken").count(),
        1,
        "tried once"
    );
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{}", w.agent_log());
    }
    drop(agent);
}
