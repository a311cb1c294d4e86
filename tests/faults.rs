//! The whole system under faults, across hosts: the orchestrator and three
//! gateway agents (process driver, each with its local broker and bridge) as
//! separate processes, each in a network namespace of its own joined by a
//! switch. Each scenario injects one fault, checks the invariants it threatens
//! and records how long the system took to recover; `scripts/reliability.sh`
//! turns the records into the README's table.

mod common;

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::hosts::Cluster;
use common::{json, record, Guard, Reap};
use continuum_bus::testing::{signal, wait_for};

const GATEWAYS: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
const WITHIN: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_continuum");

struct Rig {
    cluster: Cluster,
    dir: tempfile::TempDir,
    /// In every workload's command line: what `Reap` and the duplicate
    /// count look for.
    marker: String,
    orchestrator: Option<Guard>,
    agents: BTreeMap<String, Guard>,
    _reap: Reap,
}

impl Rig {
    /// The hosts, the orchestrator and its three gateways; `None` where
    /// namespaces cannot be made (outside CI).
    fn start() -> Option<Rig> {
        let mut names = vec!["orchestrator"];
        names.extend(GATEWAYS);
        let cluster = Cluster::new(&names)?;
        let dir = tempfile::tempdir().unwrap();
        let marker = common::unique("fault");
        let mut rig = Rig {
            cluster,
            _reap: Reap(marker.clone()),
            marker,
            dir,
            orchestrator: None,
            agents: BTreeMap::new(),
        };
        rig.start_orchestrator();
        for g in GATEWAYS {
            rig.start_agent(g);
        }
        Some(rig)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap()
    }

