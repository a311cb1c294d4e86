//! Every validation rule, each with the path it reports and what it expects.

use continuum_models::load_megamodel;
use serde_json::{json, Value};

/// Loads a megamodel and returns (path, message, expected) of every problem.
fn problems(doc: Value) -> Vec<(String, String, String)> {
    let text = serde_json::to_string_pretty(&doc).unwrap();
    match load_megamodel("test.json", &text) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .diagnostics
            .into_iter()
            .map(|d| {
                assert!(d.line > 0, "every problem is located: {d}");
                (d.path, d.message, d.expected.unwrap_or_default())
            })
            .collect(),
    }
}

fn has(problems: &[(String, String, String)], path: &str, message: &str) -> bool {
    problems
        .iter()
        .any(|(p, m, _)| p == path && m.contains(message))
}

/// A small valid subsystem to break in each test.
fn base() -> Value {
    json!({
        "name": "t",
        "subsystems": [{
            "id": "a",
            "components": [
                {"id": "gw", "kind": "gateway"},
                {"id": "svc", "kind": "service", "resources": {"container": {"image": "x:1"}}},
                {"id": "fn", "kind": "function", "triggers": ["/in/#"], "resources": {"container": {"image": "f:1"}}},
                {"id": "dev", "kind": "device", "board": "uno", "need_deployer": true},
                {"id": "fw", "kind": "firmware", "resources": {"flash": {"artefact": "a.hex"}}}
            ],
            "links": [
                {"kind": "hosting", "component": "svc", "host": "gw"},
                {"kind": "hosting", "component": "fw", "host": "dev"},
                {"kind": "communication", "from": "gw", "to": "dev", "physical": true}
            ]
        }]
    })
}

fn components(doc: &mut Value) -> &mut Vec<Value> {
    doc["subsystems"][0]["components"].as_array_mut().unwrap()
}

fn links(doc: &mut Value) -> &mut Vec<Value> {
    doc["subsystems"][0]["links"].as_array_mut().unwrap()
}

#[test]
fn the_base_model_is_valid() {
    assert_eq!(problems(base()), vec![]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut doc = base();
    components(&mut doc)[1]["colour"] = json!("red");
    components(&mut doc)[2]["triggers"] = json!(["a/#/b"]);
    links(&mut doc).push(json!({"kind": "hosting", "component": "fn", "host": "nowhere"}));
    let p = problems(doc);
    assert_eq!(p.len(), 3, "{p:#?}");
}

#[test]
fn unknown_fields_with_suggestions() {
    let mut doc = base();
    components(&mut doc)[1]["resources"]["container"]["enviroment"] = json!({});
    doc["subsytems"] = json!([]);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1].resources.container.enviroment",
        "unknown field"
    ));
    assert!(has(&p, "subsytems", "unknown field `subsytems`"));
    let hint = &p.iter().find(|x| x.0 == "subsytems").unwrap().2;
    assert!(hint.contains("did you mean `subsystems`"), "{hint}");
}

#[test]
fn duplicate_ids() {
    let mut doc = base();
    components(&mut doc).push(json!({"id": "svc", "kind": "external"}));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[5].id",
        "duplicate component id `svc`"
    ));
    assert!(p[0].2.contains("subsystems[0].components[1]"));
}

#[test]
fn invalid_ids() {
    let mut doc = base();
    components(&mut doc).push(json!({"id": "Bad_Id", "kind": "external"}));
    components(&mut doc).push(json!({"id": "-x", "kind": "external"}));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[5].id",
        "invalid component id `Bad_Id`"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[6].id",
        "invalid component id `-x`"
    ));
}

#[test]
fn links_to_missing_components() {
    let mut doc = base();
    links(&mut doc).push(json!({"kind": "communication", "from": "svc", "to": "sv"}));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].links[3].to",
        "link to missing component `sv`"
    ));
    assert!(p[0].2.contains("did you mean `svc`"), "{:?}", p[0]);
}

