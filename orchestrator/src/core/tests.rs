//! The core on its own: no disk, no gRPC, the time given.

use std::collections::BTreeMap;

use continuum_proto::v1::{
    event, Ack, ApplyRequest, ComponentState, ComponentStatus, CurrentReport, Document, Register,
    RollbackRequest, StatusReport, SubsystemPhase,
};

use super::*;
use crate::store::Snapshot;

fn core() -> Core {
    Core::from_snapshot(Snapshot::default(), 0, CoreConfig::for_tests()).unwrap()
}

/// What the shell does, minus the disk: keeps the writes, completes.
fn run<T>(core: &mut Core, t: Transition<T>, log: &mut Vec<Changes>) -> Completed<T> {
    log.push(t.changes.clone());
    core.complete(t)
}

fn model(image: &str) -> Prepared {
    let json = format!(
        r#"{{"name": "m", "subsystems": [{{"id": "s", "components": [
            {{"id": "gw", "kind": "gateway"}},
            {{"id": "web", "kind": "service", "resources": {{"container": {{"image": "{image}"}}}}}}],
          "links": [{{"kind": "hosting", "component": "web", "host": "gw"}}]}}]}}"#
    );
    Prepared::from_request(
        ApplyRequest {
            megamodel: Some(Document {
                name: "m.json".into(),
                json: json.into_bytes(),
            }),
            ..ApplyRequest::default()
        },
        &Default::default(),
    )
    .unwrap()
}

fn register(id: &str) -> Register {
    Register {
        gateway_id: id.into(),
        ..Register::default()
    }
}

fn kinds(changes: &Changes) -> Vec<&'static str> {
    changes
        .events
        .iter()
        .map(|e| match e.kind.as_ref().unwrap() {
            event::Kind::Revision(_) => "revision",
            event::Kind::TargetSent(_) => "target_sent",
            event::Kind::Acknowledged(_) => "acknowledged",
            event::Kind::Connected(_) => "connected",
            event::Kind::Disconnected(_) => "disconnected",
            event::Kind::Component(_) => "component",
            event::Kind::Step(_) => "step",
            event::Kind::Current(_) => "current",
            event::Kind::Diverged(_) => "diverged",
            event::Kind::Rollout(_) => "rollout",
        })
        .collect()
}

#[test]
fn an_apply_decides_everything_and_changes_nothing_until_completed() {
    let mut c = core();
    let mut log = Vec::new();
    let t = c.apply(model("web:1"), 1_000).unwrap();
    assert_eq!(kinds(&t.changes), ["revision"]);
    assert_eq!(t.changes.targets.len(), 1);
    assert_eq!(t.reply.event_seq, 1);
    assert_eq!(t.reply.revision.as_ref().unwrap().created_unix_ms, 1_000);
    // Not completed (as when the commit fails): nothing happened.
    drop(t);
    assert_eq!((c.head_number(), c.last_seq()), (0, 0));
    assert!(c.subsystems.is_empty());

    let t = c.apply(model("web:1"), 1_000).unwrap();
    let done = run(&mut c, t, &mut log);
    assert_eq!(done.new_last_seq, Some(1));
    assert!(done.deliveries.is_empty(), "no gateway is connected");
    assert_eq!(c.head_number(), 1);
    assert_eq!(c.subsystems["s"].target.generation, 1);

    // The same model again makes no revision and writes nothing.
    let t = c.apply(model("web:1"), 2_000).unwrap();
    assert!(t.reply.unchanged);
    assert!(t.changes.is_empty());
}

#[test]
fn a_gateway_gets_its_target_on_registering_and_on_each_change() {
    let mut c = core();
    let mut log = Vec::new();
    let t = c.apply(model("web:1"), 1).unwrap();
    run(&mut c, t, &mut log);
    let t = c.register(register("gw"), 2).unwrap();
    assert_eq!(kinds(&t.changes), ["connected", "target_sent"]);
    let done = run(&mut c, t, &mut log);
    let session = done.reply.session;
    assert_eq!(done.reply.welcome.subsystem, "s");
    assert_eq!(done.deliveries.len(), 1);
    assert_eq!(done.deliveries[0].target.generation, 1);
    assert_eq!(done.deliveries[0].session, session);
    // Connected is derived from the session, never stored as true.
    assert!(c.gateways().iter().all(|g| g.connected));
    assert!(log.iter().flat_map(|l| &l.gateways).all(|g| !g.connected));
    // A second link with the same id is refused while the first holds.
    assert!(matches!(
        c.register(register("gw"), 3),
        Err(Error::AlreadyConnected(_))
    ));

    let t = c.apply(model("web:2"), 4).unwrap();
    assert_eq!(t.deliveries().len(), 1);
    let done = run(&mut c, t, &mut log);
    assert_eq!(done.reply.targets[0].generation, 2);
    assert!(done.reply.targets[0].pushed);

    let t = c.disconnect("gw", session, "gone", 5).unwrap();
    run(&mut c, t, &mut log);
    assert!(c.gateways().iter().all(|g| !g.connected));
    assert!(c.disconnect("gw", session, "again", 6).is_none());
}

