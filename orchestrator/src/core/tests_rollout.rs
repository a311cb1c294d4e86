//! Staged rollouts on the core alone: waves, thresholds, pause, resume,
//! abort, late gateways, a revision that replaces a rollout, and a restart.

use continuum_proto::v1::{
    event, ApplyRequest, Capabilities, ComponentState, ComponentStatus, ControlRolloutRequest,
    CurrentReport, Document, Register, RolloutAction, RolloutPolicy, RolloutState, StatusReport,
    SubsystemPhase,
};

use super::rollout::released_in;
use super::*;
use crate::store::Snapshot;

/// A fleet of `n` subsystems `s0..`, each with its gateway `g0..` and one
/// service at `version`.
fn fleet(n: usize, version: u32, rollout: Option<RolloutPolicy>) -> Prepared {
    let subsystems: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"id": "s{i}", "components": [
                    {{"id": "g{i}", "kind": "gateway"}},
                    {{"id": "web{i}", "kind": "service", "resources": {{"container": {{"image": "web:{version}"}}}}}}],
                  "links": [{{"kind": "hosting", "component": "web{i}", "host": "g{i}"}}]}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"name": "fleet", "subsystems": [{}]}}"#,
        subsystems.join(",")
    );
    Prepared::from_request(
        ApplyRequest {
            megamodel: Some(Document {
                name: "fleet.json".into(),
                json: json.into_bytes(),
            }),
            rollout,
            ..ApplyRequest::default()
        },
        &Default::default(),
    )
    .unwrap()
}

/// The core with the shell's round: each transition completed, then the
/// rollout moved on as `handle` does after every round.
struct Harness {
    core: Core,
    now: i64,
    sessions: BTreeMap<String, u64>,
    /// Every target delivered: (gateway, generation).
    delivered: Vec<(String, u64)>,
    writes: Vec<Changes>,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            core: Core::from_snapshot(Snapshot::default(), 0, CoreConfig::for_tests()).unwrap(),
            now: 0,
            sessions: BTreeMap::new(),
            delivered: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn done<T>(&mut self, t: Transition<T>) -> T {
        self.writes.push(t.changes.clone());
        let d = self.core.complete(t);
        for x in &d.deliveries {
            self.delivered
                .push((x.gateway_id.clone(), x.target.generation));
        }
        while let Some(t) = self.core.advance_rollout(self.now).unwrap() {
            self.writes.push(t.changes.clone());
            let a = self.core.complete(t);
            for x in &a.deliveries {
                self.delivered
                    .push((x.gateway_id.clone(), x.target.generation));
            }
        }
        d.reply
    }

    fn tick(&mut self) -> i64 {
        self.now += 1;
        self.now
    }

    fn apply(&mut self, p: Prepared) -> continuum_proto::v1::ApplyResponse {
        let now = self.tick();
        let t = self.core.apply(p, now).unwrap();
        self.done(t)
    }

    fn connect(&mut self, gateway: &str, labels: &[(&str, &str)]) {
        let now = self.tick();
        let reg = Register {
            gateway_id: gateway.into(),
            capabilities: Some(Capabilities {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Capabilities::default()
            }),
            ..Register::default()
        };
        let t = self.core.register(reg, now).unwrap();
        let r = self.done(t);
        self.sessions.insert(gateway.into(), r.session);
    }

    /// The gateway reports it runs its newest target.
    fn converge(&mut self, gateway: &str) {
        let now = self.tick();
        let subsystem = self.core.subsystem_of(gateway).unwrap().to_owned();
        let target = self.core.subsystems[&subsystem].target.clone();
        let report = CurrentReport {
            observed_generation: target.generation,
            model: Some(Document {
                name: "current".into(),
                json: target.model,
            }),
        };
        let t = self
            .core
            .report_current(gateway, self.sessions[gateway], report, now)
            .unwrap();
        self.done(t);
    }