#[test]
fn hosting_cycles() {
    let mut doc = base();
    components(&mut doc)
        .push(json!({"id": "s2", "kind": "service", "resources": {"container": {"image": "x"}}}));
    components(&mut doc)
        .push(json!({"id": "s3", "kind": "service", "resources": {"container": {"image": "x"}}}));
    links(&mut doc).push(json!({"kind": "hosting", "component": "s2", "host": "s3"}));
    links(&mut doc).push(json!({"kind": "hosting", "component": "s3", "host": "s2"}));
    let p = problems(doc);
    assert!(
        p.iter()
            .any(|(_, m, _)| m.starts_with("hosting cycle: s2 -> s3 -> s2")),
        "{p:#?}"
    );
}

#[test]
fn dependency_cycles_through_communication() {
    // Communication links both ways order nothing: the two start together.
    let mut doc = base();
    links(&mut doc).push(json!({"kind": "communication", "from": "svc", "to": "fn"}));
    links(&mut doc).push(json!({"kind": "communication", "from": "fn", "to": "svc"}));
    assert_eq!(problems(doc), vec![]);
    // A cycle through a hosting link cannot be started: `fn` runs on `svc`,
    // which needs `fn`.
    let mut doc = base();
    links(&mut doc).push(json!({"kind": "hosting", "component": "fn", "host": "svc"}));
    links(&mut doc).push(json!({"kind": "communication", "from": "svc", "to": "fn"}));
    let p = problems(doc);
    assert!(
        p.iter().any(
            |(_, m, _)| m.starts_with("dependency cycle: svc -> fn -> svc")
                || m.starts_with("hosting cycle: svc -> fn -> svc")
        ),
        "{p:#?}"
    );
    // A physical link carries no ordering, so it never closes a cycle.
    let mut doc = base();
    links(&mut doc)
        .push(json!({"kind": "communication", "from": "dev", "to": "gw", "physical": true}));
    assert_eq!(problems(doc), vec![]);
}

#[test]
fn software_hosted_nowhere_except_functions() {
    let mut doc = base();
    links(&mut doc).remove(0);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1]",
        "service `svc` is hosted nowhere"
    ));
    assert_eq!(
        p.len(),
        1,
        "the unhosted function is left for placement: {p:#?}"
    );
}

#[test]
fn firmware_on_a_non_device() {
    let mut doc = base();
    links(&mut doc)[1]["host"] = json!("gw");
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].links[1].host",
        "firmware `fw` cannot be hosted on gateway `gw`"
    ));
}

#[test]
fn a_component_hosted_twice() {
    let mut doc = base();
    components(&mut doc).push(json!({"id": "h", "kind": "host"}));
    links(&mut doc).push(json!({"kind": "hosting", "component": "svc", "host": "h"}));
    let p = problems(doc);
    assert!(has(&p, "subsystems[0].links[3]", "`svc` is hosted twice"));
}

#[test]
fn invalid_topic_filters_in_triggers() {
    let mut doc = base();
    components(&mut doc)[2]["triggers"] = json!(["ok/+/x", "bad/#/x", "bad+", ""]);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[2].triggers[1]",
        "invalid MQTT topic filter `bad/#/x`"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[2].triggers[2]",
        "'+' must be alone"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[2].triggers[3]",
        "cannot be empty"
    ));
    assert_eq!(p.len(), 3);
}

#[test]
fn invalid_datastream_names() {
    let mut doc = base();
    components(&mut doc)[2]["outputs"] = json!(["a/b", "ok", "ok"]);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[2].outputs[0]",
        "invalid datastream name"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[2].outputs[2]",
        "listed twice"
    ));
}

#[test]
fn placeholders_outside_templates() {
    let mut doc = base();
    components(&mut doc)[1]["placeholder"] = json!(true);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1].placeholder",
        "placeholder outside a template"
    ));
}

