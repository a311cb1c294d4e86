//! A fleet of simulated gateways against one orchestrator, each in its own
//! process: `continuum serve`, and `continuum gateway sim --count N` (whole
//! gateway agents on a simulated engine whose steps take 10–50 ms). For each
//! N, a megamodel of N subsystems of 10 components (the gateway, eight
//! services and a function) is applied; measured:
//!
//! * the fleet's cold start: from starting it until all N have registered and
//!   converged on the revision applied before (the orchestrator admits a
//!   gateway once a revision names it);
//! * one change of the function on every gateway (a new image), all at once:
//!   apply → every gateway observes the target generation, and → every
//!   subsystem converged (the orchestrator's own `Status`, polled every 50 ms);
//! * the same change again as a staged rollout in waves of 10% (each wave
//!   started once the one before converged): apply → every subsystem converged;
//! * the orchestrator's CPU time over the run and its peak resident memory
//!   (VmHWM), and the fleet process's resident memory per simulated gateway.
//!
//! No peer runs in the same harness, so the figures are absolute; the issue's
//! targets are 1,000 gateways converged in under 2 s, 5,000 in under 10 s and
//! the orchestrator under 500 MB at 5,000.
//!
//! `cargo bench --bench fleet`: N = 100, 1,000 and 5,000 (`FLEET_SIZES`, a
//! comma-separated list, changes them). Under `cargo test --benches`: N = 20.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/report.rs"]
mod report;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Guard, Serve};
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{
    ApplyRequest, Document, GetRolloutRequest, RolloutPolicy, RolloutState, StatusRequest,
    StatusResponse,
};
use report::{pick, Report};
use tonic::transport::Channel;

/// How long the fleet may take for each stage, at the largest size.
const PATIENCE: Duration = Duration::from_secs(300);
/// How often the bench asks for the status: each answer is built under the
/// orchestrator's lock from every subsystem, so asking more often slows what
/// is measured (at 5,000 gateways, every 50 ms was a sixth of its time in a
/// profile); the figures are this coarse.
const POLL: Duration = Duration::from_millis(200);

/// N subsystems of 10 components: the gateway, eight services, a function.
fn megamodel(n: usize, version: u32) -> String {
    continuum_models::generate::fleet_megamodel(n, 8, version)
}

fn apply(text: String) -> ApplyRequest {
    ApplyRequest {
        megamodel: Some(Document {
            name: "fleet.json".into(),
            json: text.into_bytes(),
        }),
        ..ApplyRequest::default()
    }
}