#[test]
fn reports_move_the_phase_and_failures_are_judged_by_generation() {
    let mut c = core();
    let mut log = Vec::new();
    let t = c.apply(model("web:1"), 1).unwrap();
    run(&mut c, t, &mut log);
    let t = c.register(register("gw"), 2).unwrap();
    let session = run(&mut c, t, &mut log).reply.session;
    let phase = |c: &Core| c.status().subsystems[0].phase;
    assert_eq!(phase(&c), SubsystemPhase::Deploying as i32);

    let failed = |generation| StatusReport {
        generation,
        components: vec![ComponentStatus {
            component: "web".into(),
            state: ComponentState::Failed as i32,
            reason: "exited".into(),
            since_unix_ms: i64::MAX / 2, // a gateway clock far ahead says nothing
            generation,
            ..ComponentStatus::default()
        }],
    };
    let t = c.report_status("gw", session, failed(1), 3).unwrap();
    run(&mut c, t, &mut log);
    assert_eq!(phase(&c), SubsystemPhase::Failed as i32);
    // A brief status keeps what fails, and only that.
    assert_eq!(c.status_of(true).subsystems[0].components.len(), 1);

    // A new generation: the old failure is history until the gateway says more.
    let t = c.apply(model("web:2"), 4).unwrap();
    run(&mut c, t, &mut log);
    assert_eq!(phase(&c), SubsystemPhase::Deploying as i32);

    let t = c
        .ack(
            "gw",
            session,
            Ack {
                generation: 2,
                accepted: true,
                reason: String::new(),
            },
            5,
        )
        .unwrap();
    run(&mut c, t, &mut log);
    let current = c.subsystems["s"].target.model.clone();
    let t = c
        .report_current(
            "gw",
            session,
            CurrentReport {
                observed_generation: 2,
                model: Some(Document {
                    name: "current".into(),
                    json: current,
                }),
            },
            6,
        )
        .unwrap();
    run(&mut c, t, &mut log);
    let mut running = failed(2);
    running.components[0].state = ComponentState::Running as i32;
    running.components[0].reason.clear();
    let t = c.report_status("gw", session, running, 7).unwrap();
    run(&mut c, t, &mut log);
    assert_eq!(phase(&c), SubsystemPhase::Converged as i32);
    assert_eq!(c.status().subsystems[0].components.len(), 1);
    assert!(c.status_of(true).subsystems[0].components.is_empty());
    // The same status again is no event and no write.
    let mut again = failed(2);
    again.components[0].state = ComponentState::Running as i32;
    again.components[0].reason.clear();
    assert!(c
        .report_status("gw", session, again, 8)
        .unwrap()
        .changes
        .is_empty());

    // A report on a session that is not the gateway's is refused.
    assert!(c.report_status("gw", session + 1, failed(2), 9).is_err());
    // So is one about a generation never sent.
    assert!(c.report_status("gw", session, failed(9), 9).is_err());
}

#[test]
fn a_rollback_reads_older_revisions_from_where_the_shell_keeps_them() {
    let mut c = core();
    let mut log = Vec::new();
    let mut kept: BTreeMap<u64, StoredRevision> = BTreeMap::new();
    for image in ["web:1", "web:2"] {
        let t = c.apply(model(image), 1).unwrap();
        let r = t.changes.revisions[0].clone();
        kept.insert(r.meta.as_ref().unwrap().number, r);
        run(&mut c, t, &mut log);
    }
    let t = c
        .rollback(
            RollbackRequest {
                to: 1,
                ..RollbackRequest::default()
            },
            &kept,
            3,
        )
        .unwrap();
    let done = run(&mut c, t, &mut log);
    let r = done.reply.revision.unwrap();
    assert_eq!((r.number, r.restores), (3, 1));
    assert!(matches!(
        c.rollback(
            RollbackRequest {
                to: 9,
                ..RollbackRequest::default()
            },
            &kept,
            4
        ),
        Err(Error::NoRevision(9))
    ));
}

#[test]
fn the_event_log_is_trimmed_to_its_retention_by_the_transitions() {
    let mut c = core();
    c.log.retention = 20;
    let mut log = Vec::new();
    for i in 1..=30u32 {
        let t = c.apply(model(&format!("web:{i}")), i64::from(i)).unwrap();
        run(&mut c, t, &mut log);
    }
    let forgotten: Vec<u64> = log.iter().filter_map(|l| l.forget_events_before).collect();
    // Trimmed in chunks once the log holds a tenth more than it keeps.
    assert_eq!(forgotten, [4, 7, 10]);
    assert_eq!((c.log.oldest, c.log.last), (10, 30));
}