#[test]
fn need_deployer_device_that_nothing_reaches() {
    let mut doc = base();
    links(&mut doc).remove(2);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[3].need_deployer",
        "no gateway or host can reach it"
    ));
    // A deployer link from software on the gateway reaches it too.
    let mut doc = base();
    links(&mut doc).remove(2);
    links(&mut doc)
        .push(json!({"kind": "communication", "from": "svc", "to": "fw", "is_deployer": true}));
    assert_eq!(problems(doc), vec![]);
}

#[test]
fn fields_that_do_not_apply_to_the_kind() {
    let mut doc = base();
    components(&mut doc)[1]["triggers"] = json!(["x"]);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1].triggers",
        "field `triggers` does not apply to a service"
    ));
    assert!(p[0].2.contains("only on a function"));
}

#[test]
fn missing_required_kind_fields() {
    let mut doc = base();
    components(&mut doc)[3]
        .as_object_mut()
        .unwrap()
        .remove("board");
    components(&mut doc)[4]["resources"] = json!({});
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[3]",
        "device has no `board`"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[4].resources",
        "firmware `fw` has no flash resource"
    ));
}

#[test]
fn container_specs() {
    let mut doc = base();
    components(&mut doc)[1]["resources"]["container"] = json!({"image": "x", "build": {"context": "."}, "ports": [{"container": 0}], "env": {"A=B": "c"}});
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1].resources.container.build",
        "both `image` and `build`"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[1].resources.container.ports[0]",
        "port 0"
    ));
    assert!(has(
        &p,
        "subsystems[0].components[1].resources.container.env.A=B",
        "invalid environment variable name"
    ));
}

#[test]
fn subsystem_rules() {
    let mut doc = base();
    components(&mut doc).push(json!({"id": "gw2", "kind": "gateway"}));
    doc["subsystems"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "b", "components": []}));
    doc["subsystems"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "a", "components": []}));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[5]",
        "subsystem `a` has a second gateway `gw2`"
    ));
    assert!(has(&p, "subsystems[1]", "subsystem `b` has no gateway"));
    assert!(has(&p, "subsystems[2].id", "duplicate subsystem id `a`"));
}

#[test]
fn explicit_subsystem_must_match_and_exist() {
    let mut doc = base();
    components(&mut doc)[1]["subsystem"] = json!("zzz");
    doc["components"] = json!([{"id": "ext", "kind": "external", "subsystem": "nope"}]);
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].components[1].subsystem",
        "says `zzz` but the component is inside subsystem `a`"
    ));
    assert!(has(
        &p,
        "components[0].subsystem",
        "unknown subsystem `nope`"
    ));
}

#[test]
fn hosting_across_subsystems() {
    let mut doc = base();
    doc["subsystems"].as_array_mut().unwrap().push(json!({
        "id": "b",
        "components": [
            {"id": "gw-b", "kind": "gateway"},
            {"id": "svc-b", "kind": "service", "resources": {"container": {"image": "x"}}}
        ],
        "links": [{"kind": "hosting", "component": "svc-b", "host": "gw"}]
    }));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[1].links[0]",
        "`svc-b` (subsystem `b`) is hosted on `gw` (subsystem `a`)"
    ));
}

#[test]
fn single_file_form_needs_a_derivable_subsystem() {
    let doc = json!({
        "name": "flat",
        "components": [
            {"id": "gw1", "kind": "gateway"},
            {"id": "gw2", "kind": "gateway"},
            {"id": "h", "kind": "host"},
            {"id": "s", "kind": "service", "resources": {"container": {"image": "x"}}},
            {"id": "d", "kind": "device", "board": "uno"}
        ],
        "links": [
            {"kind": "hosting", "component": "s", "host": "h"},
            {"kind": "communication", "from": "gw1", "to": "d", "physical": true},
            {"kind": "communication", "from": "gw2", "to": "d", "physical": true}
        ]
    });
    let p = problems(doc);
    assert!(has(
        &p,
        "components[2]",
        "cannot tell which subsystem host `h` belongs to"
    ));
    assert!(has(
        &p,
        "components[3]",
        "cannot tell which subsystem service `s` belongs to"
    ));
    assert!(has(
        &p,
        "components[4]",
        "device `d` is linked to several subsystems: `gw1`, `gw2`"
    ));
}