    fn fail(&mut self, gateway: &str) {
        let now = self.tick();
        let subsystem = self.core.subsystem_of(gateway).unwrap().to_owned();
        let generation = self.core.subsystems[&subsystem].target.generation;
        let component = format!("web{}", &gateway[1..]);
        let report = StatusReport {
            generation,
            components: vec![ComponentStatus {
                component,
                state: ComponentState::Failed as i32,
                reason: "exited with 1".into(),
                generation,
                ..ComponentStatus::default()
            }],
        };
        let t = self
            .core
            .report_status(gateway, self.sessions[gateway], report, now)
            .unwrap();
        self.done(t);
    }

    fn control(&mut self, action: RolloutAction) -> Result<continuum_proto::v1::Rollout, Error> {
        let now = self.tick();
        let req = ControlRolloutRequest {
            action: action as i32,
            ..ControlRolloutRequest::default()
        };
        let t = self.core.control_rollout(&req, "ops", now)?;
        Ok(self.done(t))
    }

    fn rollout(&self) -> continuum_proto::v1::Rollout {
        self.core.rollout().unwrap()
    }

    /// The generation each subsystem's target has now.
    fn generation(&self, subsystem: &str) -> u64 {
        self.core.subsystems[subsystem].target.generation
    }

    /// A fleet of `n` connected, converged at version 1.
    fn converged_fleet(n: usize) -> Harness {
        let mut h = Harness::new();
        h.apply(fleet(n, 1, None));
        for i in 0..n {
            let g = format!("g{i}");
            h.connect(
                &g,
                if i % 5 == 0 {
                    &[("ring", "canary")]
                } else {
                    &[]
                },
            );
            h.converge(&g);
        }
        h.delivered.clear();
        h
    }
}

fn waves(canary: u32, percent: u32) -> RolloutPolicy {
    RolloutPolicy {
        canary_count: canary,
        wave_percent: percent,
        ..RolloutPolicy::default()
    }
}

#[test]
fn a_staged_revision_reaches_each_wave_once_the_one_before_converged() {
    let mut h = Harness::converged_fleet(10);
    let r = h.apply(fleet(10, 2, Some(waves(1, 30))));
    assert_eq!(r.targets.len(), 10);
    assert_eq!(
        r.targets.iter().filter(|t| !t.held).count(),
        1,
        "only the canary"
    );
    assert_eq!(h.delivered, [("g0".to_owned(), 2)]);
    // Held subsystems keep their target; status says they wait.
    assert_eq!(h.generation("s1"), 1);
    let status = h.core.status();
    let s1 = status
        .subsystems
        .iter()
        .find(|s| s.subsystem == "s1")
        .unwrap();
    assert_eq!(s1.phase, SubsystemPhase::Pending as i32);
    assert_eq!(s1.pending_generation, 2);

    // Waves of 30% of 10 = 3, each started when the one before converged.
    let mut started = vec![1usize];
    for wave in 1..=4 {
        let released = released_in(&h.rollout());
        for s in &released {
            let g = format!("g{}", &s[1..]);
            if h.generation(s) == 2 && h.core.subsystems[s].observed_generation != 2 {
                h.converge(&g);
            }
        }
        let now = released_in(&h.rollout()).len();
        if h.rollout().state() == RolloutState::Completed {
            break;
        }
        started.push(now);
        assert!(wave < 4, "never completed: {:?}", h.rollout());
    }
    assert_eq!(started, [1, 4, 7, 10]);
    // The last wave converges: the rollout completes.
    for i in 7..10 {
        let g = format!("g{i}");
        if h.core.subsystems[&format!("s{i}")].observed_generation != 2 {
            h.converge(&g);
        }
    }
    let done = h.rollout();
    assert_eq!(done.state(), RolloutState::Completed, "{done:?}");
    assert_eq!(done.waves.len(), 4);
    assert!(done.waves[0].canary);
    assert!(done
        .waves
        .iter()
        .all(|w| w.settled_unix_ms >= w.started_unix_ms));
    // Each gateway was given generation 2 exactly once.
    let mut got: Vec<&str> = h
        .delivered
        .iter()
        .filter(|(_, g)| *g == 2)
        .map(|(id, _)| id.as_str())
        .collect();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), 10);
    assert_eq!(h.delivered.len(), 10);
    // Every change of state was an event.
    let rollout_events = h
        .writes
        .iter()
        .flat_map(|w| &w.events)
        .filter(|e| matches!(e.kind, Some(event::Kind::Rollout(_))))
        .count();
    assert_eq!(rollout_events, 5, "started, three more waves, completed");
}

