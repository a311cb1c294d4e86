//! GeneSIS import, on GeneSIS-format files written for these tests.

use std::path::Path;

use continuum_models::component::{Access, ComponentSpec};
use continuum_models::genesis::{import, normalise_id};
use continuum_models::{load_megamodel, Kind, Link};

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/genesis")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_type_is_mapped() {
    let text = fixture("every-type.json");
    let out = import("every-type.json", &text).expect("imports");
    let s = &out.summary;
    let kinds: Vec<(&str, usize)> = s.kinds.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(
        kinds,
        [
            ("device", 2),
            ("external", 5),
            ("firmware", 3),
            ("gateway", 1),
            ("host", 3),
            ("service", 10)
        ]
    );
    assert_eq!((s.links, s.containments), (2, 13));
    let mm = &out.megamodel;
    let get = |id: &str| {
        mm.components
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };

    // The machine hosting the deployer link's source is the gateway.
    match &get("edge-gateway").spec {
        ComponentSpec::Gateway(g) => {
            assert!(g.equipped_with_deployer);
            assert_eq!(
                g.access,
                Access::Docker {
                    endpoint: "tcp://192.168.1.10:2376".into()
                }
            );
            assert!(g.capabilities.docker);
        }
        other => panic!("edge-gateway: {other:?}"),
    }
    assert_eq!(get("edge-gateway").name, "Edge Gateway");
    assert_eq!(
        get("edge-gateway").properties["genesis.id"],
        "uuid-Edge Gateway"
    );
    match &get("cloud-vm").spec {
        ComponentSpec::Host(h) => assert_eq!(
            h.access,
            Access::Ssh {
                address: "10.0.0.5".into(),
                port: 22,
                user: Some("ubuntu".into())
            }
        ),
        other => panic!("cloud-vm: {other:?}"),
    }
    match &get("old-vm").spec {
        ComponentSpec::Host(h) => assert_eq!(h.access, Access::Local),
        other => panic!("old-vm: {other:?}"),
    }
    match &get("uno").spec {
        ComponentSpec::Device(d) => {
            assert_eq!(
                (d.board.as_str(), d.port.as_deref(), d.need_deployer),
                ("uno", Some("/dev/ttyACM0"), true)
            );
        }
        other => panic!("uno: {other:?}"),
    }
    // Node-RED: container, devices, ports, and the flow kept as configuration.
    let nr = get("node-red").spec.resources().unwrap();
    let c = nr.container.as_ref().unwrap();
    assert_eq!(c.image.as_deref(), Some("nodered/node-red:3"));
    assert_eq!((c.ports[0].container, c.ports[0].host), (1880, Some(1880)));
    assert_eq!(c.devices[0].host, "/dev/ttyACM0");
    assert!(nr.config.contains_key("nr_flow") && nr.config.contains_key("packages"));
    assert!(
        !nr.config.contains_key("path_flow"),
        "empty strings mean unset"
    );
    // ssh resource → commands; docker command split into words.
    let generic = get("generic")
        .spec
        .resources()
        .unwrap()
        .commands
        .clone()
        .unwrap();
    assert_eq!(generic.start.as_deref(), Some("./run.sh"));
    assert_eq!(generic.install, None);
    let legacy = get("legacy")
        .spec
        .resources()
        .unwrap()
        .container
        .clone()
        .unwrap();
    assert_eq!(legacy.command, ["serve", "--port", "80"]);
    assert!(
        legacy.devices.is_empty(),
        "an empty PathOnHost maps to no device"
    );
    // Arduino sketches and ThingML for arduino are firmware; other ThingML is a service.
    for (id, kind) in [
        ("blink", Kind::Firmware),
        ("blink-old", Kind::Firmware),
        ("tml-fw", Kind::Firmware),
        ("tml-java", Kind::Service),
        ("smool", Kind::Service),
        ("broker", Kind::Service),
        ("api", Kind::Service),
        ("authz", Kind::Service),
        ("flow", Kind::Service),
        ("orion", Kind::External),
        ("ext-node", Kind::External),
        ("ext-host", Kind::External),
        ("rfx", Kind::External),
        ("rfx-old", Kind::External),
        ("mega", Kind::Device),
        ("old-docker", Kind::Host),
        ("nr-old", Kind::Service),
        ("legacy", Kind::Service),
    ] {
        assert_eq!(get(id).kind(), kind, "{id}");
    }
    match &get("orion").spec {
        ComponentSpec::External(e) => {
            assert_eq!(e.endpoint.as_deref(), Some("tcp://10.9.9.9:1026"))
        }
        other => panic!("orion: {other:?}"),
    }
    // Links: names resolved to ids; the deployer's machine gets a physical link to the device.
    assert!(mm.links.contains(&Link::hosting("blink", "uno")));
    assert!(mm.links.contains(&Link::hosting("flow", "node-red")));
    assert!(mm.links.iter().any(|l| matches!(l, Link::Communication(c)
        if c.from == "node-red" && c.to == "blink" && c.is_deployer && c.is_control)));
    assert!(mm.links.iter().any(|l| matches!(l, Link::Communication(c)
        if c.from == "edge-gateway" && c.to == "uno" && c.physical)));
}

