//! Gateway agent benchmarks on the real Docker engine, printed as figures (run
//! with `cargo bench -p continuum-gateway --bench gateway`):
//!
//! 1. **Change → running**, 50 successive updates of one container (its
//!    environment changes, so it is replaced; the image is cached):
//!    * baseline: the same stop, remove, create and start done directly through
//!      the Docker API, with the same client, in the same run;
//!    * one reconcile pass of the engine (observe, diff, plan, execute, observe);
//!    * the whole path: `Apply` to an orchestrator, pushed over the link to an
//!      agent, until the engine reports the new container running.
//!
//!    Both Continuum paths run with a zero settle window (the agent's default
//!    watches a started container for 500 ms before calling it running).
//! 2. **Memory** of the `continuum-gateway` process: idle after converging, and
//!    after 1,000 reconcile passes (no growth expected).
//!
//! Under `cargo test --benches`: 3 updates and 50 passes (smoke).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuum_gateway::engine::{reconcile, EngineConfig};
use continuum_gateway::exec::{image_source, workload_spec};
use continuum_gateway::runtime::docker::DockerRuntime;
use continuum_gateway::runtime::{ContainerRuntime, RunState};
use continuum_gateway::spec::{spec_hash, LABEL_COMPONENT, LABEL_SPEC_HASH, LABEL_SUBSYSTEM};
use continuum_models::DeploymentModel;
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{ApplyRequest, Document};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

/// Successive updates measured per path.
fn updates() -> usize {
    pick(50, 3)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

fn megamodel(subsystem: &str, gateway: &str, component: &str, value: usize) -> String {
    serde_json::json!({
        "name": "bench",
        "subsystems": [{
            "id": subsystem,
            "components": [
                {"id": gateway, "kind": "gateway"},
                {"id": component, "kind": "service", "resources": {"container": {
                    "build": {"context": "bb"},
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                    "env": {"VALUE": value.to_string()}
                }}}
            ],
            "links": [{"kind": "hosting", "component": component, "host": gateway}]
        }]
    })
    .to_string()
}

fn subsystem_model(text: &str) -> DeploymentModel {
    let mm: continuum_models::Megamodel = serde_json::from_str(text).unwrap();
    mm.subsystems[0].clone().canonical()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Removes the bench's containers and images at the end, whatever happens.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for subsystem in &self.0 {
            let o = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label={LABEL_SUBSYSTEM}={subsystem}"))
                .output();
            if let Ok(o) = o {
                let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .output();
                }
            }
        }
        let o = std::process::Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        if let Ok(o) = o {
            let mine: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&format!("continuum/{}", unique("bench"))))
                .map(str::to_owned)
                .collect();
            if !mine.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&mine)
                    .output();
            }
        }
        // The function host image the agents imported, once nothing is
        // built from it (tests running beside share it).
        let _ = std::process::Command::new("sh")
            .args([
                "-c",
                "docker images -q continuum/function-host | xargs -r docker rmi >/dev/null 2>&1",
            ])
            .output();
    }
}

fn context(dir: &Path) {
    let bb = dir.join("bb");
    std::fs::create_dir_all(&bb).unwrap();
    std::fs::copy("/bin/busybox", bb.join("busybox")).expect("Debian's busybox-static");
    std::fs::write(
        bb.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .unwrap();
}

/// The engine's settings for contexts under `dir`: no bridge, no blobs.
fn engine_config(dir: &Path) -> EngineConfig {
    EngineConfig {
        metrics: Default::default(),
        context_root: dir.to_owned(),
        build_args: Default::default(),
        blobs: None,
        workload_env: Default::default(),
        secrets_dir: Default::default(),
        step_timeout: Duration::from_secs(120),
        settle: Duration::ZERO,
        routing: Arc::new(continuum_gateway::routing::NoBridge),
        deployers: None,
        device_ports: Default::default(),
    }
}

async fn direct(rt: &DockerRuntime, dir: &Path, subsystem: &str, component: &str) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut previous: Option<String> = None;
    let config = engine_config(dir);
    for i in 0..=updates() {
        let model = subsystem_model(&megamodel(subsystem, "gw", component, i));
        let c = model.component(component).unwrap().clone();
        let source = image_source(&c, &config).unwrap();
        rt.ensure_image(&source).await.unwrap();
        let spec = workload_spec(&c, subsystem, i as u64, source.reference()).unwrap();
        let t0 = Instant::now();
        if let Some(id) = previous.take() {
            rt.stop(&id).await.unwrap();
            rt.remove(&id).await.unwrap();
        }
        let id = rt.create(&spec).await.unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.state(&id).await.unwrap(), RunState::Running);
        if i > 0 {
            out.push(t0.elapsed());
        }
        previous = Some(id);
    }
    out
}