#[test]
fn the_canary_is_chosen_by_label_and_too_many_failures_roll_it_back() {
    let mut h = Harness::converged_fleet(10);
    let policy = RolloutPolicy {
        canary_labels: [("ring".to_owned(), "canary".to_owned())].into(),
        wave_size: 5,
        max_failures: 1,
        rollback_on_failure: true,
        ..RolloutPolicy::default()
    };
    h.apply(fleet(10, 2, Some(policy)));
    let canary = released_in(&h.rollout());
    assert_eq!(canary, ["s0".to_owned(), "s5".to_owned()].into());
    // One failure is tolerated...
    h.fail("g0");
    assert_eq!(h.rollout().state(), RolloutState::Running);
    assert_eq!(h.rollout().failed, 1);
    // ...and the wave settles with it: the next one starts.
    h.converge("g5");
    assert_eq!(released_in(&h.rollout()).len(), 7);
    // A second failure is one too many: rolled back as a new revision.
    h.fail("g1");
    let r = h.rollout();
    assert_eq!(r.state(), RolloutState::RolledBack, "{r:?}");
    assert_eq!(r.ended_by, 3);
    assert!(
        r.reason
            .contains("2 of 7 released subsystems failed (s0, s1)"),
        "{}",
        r.reason
    );
    assert_eq!(h.core.head_number(), 3);
    assert!(h
        .core
        .head
        .as_ref()
        .unwrap()
        .meta
        .message
        .contains("rolled back"));
    // The released subsystems run version 1 again at generation 3; the held
    // ones never left it (generation 1, nothing sent).
    for i in 0..10 {
        let s = format!("s{i}");
        let released = i <= 6;
        let expected = if released { 3 } else { 1 };
        assert_eq!(h.generation(&s), expected, "{s}");
        let model = &h.core.subsystems[&s].target_model;
        assert!(
            serde_json::to_string(&**model).unwrap().contains("web:1"),
            "{s}"
        );
    }
    assert!(h
        .delivered
        .iter()
        .all(|(g, _)| !["g7", "g8", "g9"].contains(&g.as_str())));
    // Nothing left to control.
    assert!(matches!(
        h.control(RolloutAction::Pause),
        Err(Error::RolloutState(_))
    ));
}

#[test]
fn a_halted_rollout_waits_for_resume_or_abort() {
    let mut h = Harness::converged_fleet(6);
    h.apply(fleet(6, 2, Some(waves(2, 50))));
    h.fail("g0");
    let r = h.rollout();
    assert_eq!(r.state(), RolloutState::Halted);
    h.converge("g1");
    assert_eq!(released_in(&h.rollout()).len(), 2, "halted: no new wave");
    assert!(matches!(
        h.control(RolloutAction::Pause),
        Err(Error::RolloutState(_))
    ));
    // Resumed: the failure is accepted, the next wave starts.
    let r = h.control(RolloutAction::Resume).unwrap();
    assert_eq!((r.state(), r.tolerated), (RolloutState::Running, 1));
    assert_eq!(released_in(&h.rollout()).len(), 5);
    // Aborted: everything it changed goes back.
    let r = h.control(RolloutAction::Abort).unwrap();
    assert_eq!(r.state(), RolloutState::RolledBack);
    assert!(r.reason.starts_with("aborted by ops"), "{}", r.reason);
    assert_eq!(h.generation("s5"), 1, "held: untouched");
    assert_eq!(h.generation("s2"), 3, "released: restored");
}

