//! `continuum up`: the whole system on one machine, on embedded defaults. It
//! starts the orchestrator (with its global bus), one gateway agent per
//! subsystem of the model (each with its own data directory and local
//! broker), a simulated sensor publishing on one subsystem's local broker,
//! applies the model, and shows the rollout and the traffic on the global bus
//! until Ctrl-C, when it stops everything it started and removes its
//! containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use continuum_bus::BrokerUrl;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::style::Style;
use crate::Format;

/// What runs the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// Docker containers.
    Docker,
    /// Child processes of the gateway agents.
    Process,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The megamodel to run.
    #[arg(long, short = 'f', default_value = "examples/smart-building/up.json")]
    pub model: PathBuf,
    /// Where the orchestrator and the gateways keep their data. Default: a
    /// temporary directory, removed at exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The orchestrator's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// The first MQTT port: the global bus takes it (3.1.1) and the next (5),
    /// each gateway's local broker the two after. 0: ports the system picks.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// What runs the workloads. Default: Docker when its engine answers,
    /// else processes.
    #[arg(long, value_enum)]
    pub driver: Option<Driver>,
    /// The static function host function images are built with. Default:
    /// beside this program, else on PATH.
    #[arg(long, env = "CONTINUUM_FUNCTION_HOST", value_name = "PATH")]
    pub function_host: Option<PathBuf>,
    /// The simulated sensor: the subsystem whose local broker it publishes
    /// on, and the topic.
    #[arg(
        long,
        default_value = "sensors:/presence/presenceIndicators",
        value_name = "SUBSYSTEM:TOPIC"
    )]
    pub sensor: String,
    /// Time between two readings of the simulated sensor.
    #[arg(long, default_value = "1s", value_parser = continuum_bus::args::duration, value_name = "DURATION")]
    pub sensor_interval: Duration,
    /// The simulated Arduino Uno (scripts/build-sim-board.sh builds it): a
    /// device of the model that needs a deploy agent is one of these, on a
    /// pseudo-terminal, and the simulated sensor is not needed. Default:
    /// `continuum-sim-uno` beside this program, else on PATH.
    #[arg(long, env = "CONTINUUM_SIM_BOARD", value_name = "PATH")]
    pub board: Option<PathBuf>,
    /// The workload policy the orchestrator and every gateway enforce.
    /// Default: `policy.json` beside the model, if there is one (else
    /// containers reach nothing of the host).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// The policy file `up` runs with: the one given, else the model's own.
/// Absolute: the gateways run in directories of their own.
fn policy_file(args: &Args) -> Option<PathBuf> {
    let file = args.policy.clone().or_else(|| {
        let beside = args.model.parent()?.join("policy.json");
        beside.is_file().then_some(beside)
    })?;
    Some(std::path::absolute(&file).unwrap_or(file))
}

