//! Placement of functions that no hosting link places: on the only matching
//! gateway, spread by load, refused with every gateway's reason, and with what
//! their templates add.

use std::collections::HashMap;

use continuum_models::load::prepare;
use continuum_models::placement::rank;
use continuum_models::{load_megamodel, load_template, Link, Megamodel};
use serde_json::json;

fn gateway(id: &str, location: &str, cpus: u32) -> serde_json::Value {
    json!({"id": id, "kind": "gateway", "equipped_with_bridge": true,
           "capabilities": {"arch": "x86_64", "cpus": cpus, "memory_mb": 1024, "docker": true,
                            "labels": {"location": location}}})
}

fn model(gateways: Vec<serde_json::Value>, functions: Vec<serde_json::Value>) -> Megamodel {
    let subsystems: Vec<serde_json::Value> = gateways
        .into_iter()
        .map(|g| json!({"id": format!("s-{}", g["id"].as_str().unwrap()), "components": [g]}))
        .collect();
    let doc = json!({"name": "m", "subsystems": subsystems, "components": functions});
    load_megamodel("m.json", &doc.to_string()).expect("valid")
}

fn function(id: &str, location: &str) -> serde_json::Value {
    json!({"id": id, "kind": "function", "triggers": ["/t"],
           "context": {"location": location, "threshold": "3"},
           "resources": {"container": {"image": "fn:1"}}})
}

fn host_of(mm: &Megamodel, id: &str) -> Option<String> {
    mm.subsystems
        .iter()
        .flat_map(|s| s.links.iter())
        .chain(mm.links.iter())
        .find_map(|l| match l {
            Link::Hosting { component, host } if component == id => Some(host.clone()),
            _ => None,
        })
}

#[test]
fn a_function_goes_to_the_only_gateway_its_context_matches_and_explain_says_why_not_the_others() {
    let mm = model(
        vec![
            gateway("gw-a", "a", 8),
            gateway("gw-b", "b", 2),
            gateway("gw-c", "c", 8),
        ],
        vec![function("f", "b")],
    );
    let placed = prepare(&mm, &HashMap::new(), &Default::default()).expect("placed");
    assert_eq!(host_of(&placed, "f").as_deref(), Some("gw-b"));
    assert!(placed.subsystem("s-gw-b").unwrap().component("f").is_some());
    let judged = rank(&mm, mm.components.iter().find(|c| c.id == "f").unwrap());
    assert_eq!(judged[0].gateway, "gw-b");
    assert!(judged[0].score.is_some());
    for j in &judged[1..] {
        assert!(j.score.is_none());
        assert!(
            j.excluded[0].contains("the function's context wants b"),
            "{:?}",
            j.excluded
        );
    }
}

#[test]
fn functions_spread_over_equal_gateways_and_the_bigger_one_takes_more() {
    let mm = model(
        vec![gateway("gw-a", "x", 2), gateway("gw-b", "x", 2)],
        vec![function("f1", "x"), function("f2", "x")],
    );
    let placed = prepare(&mm, &HashMap::new(), &Default::default()).unwrap();
    let hosts = [
        host_of(&placed, "f1").unwrap(),
        host_of(&placed, "f2").unwrap(),
    ];
    assert_ne!(hosts[0], hosts[1], "{hosts:?}");
    // Weights: memory alone counts; gateway b has four times the memory.
    let mut gb = gateway("gw-b", "x", 1);
    gb["capabilities"]["memory_mb"] = json!(4096);
    let mut mm = model(
        vec![gateway("gw-a", "x", 16), gb],
        vec![
            function("f1", "x"),
            function("f2", "x"),
            function("f3", "x"),
        ],
    );
    mm.placement.cpu = 0;
    let placed = prepare(&mm, &HashMap::new(), &Default::default()).unwrap();
    let on_b = ["f1", "f2", "f3"]
        .iter()
        .filter(|f| host_of(&placed, f).as_deref() == Some("gw-b"))
        .count();
    assert_eq!(
        on_b, 3,
        "memory-weighted placement prefers the 4 GiB gateway"
    );
}

#[test]
fn no_gateway_for_a_function_is_a_problem_naming_each_and_why() {
    let mut no_bridge = gateway("gw-c", "a", 4);
    no_bridge["equipped_with_bridge"] = json!(false);
    let mut f = function("f", "a");
    f["requires"] = json!(["arch=armv7"]);
    let mm = model(
        vec![gateway("gw-a", "a", 4), gateway("gw-b", "b", 4), no_bridge],
        vec![f],
    );
    let problems = prepare(&mm, &HashMap::new(), &Default::default()).unwrap_err();
    assert_eq!(problems.len(), 1);
    let m = &problems[0].message;
    assert!(m.contains("no gateway can run function `f`"), "{m}");
    assert!(m.contains("gw-a: it does not offer `arch=armv7`"), "{m}");
    assert!(m.contains("gw-b: its location is b"), "{m}");
    assert!(m.contains("gw-c: it has no bridge"), "{m}");
    assert_eq!(problems[0].path.to_string(), "components[0]");
}