#[test]
fn a_paused_rollout_starts_no_wave_until_resumed() {
    let mut h = Harness::converged_fleet(4);
    h.apply(fleet(4, 2, Some(waves(1, 25))));
    let r = h.control(RolloutAction::Pause).unwrap();
    assert_eq!(r.state(), RolloutState::Paused);
    assert_eq!(r.reason, "paused by ops");
    h.converge("g0");
    assert_eq!(released_in(&h.rollout()).len(), 1);
    h.control(RolloutAction::Resume).unwrap();
    assert_eq!(released_in(&h.rollout()).len(), 2);
}

#[test]
fn a_gateway_that_registers_during_a_rollout_gets_the_target_of_its_wave() {
    let mut h = Harness::new();
    h.apply(fleet(3, 1, None));
    for g in ["g0", "g1"] {
        h.connect(g, &[]);
        h.converge(g);
    }
    h.apply(fleet(3, 2, Some(waves(1, 100))));
    // Connected gateways go first: the canary is s0, not the absent g2's s2.
    assert_eq!(released_in(&h.rollout()), ["s0".to_owned()].into());
    h.delivered.clear();
    h.connect("g2", &[]);
    assert_eq!(
        h.delivered,
        [("g2".to_owned(), 1)],
        "held: its earlier target"
    );
    h.converge("g2");
    h.converge("g0");
    // The next wave takes the rest; g2 is in it now.
    assert!(h.delivered.contains(&("g2".to_owned(), 2)));
    h.converge("g1");
    h.converge("g2");
    assert_eq!(h.rollout().state(), RolloutState::Completed);
}

#[test]
fn a_policy_that_means_nothing_is_refused_and_changes_nothing() {
    let h = Harness::converged_fleet(2);
    for bad in [
        waves(0, 150),
        RolloutPolicy {
            max_failures_percent: 101,
            ..RolloutPolicy::default()
        },
        RolloutPolicy {
            wave_size: 1,
            wave_percent: 50,
            ..RolloutPolicy::default()
        },
    ] {
        let e = h.core.apply(fleet(2, 2, Some(bad)), 9).unwrap_err();
        assert!(matches!(e, Error::BadRequest(_)), "{e}");
    }
    assert_eq!(h.core.head_number(), 1);
    assert!(h.core.rollout().is_none());
}

#[test]
fn a_new_revision_replaces_a_running_rollout() {
    let mut h = Harness::converged_fleet(4);
    h.apply(fleet(4, 2, Some(waves(1, 25))));
    h.delivered.clear();
    let r = h.apply(fleet(4, 3, None));
    assert!(r.targets.iter().all(|t| !t.held && t.pushed));
    assert_eq!(h.delivered.len(), 4);
    let old = h.core.rollout().unwrap();
    assert_eq!((old.state(), old.ended_by), (RolloutState::Superseded, 3));
    assert!(h.writes.last().unwrap().clear_rollout_changes);
}

#[test]
fn a_rollout_survives_a_restart_from_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut h = Harness::converged_fleet(5);
    h.apply(fleet(5, 2, Some(waves(1, 40))));
    h.converge("g0");
    for w in &h.writes {
        store.commit(w).unwrap();
    }
    let before = h.rollout();
    let core = Core::from_snapshot(store.load().unwrap(), 0, CoreConfig::for_tests()).unwrap();
    let after = core.rollout().unwrap();
    assert_eq!(after.waves, before.waves);
    assert_eq!(after.state(), RolloutState::Running);
    let held: Vec<String> = (0..5)
        .map(|i| format!("s{i}"))
        .filter(|s| core.active_rollout().unwrap().held(s).is_some())
        .collect();
    assert_eq!(held, ["s3", "s4"]);
    assert_eq!(core.subsystems["s4"].target.generation, 1);
}