#[test]
fn bad_link_shapes() {
    let mut doc = base();
    links(&mut doc).push(json!({"kind": "hosting", "component": "svc"}));
    links(&mut doc).push(json!({"kind": "communication", "from": "svc", "to": "fn", "host": "gw"}));
    links(&mut doc).push(json!({"kind": "communication", "from": "svc", "to": "svc"}));
    let p = problems(doc);
    assert!(has(
        &p,
        "subsystems[0].links[3]",
        "hosting link has no `host`"
    ));
    assert!(has(
        &p,
        "subsystems[0].links[4].host",
        "does not apply to a communication link"
    ));
    assert!(has(
        &p,
        "subsystems[0].links[5]",
        "`svc` is linked to itself"
    ));
}

#[test]
fn malformed_documents_give_one_located_error() {
    for (text, path, needle) in [
        (
            "{\"name\": \"x\", \"subsystems\": [{\"id\": 5}]}",
            "subsystems[0].id",
            "invalid type: integer `5`",
        ),
        (
            "{\"name\": \"x\", \"components\": [{\"id\": \"a\", \"kind\": \"servce\"}]}",
            "components[0].kind",
            "unknown variant `servce`",
        ),
        ("{\"components\": []}", "", "missing field `name`"),
        ("[1, 2]", "", "not a JSON object"),
        ("", "", "EOF while parsing"),
        ("{\"name\": \"x\",}", "", "trailing comma"),
    ] {
        let e = load_megamodel("m.json", text).expect_err(text);
        assert_eq!(e.diagnostics.len(), 1, "{text}");
        let d = &e.diagnostics[0];
        assert_eq!(d.path, path, "{text}");
        assert!(d.message.contains(needle), "{text}: {}", d.message);
        assert!(d.line >= 1, "{text}");
    }
}

#[test]
fn a_subsystem_model_has_exactly_one_gateway() {
    use continuum_models::load::load_deployment_model;
    let ok = json!({"id": "a", "components": [{"id": "gw", "kind": "gateway"}]});
    assert!(load_deployment_model("s.json", &ok.to_string()).is_ok());
    let none = json!({"id": "a", "components": [{"id": "h", "kind": "host"}]});
    let e = load_deployment_model("s.json", &none.to_string()).unwrap_err();
    assert!(
        e.diagnostics[0]
            .message
            .contains("subsystem `a` has no gateway"),
        "{e}"
    );
    let two = json!({"id": "a", "components": [{"id": "g1", "kind": "gateway"}, {"id": "g2", "kind": "gateway"}]});
    let e = load_deployment_model("s.json", &two.to_string()).unwrap_err();
    assert_eq!(e.diagnostics[0].path, "components[1]");
}

#[test]
fn bridge_routes() {
    let mut doc = base();
    components(&mut doc)[0] = json!({
        "id": "gw", "kind": "gateway",
        "routes": [
            {"topic": "a/#/b", "direction": "in"},
            {"topic": "ok/#", "direction": "out", "remote_prefix": "site/+/"},
            {"topic": "ok/#", "direction": "out", "remote_prefix": "site/+/"}
        ]
    });
    let p = problems(doc);
    assert!(
        has(&p, "subsystems[0].components[0].routes", "without a bridge"),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "subsystems[0].components[0].routes[0].topic",
            "invalid MQTT topic filter"
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "subsystems[0].components[0].routes[1].remote_prefix",
            "invalid topic prefix"
        ),
        "{p:?}"
    );
    assert!(
        has(&p, "subsystems[0].components[0].routes[2]", "listed twice"),
        "{p:?}"
    );

    let mut doc = base();
    components(&mut doc)[0] = json!({
        "id": "gw", "kind": "gateway", "equipped_with_bridge": true,
        "routes": [{"topic": "a/#", "direction": "sideways"}]
    });
    let p = problems(doc);
    assert!(!p.is_empty(), "an unknown direction is refused");
    let mut doc = base();
    components(&mut doc)[0] = json!({
        "id": "gw", "kind": "gateway", "equipped_with_bridge": true,
        "routes": [{"topic": "a/#", "direction": "in", "local_prefix": "x/"}]
    });
    assert_eq!(problems(doc), vec![]);
}