#[test]
fn credentials_never_reach_the_model() {
    let text = fixture("every-type.json");
    let out = import("every-type.json", &text).unwrap();
    let json = serde_json::to_string(&out.megamodel).unwrap();
    for secret in ["raspberry", "BEGIN KEY", "secret", "\"p\""] {
        assert!(!json.contains(secret), "{secret} leaked into the model");
    }
    let warned: Vec<&str> = out
        .summary
        .warnings
        .iter()
        .filter(|w| w.message.starts_with("credentials dropped"))
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(
        warned,
        [
            "dm.components[0].credentials",
            "dm.components[1].credentials",
            "dm.components[6].ssh_resource.credentials",
            "dm.components[18].ansible_resource.credentials"
        ]
    );
    assert!(out.summary.warnings[0]
        .message
        .contains("environment or a secret file"));
}

#[test]
fn what_cannot_be_mapped_is_listed() {
    let out = import("every-type.json", &fixture("every-type.json")).unwrap();
    let unmapped: Vec<&str> = out
        .summary
        .unmapped
        .iter()
        .map(|n| n.path.as_str())
        .collect();
    for expected in [
        "graph",
        "dm.type_registry",
        "dm.components[24]._type",
        "dm.links[2].src",
        "dm.components[8].docker_resource.port_bindings.abc",
        "dm.components[8].docker_resource.links",
        "dm.components[18].ansible_resource",
    ] {
        assert!(
            unmapped.contains(&expected),
            "{expected} missing from {unmapped:?}"
        );
    }
    assert!(!out.megamodel.components.iter().any(|c| c.id == "k8s-thing"));
}

#[test]
fn the_imported_model_is_a_valid_continuum_model() {
    let out = import("every-type.json", &fixture("every-type.json")).unwrap();
    let text = serde_json::to_string_pretty(&out.megamodel).unwrap();
    let mm = load_megamodel("imported.json", &text).unwrap_or_else(|e| panic!("{e}"));
    let p = continuum_models::partition(&mm).unwrap();
    assert_eq!(p.subsystems.len(), 1);
    assert_eq!(p.subsystems[0].id.as_deref(), Some("edge-gateway"));
}

#[test]
fn a_file_without_dm_is_not_a_deployment_model() {
    let err = import("not-a-model.json", &fixture("not-a-model.json")).unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert!(err.diagnostics[0]
        .message
        .contains("not a GeneSIS deployment model"));
    let err = import("x.json", "{\"dm\": {\"name\": \"x\"}}").unwrap_err();
    assert_eq!(err.diagnostics[0].path, "dm.components");
    let err = import("x.json", "{\"dm\": ").unwrap_err();
    assert!(
        err.diagnostics[0].message.contains("malformed JSON"),
        "{err}"
    );
}

#[test]
fn bad_references_and_names_are_all_reported() {
    let err = import("bad-references.json", &fixture("bad-references.json")).unwrap_err();
    let got: Vec<(&str, &str)> = err
        .diagnostics
        .iter()
        .map(|d| (d.path.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("dm.components[2].name", "duplicate component name `svc`"),
            (
                "dm.components[3].name",
                "names `svc` and `Svc!` both become the Continuum id `svc`"
            ),
            ("dm.components[4]", "component has no `name`"),
            ("dm.links[0].src", "component `svc` has no port `nope`"),
            (
                "dm.links[0].target",
                "reference to missing component `ghost`"
            ),
            (
                "dm.containments[0].target",
                "component `svc` has no port `wrong`"
            ),
        ]
    );
    assert!(err.diagnostics.iter().all(|d| d.line > 0));
}

#[test]
fn names_become_dns_labels() {
    assert_eq!(normalise_id("Edge Gateway"), "edge-gateway");
    assert_eq!(normalise_id("  __Weird--Name!! "), "weird-name");
    assert_eq!(normalise_id("日本"), "component");
    assert_eq!(normalise_id(&"a".repeat(80)).len(), 63);
}