async fn engine(
    rt: &Arc<DockerRuntime>,
    dir: &Path,
    subsystem: &str,
    component: &str,
) -> Vec<Duration> {
    let config = Arc::new(engine_config(dir));
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let mut out = Vec::new();
    for i in 0..=updates() {
        let target = subsystem_model(&megamodel(subsystem, "gw", component, i));
        // The image is built (once) outside the measured part.
        let c = target.component(component).unwrap();
        rt.ensure_image(&image_source(c, &config).unwrap())
            .await
            .unwrap();
        let t0 = Instant::now();
        let r = reconcile(rt, &config, subsystem, i as u64, &target, &tx)
            .await
            .unwrap();
        assert!(r.converged(), "{r:?}");
        if i > 0 {
            out.push(t0.elapsed());
        }
    }
    out
}

/// Waits until the component's container runs `hash`.
async fn running(rt: &DockerRuntime, subsystem: &str, component: &str, hash: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ws = rt.list(LABEL_SUBSYSTEM, subsystem).await.unwrap();
        let ok = ws.iter().any(|w| {
            w.labels.get(LABEL_COMPONENT).map(String::as_str) == Some(component)
                && w.labels.get(LABEL_SPEC_HASH).map(String::as_str) == Some(hash)
                && w.state == RunState::Running
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the container never ran the new spec"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn whole_path(
    rt: &Arc<DockerRuntime>,
    dir: &Path,
    subsystem: &str,
    component: &str,
) -> Vec<Duration> {
    let gateway = unique("gwbench");
    let orchestrator = continuum_orchestrator::start(continuum_orchestrator::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("orchestrator"),
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", orchestrator.local_addr());
    let args = continuum_gateway::cli::Args {
        command: None,
        id: Some(gateway.clone()),
        orchestrator: endpoint.clone(),
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
        accept_older_targets: false,
        secrets_dir: None,
        data_dir: dir.join("agent"),
        context_root: Some(dir.to_owned()),
        deploy_agent: None,
        agent_broker: None,
        max_flashes: 4,
        ssh_config: None,
        remote_agent_dir: ".continuum/agents".into(),
        insecure: false,
        policy: None,
        trusted_key: None,
        agent_key: None,
        upgrade_deadline: Duration::from_secs(60),
        device_ports: Vec::new(),
        function_host: None,
        busybox: "/bin/busybox".into(),
        location: String::new(),
        local_api: None,
        broker: continuum_bus::args::BusArgs {
            mqtt_listen: "127.0.0.1:1883".parse().unwrap(),
            mqtt5_listen: "127.0.0.1:1884".parse().unwrap(),
            users: Vec::new(),
            mqtts_listen: None,
            mqtt_tls_cert: None,
            mqtt_tls_key: None,
            mqtt_backlog_mib: 4,
            no_mqtt: true,
        },
        bridge: continuum_gateway::cli::BridgeArgs {
            bus_url: None,
            local_bus_url: None,
            bus_credentials: None,
            bus_ca: None,
            no_bridge: true,
            outbox_capacity: 1_000,
            bridge_max_payload: 1 << 16,
            bus_keepalive: Duration::from_secs(10),
            metrics_listen: None,
        },
        labels: Vec::new(),
        driver: continuum_gateway::agent::Driver::Docker,
        interval: Duration::from_secs(30),
        step_timeout: Duration::from_secs(120),
        settle: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(continuum_gateway::cli::run_until(args, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ModelServiceClient::new(channel);
    let mut out = Vec::new();
    for i in 0..=updates() {
        let text = megamodel(subsystem, &gateway, component, i);
        let hash = spec_hash(subsystem_model(&text).component(component).unwrap());
        let t0 = Instant::now();
        client
            .apply(ApplyRequest {
                megamodel: Some(Document {
                    name: "bench.json".into(),
                    json: text.into_bytes(),
                }),
                ..ApplyRequest::default()
            })
            .await
            .unwrap();
        running(rt, subsystem, component, &hash).await;
        if i > 0 {
            out.push(t0.elapsed());
        }
    }
    shutdown.cancel();
    let _ = agent.await;
    orchestrator.stop().await.unwrap();
    out
}

/// Memory of a `continuum-gateway` process: idle, then after 1,000 passes.
/// VmRSS of the agent after converging, and after more passes: in MiB.
async fn memory(dir: &Path, subsystem: &str, component: &str) -> (f64, f64, usize) {
    let gateway = unique("gwmem");
    let orchestrator = continuum_orchestrator::start(continuum_orchestrator::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("orchestrator-mem"),
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", orchestrator.local_addr());
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ModelServiceClient::new(channel);
    client
        .apply(ApplyRequest {
            megamodel: Some(Document {
                name: "bench.json".into(),
                json: megamodel(subsystem, &gateway, component, 0).into_bytes(),
            }),
            ..ApplyRequest::default()
        })
        .await
        .unwrap();
    let log = dir.join("agent-mem.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_continuum-gateway"))
        .args([
            "--no-mqtt",
            "--no-bridge",
            "--id",
            &gateway,
            "--orchestrator",
            &endpoint,
        ])
        .arg("--data-dir")
        .arg(dir.join("agent-mem"))
        .arg("--context-root")
        .arg(dir)
        .args([
            "--interval",
            "5ms",
            "--log",
            "continuum_gateway::agent=debug",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let passes = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("pass done")
            .count()
    };
    let wait_passes = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while passes() < n {
            assert!(
                Instant::now() < deadline,
                "the agent made {} passes",
                passes()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let more = pick(1_000, 50);
    wait_passes(50);
    let idle = rss_kib(pid);
    wait_passes(50 + more);
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    orchestrator.stop().await.unwrap();
    (idle as f64 / 1024.0, after as f64 / 1024.0, more)
}

fn main() {
    let bench = "gateway";
    let mut report = Report::new(bench);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let docker = DockerRuntime::connect().await;
        let usable = match &docker {
            Ok(d) => d.list("continuum.probe", "1").await.is_ok(),
            Err(_) => false,
        };
        if !report::require("a usable Docker engine", usable, bench) {
            return;
        }
        let docker = Arc::new(docker.expect("checked above"));
        let dir = tempfile::tempdir().unwrap();
        context(dir.path());
        let subs: Vec<String> = ["d", "e", "w", "m"]
            .iter()
            .map(|s| unique(&format!("bench{s}")))
            .collect();
        let _cleanup = Cleanup(subs.clone());
        let component = unique("bench");
        println!(
            "change -> running, {} updates of one container (image cached):",
            updates()
        );
        let d = direct(&docker, dir.path(), &subs[0], &component).await;
        let e = engine(&docker, dir.path(), &subs[1], &component).await;
        let w = whole_path(&docker, dir.path(), &subs[2], &component).await;
        let base = "Docker API: stop, remove, create, start (baseline)";
        report.latency(base, &Summary::of(&d), None);
        report.latency(
            "one engine pass (observe, diff, plan, execute, observe)",
            &Summary::of(&e),
            Some(base),
        );
        report.latency(
            "Apply -> orchestrator -> link -> agent -> running",
            &Summary::of(&w),
            Some(base),
        );
        let (idle, after, more) = memory(dir.path(), &subs[3], &component).await;
        let case = "continuum-gateway VmRSS, one container, a pass every 5 ms";
        report.add(case, "after converging", idle, "MiB", 1);
        report.add(case, &format!("after {more} more passes"), after, "MiB", 1);
        report.add(case, "growth", after - idle, "MiB", 1);
    });
}
