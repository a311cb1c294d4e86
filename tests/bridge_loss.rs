//! Loss tests that count (issue #6): 10,000 numbered messages each way
//! through a gateway agent's bridge while (a) the global broker stops and
//! restarts, (b) the gateway's path to the global bus is cut in a network
//! namespace and restored, (c) the agent is killed with -9 and restarted.
//! The subscribers take each message once by its id, as every Continuum
//! consumer does; the test fails on any number missing, taken twice or out of
//! order, or on an id that names two different messages.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::hosts::{add_namespace, ip};
use common::{ok, Guard, Serve};
use continuum_bus::testing::{free_port, require, Mosquitto, Probe, Tally};
use continuum_bus::BrokerUrl;

const N: u64 = 10_000;
const WITHIN: Duration = Duration::from_secs(120);

fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), free_port())
}

async fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    continuum_bus::testing::eventually(what, WITHIN, f).await
}

/// The orchestrator, the agent (restartable) and what they need.
struct Rig {
    dir: tempfile::TempDir,
    /// Where the agent serves its metrics.
    metrics: u16,
    // The orchestrator runs as long as the rig.
    _serve: Serve,
    gateway: String,
    agent: Option<Guard>,
    agent_args: Vec<String>,
    /// Environment of the next agent started (a fault to arm).
    agent_env: Vec<(String, String)>,
}

impl Rig {
    /// Starts an orchestrator and an agent bridging `global` and `local`
    /// (`None`: the agent's embedded broker on `embedded`), and applies a
    /// model routing `loss/down/#` in and `loss/up/#` out.
    fn start(global: &BrokerUrl, local: Option<&BrokerUrl>, embedded: u16) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let serve = Serve::start(&dir.path().join("orchestrator"));
        let gateway = unique("gw");
        let metrics = free_port();
        let mut agent_args: Vec<String> = [
            "gateway",
            "--driver",
            "process",
            "--id",
            &gateway,
            "--orchestrator",
            &serve.addr,
            "--bus-url",
            &global.to_string(),
            "--bus-keepalive",
            "5s",
            "--max-backoff",
            "1s",
            "--mqtt-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--mqtt5-listen",
            &format!("127.0.0.1:{embedded}"),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(l) = local {
            agent_args.extend(["--local-bus-url".to_owned(), l.to_string()]);
        }
        agent_args.extend([
            "--data-dir".to_owned(),
            dir.path().join("agent").display().to_string(),
        ]);
        let model = serde_json::json!({
            "name": "loss",
            "subsystems": [{
                "id": unique("s"),
                "components": [{
                    "id": gateway, "kind": "gateway", "equipped_with_bridge": true,
                    "routes": [
                        {"topic": "loss/down/#", "direction": "in"},
                        {"topic": "loss/up/#", "direction": "out"}
                    ]
                }]
            }]
        });
        let file = dir.path().join("model.json");
        std::fs::write(&file, model.to_string()).unwrap();
        ok(serve.cli(&["apply", "-f", &file.display().to_string()]));
        let mut rig = Rig {
            dir,
            metrics,
            _serve: serve,
            gateway,
            agent: None,
            agent_args,
            agent_env: Vec::new(),
        };
        rig.start_agent();
        rig
    }

