//! The orchestrator over real gRPC on 127.0.0.1, driven by simulated gateways.

mod support;

use std::time::Duration;

use continuum_models::DeploymentModel;
use continuum_orchestrator::sim::{register, SimGateway};
use continuum_proto::v1::{
    diff_request::Between, event, orchestrator_message, ComponentState, DiffRequest, Event,
    GetRequest, HistoryRequest, ListGatewaysRequest, Live, Revisions, RollbackRequest,
    StatusRequest, View, WatchRequest,
};
use support::{apply_json, eventually, v1, v2, Harness, WITHIN};
use tonic::Code;

fn model_of(t: &continuum_proto::v1::Target) -> DeploymentModel {
    serde_json::from_slice(&t.model.as_ref().unwrap().json).unwrap()
}

/// A gateway's link opened in the background: it waits until a model names
/// the gateway.
fn waiting(h: &Harness, id: &str) -> tokio::task::JoinHandle<Result<SimGateway, tonic::Status>> {
    tokio::spawn(SimGateway::connect_owned(h.endpoint(), register(id)))
}

fn ids(m: &DeploymentModel) -> Vec<&str> {
    m.components.iter().map(|c| c.id.as_str()).collect()
}

#[tokio::test]
async fn apply_pushes_each_subsystem_model_to_its_gateway() {
    let h = Harness::start().await;
    // Before any model names them, the gateways' links wait unregistered.
    let smart = waiting(&h, "smart-gw");
    let sensor = waiting(&h, "sensor-gw");
    let mut client = h.client().await;
    let applied = client.apply(v1()).await.unwrap().into_inner();
    let mut smart = smart.await.unwrap().unwrap();
    let mut sensor = sensor.await.unwrap().unwrap();
    assert_eq!(smart.welcome.subsystem, "building-a");
    let revision = applied.revision.unwrap();
    assert_eq!(revision.number, 1);
    // Not pushed at once: the waiting links held no registration; each gets
    // its target as it registers.
    assert!(
        applied.targets.iter().all(|t| !t.pushed),
        "{:?}",
        applied.targets
    );

    let t = smart.target(WITHIN).await.unwrap();
    assert_eq!((t.subsystem.as_str(), t.generation), ("building-a", 1));
    assert_eq!(ids(&model_of(&t)), ["presence", "smart-gw"]);
    let t = sensor.target(WITHIN).await.unwrap();
    assert_eq!(t.subsystem, "sensors");
    assert_eq!(
        ids(&model_of(&t)),
        ["arduino-flow", "iot-flow", "sensor-gw", "uno"]
    );
}

#[tokio::test]
async fn a_gateway_that_connects_later_gets_its_target_and_only_changed_subsystems_move() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let applied = client.apply(v1()).await.unwrap().into_inner();
    assert!(applied.targets.iter().all(|t| !t.pushed));
    let mut smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    assert_eq!(smart.welcome.subsystem, "building-a");
    let t = smart.target(WITHIN).await.unwrap();
    assert_eq!(t.generation, 1);
    smart.converge(&t).await.unwrap();

    // v2 changes both subsystems; the gateway gets generation 2.
    let applied = client.apply(v2()).await.unwrap().into_inner();
    assert_eq!(applied.revision.unwrap().number, 2);
    let t = smart.target(WITHIN).await.unwrap();
    assert_eq!(t.generation, 2);

    // Applying the same model again makes no revision and pushes nothing.
    let again = client.apply(v2()).await.unwrap().into_inner();
    assert!(again.unchanged);
    assert_eq!(again.revision.unwrap().number, 2);

    // A gateway that registers saying it holds its target gets nothing new.
    drop(smart);
    let mut reg = register("smart-gw");
    reg.accepted_generation = 2;
    reg.observed_generation = 2;
    let mut smart = eventually("the old link to end", WITHIN, || {
        let reg = reg.clone();
        let endpoint = h.endpoint();
        async move { SimGateway::connect(&endpoint, reg).await.ok() }
    })
    .await;
    smart.heartbeat().await.unwrap();
    let next = smart.next_within(Duration::from_millis(300)).await;
    assert!(next.is_err(), "nothing is re-sent, got {next:?}");
}

