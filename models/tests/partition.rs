//! Partitioning into subsystem models and template expansion.

use std::collections::HashMap;
use std::path::Path;

use continuum_models::load::prepare;
use continuum_models::template::{expand, ENV_CONTEXT, ENV_FUNCTION, ENV_TRIGGERS};
use continuum_models::{load_megamodel, load_template, partition, Link, Megamodel, Template};
use serde_json::json;

fn example(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn shell_template() -> HashMap<String, Template> {
    let t = load_template(
        "shell-function.json",
        &example("templates/shell-function.json"),
    )
    .expect("template is valid");
    HashMap::from([("../templates/shell-function.json".to_owned(), t)])
}

fn ids(mm: &Megamodel, subsystem: &str) -> Vec<String> {
    let mut v: Vec<String> = mm
        .subsystem(subsystem)
        .unwrap()
        .components
        .iter()
        .map(|c| c.id.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn smart_building_is_partitioned_and_expanded() {
    let mm = load_megamodel("v1.json", &example("smart-building/v1.json")).expect("v1 is valid");
    let p = prepare(&mm, &shell_template(), &Default::default()).expect("prepares");
    assert_eq!(ids(&p, "building-a"), ["presence", "smart-gw"]);
    assert_eq!(
        ids(&p, "sensors"),
        ["arduino-flow", "iot-flow", "sensor-gw", "uno"]
    );
    assert_eq!(
        p.components
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        ["context-broker"]
    );
    // The link to the external broker crosses subsystems: it stays at the top.
    assert_eq!(
        p.links,
        vec![Link::communication("presence", "context-broker")]
    );
    let sub = p.subsystem("building-a").unwrap();
    assert_eq!(
        sub.on_failure,
        Some(continuum_models::FailurePolicy::Rollback)
    );
    let presence = sub.component("presence").unwrap();
    let container = presence
        .as_function()
        .unwrap()
        .resources
        .container
        .as_ref()
        .expect("expanded");
    let build = container.build.as_ref().unwrap();
    // The template's context is found beside the template; the function's
    // source is put into it.
    assert_eq!(build.context, "../templates/shell-function");
    assert_eq!(build.include["function"], "./presence-function");
    assert_eq!(container.env[ENV_FUNCTION], "presence");
    assert_eq!(container.env[ENV_TRIGGERS], "/presence/presenceIndicators");
    assert_eq!(container.env[ENV_CONTEXT], r#"{"location":"building-a"}"#);
    assert_eq!(presence.properties["continuum.template"], "shell-function");
    assert_eq!(
        presence.properties["runtime"], "shell",
        "placeholder properties carried over"
    );
}

#[test]
fn single_file_form_derives_subsystems() {
    let doc = json!({
        "name": "flat",
        "components": [
            {"id": "gw-a", "kind": "gateway"},
            {"id": "gw-b", "kind": "gateway", "subsystem": "lab"},
            {"id": "h", "kind": "host", "subsystem": "gw-a"},
            {"id": "s", "kind": "service", "resources": {"container": {"image": "x"}}},
            {"id": "d", "kind": "device", "board": "uno", "need_deployer": true},
            {"id": "fw", "kind": "firmware", "resources": {"flash": {"artefact": "fw.hex"}}},
            {"id": "f", "kind": "function", "resources": {"container": {"image": "f"}}},
            {"id": "e", "kind": "external", "endpoint": "http://x"}
        ],
        "links": [
            {"kind": "hosting", "component": "s", "host": "h"},
            {"kind": "hosting", "component": "fw", "host": "d"},
            {"kind": "communication", "from": "gw-b", "to": "d", "physical": true},
            {"kind": "communication", "from": "s", "to": "e"},
            {"kind": "communication", "from": "s", "to": "fw", "is_control": true}
        ]
    });
    let mm = load_megamodel("flat.json", &doc.to_string()).expect("valid");
    let p = partition(&mm).expect("partitions");
    assert_eq!(ids(&p, "gw-a"), ["gw-a", "h", "s"]);
    assert_eq!(ids(&p, "lab"), ["d", "fw", "gw-b"]);
    let top: Vec<&str> = p.components.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        top,
        ["f", "e"],
        "unplaced function and external stay at the top"
    );
    assert_eq!(p.subsystem("lab").unwrap().links.len(), 2);
    assert_eq!(
        p.links.len(),
        2,
        "links between subsystems stay at the top: {:?}",
        p.links
    );
    // Partitioning keeps every component and link, and moves nothing else.
    assert_eq!(p.flatten().components.len(), mm.flatten().components.len());
    assert_eq!(p.flatten().links, mm.flatten().links);
    // Components moved into a subsystem do not repeat it.
    assert!(p
        .subsystems
        .iter()
        .flat_map(|s| &s.components)
        .all(|c| c.subsystem.is_none()));
}

#[test]
fn with_one_subsystem_everything_goes_there() {
    let doc = json!({
        "name": "one",
        "components": [
            {"id": "gw", "kind": "gateway"},
            {"id": "h", "kind": "host"},
            {"id": "s", "kind": "service", "resources": {"container": {"image": "x"}}}
        ],
        "links": [{"kind": "hosting", "component": "s", "host": "h"}]
    });
    let mm = load_megamodel("one.json", &doc.to_string()).expect("valid");
    let p = partition(&mm).unwrap();
    assert_eq!(ids(&p, "gw"), ["gw", "h", "s"]);
}

fn sidecar_template() -> Template {
    let t = json!({
        "template": "with-sidecar",
        "components": [
            {"id": "main", "kind": "service", "placeholder": true,
             "resources": {"container": {"image": "rt/{{function.id}}:1", "env": {"LOC": "{{context.location}}"}}}},
            {"id": "metrics", "kind": "service", "resources": {"container": {"image": "metrics:1", "env": {"OF": "{{function.name}}"}}}},
            {"id": "rt-host", "kind": "host"}
        ],
        "links": [
            {"kind": "hosting", "component": "main", "host": "rt-host"},
            {"kind": "hosting", "component": "metrics", "host": "rt-host"},
            {"kind": "communication", "from": "metrics", "to": "main"}
        ]
    });
    load_template("t.json", &t.to_string()).expect("template valid")
}

fn with_function(function: serde_json::Value, hosted: bool) -> Megamodel {
    let mut links = vec![];
    if hosted {
        links.push(json!({"kind": "hosting", "component": "fn", "host": "gw"}));
    }
    let doc = json!({"name": "m", "subsystems": [{"id": "a",
        "components": [{"id": "gw", "kind": "gateway"}, function], "links": links}]});
    load_megamodel("m.json", &doc.to_string()).expect("valid")
}

#[test]
fn template_components_are_renamed_and_wired() {
    let mm = with_function(
        json!({"id": "fn", "name": "My fn", "kind": "function", "runtime": "t", "context": {"location": "b1"}}),
        false,
    );
    let templates = HashMap::from([("t".to_owned(), sidecar_template())]);
    let p = expand(&mm, &templates).expect("expands");
    let s = p.subsystem("a").unwrap();
    let c = s
        .component("fn")
        .unwrap()
        .as_function()
        .unwrap()
        .resources
        .container
        .clone()
        .unwrap();
    assert_eq!(c.image.as_deref(), Some("rt/fn:1"));
    assert_eq!(c.env["LOC"], "b1");
    let metrics = s.component("fn-metrics").expect("sidecar added, renamed");
    assert_eq!(
        metrics
            .spec
            .resources()
            .unwrap()
            .container
            .as_ref()
            .unwrap()
            .env["OF"],
        "My fn"
    );
    assert!(s.component("fn-rt-host").is_some());
    assert!(s.links.contains(&Link::hosting("fn", "fn-rt-host")));
    assert!(s.links.contains(&Link::communication("fn-metrics", "fn")));
    // Expanding again changes nothing: the function has its resources now.
    assert_eq!(expand(&p, &templates).unwrap(), p);
    // And the result is a valid megamodel.
    assert_eq!(continuum_models::validate_megamodel(&p), vec![]);
}

#[test]
fn invocation_settings_reach_the_runtimes_environment() {
    let mm = with_function(
        json!({"id": "fn", "kind": "function", "runtime": "t", "context": {"location": "b1"},
               "invocation": {"timeout": "2s", "concurrency": 2, "retries": 0}}),
        true,
    );
    let templates = HashMap::from([("t".to_owned(), sidecar_template())]);
    let p = expand(&mm, &templates).unwrap();
    let f = p.subsystem("a").unwrap().component("fn").unwrap();
    let env = &f
        .as_function()
        .unwrap()
        .resources
        .container
        .as_ref()
        .unwrap()
        .env;
    assert_eq!(env["CONTINUUM_TIMEOUT"], "2s");
    assert_eq!(env["CONTINUUM_CONCURRENCY"], "2");
    assert_eq!(env["CONTINUUM_RETRIES"], "0");
    assert!(!env.contains_key("CONTINUUM_RETRY_BACKOFF"));

    let doc = json!({"name": "m", "subsystems": [{"id": "a", "components": [
        {"id": "gw", "kind": "gateway"},
        {"id": "fn", "kind": "function", "invocation": {"timeout": "forever", "concurrency": 0}}]}]});
    let err = load_megamodel("m.json", &doc.to_string()).unwrap_err();
    let text = err.to_string();
    for wanted in [
        "subsystems[0].components[1].invocation.timeout",
        "subsystems[0].components[1].invocation.concurrency",
    ] {
        assert!(text.contains(wanted), "{wanted} in {text}");
    }
    let doc = json!({"name": "m", "subsystems": [{"id": "a", "components": [
        {"id": "gw", "kind": "gateway"},
        {"id": "fn", "kind": "function", "invocation": {"timeuot": "1s"}}]}]});
    let text = load_megamodel("m.json", &doc.to_string())
        .unwrap_err()
        .to_string();
    assert!(text.contains("timeuot"), "{text}");
}

#[test]
fn a_hosted_function_keeps_its_host() {
    let mm = with_function(
        json!({"id": "fn", "kind": "function", "runtime": "t", "context": {"location": "b1"}}),
        true,
    );
    let templates = HashMap::from([("t".to_owned(), sidecar_template())]);
    let p = expand(&mm, &templates).unwrap();
    let s = p.subsystem("a").unwrap();
    assert!(s.links.contains(&Link::hosting("fn", "gw")));
    assert!(!s.links.contains(&Link::hosting("fn", "fn-rt-host")));
}

#[test]
fn expansion_errors_name_the_function() {
    // `context.location` is not given, and the template is missing for the second.
    let mm = with_function(
        json!({"id": "fn", "kind": "function", "runtime": "t"}),
        true,
    );
    let templates = HashMap::from([("t".to_owned(), sidecar_template())]);
    let err = expand(&mm, &templates).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(
        err[0].path.to_string(),
        "subsystems[0].components[1].runtime"
    );
    assert!(
        err[0]
            .message
            .contains("unknown variable `{{context.location}}`"),
        "{}",
        err[0].message
    );
    let err = expand(&mm, &HashMap::new()).unwrap_err();
    assert!(err[0]
        .message
        .contains("runtime template `t` is not available"));
}

#[test]
fn templates_need_exactly_one_placeholder() {
    for (components, message) in [
        (
            json!([{"id": "a", "kind": "service", "resources": {"container": {"image": "x"}}}]),
            "no placeholder",
        ),
        (
            json!([
                {"id": "a", "kind": "service", "placeholder": true, "resources": {"container": {"image": "x"}}},
                {"id": "b", "kind": "service", "placeholder": true}
            ]),
            "a second placeholder",
        ),
        (
            json!([{"id": "a", "kind": "host", "placeholder": true}]),
            "a host cannot be a placeholder",
        ),
        (
            json!([{"id": "a", "kind": "service", "placeholder": true, "resources": {"container": {"env": {"A": "b"}}}}]),
            "nothing would run the function",
        ),
    ] {
        let t = json!({"template": "t", "components": components});
        let err = load_template("t.json", &t.to_string()).unwrap_err();
        assert!(
            err.diagnostics.iter().any(|d| d.message.contains(message)),
            "{err}"
        );
    }
}

#[test]
fn the_templates_a_model_names_are_found_without_validating_it() {
    use continuum_models::load::template_runtimes;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/smart-building");
    let text = std::fs::read_to_string(dir.join("v1.json")).unwrap();
    assert_eq!(
        template_runtimes(&text),
        ["../templates/shell-function.json"]
    );
    // An invalid model still names its templates; a function with resources of
    // its own needs none; each is named once.
    let text = r#"{"name": 3, "components": [
        {"id": "f", "kind": "function", "runtime": "t.json", "bogus": true},
        {"id": "g", "kind": "function", "runtime": "t.json"},
        {"id": "h", "kind": "function", "runtime": "own.json", "resources": {"container": {"image": "x"}}}],
      "subsystems": [{"id": "s", "components": [{"id": "k", "kind": "function", "runtime": "u.json"}]}]}"#;
    assert_eq!(template_runtimes(text), ["t.json", "u.json"]);
    assert!(template_runtimes("{ not json").is_empty());
}

/// Templates do not nest: a template that brings a function naming a
/// runtime is refused with a clear problem, however many functions use it,
/// and in bounded time (one pass, no recursion).
#[test]
fn a_template_that_would_nest_is_refused_in_one_pass() {
    let nest = json!({"template": "nest", "components": [
        {"id": "runtime", "kind": "service", "placeholder": true,
         "resources": {"container": {"image": "x:1"}}},
        {"id": "inner", "kind": "function", "runtime": "nest.json", "triggers": ["in/#"]}
    ], "links": []})
    .to_string();
    let functions: Vec<serde_json::Value> = (0..3000)
        .map(|i| json!({"id": format!("f{i}"), "kind": "function", "runtime": "nest.json", "triggers": ["in/#"]}))
        .collect();
    let mut components = vec![json!({"id": "gw", "kind": "gateway"})];
    components.extend(functions);
    let mm =
        json!({"name": "n", "subsystems": [{"id": "s", "components": components}]}).to_string();
    let started = std::time::Instant::now();
    let result = continuum_models::load::load_prepared("mm.json", &mm, |_| {
        Ok(continuum_models::load::TemplateText {
            name: "nest.json".into(),
            text: nest.clone(),
        })
    });
    let elapsed = started.elapsed();
    let Err(e) = result else {
        panic!("a nesting template was accepted");
    };
    let text = e.to_string();
    assert!(text.contains("nest"), "{text}");
    assert!(
        e.diagnostics
            .iter()
            .any(|d| d.message.contains("templates do not nest")),
        "{text}"
    );
    eprintln!("3,000 functions of a nesting template refused in {elapsed:?}");
}