/// Imports a fixture, checks that Continuum accepts the result, and returns it
/// with its warnings.
fn import_valid(name: &str) -> (continuum_models::Megamodel, Vec<String>) {
    let out = import(name, &fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    let text = serde_json::to_string_pretty(&out.megamodel).unwrap();
    let mm = load_megamodel("imported.json", &text).unwrap_or_else(|e| panic!("{e}"));
    let mm = continuum_models::partition(&mm).unwrap_or_else(|e| panic!("{e:?}"));
    let warnings = out
        .summary
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect();
    (mm, warnings)
}

#[test]
fn links_both_ways_start_together() {
    let (mm, _) = import_valid("both-ways.json");
    let sub = &mm.subsystems[0];
    assert!(sub
        .links
        .contains(&Link::communication("dashboard", "broker")));
    assert!(sub
        .links
        .contains(&Link::communication("broker", "dashboard")));
    let plan = continuum_models::plan(&continuum_models::DeploymentModel::default(), sub);
    // sensors -> broker -> dashboard -> sensors (request/reply) is a ring too.
    assert_eq!(
        plan.start_together,
        [vec![
            "broker".to_owned(),
            "dashboard".to_owned(),
            "sensors".to_owned()
        ]]
    );
    // What is not on the cycle keeps its order: the archive needs the broker.
    let step = |what: &str| {
        plan.steps
            .iter()
            .position(|s| s.action.to_string() == what)
            .unwrap_or_else(|| panic!("{what}\n{plan}"))
    };
    assert!(plan.steps[step("start archive")]
        .after
        .contains(&step("start broker")));
}

#[test]
fn software_without_containment_is_modelled_not_deployed() {
    let out = import("undeployed.json", &fixture("undeployed.json")).unwrap();
    assert_eq!(out.summary.undeployed, ["analytics", "analytics-plugin"]);
    let ids: Vec<&str> = out
        .megamodel
        .components
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert!(!ids.contains(&"analytics") && !ids.contains(&"analytics-plugin"));
    // The flow hosted on the deployed Node-RED stays.
    assert!(ids.contains(&"main-flow") && ids.contains(&"flows"));
    assert!(!out
        .megamodel
        .links
        .iter()
        .any(|l| l.touches("analytics") || l.touches("analytics-plugin")));
    assert_eq!((out.summary.links, out.summary.containments), (0, 2));
    let (_, warnings) = import_valid("undeployed.json");
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "dm.components[2]: `analytics` is modelled but not deployed (no containment"
        ) && w.contains("left out of the subsystems")),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w
                .starts_with("dm.components[3]: `analytics-plugin` is modelled but not deployed")),
        "{warnings:#?}"
    );
}

#[test]
fn a_device_that_hosts_software_is_a_host() {
    let (mm, warnings) = import_valid("device-host.json");
    let all: Vec<&continuum_models::Component> = mm.all_components().map(|(_, c)| c).collect();
    let pi = all.iter().find(|c| c.id == "raspberry-pi").unwrap();
    match &pi.spec {
        ComponentSpec::Host(h) => {
            assert_eq!(h.access, Access::Local);
            assert!(h.capabilities.docker, "it runs a Docker resource");
        }
        other => panic!("raspberry-pi: {other:?}"),
    }
    assert!(mm
        .all_links()
        .any(|l| *l == Link::hosting("gateway-flows", "raspberry-pi")));
    assert!(
        warnings.iter().any(|w| w.contains(
            "device `raspberry-pi` offers an execution port to software (gateway-flows); imported as a host"
        )),
        "{warnings:#?}"
    );
}

#[test]
fn a_device_no_deployer_reaches_is_wired_to_the_gateway() {
    let (mm, warnings) = import_valid("unreached-device.json");
    assert!(mm.all_links().any(|l| matches!(l, Link::Communication(c)
        if c.from == "edge" && c.to == "uno" && c.physical)));
    let all: Vec<&continuum_models::Component> = mm.all_components().map(|(_, c)| c).collect();
    match &all.iter().find(|c| c.id == "uno").unwrap().spec {
        ComponentSpec::Device(d) => assert!(d.need_deployer),
        other => panic!("uno: {other:?}"),
    }
    assert!(
        warnings.iter().any(|w| w.starts_with("dm.components[1].needDeployer: device `uno` needs a deployer but no deployer link reaches it; it is wired to the gateway `edge`")),
        "{warnings:#?}"
    );
}
