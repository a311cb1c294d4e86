//! Deploy agents on another machine than the gateway's: the simulated Uno is
//! wired to a host of the model, reached through its Docker engine (the agent
//! runs in a container FROM scratch with the board's port passed through) or
//! over SSH (a real sshd on loopback; the agent is copied and started). In
//! both, the gateway flashes through that agent, the agent skips a firmware
//! the device already runs, is upgraded when the gateway's agent executable
//! changes, and is removed when no device needs it any more.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::devices::{apply_converged, component_status, gateway, short_digest};
use common::{free_port, orchestrator, unique, Guard, Reap};
use continuum_bus::testing::{eventually, within, Probe};
use continuum_deploy_agent::sim::{from_env as sim_board, SimBoard};

const FIRMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/smart-building/firmware"
);

/// The static deploy agent (`scripts/build-static.sh continuum-deploy-agent`,
/// exported by the test script); in CI its absence is a failure.
fn static_agent() -> Option<PathBuf> {
    match std::env::var_os("CONTINUUM_STATIC_AGENT").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CONTINUUM_STATIC_AGENT is not a static continuum-agent (scripts/test.sh builds it)")
        }
        _ => {
            eprintln!("skipped: CONTINUUM_STATIC_AGENT is not set (scripts/build-static.sh continuum-deploy-agent)");
            None
        }
    }
}

/// The subsystem: the gateway, host `edge` (reached by `access`) wired to
/// the Uno, the firmware `firmware_id` on the Uno and a proxy of its lines;
/// with `firmware` none, the gateway alone.
fn model(
    dir: &Path,
    name: &str,
    gw: &str,
    access: &serde_json::Value,
    port: &Path,
    firmware: Option<(&str, &Path)>,
) -> String {
    let mut components = vec![serde_json::json!(
        {"id": gw, "kind": "gateway", "equipped_with_deployer": true}
    )];
    let mut links = Vec::new();
    if let Some((id, image)) = firmware {
        components.extend([
            serde_json::json!({"id": "edge", "kind": "host", "access": access}),
            serde_json::json!({"id": "uno", "kind": "device", "board": "uno", "port": port, "need_deployer": true}),
            serde_json::json!({"id": id, "kind": "firmware", "resources": {"flash": {
                "artefact": image, "health": "^\\{\"pir\":", "confirm_within": "5s"}}}),
            serde_json::json!({"id": "uno-proxy", "kind": "proxy", "device": "uno", "topic_prefix": "/sensors/uno"}),
        ]);
        links.extend([
            serde_json::json!({"kind": "communication", "from": "edge", "to": "uno", "physical": true}),
            serde_json::json!({"kind": "hosting", "component": id, "host": "uno"}),
            serde_json::json!({"kind": "hosting", "component": "uno-proxy", "host": "edge"}),
        ]);
    }
    let mm = serde_json::json!({"name": "agents", "subsystems": [
        {"id": gw, "components": components, "links": links}
    ]});
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&mm).unwrap()).unwrap();
    path.display().to_string()
}

/// A copy of the agent at `to` (renamed into place, as a package upgrade
/// does), with `extra` bytes after the executable: a different build.
fn install_agent(from: &Path, to: &Path, extra: &[u8]) -> String {
    let mut bytes = std::fs::read(from).unwrap();
    bytes.extend_from_slice(extra);
    let build = continuum_deploy_agent::service::build_of(&bytes);
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
    build
}

/// The agent's retained state of `uno` and of itself, seen on the local broker.
async fn agent_says(local: &str, agent: &str) -> Probe {
    let probe = Probe::connect(&local.parse().unwrap(), &unique("probe"), false);
    probe.connected(within(Duration::from_secs(10))).await;
    probe
        .subscribe(&format!("continuum/agents/{agent}/devices/uno"))
        .await;
    probe
        .subscribe(&format!("continuum/agents/{agent}/status"))
        .await;
    probe.subscribe("/sensors/uno").await;
    probe
}

/// The last JSON `probe` received on `topic`.
fn last_json(probe: &Probe, topic: &str) -> serde_json::Value {
    probe
        .received_on(topic)
        .last()
        .and_then(|r| serde_json::from_slice(&r.payload).ok())
        .unwrap_or_default()
}