    /// The agent's Prometheus metrics.
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut c =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics)).expect("metrics endpoint");
        c.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    /// A sample's value, by its name and labels as printed.
    fn metric(&self, sample: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no `{sample}` in:\n{text}"))
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(&self.agent_args)
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the agent starts");
        self.agent = Some(Guard(child));
    }

    fn kill_agent(&mut self) {
        if let Some(mut g) = self.agent.take() {
            let _ = continuum_bus::testing::signal(g.0.id(), nix::sys::signal::Signal::SIGKILL);
            let _ = g.0.wait();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("agent log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
}

/// Publishes numbered probes until `sub` has one: the route is live.
async fn until_routed(publisher: &Probe, topic: &str, sub: &Probe) {
    let deadline = tokio::time::Instant::now() + continuum_bus::testing::within(WITHIN);
    loop {
        publisher.publish_numbered(topic, 0..=0, 8, None).await;
        for _ in 0..50 {
            if sub.received().iter().any(|r| r.topic == topic) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route for {topic} never carried a message"
        );
    }
}

/// The clients of one run: a publisher and a subscriber on each side.
struct Traffic {
    g_pub: Probe,
    g_sub: Probe,
    l_pub: Probe,
    l_sub: Probe,
    /// Local publications acknowledged before the numbered ones.
    l_base: u64,
}

impl Traffic {
    async fn start(global_for_tests: &BrokerUrl, local: &BrokerUrl, gateway: &str) -> Traffic {
        let id = unique("t");
        let mut t = Traffic {
            g_pub: Probe::connect(global_for_tests, &format!("{id}-gpub"), true),
            g_sub: Probe::connect(global_for_tests, &format!("{id}-gsub"), true),
            l_pub: Probe::connect(local, &format!("{id}-lpub"), true),
            l_sub: Probe::connect(local, &format!("{id}-lsub"), true),
            l_base: 0,
        };
        for p in [&t.g_pub, &t.g_sub, &t.l_pub, &t.l_sub] {
            p.connected(WITHIN).await;
        }
        t.g_sub.subscribe("loss/up/#").await;
        t.g_sub
            .subscribe(&format!("continuum/gateways/{gateway}/status"))
            .await;
        t.l_sub.subscribe("loss/down/#").await;
        until_routed(&t.g_pub, "loss/down/probe", &t.l_sub).await;
        until_routed(&t.l_pub, "loss/up/probe", &t.g_sub).await;
        eventually("the probes acknowledged", || {
            (t.l_pub.acked() > 0).then_some(())
        })
        .await;
        t.l_base = t.l_pub.acked();
        t.publish(1..=N / 2);
        t
    }

    /// Publishes these numbers both ways, in the background.
    fn publish(&self, numbers: std::ops::RangeInclusive<u64>) {
        self.publish_down(numbers.clone());
        self.publish_up(numbers);
    }

    /// Publishes these numbers global → local, in the background.
    fn publish_down(&self, numbers: std::ops::RangeInclusive<u64>) {
        let g = self.g_pub.clone();
        tokio::spawn(async move {
            g.publish_numbered("loss/down/seq", numbers, 64, Some("test-down"))
                .await
        });
    }

    /// Publishes these numbers local → global, in the background.
    fn publish_up(&self, numbers: std::ops::RangeInclusive<u64>) {
        let l = self.l_pub.clone();
        tokio::spawn(async move {
            l.publish_numbered("loss/up/seq", numbers, 64, Some("test-up"))
                .await
        });
    }

    fn down(&self) -> Tally {
        Tally::of(&self.l_sub.received_on("loss/down/seq"))
    }

    fn up(&self) -> Tally {
        Tally::of(&self.g_sub.received_on("loss/up/seq"))
    }

    /// Publishes the second half, and waits until the local broker has
    /// accepted every local message: the subsystem keeps talking while the
    /// fault lasts.
    async fn second_half_while_faulty(&self) {
        self.publish(N / 2 + 1..=N);
        let all = self.l_base + N;
        eventually("every local message accepted", || {
            (self.l_pub.acked() >= all).then_some(())
        })
        .await;
    }

    async fn check(&self, what: &str) {
        let through = tokio::time::timeout(continuum_bus::testing::within(WITHIN * 4), async {
            while !(self.down().taken.len() as u64 >= N && self.up().taken.len() as u64 >= N) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if through.is_err() {
            let missing = |t: &Tally| {
                let got: std::collections::BTreeSet<u64> = t.taken.iter().copied().collect();
                let gone: Vec<u64> = (1..=N).filter(|n| !got.contains(n)).collect();
                format!(
                    "{} of {N} taken, {} missing (first {:?})",
                    got.len(),
                    gone.len(),
                    &gone[..gone.len().min(10)]
                )
            };
            panic!(
                "{what}: not every message came through: global → local {}; local → global {}",
                missing(&self.down()),
                missing(&self.up())
            );
        }
        let (down, up) = (self.down(), self.up());
        down.assert_exactly_once_in_order(N, &format!("{what}: global → local"));
        up.assert_exactly_once_in_order(N, &format!("{what}: local → global"));
        eprintln!(
            "{what}: {N} + {N} messages, each once and in order; redeliveries recognised by id: {} down, {} up",
            down.redelivered, up.redelivered
        );
    }

    fn statuses(&self, gateway: &str) -> Vec<String> {
        self.g_sub
            .received_on(&format!("continuum/gateways/{gateway}/status"))
            .iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }
}

fn mosquitto_ready() -> bool {
    require("mosquitto", "mosquitto")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_broker_restart_loses_and_duplicates_nothing() {
    if !mosquitto_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut global = Mosquitto::start(dir.path(), "global", "");
    let embedded = free_port();
    let local: BrokerUrl = format!("mqtt://127.0.0.1:{embedded}").parse().unwrap();
    let rig = Rig::start(&global.url(), None, embedded);
    let t = Traffic::start(&global.url(), &local, &rig.gateway).await;
    eventually("a fifth through", || {
        (t.down().taken.len() as u64 >= N / 5).then_some(())
    })
    .await;
    global.stop();
    // The subsystem keeps talking: messages wait in the bridge's outbox.
    t.second_half_while_faulty().await;
    global.resume();
    let resumed = std::time::Instant::now();
    t.check("global broker restarted").await;
    common::record(
        "broker-restart",
        "the global broker stopped during traffic, started again",
        &format!("{N} messages each way: none lost, none duplicated (sequence check)"),
        resumed.elapsed(),
    );
    // The counters say the same, and that nothing was dropped.
    let gw = &rig.gateway;
    let m = |name: &str, dir: &str| {
        rig.metric(&format!("{name}{{gateway=\"{gw}\",direction=\"{dir}\"}}"))
    };
    eventually("the counters to settle", || {
        (m("continuum_bridge_forwarded_total", "in") > N).then_some(())
    })
    .await;
    assert!(m("continuum_bridge_forwarded_total", "out") > N);
    assert_eq!(
        m("continuum_bridge_dropped_total", "in") + m("continuum_bridge_dropped_total", "out"),
        0
    );
    assert_eq!(
        rig.metric(&format!(
            "continuum_bridge_connected{{gateway=\"{gw}\",bus=\"global\"}}"
        )),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_loses_and_duplicates_nothing() {
    if !mosquitto_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Sessions and subscriptions saved as they change: a broker killed with
    // -9 comes back knowing its clients.
    let durable = "autosave_on_changes true\nautosave_interval 1\n";
    let mut global = Mosquitto::start(dir.path(), "global", durable);
    let local = Mosquitto::start(dir.path(), "local", "");
    let mut rig = Rig::start(&global.url(), Some(&local.url()), free_port());
    let t = Traffic::start(&global.url(), &local.url(), &rig.gateway).await;
    eventually("the first half through", || {
        (t.down().taken.len() as u64 >= N / 2 && t.up().taken.len() as u64 >= N / 2).then_some(())
    })
    .await;
    // The global broker dies (-9). (Mosquitto acknowledges a message before
    // it saves it: killed while messages pass through it, it may lose some
    // of its own. It is killed here with nothing in flight, so anything
    // missing afterwards is the bridge's.)
    global.kill();
    // What the subsystem publishes now waits in the bridge's outbox...
    t.publish_up(N / 2 + 1..=N);
    let all = t.l_base + N;
    eventually("every local message accepted", || {
        (t.l_pub.acked() >= all).then_some(())
    })
    .await;
    let gw = rig.gateway.clone();
    let queued = format!("continuum_bridge_queued{{gateway=\"{gw}\",direction=\"out\"}}");
    let held = eventually("the outbox holding them", || {
        let q = rig.metric(&queued);
        (q >= N / 2).then_some(q)
    })
    .await;
    // ...and the agent dies (-9) holding them, the broker still down: they
    // can only leave from the outbox the next agent opens.
    rig.kill_agent();
    eprintln!("agent killed with {held} messages in its outbox");
    global.resume();
    let restarted = std::time::Instant::now();
    rig.start_agent();
    t.publish_down(N / 2 + 1..=N);
    t.check("global broker and agent killed with -9").await;
    common::record(
        "bridge-kill",
        "the global broker and the gateway agent killed with SIGKILL, the outbox holding messages",
        &format!("{N} messages each way: none lost, none duplicated (sequence check)"),
        restarted.elapsed(),
    );
}

/// A network namespace holding the global broker, reached over two veth
/// pairs: one for the gateway (the one cut), one for the test's clients.
struct Netns {
    name: String,
    gateway_side: String,
    gateway_ip: String,
    clients_ip: String,
}

impl Netns {
    /// `None` where namespaces cannot be made (not root): skipped, or a
    /// failure in CI.
    fn create() -> Option<Netns> {
        let k = (std::process::id() % 250) as u8;
        let tag = format!("{:x}", std::process::id() % 0xfffff);
        let name = format!("cbr{tag}");
        add_namespace(&name)?;
        let ns = Netns {
            gateway_side: format!("cga{tag}"),
            gateway_ip: format!("10.213.{k}.2"),
            clients_ip: format!("10.214.{k}.2"),
            name,
        };
        for (root_end, ns_end, net) in [
            (
                ns.gateway_side.clone(),
                format!("cgb{tag}"),
                format!("10.213.{k}"),
            ),
            (
                format!("cta{tag}"),
                format!("ctb{tag}"),
                format!("10.214.{k}"),
            ),
        ] {
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end,
            ]);
            ip(&["link", "set", &ns_end, "netns", &ns.name]);
            ip(&["addr", "add", &format!("{net}.1/30"), "dev", &root_end]);
            ip(&["link", "set", &root_end, "up"]);
            ip(&[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{net}.2/30"),
                "dev",
                &ns_end,
            ]);
            ip(&[
                "netns", "exec", &ns.name, "ip", "link", "set", &ns_end, "up",
            ]);
        }
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    fn cut(&self) {
        ip(&["link", "set", &self.gateway_side, "down"]);
    }

    fn restore(&self) {
        ip(&["link", "set", &self.gateway_side, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends, and so the pairs.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_and_duplicates_nothing_and_the_will_says_offline() {
    if !mosquitto_ready() {
        return;
    }
    let Some(ns) = Netns::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _global = Mosquitto::start_at(
        dir.path(),
        "global",
        SocketAddr::from(([0, 0, 0, 0], port)),
        Some(&ns.name),
        "",
    );
    let for_gateway: BrokerUrl = format!("mqtt://{}:{port}", ns.gateway_ip).parse().unwrap();
    let for_tests: BrokerUrl = format!("mqtt://{}:{port}", ns.clients_ip).parse().unwrap();
    let addr: SocketAddr = format!("{}:{port}", ns.clients_ip).parse().unwrap();
    eventually("the global broker in its namespace", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    })
    .await;
    let embedded = free_port();
    let local: BrokerUrl = format!("mqtt://127.0.0.1:{embedded}").parse().unwrap();
    let rig = Rig::start(&for_gateway, None, embedded);
    let t = Traffic::start(&for_tests, &local, &rig.gateway).await;
    eventually("a fifth through", || {
        (t.down().taken.len() as u64 >= N / 5).then_some(())
    })
    .await;
    ns.cut();
    // The broker gives up on the silent bridge and publishes its will.
    eventually("the will (offline)", || {
        t.statuses(&rig.gateway)
            .iter()
            .any(|s| s.contains("\"online\":false"))
            .then_some(())
    })
    .await;
    t.second_half_while_faulty().await;
    ns.restore();
    let restored = std::time::Instant::now();
    t.check("link cut and restored").await;
    common::record(
        "bridge-partition",
        "the gateway's link to the global broker cut during traffic, restored",
        &format!("{N} messages each way: none lost, none duplicated; the will said offline"),
        restored.elapsed(),
    );
    let last = t.statuses(&rig.gateway).last().cloned().unwrap_or_default();
    assert!(last.contains("\"online\":true"), "back online: {last}");
}

/// `continuum serve --bus-url` names an external global bus; a gateway given
/// none learns it from the orchestrator, connects to it, and remembers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_names_the_global_bus() {
    if !mosquitto_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    // No model names the gateway: the allow-list admits it.
    let gateway = unique("gw");
    let serve = Serve::start_with(
        &dir.path().join("orchestrator"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--bus-url",
            &global.url().to_string(),
            "--allow-gateway",
            &gateway,
        ],
    );
    let watcher = Probe::connect(&global.url(), &unique("w"), false);
    watcher.connected(WITHIN).await;
    watcher
        .subscribe(&format!("continuum/gateways/{gateway}/status"))
        .await;
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let _agent = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["gateway", "--driver", "process", "--id", &gateway])
            .args(["--orchestrator", &serve.addr, "--mqtt-listen"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--mqtt5-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let status = eventually("the gateway on the external bus", || {
        watcher
            .received()
            .iter()
            .rev()
            .find(|r| r.topic.ends_with("/status"))
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
    })
    .await;
    assert!(status.contains("\"online\":true"), "{status}");
}

/// A message published without an id is given one by the bridge when it is
/// committed. If the agent dies after that commit and before it acknowledges
/// the message to the local broker, the broker delivers it again, and the
/// bridge cannot tell the redelivery from a new message: it is forwarded
/// twice (at least once, never lost). Messages with ids crossing the same
/// crash stay exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_an_id_cut_between_commit_and_acknowledgement_arrives_twice() {
    if !mosquitto_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    // An external local broker keeps the bridge's session across the crash.
    let local = Mosquitto::start(dir.path(), "local", "");
    let mut rig = Rig::start(&global.url(), Some(&local.url()), free_port());
    let t = Traffic::start(&global.url(), &local.url(), &rig.gateway).await;
    eventually("a fifth through", || {
        (t.up().taken.len() as u64 >= N / 5).then_some(())
    })
    .await;
    // The next agent aborts right after committing a message on this topic
    // (which the global subscriber's `loss/up/#` covers).
    let noid = "loss/up/noid";
    rig.kill_agent();
    rig.agent_env = vec![(
        "CONTINUUM_FAULT_ABORT_AFTER_COMMIT".to_owned(),
        noid.to_owned(),
    )];
    rig.start_agent();
    t.l_pub.publish_numbered(noid, 1..=1, 32, None).await;
    let aborted = eventually("the armed agent to abort", || {
        let g = rig.agent.as_mut()?;
        g.0.try_wait().ok().flatten()
    })
    .await;
    assert!(!aborted.success(), "{aborted:?}");
    let log = std::fs::read_to_string(rig.log()).unwrap();
    assert!(
        log.contains("aborting after committing a message on loss/up/noid"),
        "{log}"
    );
    rig.agent = None;
    rig.agent_env.clear();
    rig.start_agent();
    t.second_half_while_faulty().await;
    t.check("agent aborted between commit and acknowledgement")
        .await;
    let copies = eventually("the id-less message forwarded", || {
        let got = t.g_sub.received_on(noid);
        (got.len() >= 2).then_some(got)
    })
    .await;
    assert_eq!(copies.len(), 2, "once from the outbox, once redelivered");
    assert_eq!(copies[0].payload, copies[1].payload);
    let (a, b) = (copies[0].id.clone().unwrap(), copies[1].id.clone().unwrap());
    assert_ne!(a, b, "the bridge gave each copy an id of its own");
}