#[test]
fn flash_health_confirmation_and_signature() {
    let mut doc = base();
    components(&mut doc)[4]["resources"]["flash"] = json!({
        "artefact": "a.hex",
        "health": "^{\"pir\":(",
        "confirm_within": "soon",
        "signature": "abc"
    });
    let p = problems(doc);
    let at = "subsystems[0].components[4].resources.flash";
    assert!(
        has(&p, &format!("{at}.health"), "is not a regular expression"),
        "{p:?}"
    );
    assert!(
        has(&p, &format!("{at}.confirm_within"), "is not a duration"),
        "{p:?}"
    );
    assert!(
        has(&p, &format!("{at}.signature"), "not an ed25519 signature"),
        "{p:?}"
    );

    let mut doc = base();
    components(&mut doc)[4]["resources"]["flash"] =
        json!({"artefact": "a.hex", "confirm_within": "0s"});
    let p = problems(doc);
    assert!(
        has(&p, &format!("{at}.confirm_within"), "out of range"),
        "{p:?}"
    );

    let mut doc = base();
    components(&mut doc)[4]["resources"]["flash"] = json!({
        "artefact": "a.hex",
        "health": "^\\{\"pir\":",
        "confirm_within": "5s",
        "signature": "ab".repeat(64)
    });
    assert_eq!(problems(doc), Vec::<(String, String, String)>::new());
}

#[test]
fn secrets_are_named_never_held_and_go_to_exactly_one_place() {
    let mut d = base();
    components(&mut d)[1]["resources"]["container"]["env"] = json!({"TOKEN": "x"});
    components(&mut d)[1]["resources"]["container"]["secrets"] = json!([
        {"name": "api-key", "env": "API_KEY"},
        {"name": "tls.pem", "file": "/run/secrets/tls.pem"},
        {"name": "../etc/shadow", "env": "SHADOW"},
        {"name": "both", "env": "B", "file": "/b"},
        {"name": "neither"},
        {"name": "token", "env": "TOKEN"},
        {"name": "rel", "file": "run/x"},
        {"name": "again", "env": "API_KEY"}
    ]);
    let p = problems(d);
    let at = |i: usize| format!("subsystems[0].components[1].resources.container.secrets[{i}]");
    assert!(
        has(&p, &format!("{}.name", at(2)), "cannot name a secret"),
        "{p:?}"
    );
    assert!(has(&p, &at(3), "exactly one of `env` and `file`"), "{p:?}");
    assert!(has(&p, &at(4), "exactly one of `env` and `file`"), "{p:?}");
    assert!(
        has(&p, &format!("{}.env", at(5)), "also set in `env`"),
        "{p:?}"
    );
    assert!(
        has(&p, &format!("{}.file", at(6)), "not an absolute path"),
        "{p:?}"
    );
    assert!(has(&p, &at(7), "receives two secrets"), "{p:?}");
    assert!(
        !p.iter()
            .any(|(path, _, _)| path.starts_with(&at(0)) || path.starts_with(&at(1))),
        "{p:?}"
    );
    // A value cannot be written in.
    let mut d = base();
    components(&mut d)[1]["resources"]["container"]["secrets"] =
        json!([{"name": "x", "env": "Y", "value": "inline"}]);
    assert!(has(
        &problems(d),
        &format!("{}.value", at(0)),
        "unknown field `value`"
    ));
}