#[tokio::test]
async fn reports_change_the_current_model_and_the_live_diff() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    let mut sensor = SimGateway::connect(&h.endpoint(), register("sensor-gw"))
        .await
        .unwrap();
    let t = sensor.target(WITHIN).await.unwrap();

    let live = |c: &mut continuum_proto::v1::model_service_client::ModelServiceClient<_>| {
        let mut c = c.clone();
        async move {
            c.diff(DiffRequest {
                between: Some(Between::Live(Live {
                    subsystem: "sensors".into(),
                })),
            })
            .await
            .unwrap()
            .into_inner()
            .subsystems
            .remove(0)
            .counts
            .unwrap()
        }
    };
    // Nothing reported yet: everything is still to be added.
    assert_eq!(live(&mut client).await.added, 4);

    // The gateway runs all but the service.
    let mut partial = model_of(&t);
    partial.components.retain(|c| c.id != "iot-flow");
    partial
        .links
        .retain(|l| !l.to_string().contains("iot-flow"));
    sensor.ack(t.generation).await.unwrap();
    sensor.report_current(t.generation, &partial).await.unwrap();
    sensor
        .report_states(
            t.generation,
            &[(
                "iot-flow",
                ComponentState::Failed,
                "image build failed: no such file",
            )],
        )
        .await
        .unwrap();
    eventually("the live diff to show the missing service", WITHIN, || {
        let mut c = client.clone();
        async move {
            let counts = live(&mut c).await;
            (counts.added == 1).then_some(())
        }
    })
    .await;
    let current = client
        .get(GetRequest {
            view: View::Current as i32,
            subsystem: "sensors".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let m: DeploymentModel = serde_json::from_slice(&current.model.unwrap().json).unwrap();
    assert_eq!(ids(&m), ["arduino-flow", "sensor-gw", "uno"]);
    assert_eq!(current.generation, 1);
    let status = client
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let s = status
        .subsystems
        .iter()
        .find(|s| s.subsystem == "sensors")
        .unwrap();
    assert!(!s.converged);
    let failed: Vec<_> = s
        .components
        .iter()
        .filter(|c| c.state == ComponentState::Failed as i32)
        .map(|c| (c.component.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(failed, [("iot-flow", "image build failed: no such file")]);

    // Then it converges.
    sensor.converge(&t).await.unwrap();
    eventually("convergence", WITHIN, || {
        let mut c = client.clone();
        async move {
            let status = c
                .status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            status
                .subsystems
                .iter()
                .find(|s| s.subsystem == "sensors")
                .is_some_and(|s| s.converged)
                .then_some(())
        }
    })
    .await;
    assert_eq!(live(&mut client).await, Default::default());
    // The global current model holds what was reported.
    let global = client
        .get(GetRequest {
            view: View::Current as i32,
            ..GetRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mm: continuum_models::Megamodel =
        serde_json::from_slice(&global.model.unwrap().json).unwrap();
    assert_eq!(mm.subsystems.len(), 1);
    assert_eq!(mm.subsystems[0].components.len(), 4);
}

async fn collect(
    stream: &mut tonic::Streaming<Event>,
    until: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(WITHIN, stream.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        let done = until(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn watch_delivers_events_in_order_and_resumes_after_a_disconnect() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut stream = client
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    client.apply(v1()).await.unwrap();
    let mut smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    let t = smart.target(WITHIN).await.unwrap();
    smart.converge(&t).await.unwrap();
    let first = collect(&mut stream, |e| {
        matches!(e.kind, Some(event::Kind::Current(_)))
    })
    .await;
    let seqs: Vec<u64> = first.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    assert!(matches!(first[0].kind, Some(event::Kind::Revision(_))));
    let kinds: Vec<&str> = first
        .iter()
        .map(|e| match e.kind.as_ref().unwrap() {
            event::Kind::Revision(_) => "revision",
            event::Kind::Connected(_) => "connected",
            event::Kind::TargetSent(_) => "target",
            event::Kind::Acknowledged(_) => "ack",
            event::Kind::Component(_) => "component",
            event::Kind::Current(_) => "current",
            event::Kind::Step(_) => "step",
            event::Kind::Disconnected(_) => "disconnected",
            event::Kind::Diverged(_) => "diverged",
            event::Kind::Rollout(_) => "rollout",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "revision",
            "connected",
            "target",
            "ack",
            "component",
            "component",
            "current"
        ]
    );
    let last_seen = *seqs.last().unwrap();
    drop(stream);

    // While nobody watches: a new revision, its push and the reports.
    client.apply(v2()).await.unwrap();
    let t = smart.target(WITHIN).await.unwrap();
    smart.converge(&t).await.unwrap();

    let mut resumed = client
        .watch(WatchRequest {
            after: last_seen,
            subsystem: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let rest = collect(&mut resumed, |e| {
        matches!(e.kind, Some(event::Kind::Current(_)))
    })
    .await;
    assert_eq!(
        rest[0].seq,
        last_seen + 1,
        "resumes right after the last event seen"
    );
    for w in rest.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    assert!(matches!(&rest[0].kind, Some(event::Kind::Revision(r)) if r.number == 2));

    // A subsystem filter keeps revisions and that subsystem's events.
    let mut only = client
        .watch(WatchRequest {
            after: 0,
            subsystem: "sensors".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = collect(&mut only, |e| e.seq >= 1).await;
    assert!(matches!(e[0].kind, Some(event::Kind::Revision(_))));
    let e = collect(&mut only, |_| true).await;
    assert!(
        matches!(&e[0].kind, Some(event::Kind::Revision(r)) if r.number == 2),
        "building-a's events are filtered out: {e:?}"
    );

    let beyond = client
        .watch(WatchRequest {
            after: 1_000_000,
            subsystem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);
}

#[tokio::test]
async fn concurrent_applies_on_the_same_base_one_wins() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    let mut a = v2();
    a.expected_base = Some(1);
    let mut b = v2();
    b.expected_base = Some(1);
    b.message = "the other one".into();
    // A different model, so the second one cannot be a no-op.
    let mut b_json: serde_json::Value =
        serde_json::from_slice(&b.megamodel.as_ref().unwrap().json).unwrap();
    b_json["description"] = "changed by b".into();
    b.megamodel.as_mut().unwrap().json = serde_json::to_vec(&b_json).unwrap();
    let (mut ca, mut cb) = (client.clone(), client.clone());
    let (ra, rb) = tokio::join!(ca.apply(a), cb.apply(b));
    let (ok, err) = match (ra, rb) {
        (Ok(o), Err(e)) | (Err(e), Ok(o)) => (o.into_inner(), e),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(ok.revision.unwrap().number, 2);
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("head is revision 2, not revision 1"),
        "{}",
        err.message()
    );
    let history = client
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.revisions.len(), 2);
}

#[tokio::test]
async fn a_restart_keeps_revisions_history_and_last_known_state() {
    let mut h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    client.apply(v2()).await.unwrap();
    let mut sensor = SimGateway::connect(&h.endpoint(), register("sensor-gw"))
        .await
        .unwrap();
    let t = sensor.target(WITHIN).await.unwrap();
    sensor.converge(&t).await.unwrap();
    let events_before = eventually("the current report", WITHIN, || {
        let mut c = client.clone();
        async move {
            let s = c
                .status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            s.subsystems
                .iter()
                .find(|s| s.subsystem == "sensors")
                .is_some_and(|s| s.converged)
                .then_some(())?;
            let mut w = c.watch(WatchRequest::default()).await.unwrap().into_inner();
            let mut n = 0;
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(200), w.message())
                    .await
                    .map(|r| r.transpose())
            {
                n += 1;
            }
            Some(n)
        }
    })
    .await;
    let target_v1 = client
        .get(GetRequest {
            view: View::Target as i32,
            subsystem: String::new(),
            revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    drop(sensor);
    h.restart().await;

    let mut client = h.client().await;
    let history = client
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    let numbers: Vec<u64> = history.revisions.iter().map(|r| r.number).collect();
    assert_eq!(numbers, [2, 1]);
    let again = client
        .get(GetRequest {
            view: View::Target as i32,
            subsystem: String::new(),
            revision: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.model, target_v1.model);
    let status = client
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.head, 2);
    let s = status
        .subsystems
        .iter()
        .find(|s| s.subsystem == "sensors")
        .unwrap();
    let g = s.gateway.as_ref().unwrap();
    assert!(!g.connected);
    assert_eq!(
        (g.sent_generation, g.acked_generation, g.observed_generation),
        (2, 2, 2)
    );
    assert!(s
        .components
        .iter()
        .all(|c| c.state == ComponentState::Running as i32));
    assert_eq!(s.components.len(), 4);
    let current = client
        .get(GetRequest {
            view: View::Current as i32,
            subsystem: "sensors".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let m: DeploymentModel = serde_json::from_slice(&current.model.unwrap().json).unwrap();
    assert_eq!(m.components.len(), 4);
    // The event log survived too, and goes on from where it was (the old
    // link's disconnection was recorded when the server stopped).
    let mut w = client
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let all = collect(&mut w, |e| {
        matches!(e.kind, Some(event::Kind::Disconnected(_)))
    })
    .await;
    assert!(all.len() > events_before);
    for w in all.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    // The gateway comes back saying what it holds: nothing to re-send.
    let mut reg = register("sensor-gw");
    reg.accepted_generation = 2;
    reg.observed_generation = 2;
    let mut sensor = SimGateway::connect(&h.endpoint(), reg).await.unwrap();
    assert_eq!(sensor.welcome.subsystem, "sensors");
    assert!(sensor
        .next_within(Duration::from_millis(300))
        .await
        .is_err());
}

#[tokio::test]
async fn rollback_restores_an_earlier_model_as_a_new_revision() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    let mut smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    let t1 = smart.target(WITHIN).await.unwrap();
    smart.converge(&t1).await.unwrap();
    client.apply(v2()).await.unwrap();
    let t2 = smart.target(WITHIN).await.unwrap();
    assert_ne!(model_of(&t1), model_of(&t2));

    let back = client
        .rollback(RollbackRequest {
            to: 1,
            expected_base: Some(2),
            author: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = back.revision.unwrap();
    assert_eq!((r.number, r.base, r.restores), (3, 2, 1));
    let t3 = smart.target(WITHIN).await.unwrap();
    assert_eq!(t3.generation, 3);
    assert_eq!(model_of(&t3), model_of(&t1));
    let get = |n: u64| {
        let mut c = client.clone();
        async move {
            c.get(GetRequest {
                view: View::Target as i32,
                subsystem: String::new(),
                revision: n,
            })
            .await
            .unwrap()
            .into_inner()
            .model
            .unwrap()
            .json
        }
    };
    assert_eq!(get(3).await, get(1).await);
    let d = client
        .diff(DiffRequest {
            between: Some(Between::Revisions(Revisions { from: 1, to: 3 })),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        d.subsystems.is_empty(),
        "revision 3 restores revision 1 exactly"
    );
    let d = client
        .diff(DiffRequest {
            between: Some(Between::Revisions(Revisions { from: 1, to: 2 })),
        })
        .await
        .unwrap()
        .into_inner();
    let changed: Vec<&str> = d.subsystems.iter().map(|s| s.subsystem.as_str()).collect();
    assert!(
        changed.contains(&"building-a") && changed.contains(&"sensors"),
        "{changed:?}"
    );
    let diff: continuum_models::ModelDiff = serde_json::from_slice(&d.subsystems[0].diff).unwrap();
    assert!(!diff.is_empty());

    let missing = client
        .rollback(RollbackRequest {
            to: 9,
            expected_base: None,
            author: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("no revision 9"));
}

#[tokio::test]
async fn an_invalid_model_is_rejected_with_every_problem_and_nothing_is_stored() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let bad = r#"{
  "name": "bad",
  "subsystems": [
    { "id": "s", "components": [
      { "id": "gw", "kind": "gateway" },
      { "id": "web", "kind": "service", "imagee": "x" },
      { "id": "Bad_Id", "kind": "service" }
    ],
    "links": [ { "kind": "hosting", "component": "web", "host": "nowhere" } ] }
  ]
}"#;
    let err = client.apply(apply_json(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let rejection = continuum_proto::rejection::rejection(&err).expect("problems in the details");
    let paths: Vec<&str> = rejection.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(rejection.problems.len() >= 3, "{rejection:?}");
    assert!(
        paths.contains(&"subsystems[0].components[1].imagee"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"subsystems[0].components[2].id"),
        "{paths:?}"
    );
    assert!(paths.contains(&"subsystems[0].links[0].host"), "{paths:?}");
    assert!(rejection
        .problems
        .iter()
        .all(|p| p.file == "inline.json" && p.line > 0));

    let missing_template = r#"{"name":"t","subsystems":[{"id":"s","components":[
        {"id":"gw","kind":"gateway"},
        {"id":"f","kind":"function","runtime":"templates/none.json","triggers":["/a"]}],
        "links":[{"kind":"hosting","component":"f","host":"gw"}]}]}"#;
    let err = client
        .apply(apply_json(missing_template))
        .await
        .unwrap_err();
    let rejection = continuum_proto::rejection::rejection(&err).unwrap();
    assert!(
        rejection.problems[0]
            .message
            .contains("was not sent with the model"),
        "{rejection:?}"
    );

    let not_json = client.apply(apply_json("{ nope")).await.unwrap_err();
    assert_eq!(not_json.code(), Code::InvalidArgument);

    let history = client
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(history.revisions.is_empty());
    let none = client.get(GetRequest::default()).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    assert!(none.message().contains("apply a model first"));
}

#[tokio::test]
async fn unknown_revisions_and_subsystems_are_clear_errors() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    let e = client
        .get(GetRequest {
            view: View::Target as i32,
            subsystem: String::new(),
            revision: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "there is no revision 7")
    );
    let e = client
        .get(GetRequest {
            view: View::Target as i32,
            subsystem: "kitchen".into(),
            revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("no subsystem `kitchen`"));
    let e = client
        .diff(DiffRequest {
            between: Some(Between::Live(Live {
                subsystem: "kitchen".into(),
            })),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .get(GetRequest {
            view: View::Current as i32,
            subsystem: String::new(),
            revision: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = client
        .apply(continuum_proto::v1::ApplyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn gateway_link_refuses_bad_messages_and_keeps_going() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    client.apply(v1()).await.unwrap();
    let mut smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    let t = smart.target(WITHIN).await.unwrap();

    // A report for a generation never sent.
    smart.ack(5).await.unwrap();
    match smart.next_within(WITHIN).await.unwrap() {
        Some(orchestrator_message::Kind::Error(e)) => {
            assert!(
                e.message.contains("generation 5, which was never sent"),
                "{}",
                e.message
            )
        }
        other => panic!("expected a link error, got {other:?}"),
    }
    // A current model that is not a model.
    smart
        .send(continuum_proto::v1::gateway_message::Kind::Current(
            continuum_proto::v1::CurrentReport {
                observed_generation: 1,
                model: Some(continuum_proto::v1::Document {
                    name: String::new(),
                    json: b"{\"components\": 3}".to_vec(),
                }),
            },
        ))
        .await
        .unwrap();
    match smart.next_within(WITHIN).await.unwrap() {
        Some(orchestrator_message::Kind::Error(e)) => {
            assert!(e.message.contains("components"), "{}", e.message)
        }
        other => panic!("expected a link error, got {other:?}"),
    }
    // Registering again on the same link.
    smart
        .send(continuum_proto::v1::gateway_message::Kind::Register(
            register("smart-gw"),
        ))
        .await
        .unwrap();
    assert!(matches!(
        smart.next_within(WITHIN).await.unwrap(),
        Some(orchestrator_message::Kind::Error(_))
    ));

    // The same id registered twice at once.
    let twice = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists);
    // An invalid id.
    let bad = SimGateway::connect(&h.endpoint(), register("Not An Id"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // The link still works, and nothing bad was recorded.
    smart.converge(&t).await.unwrap();
    eventually("convergence", WITHIN, || {
        let mut c = client.clone();
        async move {
            let s = c
                .status(StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            s.subsystems
                .iter()
                .find(|s| s.subsystem == "building-a")
                .is_some_and(|s| s.converged)
                .then_some(())
        }
    })
    .await;
    let gws = client
        .list_gateways(ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateways;
    assert_eq!(
        gws.len(),
        1,
        "the refused registrations left nothing: {gws:?}"
    );
    assert_eq!(gws[0].acked_generation, 1);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_change_nothing() {
    let h = Harness::with(|c| c.max_message_bytes = 64 * 1024).await;
    let mut client = h.client().await;
    let mut big = v1();
    let mut json: serde_json::Value =
        serde_json::from_slice(&big.megamodel.as_ref().unwrap().json).unwrap();
    json["description"] = "x".repeat(100 * 1024).into();
    big.megamodel.as_mut().unwrap().json = serde_json::to_vec(&json).unwrap();
    let err = client.apply(big).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{}", err.message());
    let history = client
        .history(HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(history.revisions.is_empty());
    client
        .apply(v1())
        .await
        .expect("a normal model still goes through");
}

#[tokio::test]
async fn a_silent_gateway_is_disconnected_and_may_come_back() {
    // Admitted by the allow-list: no model names it.
    let h = Harness::with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.allow_gateways.insert("smart-gw".to_owned());
    })
    .await;
    let client = h.client().await;
    let gw = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    assert_eq!(gw.welcome.heartbeat_interval_ms, 100);
    eventually("the silent gateway to be disconnected", WITHIN, || {
        let mut c = client.clone();
        async move {
            let gws = c
                .list_gateways(ListGatewaysRequest {})
                .await
                .unwrap()
                .into_inner()
                .gateways;
            (!gws[0].connected).then_some(())
        }
    })
    .await;
    SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .expect("reconnects");
}

#[tokio::test]
async fn a_removed_subsystem_gets_an_empty_target() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let two = r#"{"name":"n","subsystems":[
        {"id":"a","components":[{"id":"gw-a","kind":"gateway"}]},
        {"id":"b","components":[{"id":"gw-b","kind":"gateway"},{"id":"svc","kind":"service","resources":{"container":{"image":"busybox"}}}],
         "links":[{"kind":"hosting","component":"svc","host":"gw-b"}]}]}"#;
    let one =
        r#"{"name":"n","subsystems":[{"id":"a","components":[{"id":"gw-a","kind":"gateway"}]}]}"#;
    client.apply(apply_json(two)).await.unwrap();
    let mut b = SimGateway::connect(&h.endpoint(), register("gw-b"))
        .await
        .unwrap();
    assert_eq!(
        model_of(&b.target(WITHIN).await.unwrap()).components.len(),
        2
    );
    let applied = client.apply(apply_json(one)).await.unwrap().into_inner();
    let subs: Vec<&str> = applied
        .targets
        .iter()
        .map(|t| t.subsystem.as_str())
        .collect();
    assert_eq!(subs, ["b"], "only the removed subsystem changes");
    let t = b.target(WITHIN).await.unwrap();
    assert_eq!(t.generation, 2);
    assert!(model_of(&t).components.is_empty());
    let status = client
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.subsystems.len(), 1);
}

#[tokio::test]
async fn watch_from_forgotten_events_is_refused_and_the_oldest_kept_are_served() {
    let h = Harness::with(|c| c.event_retention = 5).await;
    let mut client = h.client().await;
    for n in 0..12 {
        let model = format!(
            r#"{{"name":"n","description":"{n}","subsystems":[{{"id":"a","components":[{{"id":"gw-a","kind":"gateway"}}]}}]}}"#
        );
        client.apply(apply_json(&model)).await.unwrap();
    }
    let e = client
        .watch(WatchRequest {
            after: 1,
            subsystem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("no longer kept"), "{}", e.message());
    let mut w = client
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let kept = collect(&mut w, |e| e.seq == 12).await;
    assert!(kept.len() >= 5 && kept.len() < 12, "kept {}", kept.len());
    for w in kept.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    // Resuming from the last one before the oldest kept is fine.
    let first = kept[0].seq;
    let mut w = client
        .watch(WatchRequest {
            after: first - 1,
            subsystem: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collect(&mut w, |_| true).await[0].seq, first);
}

#[tokio::test]
async fn a_watcher_slower_than_the_retention_is_told_it_fell_behind_and_where_to_resume() {
    let h = Harness::with(|c| {
        c.event_retention = 10;
        c.fsync = false;
    })
    .await;
    let mut client = h.client().await;
    let model = |n: usize| {
        format!(
            r#"{{"name":"n","description":"{n}","subsystems":[{{"id":"a","components":[{{"id":"gw-a","kind":"gateway"}}]}}]}}"#
        )
    };
    client.apply(apply_json(&model(0))).await.unwrap();
    // A watcher that reads nothing while far more events than are kept
    // happen: its buffers fill, its reader stops, the log moves on.
    let mut w = client
        .watch(WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Each event carries its revision's note: 4 KiB, so that what the
    // transport buffers for the watcher is soon full.
    let note = "x".repeat(4096);
    for n in 1..800 {
        let mut request = apply_json(&model(n));
        request.message = note.clone();
        client.apply(request).await.unwrap();
    }
    let mut seen = Vec::new();
    let status = loop {
        match tokio::time::timeout(WITHIN, w.message()).await {
            Ok(Ok(Some(e))) => seen.push(e.seq),
            Ok(Err(status)) => break status,
            other => panic!("expected the watch to end with an error, got {other:?} after {} events ({:?}..{:?})", seen.len(), seen.first(), seen.last()),
        }
    };
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("fell behind"),
        "{}",
        status.message()
    );
    // What it did get has no gap, and it is told to resume past the gap.
    for pair in seen.windows(2) {
        assert_eq!(pair[1], pair[0] + 1);
    }
    let last = *seen.last().expect("some events before it fell behind");
    let resume: u64 = status
        .message()
        .split("resume after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a position to resume after");
    assert!(resume > last, "resume after {resume}, last read {last}");
    let mut again = client
        .watch(WatchRequest {
            after: resume,
            subsystem: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(WITHIN, again.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.seq, resume + 1);
}

#[tokio::test]
async fn health_and_reflection_answer_as_standard_clients_expect() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let h = Harness::start().await;
    let channel = tonic::transport::Endpoint::from_shared(h.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "continuum.v1.ModelService", "continuum.v1.GatewayLink"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in [
        "continuum.v1.ModelService",
        "continuum.v1.GatewayLink",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
}

#[tokio::test]
async fn a_refusal_follows_the_standard_rich_error_model() {
    use tonic_types::StatusExt;
    let h = Harness::start().await;
    let mut client = h.client().await;
    let bad = r#"{"name": "bad", "subsystems": [{"id": "s", "components": [
        {"id": "gw", "kind": "gateway"}, {"id": "web", "kind": "servce"}], "links": []}]}"#;
    let err = client.apply(apply_json(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let bad_request = err
        .get_details_bad_request()
        .expect("a google.rpc.BadRequest");
    assert!(
        bad_request
            .field_violations
            .iter()
            .any(|v| v.field == "subsystems[0].components[1].kind"
                && v.description.starts_with("inline.json:")),
        "{bad_request:?}"
    );
    let problems = continuum_proto::rejection::from_status(&err).expect("a Rejection too");
    assert_eq!(
        problems.diagnostics.len(),
        bad_request.field_violations.len()
    );
}

#[tokio::test]
async fn an_id_no_model_names_is_not_registered_until_a_revision_names_it() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let ghost = waiting(&h, "ghost-gw");
    client.apply(v1()).await.unwrap();
    // The gateways v1 names are admitted; the ghost is neither admitted nor stored.
    let smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    assert_eq!(smart.welcome.subsystem, "building-a");
    let listed = |gws: Vec<continuum_proto::v1::Gateway>| -> Vec<String> {
        gws.into_iter().map(|g| g.id).collect()
    };
    let gws = client
        .list_gateways(ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateways;
    assert_eq!(listed(gws), ["smart-gw"]);
    assert!(!ghost.is_finished(), "an unnamed gateway got an answer");

    // A revision that names it lets its waiting link in.
    let named = r#"{"name":"n","subsystems":[{"id":"haunt","components":[{"id":"ghost-gw","kind":"gateway"}]}]}"#;
    client.apply(apply_json(named)).await.unwrap();
    let ghost = tokio::time::timeout(WITHIN, ghost)
        .await
        .expect("admitted once named")
        .unwrap()
        .unwrap();
    assert_eq!(ghost.welcome.subsystem, "haunt");
    // Now it is stored.
    let gws = client
        .list_gateways(ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateways;
    assert!(listed(gws).contains(&"ghost-gw".to_owned()));
}

#[tokio::test]
async fn a_gone_gateway_is_forgotten_only_when_nothing_holds_it() {
    use continuum_proto::v1::ForgetGatewayRequest;
    let h = Harness::with(|c| {
        c.allow_gateways.insert("stray-gw".to_owned());
    })
    .await;
    let mut client = h.client().await;
    let forget = |id: &str| ForgetGatewayRequest {
        gateway_id: id.to_owned(),
    };
    let unknown = client.forget_gateway(forget("never-gw")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Connected: refused.
    let stray = SimGateway::connect(&h.endpoint(), register("stray-gw"))
        .await
        .unwrap();
    let busy = client.forget_gateway(forget("stray-gw")).await.unwrap_err();
    assert!(busy.message().contains("is connected"), "{busy:?}");
    // Named by the model: refused.
    client.apply(v1()).await.unwrap();
    let smart = SimGateway::connect(&h.endpoint(), register("smart-gw"))
        .await
        .unwrap();
    drop(smart);
    let named = eventually("smart-gw to be refused as named", WITHIN, || {
        let mut c = client.clone();
        async move {
            let e = c.forget_gateway(forget("smart-gw")).await.unwrap_err();
            e.message().contains("names gateway").then_some(e)
        }
    })
    .await;
    assert_eq!(named.code(), Code::InvalidArgument);

    // Gone and named by nothing: forgotten, and stays forgotten across a restart.
    drop(stray);
    eventually("the stray gateway forgotten", WITHIN, || {
        let mut c = client.clone();
        async move { c.forget_gateway(forget("stray-gw")).await.ok() }
    })
    .await;
    let mut h = h;
    h.restart().await;
    let mut client = h.client().await;
    let ids: Vec<String> = client
        .list_gateways(ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .gateways
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert!(!ids.contains(&"stray-gw".to_owned()), "{ids:?}");
    assert!(ids.contains(&"smart-gw".to_owned()), "{ids:?}");
}