    fn start_orchestrator(&mut self) {
        let child = self
            .cluster
            .command("orchestrator", BIN)
            .args(["serve", "--listen", "0.0.0.0:7070", "--insecure"])
            .args([
                "--mqtt-listen",
                "0.0.0.0:1883",
                "--mqtt5-listen",
                "0.0.0.0:1884",
            ])
            .args(["--heartbeat-interval", "500ms"])
            .arg("--data-dir")
            .arg(self.dir.path().join("orchestrator"))
            .env("CONTINUUM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log("orchestrator"))
            .spawn()
            .expect("starts continuum serve");
        self.orchestrator = Some(Guard(child));
        wait_for("the orchestrator to answer", WITHIN, || {
            self.cli(&["history"]).status.success().then_some(())
        });
    }

    fn start_agent(&mut self, gateway: &str) {
        let orchestrator = format!("http://{}:7070", self.cluster.host("orchestrator").ip);
        self.start_agent_with(gateway, &orchestrator, &[]);
    }

    /// An agent dialling `orchestrator`, with `extra` flags.
    fn start_agent_with(&mut self, gateway: &str, orchestrator: &str, extra: &[&str]) {
        let child = self
            .cluster
            .command(gateway, BIN)
            .args(["gateway", "--driver", "process", "--id", gateway])
            .args(["--orchestrator", orchestrator])
            .args(extra)
            .args([
                "--mqtt-listen",
                "127.0.0.1:1883",
                "--mqtt5-listen",
                "127.0.0.1:1884",
            ])
            .args(["--interval", "500ms", "--max-backoff", "1s"])
            .arg("--data-dir")
            .arg(self.dir.path().join(gateway))
            .env("CONTINUUM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(gateway))
            .spawn()
            .expect("starts continuum gateway");
        self.agents.insert(gateway.to_owned(), Guard(child));
    }

    /// The CLI on the orchestrator's host.
    fn cli(&self, args: &[&str]) -> Output {
        self.cluster
            .command("orchestrator", BIN)
            .args(["--server", "127.0.0.1:7070"])
            .args(args)
            .output()
            .expect("runs continuum")
    }

    /// A megamodel of three subsystems, each a gateway running one service
    /// at `version`.
    fn model(&self, version: u32) -> String {
        let subsystems: Vec<serde_json::Value> = GATEWAYS
            .iter()
            .map(|g| {
                let app = format!("app-{g}");
                let script = format!("echo {version}; while :; do sleep 1; done");
                serde_json::json!({"id": format!("sub-{g}"), "components": [
                    {"id": g, "kind": "gateway", "equipped_with_bridge": true},
                    {"id": app, "kind": "service", "resources": {"container": {
                        "image": "none",
                        "command": ["sh", "-c", script, format!("{}-{g}-v{version}", self.marker)]}}}
                ], "links": [{"kind": "hosting", "component": app, "host": g}]})
            })
            .collect();
        let mm = serde_json::json!({"name": "faults", "subsystems": subsystems});
        let path = self.dir.path().join(format!("v{version}.json"));
        std::fs::write(&path, mm.to_string()).unwrap();
        path.display().to_string()
    }

    /// Applies `version`; the revision it became.
    fn apply(&self, version: u32) -> u64 {
        let o = json(self.cli(&["apply", "-f", &self.model(version), "-o", "json"]));
        o["revision"]["number"].as_u64().expect("a revision")
    }

    /// The subsystems converged at `generation` or later.
    fn converged(&self, generation: u64) -> Vec<String> {
        let o = self.cli(&["status", "-o", "json"]);
        if !o.status.success() {
            return Vec::new();
        }
        let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        status["subsystems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["converged"] == true && s["target_generation"].as_u64() >= Some(generation)
            })
            .filter_map(|s| s["subsystem"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until every subsystem converged at `generation`; how long it took.
    fn wait_converged(&self, generation: u64, since: Instant) -> Duration {
        wait_for(
            &format!("every subsystem at generation {generation}"),
            WITHIN,
            || (self.converged(generation).len() == GATEWAYS.len()).then_some(()),
        );
        since.elapsed()
    }

    /// The workloads of `gateway` running `version`, and of any version.
    fn workloads(&self, gateway: &str, version: u32) -> (usize, usize) {
        let all = common::pids(&format!("{}-{gateway}-v", self.marker)).len();
        let this = common::pids(&format!("{}-{gateway}-v{version}", self.marker)).len();
        (this, all)
    }

    /// Exactly one workload per gateway, at `version`.
    fn one_each(&self, version: u32) {
        for g in GATEWAYS {
            continuum_bus::testing::wait_for_explained(
                &format!("one workload of {g} at v{version}"),
                WITHIN,
                || (self.workloads(g, version) == (1, 1)).then_some(()),
                || {
                    let (this, all) = self.workloads(g, version);
                    format!(
                        "\n{this} at v{version}, {all} in all; {g}'s log:\n{}",
                        self.log_text(g)
                    )
                },
            );
        }
    }

    /// Whether the local broker on `gateway` carries a message from one
    /// local client to another.
    fn local_traffic(&self, gateway: &str) -> bool {
        let topic = format!("local/{}", self.marker);
        let publish = self
            .cluster
            .command(gateway, "mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-r",
                "-q",
                "1",
                "-t",
                &topic,
            ])
            .args(["-m", "still-here"])
            .output()
            .unwrap();
        if !publish.status.success() {
            return false;
        }
        let read = self
            .cluster
            .command(gateway, "mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "1883",
                "-t",
                &topic,
                "-C",
                "1",
                "-W",
                "5",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&read.stdout).contains("still-here")
    }

    fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn agent_pid(&self, gateway: &str) -> u32 {
        self.agents[gateway].0.id()
    }
}

fn settled(rig: &Rig) {
    let first = rig.apply(1);
    rig.wait_converged(first, Instant::now());
    rig.one_each(1);
}

#[test]
fn a_cut_link_heals_and_its_subsystem_converges_having_served_locally_meanwhile() {
    let Some(rig) = Rig::start() else { return };
    settled(&rig);
    rig.cluster.cut("gw-b");
    let revision = rig.apply(2);
    // The others converge; the cut one keeps running v1 and serving locally.
    wait_for("the gateways still linked to converge", WITHIN, || {
        let done = rig.converged(revision);
        (done.len() == 2 && !done.contains(&"sub-gw-b".to_owned())).then_some(())
    });
    assert_eq!(
        rig.workloads("gw-b", 1),
        (1, 1),
        "the cut gateway keeps its workload"
    );
    assert!(
        rig.local_traffic("gw-b"),
        "local traffic on the cut gateway"
    );
    let healed = Instant::now();
    rig.cluster.heal("gw-b");
    let took = rig.wait_converged(revision, healed);
    rig.one_each(2);
    record(
        "cut-link",
        "a gateway's link cut during a rollout, then healed",
        "converged; local traffic served while cut; no duplicate workload",
        took,
    );
}

#[test]
fn the_orchestrator_killed_mid_rollout_loses_no_accepted_revision() {
    let Some(mut rig) = Rig::start() else { return };
    settled(&rig);
    let revision = rig.apply(2);
    // Killed as the rollout starts: the revision was accepted (the apply
    // answered), nothing else is known.
    signal(
        rig.orchestrator.as_ref().unwrap().0.id(),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(rig.orchestrator.take());
    let restarted = Instant::now();
    rig.start_orchestrator();
    let history = json(rig.cli(&["history", "-o", "json"]));
    assert_eq!(
        history["revisions"][0]["number"].as_u64(),
        Some(revision),
        "the accepted revision survived: {history}"
    );
    let took = rig.wait_converged(revision, restarted);
    rig.one_each(2);
    record(
        "orchestrator-kill",
        "the orchestrator killed with SIGKILL mid-rollout, restarted",
        "every accepted revision kept and converged; no duplicate workload",
        took,
    );
}

#[test]
fn a_gateway_killed_mid_rollout_comes_back_without_duplicates() {
    let Some(mut rig) = Rig::start() else { return };
    settled(&rig);
    let revision = rig.apply(2);
    signal(rig.agent_pid("gw-c"), nix::sys::signal::Signal::SIGKILL).unwrap();
    rig.agents.remove("gw-c");
    let restarted = Instant::now();
    rig.start_agent("gw-c");
    let took = rig.wait_converged(revision, restarted);
    rig.one_each(2);
    record(
        "agent-kill",
        "a gateway agent killed with SIGKILL mid-rollout, restarted",
        "converged; its workloads adopted or replaced, never doubled",
        took,
    );
}

#[test]
fn a_paused_agent_resumes_and_converges_without_fighting() {
    let Some(rig) = Rig::start() else { return };
    settled(&rig);
    let pid = rig.agent_pid("gw-a");
    signal(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let revision = rig.apply(2);
    wait_for("the paused gateway's link to end", WITHIN, || {
        let g = json(rig.cli(&["gateways", "-o", "json"]));
        g["gateways"]
            .as_array()?
            .iter()
            .any(|x| x["id"] == "gw-a" && x["connected"] == false)
            .then_some(())
    });
    let resumed = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let took = rig.wait_converged(revision, resumed);
    rig.one_each(2);
    record(
        "agent-pause",
        "a gateway agent paused (SIGSTOP) past its link's timeout, resumed",
        "admitted again and converged; no duplicate workload",
        took,
    );
}

#[test]
fn random_loss_on_a_gateway_link_slows_but_does_not_stop_convergence() {
    let Some(rig) = Rig::start() else { return };
    settled(&rig);
    rig.cluster.loss("gw-a", 20);
    let started = Instant::now();
    let revision = rig.apply(2);
    let took = rig.wait_converged(revision, started);
    rig.one_each(2);
    rig.cluster.loss("gw-a", 0);
    record(
        "loss",
        "20% of packets dropped at random on a gateway's link during a rollout",
        "converged; no duplicate workload",
        took,
    );
}

#[test]
fn a_slow_link_delays_convergence_but_loses_nothing() {
    let Some(mut rig) = Rig::start() else { return };
    settled(&rig);
    // gw-b's link and bridge go through proxies in its own host that hold
    // every chunk 200 ms each way.
    let delay = Duration::from_millis(200);
    let orchestrator = rig.cluster.host("orchestrator").ip.clone();
    let at = |port: u16| format!("{orchestrator}:{port}").parse().unwrap();
    rig.cluster.delaying_proxy("gw-b", 17070, at(7070), delay);
    rig.cluster.delaying_proxy("gw-b", 11884, at(1884), delay);
    signal(rig.agent_pid("gw-b"), nix::sys::signal::Signal::SIGKILL).unwrap();
    rig.agents.remove("gw-b");
    rig.start_agent_with(
        "gw-b",
        "http://127.0.0.1:17070",
        &["--bus-url", "mqtt://127.0.0.1:11884"],
    );
    let started = Instant::now();
    let revision = rig.apply(2);
    let took = rig.wait_converged(revision, started);
    rig.one_each(2);
    record(
        "delay",
        "200 ms added each way on a gateway's link (a delaying proxy) during a rollout",
        "converged; no duplicate workload",
        took,
    );
}
