//! Components linked both ways (publish and subscribe, request and reply) start
//! together: validation accepts such cycles and every plan still executes.

use std::collections::HashSet;

use continuum_models::generate::Rng;
use continuum_models::simulate::{random_order, Simulator};
use continuum_models::{
    load_megamodel, plan, validate_deployment_model, DeploymentModel, Megamodel,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Services on one gateway, with random communication links in both directions;
/// `version` replaces some of them (a new image).
fn ring(seed: u64, n: usize, version: u64) -> DeploymentModel {
    let mut rng = Rng::new(seed);
    let mut components = vec![json!({"id": "gw", "kind": "gateway"})];
    let mut links: Vec<Value> = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        if rng.chance(0.15) {
            continue; // absent in this version
        }
        let id = format!("s{i}");
        let tag = if rng.chance(0.3) { version } else { 0 };
        components.push(json!({"id": id, "kind": "service",
            "resources": {"container": {"image": format!("svc:{tag}")}}}));
        links.push(json!({"kind": "hosting", "component": id, "host": "gw"}));
        ids.push(id);
    }
    let mut seen = HashSet::new();
    for _ in 0..(ids.len() * 3 / 2) {
        if ids.len() < 2 {
            break;
        }
        let (a, b) = (&ids[rng.below(ids.len())], &ids[rng.below(ids.len())]);
        if a != b && seen.insert((a.clone(), b.clone())) {
            links.push(json!({"kind": "communication", "from": a, "to": b}));
        }
    }
    let doc = json!({"name": "ring", "subsystems": [{"id": "a", "components": components, "links": links}]});
    let text = serde_json::to_string(&doc).unwrap();
    let mm: Megamodel = load_megamodel("ring.json", &text).unwrap_or_else(|e| panic!("{e}"));
    mm.subsystems.into_iter().next().unwrap().canonical()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn plans_between_models_with_communication_cycles_execute(
        seed in any::<u64>(), n in 2usize..30, order in any::<u64>()
    ) {
        let a = ring(seed, n, 1);
        let b = ring(seed.wrapping_add(7), n, 2);
        prop_assert_eq!(validate_deployment_model(&a), vec![]);
        prop_assert_eq!(validate_deployment_model(&b), vec![]);
        for (from, to) in [(&DeploymentModel::default(), &a), (&a, &b), (&b, &DeploymentModel::default())] {
            let p = plan(from, to);
            let mut sim = Simulator::new(from);
            if let Err(v) = sim.run(&p, &random_order(&p, order), to) {
                return Err(TestCaseError::fail(format!("{v}\nplan:\n{p}")));
            }
            let want: HashSet<String> = to.components.iter()
                .filter(|c| c.kind().has_lifecycle())
                .map(|c| c.id.clone())
                .collect();
            prop_assert_eq!(sim.running(), &want);
        }
    }
}

#[test]
fn the_plan_says_which_components_start_together() {
    let text = r#"{"name": "pubsub", "subsystems": [{"id": "a",
        "components": [
            {"id": "gw", "kind": "gateway"},
            {"id": "publisher", "kind": "service", "resources": {"container": {"image": "p:1"}}},
            {"id": "subscriber", "kind": "service", "resources": {"container": {"image": "s:1"}}},
            {"id": "db", "kind": "service", "resources": {"container": {"image": "d:1"}}}
        ],
        "links": [
            {"kind": "hosting", "component": "publisher", "host": "gw"},
            {"kind": "hosting", "component": "subscriber", "host": "gw"},
            {"kind": "hosting", "component": "db", "host": "gw"},
            {"kind": "communication", "from": "publisher", "to": "subscriber"},
            {"kind": "communication", "from": "subscriber", "to": "publisher"},
            {"kind": "communication", "from": "subscriber", "to": "db"}
        ]}]}"#;
    let mm = load_megamodel("pubsub.json", text).unwrap_or_else(|e| panic!("{e}"));
    let p = plan(&DeploymentModel::default(), &mm.subsystems[0]);
    assert_eq!(
        p.start_together,
        vec![vec!["publisher".to_owned(), "subscriber".to_owned()]]
    );
    let shown = p.to_string();
    assert!(shown.contains("start together, in no order"), "{shown}");
    // The database still starts before the subscriber that needs it.
    let step = |what: &str| {
        p.steps
            .iter()
            .position(|s| s.action.to_string() == what)
            .unwrap()
    };
    assert!(p.steps[step("start subscriber")]
        .after
        .contains(&step("start db")));
    assert!(!p.steps[step("start subscriber")]
        .after
        .contains(&step("start publisher")));
    assert!(!p.steps[step("start publisher")]
        .after
        .contains(&step("start subscriber")));
}
