//! A fleet of simulated gateway agents (`continuum gateway sim`) against a real
//! orchestrator on loopback: every gateway registers, takes its target and
//! converges, through simulated steps that take time and sometimes fail.

use std::time::Duration;

use continuum_bus::testing::eventually_async;
use continuum_gateway::fleet::{run_until, SimArgs};
use continuum_gateway::runtime::sim::StepTime;
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{
    diff_request, ApplyRequest, DiffRequest, Document, Event, GetRolloutRequest, Live,
    RolloutPolicy, RolloutState, StatusRequest, WatchRequest,
};
use tokio_util::sync::CancellationToken;

const GATEWAYS: usize = 12;

/// Each subsystem: its gateway, two services and a function listening to a
/// topic; `version` changes the function's image.
fn megamodel(version: u32) -> String {
    continuum_models::generate::fleet_megamodel(GATEWAYS, 2, version)
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

async fn all_converged(client: &ModelServiceClient<tonic::transport::Channel>, generation: u64) {
    eventually_async(
        &format!("all {GATEWAYS} simulated gateways converged on generation {generation}"),
        Duration::from_secs(60),
        || {
            let mut c = client.clone();
            async move {
                let s = c.status(StatusRequest::default()).await.ok()?.into_inner();
                (s.subsystems.len() == GATEWAYS
                    && s.subsystems
                        .iter()
                        .all(|s| s.converged && s.target_generation == generation))
                .then_some(())
            }
        },
    )
    .await;
}

/// An orchestrator on loopback and a fleet of simulated gateways dialling it.
struct Sim {
    addr: std::net::SocketAddr,
    orchestrator: continuum_orchestrator::Running,
    stop: CancellationToken,
    fleet: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sim {
    async fn start(
        dir: &tempfile::TempDir,
        step_time: &str,
        failure_rate: f64,
        seed: u64,
        labels: Vec<(String, String)>,
    ) -> Sim {
        let config = continuum_orchestrator::Config::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("o"),
        );
        let orchestrator = continuum_orchestrator::start(config).await.unwrap();
        let addr = orchestrator.local_addr();
        let stop = CancellationToken::new();
        let args = SimArgs {
            count: GATEWAYS,
            prefix: "sim".into(),
            first: 1,
            orchestrator: addr.to_string(),
            tls_ca: None,
            data_dir: dir.path().join("fleet"),
            step_time: step_time.parse::<StepTime>().unwrap(),
            failure_rate,
            seed,
            interval: Duration::from_millis(300),
            settle: Duration::ZERO,
            max_backoff: Duration::from_secs(1),
            labels,
            summary_every: Duration::ZERO,
        };
        let fleet = tokio::spawn(run_until(args, stop.clone()));
        Sim {
            addr,
            orchestrator,
            stop,
            fleet,
        }
    }

    /// A client of the orchestrator, on a connection of its own.
    async fn client(&self) -> ModelServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ModelServiceClient::new(channel)
    }

    /// Applies the fleet's first revision and waits until every gateway
    /// converged on it.
    async fn first_revision(&self, client: &mut ModelServiceClient<tonic::transport::Channel>) {
        let first = client
            .apply(apply(megamodel(1)))
            .await
            .unwrap()
            .into_inner();
        all_converged(client, first.revision.unwrap().number).await;
    }

    async fn stop(self) {
        self.stop.cancel();
        self.fleet.await.unwrap().unwrap();
        self.orchestrator.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_converges_through_slow_and_failing_steps() {
    let dir = tempfile::tempdir().unwrap();
    // One step in ten fails: each is tried again on a later pass.
    let sim = Sim::start(
        &dir,
        "1ms..20ms",
        0.1,
        5,
        vec![("ring".into(), "canary".into())],
    )
    .await;
    let mut client = sim.client().await;
    sim.first_revision(&mut client).await;

    // What the gateways registered with reached the orchestrator.
    let s = client
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    for sub in &s.subsystems {
        let g = sub.gateway.as_ref().expect("registered");
        assert!(g.connected, "{} is connected", g.id);
        assert_eq!(g.location, "simulated");
        let labels = &g.capabilities.as_ref().expect("capabilities").labels;
        assert_eq!(labels.get("ring").map(String::as_str), Some("canary"));
    }

    // One change on every gateway (the function's image).
    let second = client
        .apply(apply(megamodel(2)))
        .await
        .unwrap()
        .into_inner();
    let generation = second.revision.unwrap().number;
    all_converged(&client, generation).await;

    sim.stop().await;
}

/// The newest event's sequence number.
async fn newest(client: &ModelServiceClient<tonic::transport::Channel>) -> u64 {
    let live = DiffRequest {
        between: Some(diff_request::Between::Live(Live::default())),
    };
    client
        .clone()
        .diff(live)
        .await
        .unwrap()
        .into_inner()
        .event_seq
}

/// Reads `stream` as events come, until the event `last` says (0: not
/// known yet); every sequence number it got.
async fn read_until(
    mut stream: tonic::Streaming<Event>,
    mut last: tokio::sync::watch::Receiver<u64>,
) -> Vec<u64> {
    let mut seqs: Vec<u64> = Vec::new();
    loop {
        let until = *last.borrow_and_update();
        if until > 0 && seqs.last().is_some_and(|s| *s >= until) {
            return seqs;
        }
        tokio::select! {
            m = stream.message() => match m {
                Ok(Some(e)) => seqs.push(e.seq),
                other => panic!("the watch ended after {:?}: {other:?}", seqs.last()),
            },
            _ = last.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_watchers_see_every_event_of_a_staged_rollout_and_a_stalled_one_slows_none() {
    const WATCHERS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&dir, "1ms..5ms", 0.0, 9, Vec::new()).await;
    let mut client = sim.client().await;
    sim.first_revision(&mut client).await;

    // A hundred watchers from here, each on its own connection; the last
    // one reads nothing until the end.
    let after = newest(&client).await;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let stream = sim
            .client()
            .await
            .watch(WatchRequest {
                after,
                subsystem: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(stream);
    }
    let stalled = streams.pop().unwrap();
    // The others read as the events happen.
    let (last_tx, last_rx) = tokio::sync::watch::channel(0u64);
    let readers: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(read_until(s, last_rx.clone())))
        .collect();

    // Two staged rollouts (waves of a quarter): every wave, target, step and
    // status is an event.
    let mut generation = 0;
    for version in [2, 3] {
        let mut request = apply(megamodel(version));
        request.rollout = Some(RolloutPolicy {
            canary_count: 1,
            wave_percent: 25,
            ..RolloutPolicy::default()
        });
        let r = client.apply(request).await.unwrap().into_inner();
        generation = r.revision.unwrap().number;
        all_converged(&client, generation).await;
    }
    let rollout = client
        .get_rollout(GetRolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.state(), RolloutState::Completed, "{rollout:?}");
    assert_eq!(rollout.revision, generation);
    let last = newest(&client).await;
    assert!(
        last - after > 300,
        "a rollout of {GATEWAYS} gateways is hundreds of events: {}",
        last - after
    );

    // Every watcher that reads got every event, in order, without a gap,
    // while one watcher read nothing at all.
    let expected: Vec<u64> = (after + 1..=last).collect();
    last_tx.send_replace(last);
    for r in readers {
        let seqs = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("a reading watcher kept up")
            .unwrap();
        assert_eq!(seqs, expected);
    }
    // The stalled one was held back by its own buffer only: it gets
    // everything too once it reads.
    assert_eq!(read_until(stalled, last_rx).await, expected);

    sim.stop().await;
}

#[tokio::test]
async fn ids_that_are_not_dns_labels_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let args = SimArgs {
        count: 3,
        prefix: "Not_A_Label".into(),
        first: 1,
        orchestrator: "127.0.0.1:1".into(),
        tls_ca: None,
        data_dir: dir.path().join("fleet"),
        step_time: StepTime::fixed(Duration::ZERO),
        failure_rate: 0.0,
        seed: 1,
        interval: Duration::from_secs(1),
        settle: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
        labels: Vec::new(),
        summary_every: Duration::ZERO,
    };
    let e = run_until(args, CancellationToken::new()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("`Not_A_Label-1` is not a valid gateway id"),
        "{e}"
    );
    assert!(!dir.path().join("fleet").exists(), "nothing was created");
}
