//! Orchestrator benchmarks, printed as figures (run with
//! `cargo bench -p continuum-orchestrator --bench fanout`):
//!
//! 1. **Fan-out**: one apply that changes every subsystem → the new target
//!    received by each of 100 simulated gateways on loopback (p50/p99 over all
//!    gateways and rounds), by all of them, and all of them converged (each
//!    acknowledged and reported the target as running). Baseline in the same
//!    run: a bare `GatewayLink` server that pushes the same bytes to the same
//!    number of streams with no validation, no store and no bookkeeping — the
//!    transport's floor.
//! 2. **Apply throughput** of a 1,000-component megamodel (each apply a new
//!    revision), against parsing + validating + partitioning the same text
//!    in-process (what an apply must do before anything else).
//!
//! Convergence is also measured with commits that do not wait for the disk
//! (`Config::fsync` off), in the same run: what durability costs.
//!
//! Under `cargo test --benches` it runs a few rounds with 10 gateways (smoke).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use continuum_orchestrator::sim::{register, SimGateway};
use continuum_orchestrator::{start, Config};
use continuum_proto::v1::gateway_link_client::GatewayLinkClient;
use continuum_proto::v1::gateway_link_server::{GatewayLink, GatewayLinkServer};
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{
    gateway_message, orchestrator_message, ApplyRequest, Document, GatewayMessage,
    OrchestratorMessage, StatusRequest, Target,
};
use tokio::sync::{broadcast, mpsc, Barrier};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

const WARMUP: usize = 3;

/// A megamodel of `subsystems` subsystems, each a gateway hosting `services`
/// services; `round` changes every service's environment.
fn megamodel(subsystems: usize, services: usize, round: usize) -> String {
    let subs: Vec<serde_json::Value> = (0..subsystems)
        .map(|s| {
            let mut components =
                vec![serde_json::json!({"id": format!("gw-{s}"), "kind": "gateway"})];
            let mut links = Vec::new();
            for i in 0..services {
                let id = format!("svc-{s}-{i}");
                components.push(serde_json::json!({
                    "id": id, "kind": "service",
                    "resources": {"container": {
                        "image": "continuum/bench:1",
                        "env": {"ROUND": round.to_string(), "INDEX": i.to_string()},
                        "ports": [{"container": 8000, "host": 10_000 + i}]
                    }}
                }));
                links.push(
                    serde_json::json!({"kind": "hosting", "component": id, "host": format!("gw-{s}")}),
                );
            }
            serde_json::json!({"id": format!("site-{s}"), "components": components, "links": links})
        })
        .collect();
    serde_json::json!({"name": "bench", "subsystems": subs}).to_string()
}

fn request(text: String) -> ApplyRequest {
    ApplyRequest {
        megamodel: Some(Document {
            name: "bench.json".into(),
            json: text.into_bytes(),
        }),
        ..ApplyRequest::default()
    }
}

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

struct Figures {
    each: Vec<Duration>,
    all: Vec<Duration>,
    converged: Vec<Duration>,
    /// Link attempts refused while all gateways connected at once.
    refused: usize,
    /// Durable commits, and the transitions they committed, over the run.
    commits: f64,
    transitions: f64,
}

