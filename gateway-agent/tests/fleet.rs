//! A fleet of simulated gateway agents (`continuum gateway sim`) against a real
//! orchestrator on loopback: every gateway registers, takes its target and
//! converges, through simulated steps that take time and sometimes fail.

use std::time::Duration;

use continuum_bus::testing::eventually_async;
use continuum_gateway::fleet::{run_until, SimArgs};
use continuum_gateway::runtime::sim::StepTime;
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{ApplyRequest, Document, StatusRequest};
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
                let s = c.status(StatusRequest {}).await.ok()?.into_inner();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_converges_through_slow_and_failing_steps() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        continuum_orchestrator::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("o"));
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
        step_time: "1ms..20ms".parse::<StepTime>().unwrap(),
        // One step in ten fails: each is tried again on a later pass.
        failure_rate: 0.1,
        seed: 5,
        interval: Duration::from_millis(300),
        settle: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
        labels: vec![("ring".into(), "canary".into())],
        summary_every: Duration::ZERO,
    };
    let fleet = tokio::spawn(run_until(args, stop.clone()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ModelServiceClient::new(channel);
    let first = client
        .apply(apply(megamodel(1)))
        .await
        .unwrap()
        .into_inner();
    let generation = first.revision.unwrap().number;
    all_converged(&client, generation).await;

    // What the gateways registered with reached the orchestrator.
    let s = client.status(StatusRequest {}).await.unwrap().into_inner();
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

    stop.cancel();
    fleet.await.unwrap().unwrap();
    orchestrator.stop().await.unwrap();
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