/// The containers of agent `agent`: name and build label.
fn agent_containers(agent: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label=io.continuum.deploy-agent={agent}"))
        .args([
            "--format",
            "{{.Names}} {{.Label \"io.continuum.deploy-agent.build\"}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, b)| (n.to_owned(), b.to_owned()))
        .collect()
}

/// Removes an agent's container, its volume and the images of the agent
/// builds the test made, even when the test fails.
struct AgentContainers {
    agent: String,
    builds: Vec<PathBuf>,
}

impl Drop for AgentContainers {
    fn drop(&mut self) {
        let name = continuum_gateway::deployers::container_name(&self.agent);
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &name])
            .output();
        for program in &self.builds {
            if let Ok((tag, _)) = continuum_gateway::deployers::container_image(program) {
                let _ = Command::new("docker").args(["rmi", &tag]).output();
            }
        }
    }
}

/// Checks what every placement must do once the agent flashed v1: the device
/// runs it, its lines reach the local broker, a firmware it already runs is
/// skipped, and a new agent build replaces the running agent.
#[allow(clippy::too_many_arguments)]
async fn flash_skip_and_upgrade(
    serve: &common::Serve,
    dir: &Path,
    gw: &str,
    agent: &str,
    local: &str,
    access: &serde_json::Value,
    port: &Path,
    program: (&Path, &Path),
    upgraded: impl Fn(&str) -> bool,
) {
    let v1 = PathBuf::from(format!("{FIRMWARE}/arduino-flow-v1.hex"));
    let m1 = model(dir, "v1.json", gw, access, port, Some(("flow", &v1)));
    apply_converged(serve, dir, gw, &m1);
    let status = component_status(serve, "flow");
    assert!(
        status.contains(&format!("on `uno`, firmware sha256:{}", short_digest(&v1))),
        "{status}"
    );
    let probe = agent_says(local, agent).await;
    common::devices::readings_arrive(&probe).await;

    // The same image under another component: nothing is flashed again (the
    // device's report still answers the first order).
    let topic = format!("continuum/agents/{agent}/devices/uno");
    let before = eventually(
        "the agent's report",
        within(Duration::from_secs(10)),
        || {
            let r = last_json(&probe, &topic);
            (r["state"] == "running").then_some(r)
        },
    )
    .await;
    let again = model(
        dir,
        "again.json",
        gw,
        access,
        port,
        Some(("flow-again", &v1)),
    );
    apply_converged(serve, dir, gw, &again);
    let status = component_status(serve, "flow-again");
    assert!(
        status.contains(&format!("on `uno`, firmware sha256:{}", short_digest(&v1))),
        "{status}"
    );
    let after = last_json(&probe, &topic);
    assert_eq!(after["request"], before["request"], "reflashed: {after}");
    assert!(
        after["firmware"]
            .as_str()
            .is_some_and(|h| h.starts_with(&short_digest(&v1))),
        "{after}"
    );

    // A new agent build: the running agent is replaced by it.
    let (from, to) = program;
    let build = install_agent(from, to, b"\0continuum test build 2\0");
    eventually(
        "the agent upgraded to the new build",
        within(Duration::from_secs(60)),
        || {
            let s = last_json(&probe, &format!("continuum/agents/{agent}/status"));
            (s["state"] == "online" && s["build"] == build.as_str() && upgraded(&build))
                .then_some(())
        },
    )
    .await;
    let status = component_status(serve, "flow-again");
    assert!(
        status.contains("\"running\"") || status.contains("on `uno`"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_a_container_on_the_hosts_engine_flashes_is_upgraded_and_removed() {
    if !common::docker_ready() {
        return;
    }
    let (Some(sim), Some(agent_bin)) = (sim_board(), static_agent()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(dir.path().display().to_string());
    let port = dir.path().join("uno");
    let _uno = SimBoard::start(&sim, &port, &[]).expect("starts the simulated board");
    let (serve, _) = orchestrator(dir.path());
    let gw = unique("ctr");
    let agent = format!("{gw}.edge");
    let program = dir.path().join("continuum-agent");
    install_agent(&agent_bin, &program, b"");
    let first = dir.path().join("first-build");
    std::fs::copy(&program, &first).unwrap();
    // Declared before the gateway, so dropped after it: no gateway is left
    // to recreate what it removes.
    let _containers = AgentContainers {
        agent: agent.clone(),
        builds: vec![first, program.clone()],
    };
    let program_arg = program.display().to_string();
    let (_gateway, local) = gateway(dir.path(), &serve, &gw, &["--deploy-agent", &program_arg]);
    let access = serde_json::json!({"docker": {"endpoint": "unix:///var/run/docker.sock"}});
    flash_skip_and_upgrade(
        &serve,
        dir.path(),
        &gw,
        &agent,
        &local,
        &access,
        &port,
        (&agent_bin, &program),
        |build| {
            let c = agent_containers(&agent);
            c.len() == 1 && c[0].1 == build
        },
    )
    .await;

    // No device left: the container goes.
    let bare = model(dir.path(), "bare.json", &gw, &access, &port, None);
    apply_converged(&serve, dir.path(), &gw, &bare);
    eventually(
        "the agent's container removed",
        within(Duration::from_secs(60)),
        || agent_containers(&agent).is_empty().then_some(()),
    )
    .await;
}

/// A real sshd on loopback, accepting one key for the current user.
struct Sshd {
    _process: Guard,
    port: u16,
    config: PathBuf,
}

fn sshd(dir: &Path) -> Option<Sshd> {
    let daemon = Path::new("/usr/sbin/sshd");
    if !daemon.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/usr/sbin/sshd is missing (scripts/setup.sh installs openssh-server)"
        );
        eprintln!("skipped: no /usr/sbin/sshd");
        return None;
    }
    let keygen = |name: &str| {
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(name))
            .status()
            .unwrap();
        assert!(status.success());
    };
    keygen("host_key");
    keygen("client_key");
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    let port: u16 = free_port().rsplit(':').next().unwrap().parse().unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("ssh_config"),
        format!(
            "Host *\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let process = Command::new(daemon)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let process = Guard(process);
    common::wait_for_port(&format!("127.0.0.1:{port}"));
    Some(Sshd {
        _process: process,
        port,
        config: dir.join("ssh_config"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_copied_over_ssh_flashes_is_upgraded_and_stopped() {
    let (Some(sim), Some(built)) = (sim_board(), static_agent()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _reap = Reap(dir.path().display().to_string());
    let Some(sshd) = sshd(dir.path()) else { return };
    let port = dir.path().join("uno");
    let _uno = SimBoard::start(&sim, &port, &[]).expect("starts the simulated board");
    let (serve, _) = orchestrator(dir.path());
    let gw = unique("ssh");
    let agent = format!("{gw}.edge");
    // The static agent, as a remote Linux host is given (the debug build is
    // over 100 MB: copying it over SSH took most of the test's time); the
    // "remote" host is this machine.
    let program = dir.path().join("continuum-agent");
    install_agent(&built, &program, b"");
    let remote = dir.path().join("remote");
    let flags = [
        "--deploy-agent".to_owned(),
        program.display().to_string(),
        "--ssh-config".to_owned(),
        sshd.config.display().to_string(),
        "--remote-agent-dir".to_owned(),
        remote.display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_gateway, local) = gateway(dir.path(), &serve, &gw, &flags);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let access =
        serde_json::json!({"ssh": {"address": "127.0.0.1", "port": sshd.port, "user": user}});
    let home = remote.join(continuum_deploy_agent::state::key(&agent));
    flash_skip_and_upgrade(
        &serve,
        dir.path(),
        &gw,
        &agent,
        &local,
        &access,
        &port,
        (&built, &program),
        |build| std::fs::read_to_string(home.join("build")).is_ok_and(|b| b.trim() == build),
    )
    .await;
    assert!(
        home.join("state/devices").is_dir(),
        "the agent keeps its records on its machine"
    );

    // No device left: the agent is stopped (its records stay).
    let pid = std::fs::read_to_string(home.join("pid")).unwrap();
    let bare = model(dir.path(), "bare.json", &gw, &access, &port, None);
    apply_converged(&serve, dir.path(), &gw, &bare);
    eventually(
        "the remote agent stopped",
        within(Duration::from_secs(60)),
        || {
            let gone = !Path::new(&format!("/proc/{}", pid.trim())).exists();
            (gone && !home.join("pid").exists()).then_some(())
        },
    )
    .await;
}