/// The orchestrator's `/metrics` text (plain HTTP/1.1 on its port).
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn fan_out_orchestrator(gateways: usize, rounds: usize, fsync: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.heartbeat_interval = Duration::from_secs(30);
    config.fsync = fsync;
    let running = start(config).await.unwrap();
    let endpoint = format!("http://{}", running.local_addr());
    let mut client = ModelServiceClient::new(channel(&endpoint).await);
    client
        .apply(request(megamodel(gateways, 2, 0)))
        .await
        .unwrap();

    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(u64, Instant)>();
    let ready = Arc::new(Barrier::new(gateways + 1));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for g in 0..gateways {
        let endpoint = endpoint.clone();
        let arrivals_tx = arrivals_tx.clone();
        let ready = Arc::clone(&ready);
        let refused = Arc::clone(&refused);
        tokio::spawn(async move {
            // As a gateway does: a refused link is tried again, a little later.
            let mut pause = Duration::from_millis(50);
            let mut gw = loop {
                match SimGateway::connect(&endpoint, register(&format!("gw-{g}"))).await {
                    Ok(gw) => break gw,
                    Err(e) => {
                        let n = refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        assert!(n < 10 * gateways, "gateways keep being refused: {e}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let first = gw.target(Duration::from_secs(30)).await.unwrap();
            gw.converge(&first).await.unwrap();
            ready.wait().await;
            loop {
                match gw.next().await {
                    Ok(Some(orchestrator_message::Kind::Target(t))) => {
                        let _ = arrivals_tx.send((t.generation, Instant::now()));
                        gw.converge(&t).await.unwrap();
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
        });
    }
    ready.wait().await;
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    let mut figures = Figures {
        refused,
        each: Vec::new(),
        all: Vec::new(),
        converged: Vec::new(),
        commits: 0.0,
        transitions: 0.0,
    };
    let addr = running.local_addr();
    let counted = || async move {
        let text = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        (
            sample(&text, "continuum_store_commits_total{outcome=\"ok\"}"),
            sample(&text, "continuum_store_commit_transitions_sum"),
        )
    };
    let (mut commits_before, mut transitions_before) = (0.0, 0.0);
    for round in 1..=WARMUP + rounds {
        let text = megamodel(gateways, 2, round);
        let t0 = Instant::now();
        let r = client.apply(request(text)).await.unwrap().into_inner();
        let generation = r.revision.unwrap().number;
        let mut last = t0;
        let mut each = Vec::with_capacity(gateways);
        while each.len() < gateways {
            let (g, at) = arrivals.recv().await.unwrap();
            assert_eq!(g, generation);
            each.push(at - t0);
            last = last.max(at);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = client
                .status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            if s.subsystems
                .iter()
                .all(|s| s.converged && s.target_generation == generation)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the orchestrator never showed every subsystem converged on generation {generation}"
            );
            // Polled gently: a tight loop of status reads would compete with
            // the commits it waits for.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if round == WARMUP {
            (commits_before, transitions_before) = counted().await;
        }
        if round > WARMUP {
            figures.each.extend(each);
            figures.all.push(last - t0);
            figures.converged.push(t0.elapsed());
        }
    }
    let (commits, transitions) = counted().await;
    figures.commits = commits - commits_before;
    figures.transitions = transitions - transitions_before;
    running.stop().await.unwrap();
    figures
}

/// The transport floor: a `GatewayLink` server that only forwards a trigger's
/// bytes to every open stream.
#[derive(Clone)]
struct Floor {
    targets: broadcast::Sender<Target>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<OrchestratorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl GatewayLink for Floor {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let mut targets = self.targets.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        tokio::spawn(async move {
            while let Ok(t) = targets.recv().await {
                let m = OrchestratorMessage {
                    kind: Some(orchestrator_message::Kind::Target(t)),
                };
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn fan_out_floor(gateways: usize, rounds: usize) -> Vec<Duration> {
    let (targets, _) = broadcast::channel(16);
    let floor = Floor {
        targets: targets.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayLinkServer::new(floor))
            .serve_with_incoming(continuum_proto::serving::incoming(listener)),
    );
    let endpoint = format!("http://{addr}");
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Instant>();
    let ready = Arc::new(Barrier::new(gateways + 1));
    for _ in 0..gateways {
        let endpoint = endpoint.clone();
        let arrivals_tx = arrivals_tx.clone();
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            let mut client = GatewayLinkClient::new(channel(&endpoint).await);
            let (tx, rx) = mpsc::channel(4);
            tx.send(GatewayMessage {
                kind: Some(gateway_message::Kind::Heartbeat(Default::default())),
            })
            .await
            .unwrap();
            let mut inbound = client
                .session(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            ready.wait().await;
            while let Ok(Some(_)) = inbound.message().await {
                let _ = arrivals_tx.send(Instant::now());
            }
            drop(tx);
        });
    }
    ready.wait().await;
    // The same bytes a gateway receives from the orchestrator: one subsystem's model.
    let mm: serde_json::Value = serde_json::from_str(&megamodel(1, 2, 1)).unwrap();
    let model = serde_json::to_vec(&mm["subsystems"][0]).unwrap();
    let mut each = Vec::new();
    for round in 1..=WARMUP + rounds {
        let t0 = Instant::now();
        targets
            .send(Target {
                subsystem: "site-0".into(),
                generation: round as u64,
                model: Some(Document {
                    name: "site-0".into(),
                    json: model.clone(),
                }),
            })
            .unwrap();
        for _ in 0..gateways {
            let at = arrivals.recv().await.unwrap();
            if round > WARMUP {
                each.push(at - t0);
            }
        }
    }
    each
}

async fn apply_throughput(report: &mut Report) {
    const SUBSYSTEMS: usize = 10;
    const PER: usize = 99; // + 1 gateway = 100 components per subsystem
    let applies = pick(40, 3);
    let dir = tempfile::tempdir().unwrap();
    let running = start(Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
    ))
    .await
    .unwrap();
    let endpoint = format!("http://{}", running.local_addr());
    let mut client = ModelServiceClient::new(channel(&endpoint).await);
    let texts: Vec<String> = (0..=applies)
        .map(|r| megamodel(SUBSYSTEMS, PER, r))
        .collect();
    let bytes = texts[0].len();
    client.apply(request(texts[0].clone())).await.unwrap();
    let t0 = Instant::now();
    for text in &texts[1..] {
        client.apply(request(text.clone())).await.unwrap();
    }
    let served = t0.elapsed() / applies as u32;
    running.stop().await.unwrap();

    let t0 = Instant::now();
    for text in &texts[1..] {
        let prepared = continuum_models::load::load_prepared("bench.json", text, |_| {
            Err("no templates".to_owned())
        })
        .unwrap();
        std::hint::black_box(prepared);
    }
    let local = t0.elapsed() / applies as u32;
    let what = format!(
        "{}-component megamodel ({} KiB)",
        SUBSYSTEMS * (PER + 1),
        bytes / 1024
    );
    let base = format!("parse + validate + partition in-process, {what}");
    report.add(&base, "mean", report::ms(local), "ms", applies);
    report.vs(
        &format!("Apply over gRPC stored as a revision, {what}"),
        "mean",
        report::ms(served),
        "ms",
        applies,
        &base,
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut report = Report::new("orchestrator");
        let (gateways, rounds) = (pick(100, 10), pick(30, 3));
        let floor = Summary::of(&fan_out_floor(gateways, rounds).await);
        let base = format!("{gateways} gateways: bare push to each (transport floor)");
        report.latency(&base, &floor, None);
        let unsynced = fan_out_orchestrator(gateways, rounds, false).await;
        let f = fan_out_orchestrator(gateways, rounds, true).await;
        report.latency(
            &format!("{gateways} gateways: apply -> target at each"),
            &Summary::of(&f.each),
            Some(&base),
        );
        report.latency(
            &format!("{gateways} gateways: apply -> target at all"),
            &Summary::of(&f.all),
            None,
        );
        let nosync = format!("{gateways} gateways: apply -> all converged, commits not synced");
        report.latency(&nosync, &Summary::of(&unsynced.converged), None);
        report.latency(
            &format!("{gateways} gateways: apply -> all converged"),
            &Summary::of(&f.converged),
            Some(&nosync),
        );
        let case = format!("{gateways} gateways: durable commits per rollout (group commit)");
        report.add(
            &case,
            "commits",
            f.commits / rounds as f64,
            "commits",
            rounds,
        );
        report.add(
            &case,
            "transitions per commit",
            f.transitions / f.commits.max(1.0),
            "transitions",
            rounds,
        );
        let (many, many_rounds) = (pick(1_000, 20), pick(3, 1));
        let f = fan_out_orchestrator(many, many_rounds, true).await;
        report.add(
            &format!("{many} gateways connecting at once"),
            "links refused, then retried",
            f.refused as f64,
            "attempts",
            1,
        );
        report.latency(
            &format!("{many} gateways: apply -> target at all"),
            &Summary::of(&f.all),
            None,
        );
        report.latency(
            &format!("{many} gateways: apply -> all converged"),
            &Summary::of(&f.converged),
            None,
        );
        apply_throughput(&mut report).await;
    });
}