#[test]
fn functions_placed_on_a_gateway_away_past_the_grace_period_move_in_a_revision() {
    let mut c = core();
    let mut log = Vec::new();
    let gateway = |id: &str| {
        format!(
            r#"{{"id": "{id}", "components": [{{"id": "{id}", "kind": "gateway", "equipped_with_bridge": true,
                "capabilities": {{"labels": {{"location": "lab"}}}}}}]}}"#
        )
    };
    let json = format!(
        r#"{{"name": "m", "subsystems": [{}, {}], "components": [
            {{"id": "f", "kind": "function", "triggers": ["/t"], "context": {{"location": "lab"}},
              "resources": {{"container": {{"image": "f:1"}}}}}}]}}"#,
        gateway("gw-a"),
        gateway("gw-b")
    );
    let prepared = Prepared::from_request(
        ApplyRequest {
            megamodel: Some(Document {
                name: "m.json".into(),
                json: json.into_bytes(),
            }),
            ..ApplyRequest::default()
        },
        &Default::default(),
    )
    .unwrap();
    let t = c.apply(prepared, 1).unwrap();
    run(&mut c, t, &mut log);
    let placed_on = |c: &Core| {
        let head = &c.head.as_ref().unwrap().megamodel;
        head.subsystems
            .iter()
            .find(|s| s.component("f").is_some())
            .and_then(|s| s.id.clone())
    };
    assert_eq!(placed_on(&c).as_deref(), Some("gw-a"));
    let t = c.register(register("gw-a"), 2).unwrap();
    let session = run(&mut c, t, &mut log).reply.session;
    // Connected: nothing moves, however long.
    let t = c.move_from_away(1_000_000, 1_000).unwrap();
    assert_eq!(t.reply, Moved::Nothing);
    let t = c.disconnect("gw-a", session, "gone", 10_000).unwrap();
    run(&mut c, t, &mut log);
    // Away, but not for longer than the grace period.
    assert_eq!(
        c.move_from_away(10_500, 1_000).unwrap().reply,
        Moved::Nothing
    );
    // Past it: one revision, by `continuum`, saying what moved where.
    let t = c.move_from_away(11_500, 1_000).unwrap();
    assert_eq!(kinds(&t.changes), ["revision"]);
    let done = run(&mut c, t, &mut log);
    let Moved::Moved(message) = done.reply else {
        panic!("{:?}", done.reply)
    };
    assert!(
        message.contains("gw-a away") && message.contains("function f to gw-b"),
        "{message}"
    );
    assert_eq!(placed_on(&c).as_deref(), Some("gw-b"));
    let head = c.head.as_ref().unwrap();
    assert_eq!(head.meta.author, "continuum");
    assert_eq!(head.meta.message, message);
    // Done once: nothing is left on gw-a.
    assert_eq!(
        c.move_from_away(20_000, 1_000).unwrap().reply,
        Moved::Nothing
    );
}

/// Everything a client or a gateway can tell of the core's memory.
fn seen(c: &Core) -> String {
    format!(
        "{:?}\n{:?}\n{} {}\n{:?}",
        c.status(),
        c.gateways(),
        c.last_seq(),
        c.head_number(),
        c.head.as_ref().map(|h| &h.canonical)
    )
}

#[test]
fn undoing_a_batch_of_completions_newest_first_restores_memory_exactly() {
    let mut c = core();
    let mut log = Vec::new();
    let t = c.apply(model("web:1"), 1).unwrap();
    run(&mut c, t, &mut log);
    let t = c.register(register("gw"), 2).unwrap();
    let session = run(&mut c, t, &mut log).reply.session;
    let before = seen(&c);

    // A batch as group commit makes it: each decided on top of the last.
    let mut undos = Vec::new();
    let t = c.apply(model("web:2"), 3).unwrap();
    undos.push(c.complete(t).undo);
    let report = StatusReport {
        generation: 2,
        components: vec![ComponentStatus {
            component: "web".into(),
            state: ComponentState::Running as i32,
            generation: 2,
            ..ComponentStatus::default()
        }],
    };
    let t = c.report_status("gw", session, report, 4).unwrap();
    undos.push(c.complete(t).undo);
    let t = c.disconnect("gw", session, "gone", 5).unwrap();
    undos.push(c.complete(t).undo);
    let t = c.register(register("gw2"), 6).unwrap();
    let second = c.complete(t);
    undos.push(second.undo);
    let t = c
        .disconnect("gw2", second.reply.session, "gone too", 7)
        .unwrap();
    undos.push(c.complete(t).undo);
    let t = c.forget_gateway("gw2", 8).unwrap();
    undos.push(c.complete(t).undo);
    assert!(c.gateways().iter().all(|g| g.id != "gw2"));
    assert_ne!(seen(&c), before);

    for undo in undos.into_iter().rev() {
        c.undo(undo);
    }
    assert_eq!(seen(&c), before);
    // Session numbers too: the next registration gets the number the undone
    // one had, and the first gateway still holds its link.
    let t = c.register(register("gw2"), 8).unwrap();
    assert_eq!(c.complete(t).reply.session, second.reply.session);
    assert!(matches!(
        c.register(register("gw"), 9),
        Err(Error::AlreadyConnected(_))
    ));
}