#[test]
fn what_a_template_adds_follows_its_function() {
    let t = load_template(
        "t.json",
        &json!({"template": "t", "components": [
            {"id": "main", "kind": "service", "placeholder": true,
             "resources": {"container": {"image": "rt:1"}}},
            {"id": "db", "kind": "service", "resources": {"container": {"image": "db:1"}}}
        ]})
        .to_string(),
    )
    .unwrap();
    let mut f = function("f", "b");
    f["runtime"] = json!("t");
    f.as_object_mut().unwrap().remove("resources");
    let mm = model(
        vec![gateway("gw-a", "a", 4), gateway("gw-b", "b", 4)],
        vec![f],
    );
    let placed = prepare(
        &mm,
        &HashMap::from([("t".to_owned(), t)]),
        &Default::default(),
    )
    .unwrap();
    let s = placed.subsystem("s-gw-b").unwrap();
    assert!(s.component("f").is_some() && s.component("f-db").is_some());
}

#[test]
fn functions_placed_on_a_gateway_that_went_away_move_to_the_next_best() {
    let mut lab2 = gateway("gw-c", "b", 2);
    lab2["capabilities"]["memory_mb"] = json!(512);
    let mm = model(
        vec![gateway("gw-a", "a", 8), gateway("gw-b", "b", 8), lab2],
        vec![function("f", "b")],
    );
    let placed = prepare(&mm, &HashMap::new(), &Default::default()).unwrap();
    assert_eq!(host_of(&placed, "f").as_deref(), Some("gw-b"));
    // Nothing was placed on gw-a.
    assert!(
        continuum_models::placement::move_off(&placed, &["gw-a"], &Default::default())
            .unwrap()
            .is_none()
    );
    let (moved, moves) =
        continuum_models::placement::move_off(&placed, &["gw-b"], &Default::default())
            .unwrap()
            .expect("f moves");
    assert_eq!(moves, [("f".to_owned(), "gw-c".to_owned())]);
    assert_eq!(host_of(&moved, "f").as_deref(), Some("gw-c"));
    assert!(moved.subsystem("s-gw-c").unwrap().component("f").is_some());
    assert!(moved.subsystem("s-gw-b").unwrap().component("f").is_none());
    // With nowhere else to go, it is an error, and nothing moves.
    let e = continuum_models::placement::move_off(&moved, &["gw-b", "gw-c"], &Default::default())
        .unwrap_err();
    assert!(
        e[0].message.contains("no gateway can run function `f`"),
        "{e:?}"
    );
}

#[test]
fn measured_load_outweighs_declared_capacity_and_a_placed_function_stays_put() {
    use continuum_models::placement::{explain, Measured, Observed};
    let mm = model(
        vec![gateway("gw-a", "x", 8), gateway("gw-b", "x", 2)],
        vec![function("f", "x"), function("g", "x")],
    );
    // Declared: gw-a offers more, both functions go there first.
    let declared = prepare(&mm, &HashMap::new(), &Default::default()).unwrap();
    assert_eq!(host_of(&declared, "f").as_deref(), Some("gw-a"));
    // Measured: gw-a's host is nearly saturated, gw-b's idle.
    let mut observed = Observed::default();
    observed.load.insert(
        "gw-a".into(),
        Measured {
            cpus: 8,
            load: 7.9,
            memory_available_mb: 256,
        },
    );
    observed.load.insert(
        "gw-b".into(),
        Measured {
            cpus: 2,
            load: 0.1,
            memory_available_mb: 4096,
        },
    );
    let measured = prepare(&mm, &HashMap::new(), &observed).unwrap();
    assert_eq!(host_of(&measured, "f").as_deref(), Some("gw-b"));
    // With a gateway unmeasured, nobody is scored by measurement (the scales
    // differ): declared capacity decides, as at first.
    let mut partial = observed.clone();
    partial.load.remove("gw-a");
    let placed = prepare(&mm, &HashMap::new(), &partial).unwrap();
    assert_eq!(host_of(&placed, "f").as_deref(), Some("gw-a"));
    let judged = explain(&mm, "f", &observed).unwrap();
    assert_eq!(judged[0].gateway, "gw-b");
    assert_eq!(judged[0].measured.map(|m| m.cpus), Some(2));
    // `g` is judged after `f` went to gw-b, which it now shares: (1.9 + 4) / 2
    // still beats gw-a's 0.1 + 0.25.
    assert_eq!(host_of(&measured, "g").as_deref(), Some("gw-b"));
    // Placed before on gw-a, `f` stays there while gw-a is a candidate.
    observed.placed.insert("f".into(), "gw-a".into());
    let sticky = prepare(&mm, &HashMap::new(), &observed).unwrap();
    assert_eq!(host_of(&sticky, "f").as_deref(), Some("gw-a"));
    // Unless gw-a no longer fits it.
    let moved_away = model(
        vec![gateway("gw-a", "y", 8), gateway("gw-b", "x", 2)],
        vec![function("f", "x")],
    );
    let placed = prepare(&moved_away, &HashMap::new(), &observed).unwrap();
    assert_eq!(host_of(&placed, "f").as_deref(), Some("gw-b"));
}
