//! Property tests of diff, apply and plan on generated models.

use std::collections::HashSet;

use continuum_models::generate::{generate, mutate};
use continuum_models::parse::parse_deployment_model;
use continuum_models::simulate::{random_order, Simulator};
use continuum_models::{diff, plan, validate_deployment_model, DeploymentModel};
use proptest::prelude::*;

fn models() -> impl Strategy<Value = (DeploymentModel, DeploymentModel, u64)> {
    (any::<u64>(), 1usize..120, 0.0f64..1.0, any::<u64>()).prop_map(|(seed, n, rate, order)| {
        let a = generate(seed, n);
        let b = mutate(&a, seed.wrapping_add(1), rate);
        (a, b, order)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_models_are_valid((a, b, _) in models()) {
        prop_assert_eq!(validate_deployment_model(&a), vec![]);
        prop_assert_eq!(validate_deployment_model(&b), vec![]);
    }

    #[test]
    fn diff_of_a_model_with_itself_is_empty((a, _, _) in models()) {
        prop_assert!(diff(&a, &a).is_empty());
        prop_assert!(plan(&a, &a).is_empty());
    }

    #[test]
    fn applying_the_diff_gives_the_target((a, b, _) in models()) {
        let d = diff(&a, &b);
        let applied = d.apply(&a).expect("diff applies");
        prop_assert_eq!(applied, b.clone().canonical());
        // And it is empty exactly when the models are the same.
        prop_assert_eq!(d.is_empty(), a.clone().canonical() == b.clone().canonical());
    }

    #[test]
    fn executing_the_plan_turns_current_into_target((a, b, order) in models()) {
        let p = plan(&a, &b);
        let mut sim = Simulator::new(&a);
        let order = random_order(&p, order);
        if let Err(v) = sim.run(&p, &order, &b) {
            return Err(TestCaseError::fail(format!("{v}\nplan:\n{p}")));
        }
        let mut expected = b.clone().canonical();
        expected.id = None;
        expected.on_failure = None;
        prop_assert_eq!(sim.model(), expected);
        let want: HashSet<String> = b.components.iter()
            .filter(|c| c.kind().has_lifecycle())
            .map(|c| c.id.clone())
            .collect();
        prop_assert_eq!(sim.running(), &want);
        // The bridge carries exactly the target's routes.
        let routes: std::collections::HashMap<String, Vec<continuum_models::route::Route>> = b
            .components
            .iter()
            .map(|c| (c.id.clone(), continuum_models::route::routes_of(c)))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        prop_assert_eq!(sim.routes(), &routes);
    }

    #[test]
    fn steps_are_listed_by_phase_and_touch_only_what_changed((a, b, _) in models()) {
        let d = diff(&a, &b);
        let p = plan(&a, &b);
        let touched: HashSet<&str> = d.added.iter().map(|c| c.id.as_str())
            .chain(d.removed.iter().map(|c| c.id.as_str()))
            .chain(d.changed.iter().map(|c| c.id.as_str()))
            .collect();
        for (i, s) in p.steps.iter().enumerate() {
            prop_assert_eq!(s.id, i);
            if i > 0 {
                prop_assert!(p.steps[i - 1].phase <= s.phase, "steps out of phase order");
            }
            for &dep in &s.after {
                prop_assert!(dep < i, "step #{} depends on later step #{}", i, dep);
            }
            if let Some(c) = s.action.component() {
                prop_assert!(touched.contains(c), "step on unchanged component {}", c);
            }
        }
    }

    #[test]
    fn canonical_and_unordered_models_diff_and_plan_alike((a, b, _) in models()) {
        use continuum_models::diff::is_canonical;
        let (ca, cb) = (a.clone().canonical(), b.clone().canonical());
        prop_assert!(is_canonical(&ca) && is_canonical(&cb));
        // The generator's ids (c0, c1, ..., c10) are not in canonical order.
        prop_assume!(!is_canonical(&a) || a.components.len() < 11);
        prop_assert_eq!(diff(&ca, &cb), diff(&a, &b));
        let (p1, p2) = (plan(&ca, &cb), plan(&a, &b));
        prop_assert_eq!(p1.len(), p2.len());
        let mut sim = Simulator::new(&ca);
        let order: Vec<usize> = (0..p1.len()).collect();
        if let Err(v) = sim.run(&p1, &order, &cb) {
            return Err(TestCaseError::fail(format!("{v}")));
        }
    }

    #[test]
    fn json_round_trip((a, _, _) in models()) {
        let text = serde_json::to_string_pretty(&a).unwrap();
        let (back, problems) = parse_deployment_model("gen.json", &text).expect("parses");
        prop_assert_eq!(problems, vec![]);
        prop_assert_eq!(back, a);
    }
}

/// The generator must exercise every kind of change, or the properties above
/// prove little.
#[test]
fn generated_changes_cover_every_case() {
    use continuum_models::diff::{ChangeAction, ReplaceCause};
    let mut seen = [false; 8];
    for seed in 0..300u64 {
        let a = generate(seed, 80);
        let b = mutate(&a, seed + 1, 0.4);
        let d = diff(&a, &b);
        seen[0] |= !d.added.is_empty();
        seen[1] |= !d.removed.is_empty();
        seen[6] |= !d.links_added.is_empty();
        seen[7] |= !d.links_removed.is_empty();
        for c in &d.changed {
            match &c.action {
                ChangeAction::Update => seen[2] = true,
                ChangeAction::Replace {
                    cause: ReplaceCause::Spec,
                } => seen[3] = true,
                ChangeAction::Replace {
                    cause: ReplaceCause::Moved { .. },
                } => seen[4] = true,
                ChangeAction::Replace {
                    cause: ReplaceCause::Host { .. },
                } => seen[5] = true,
            }
        }
    }
    assert_eq!(
        seen, [true; 8],
        "added, removed, update, replace, moved, cascade, link+, link-"
    );
}