/// Polls `Status` until `done` holds, returning the time it took from `t0`.
async fn until(
    client: &mut ModelServiceClient<Channel>,
    what: &str,
    t0: Instant,
    mut done: impl FnMut(&StatusResponse) -> bool,
) -> Duration {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Brief: a full status of thousands of subsystems costs the
        // orchestrator more than what is measured.
        if let Ok(s) = client.status(StatusRequest { brief: true }).await {
            if done(&s.into_inner()) {
                return t0.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// A line of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The CPU time (user + system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces), from the state on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line (11 and 12 here).
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn client(addr: &str) -> ModelServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ModelServiceClient::new(channel).max_decoding_message_size(256 << 20)
}

async fn fleet(n: usize, dir: &Path, report: &mut Report) {
    let serve = Serve::start(&dir.join("orchestrator"));
    let pid = serve.child.id();
    let cpu_before = cpu_seconds(pid);
    let mut client = client(&serve.addr).await;
    // The orchestrator admits a gateway once a revision names it: the first
    // revision is there before the fleet starts.
    let r = client
        .apply(apply(megamodel(n, 1)))
        .await
        .unwrap()
        .into_inner();
    let generation = r.revision.unwrap().number;
    let log = std::fs::File::create(dir.join("fleet.log")).unwrap();
    let started = Instant::now();
    let sim = Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["gateway", "sim", "--count", &n.to_string()])
            .args(["--orchestrator", &serve.addr])
            .arg("--data-dir")
            .arg(dir.join("fleet"))
            .args(["--step-time", "10ms..50ms", "--interval", "60s"])
            .args(["--max-backoff", "2s", "--summary-every", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts continuum gateway sim"),
    );
    let cold = until(&mut client, "the fleet's first rollout", started, |s| {
        s.subsystems.len() == n
            && s.subsystems
                .iter()
                .all(|s| s.converged && s.target_generation == generation)
    })
    .await;
    report.add(
        &format!("{n} gateways × 10 components: fleet started → all registered and converged"),
        "time",
        cold.as_secs_f64() * 1000.0,
        "ms",
        1,
    );

    // One change on every gateway (its function's image), all at once.
    let (observed, converged) = change(&mut client, n, 2, None).await;
    report.add(
        &format!("{n} gateways: function changed on every gateway, apply → all observe the target"),
        "time",
        observed.as_secs_f64() * 1000.0,
        "ms",
        1,
    );
    report.add(
        &format!(
            "{n} gateways: function changed on every gateway, apply → all converged (all at once)"
        ),
        "time",
        converged.as_secs_f64() * 1000.0,
        "ms",
        1,
    );
    // The same change in waves of 10%, each once the one before converged.
    let waves = RolloutPolicy {
        wave_percent: 10,
        ..RolloutPolicy::default()
    };
    let (_, staged) = change(&mut client, n, 3, Some(waves)).await;
    let rollout = client
        .get_rollout(GetRolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.state(), RolloutState::Completed, "{rollout:?}");
    report.add(
        &format!(
            "{n} gateways: function changed on every gateway, apply → all converged (waves of 10%: {})",
            rollout.waves.len()
        ),
        "time",
        staged.as_secs_f64() * 1000.0,
        "ms",
        1,
    );

    let cpu = cpu_seconds(pid) - cpu_before;
    report.add(
        &format!("{n} gateways: orchestrator CPU time, whole run"),
        "cpu",
        cpu * 1000.0,
        "ms",
        1,
    );
    report.add(
        &format!("{n} gateways: orchestrator peak resident memory"),
        "VmHWM",
        status_kib(pid, "VmHWM:") / 1024.0,
        "MiB",
        1,
    );
    report.add(
        &format!("{n} gateways: fleet process resident memory per simulated gateway"),
        "VmRSS / N",
        status_kib(sim.0.id(), "VmRSS:") / n as f64,
        "KiB",
        1,
    );
    drop(sim);
    drop(serve);
}

/// Applies the fleet at `version` (rolled out as `rollout` says) and waits
/// until every subsystem converged on it: how long until every gateway
/// observed the target generation, and until every subsystem converged.
async fn change(
    client: &mut ModelServiceClient<Channel>,
    n: usize,
    version: u32,
    rollout: Option<RolloutPolicy>,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut request = apply(megamodel(n, version));
    request.rollout = rollout;
    let r = client.apply(request).await.unwrap().into_inner();
    let generation = r.revision.unwrap().number;
    let mut observed = None;
    let converged = until(client, "the function change", t0, |s| {
        let on_target = |s: &continuum_proto::v1::SubsystemStatus| {
            s.target_generation == generation
                && s.gateway
                    .as_ref()
                    .is_some_and(|g| g.observed_generation == generation)
        };
        if observed.is_none() && s.subsystems.len() == n && s.subsystems.iter().all(on_target) {
            observed = Some(t0.elapsed());
        }
        s.subsystems.len() == n
            && s.subsystems
                .iter()
                .all(|s| s.converged && s.target_generation == generation)
    })
    .await;
    (observed.unwrap_or(converged), converged)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| pick(vec![100, 1_000, 5_000], vec![20]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::new("fleet");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(fleet(n, dir.path(), &mut report));
    }
}