/// The program `name` beside this one, else on PATH.
fn beside_or_on_path(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

/// The brokers' ports: the next of `base`, or, with `base` 0, ones the
/// system picks. A port the system picked is free only until a broker binds
/// it, and the system may pick it again meanwhile (the agents start one by
/// one): every port handed out is remembered, and never handed out twice.
struct Ports {
    base: u16,
    given: std::collections::HashSet<u16>,
}

impl Ports {
    fn new(base: u16) -> Ports {
        Ports {
            base,
            given: std::collections::HashSet::new(),
        }
    }

    fn port(&mut self, offset: u16) -> anyhow::Result<u16> {
        if self.base != 0 {
            return self
                .base
                .checked_add(offset)
                .context("--mqtt-port leaves no room for every broker");
        }
        for _ in 0..100 {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            let p = l.local_addr()?.port();
            if self.given.insert(p) {
                return Ok(p);
            }
        }
        anyhow::bail!("the system keeps giving the same ports; give --mqtt-port")
    }
}

/// A started gateway agent.
struct Agent {
    id: String,
    subsystem: String,
    child: Child,
    log: PathBuf,
    /// Its local broker (MQTT 5).
    broker: BrokerUrl,
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes the containers of `subsystems`; how many went.
fn remove_containers(subsystems: &[String]) -> usize {
    let mut removed = 0;
    for s in subsystems {
        let Ok(o) = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=continuum.subsystem={s}"))
            .output()
        else {
            continue;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty()
            && Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            removed += ids.len();
        }
    }
    removed
}

/// Stops an agent: SIGTERM, then SIGKILL after a grace period.
fn stop(agent: &mut Agent) {
    if let Ok(pid) = i32::try_from(agent.child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if matches!(agent.child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.child.kill();
    let _ = agent.child.wait();
}

pub fn run(args: Args, style: &Style) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let mm = continuum_models::load_megamodel(&args.model.display().to_string(), &text)
        .map_err(|invalid| anyhow::anyhow!("{invalid}"))?;
    // One agent per subsystem: its gateway component.
    let gateways: Vec<(String, String)> = mm
        .subsystems
        .iter()
        .filter_map(|s| {
            let id = s.id.clone()?;
            let gw = s
                .components
                .iter()
                .find(|c| c.kind() == continuum_models::Kind::Gateway)?;
            Some((id, gw.id.clone()))
        })
        .collect();
    // Devices flashed through a deploy agent: simulated boards.
    let devices: Vec<String> = mm
        .subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .filter(
            |c| matches!(&c.spec, continuum_models::ComponentSpec::Device(d) if d.need_deployer),
        )
        .map(|c| c.id.clone())
        .collect();
    let board_program = if devices.is_empty() {
        None
    } else {
        Some(
            args.board
                .clone()
                .or_else(|| beside_or_on_path(continuum_deploy_agent::sim::PROGRAM))
                .context(
                    "the model flashes an Arduino: build the simulated one with scripts/build-sim-board.sh and give it with --board",
                )?,
        )
    };
    let (sensor_subsystem, sensor_topic) = args
        .sensor
        .split_once(':')
        .context("--sensor is SUBSYSTEM:TOPIC")?;
    let temp;
    let data = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("continuum-up-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let driver = match args.driver {
        Some(d) => d,
        None if docker_answers() => Driver::Docker,
        None => {
            println!(
                "{}",
                style.yellow(
                    "no Docker engine answers: workloads run as processes (--driver process)"
                )
            );
            Driver::Process
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // Ctrl-C (or SIGTERM) from now on stops what was started so far.
    let (mut int, mut term) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;

    // The orchestrator and its global bus.
    let mut ports = Ports::new(args.mqtt_port);
    let (global_v4, global_v5) = (ports.port(0)?, ports.port(1)?);
    let mut config = continuum_orchestrator::Config::new(args.listen, data.join("orchestrator"));
    config.bus = Some(continuum_bus::BrokerConfig::new(
        Some(SocketAddr::from(([127, 0, 0, 1], global_v4))),
        Some(SocketAddr::from(([127, 0, 0, 1], global_v5))),
    ));
    let policy = policy_file(&args);
    if let Some(path) = &policy {
        config.policy = continuum_models::policy::Policy::load(path).map_err(anyhow::Error::msg)?;
    }
    let running = runtime
        .block_on(continuum_orchestrator::start(config))
        .context("the orchestrator")?;
    let server = running.local_addr().to_string();
    let global: BrokerUrl = format!("mqtt://127.0.0.1:{global_v5}").parse()?;
    println!(
        "{} orchestrator on {server} (dashboard: http://{server}/), global bus on 127.0.0.1:{global_v4} (MQTT 3.1.1) and :{global_v5} (MQTT 5); data in {}",
        style.bold("up:"),
        data.display()
    );

    // The simulated boards, each on its pseudo-terminal.
    let mut boards = Vec::new();
    let mut device_ports = Vec::new();
    if let Some(program) = &board_program {
        for d in &devices {
            let link = data.join(d);
            let flash = link.with_extension("flash");
            let flash = flash.to_string_lossy();
            boards.push(
                continuum_deploy_agent::sim::SimBoard::start(program, &link, &["--flash", &flash])
                    .with_context(|| format!("the simulated board {}", program.display()))?,
            );
            println!(
                "{} a simulated Arduino Uno for device `{d}` on {} (the firmware the model names is flashed onto it)",
                style.bold("up:"),
                link.display()
            );
            device_ports.push(format!("{d}={}", link.display()));
        }
    }

    // One gateway agent per subsystem, each a process with its own data.
    let exe = std::env::current_exe()?;
    let mut agents: Vec<Agent> = Vec::new();
    let mut offset = 2;
    let started = (|| -> anyhow::Result<()> {
        for (subsystem, id) in &gateways {
            let (v4, v5) = (ports.port(offset)?, ports.port(offset + 1)?);
            offset += 2;
            let dir = data.join(format!("gateway-{id}"));
            std::fs::create_dir_all(&dir)?;
            let log = data.join(format!("gateway-{id}.log"));
            let mut cmd = Command::new(&exe);
            cmd.args(["gateway", "--id", id, "--orchestrator", &server])
                .arg("--data-dir")
                .arg(&dir)
                .args(
                    policy
                        .iter()
                        .flat_map(|p| [std::ffi::OsStr::new("--policy"), p.as_os_str()]),
                )
                .args(["--mqtt-listen", &format!("127.0.0.1:{v4}")])
                .args(["--mqtt5-listen", &format!("127.0.0.1:{v5}")])
                .args(["--interval", "2s", "--max-backoff", "2s"])
                .args([
                    "--driver",
                    match driver {
                        Driver::Docker => "docker",
                        Driver::Process => "process",
                    },
                ])
                .current_dir(&dir)
                .env("CONTINUUM_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            if let Some(h) = &args.function_host {
                cmd.arg("--function-host").arg(h);
            }
            for p in &device_ports {
                cmd.args(["--device-port", p]);
            }
            let child = cmd.spawn().context("cannot start a gateway agent")?;
            println!(
                "{} gateway agent `{id}` for subsystem `{subsystem}`, local broker on 127.0.0.1:{v4} and :{v5} (log: {})",
                style.bold("up:"),
                log.display()
            );
            agents.push(Agent {
                id: id.clone(),
                subsystem: subsystem.clone(),
                child,
                log,
                broker: format!("mqtt://127.0.0.1:{v5}").parse()?,
            });
        }
        Ok(())
    })();

    let subsystems: Vec<String> = gateways.iter().map(|(s, _)| s.clone()).collect();
    let result = started.map(|()| {
        // Everything on the global bus, as it crosses.
        let traffic_style = *style;
        runtime.spawn(show_traffic(global.clone(), traffic_style));
        // The simulated sensor.
        let sensor = agents
            .iter()
            .find(|a| a.subsystem == sensor_subsystem)
            .map(|a| a.broker.clone());
        match sensor {
            _ if !boards.is_empty() => {}
            Some(url) => {
                println!(
                    "{} a simulated presence sensor publishes on `{sensor_topic}` of `{sensor_subsystem}`'s local broker every {}",
                    style.bold("up:"),
                    humantime::format_duration(args.sensor_interval)
                );
                runtime.spawn(simulate_sensor(url, sensor_topic.to_owned(), args.sensor_interval));
            }
            None => println!(
                "{}",
                style.yellow(&format!("no subsystem `{sensor_subsystem}`: no simulated sensor"))
            ),
        }
        // The rollout, then the live view until Ctrl-C.
        let watch_server = crate::remote::Server::plain(&server);
        let watch_style = *style;
        std::thread::spawn(move || {
            let _ = super::watch::run(&watch_server, 0, None, Format::Human, &watch_style);
        });
        // The rollout in a thread of its own: Ctrl-C is heeded meanwhile.
        let (apply_server, model, apply_style) = (
            crate::remote::Server::plain(&server),
            args.model.clone(),
            *style,
        );
        std::thread::spawn(move || {
            let style = apply_style;
            let applied = super::apply::apply(
                &apply_server,
                &model,
                super::apply::Change {
                    message: "continuum up".to_owned(),
                    ..Default::default()
                },
                Some(Duration::from_secs(300)),
                Format::Human,
                &style,
            );
            match applied {
                Ok(code) if code == ExitCode::SUCCESS => {
                    println!("{} running; Ctrl-C stops everything", style.bold("up:"));
                }
                Ok(_) => println!(
                    "{}",
                    style.red("the rollout did not converge; the events above and the gateways' logs say why")
                ),
                Err(e) => println!("{} {e:#}", style.red("apply failed:")),
            }
        });
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
    });

    println!("{} stopping", style.bold("up:"));
    for a in &mut agents {
        stop(a);
        if !matches!(a.child.try_wait(), Ok(Some(_))) {
            println!("gateway `{}` did not stop; see {}", a.id, a.log.display());
        }
    }
    let removed = if driver == Driver::Docker {
        remove_containers(&subsystems)
    } else {
        0
    };
    drop(boards);
    let _ = runtime.block_on(running.stop());
    runtime.shutdown_timeout(Duration::from_secs(2));
    println!(
        "{} stopped the orchestrator and {} gateway agent(s), removed {removed} container(s)",
        style.bold("up:"),
        agents.len()
    );
    result.map(|()| ExitCode::SUCCESS)
}

/// Prints every message on the global bus but Continuum's own.
async fn show_traffic(global: BrokerUrl, style: Style) {
    let mut o = MqttOptions::new(
        format!("continuum-up-{}", std::process::id()),
        &global.host,
        global.port,
    );
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(o, 64);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.subscribe("#", QoS::AtMostOnce).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic);
                if topic.starts_with("continuum/") {
                    continue;
                }
                println!(
                    "{} {} {}",
                    style.dim("bus"),
                    style.bold(&topic),
                    String::from_utf8_lossy(&p.payload).trim()
                );
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Publishes a presence indicator every `interval`, as the Arduino sensor
/// flow would: `{"pir":0|1,"door":0|1,"ts":N}`.
async fn simulate_sensor(local: BrokerUrl, topic: String, interval: Duration) {
    let mut o = MqttOptions::new(
        format!("continuum-up-sensor-{}", std::process::id()),
        &local.host,
        local.port,
    );
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(o, 64);
    tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut ticker = tokio::time::interval(interval);
    for ts in 0u64.. {
        ticker.tick().await;
        // Someone walks in now and then; the door opens less often.
        let pir = u8::from(ts % 5 < 2);
        let door = u8::from(ts % 7 == 0);
        let reading = format!(r#"{{"pir":{pir},"door":{door},"ts":{ts}}}"#);
        let _ = client
            .publish(topic.clone(), QoS::AtLeastOnce, false, reading)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::Ports;

    #[test]
    fn no_port_is_handed_out_twice() {
        let mut ports = Ports::new(0);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            assert!(
                seen.insert(ports.port(i).unwrap()),
                "a port handed out twice"
            );
        }
        let mut fixed = Ports::new(1883);
        assert_eq!(
            (fixed.port(0).unwrap(), fixed.port(3).unwrap()),
            (1883, 1886)
        );
        assert!(Ports::new(u16::MAX).port(1).is_err());
    }
}
