//! Import of GeneSIS deployment models (the format SERVERLESS4IOT builds on).
//!
//! Every component type and link is mapped or reported as not mappable, and
//! credentials are never carried over (the mapping is described in
//! `docs/model-format.md`). Models written for GeneSIS often hold things a
//! Continuum model states differently; each is imported as a GeneSIS user would
//! expect, with a warning that says what was decided:
//!
//! * communication links both ways between two components (publish/subscribe,
//!   request/reply) are kept: such cycles order nothing, the components start
//!   together;
//! * software that no containment places anywhere is modelled, not deployed: it
//!   is left out of the subsystems;
//! * a device that offers an execution port to software (not firmware) runs it,
//!   so it is imported as a host;
//! * a device that needs a deployer but that no deployer link reaches is wired
//!   to the gateway, whose agent then flashes it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use crate::component::*;
use crate::diagnostic::{Invalid, JsonPath, Problem};
use crate::link::{Communication, Link};
use crate::model::Megamodel;
use crate::resources::*;

/// The result of an import: the model and what the user must know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The imported megamodel.
    pub megamodel: Megamodel,
    /// What the user must know about it.
    pub summary: Summary,
}

/// What an import mapped, warned about and left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Components mapped, per Continuum kind.
    pub kinds: BTreeMap<String, usize>,
    /// Communication links mapped.
    pub links: usize,
    /// Containments (hosting links) mapped.
    pub containments: usize,
    /// Mapped, but with something the user must act on (credentials dropped...).
    pub warnings: Vec<Note>,
    /// Left out of the model.
    pub unmapped: Vec<Note>,
    /// Software that no containment places on a machine or device: modelled in
    /// GeneSIS but not deployed, so left out of the subsystems (ids).
    pub undeployed: Vec<String>,
}

/// Something the user must know, and where in the GeneSIS file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    /// The JSON path in the GeneSIS file.
    pub path: String,
    /// What was decided or left out.
    pub message: String,
}

/// How GeneSIS `_type`s map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GType {
    Machine,
    Device,
    Software,
    NodeRed,
    Arduino,
    ThingMl,
    External,
}

fn classify(t: &str) -> Option<GType> {
    let last = t.rsplit('/').next().unwrap_or(t);
    Some(match (t, last) {
        (_, "docker_host" | "vm_host") => GType::Machine,
        ("/infra/device" | "device", _) => GType::Device,
        (_, "node_red" | "node_red_flow") => GType::NodeRed,
        (_, "arduino") => GType::Arduino,
        (_, "thingml" | "smoolkp") if t.contains("thingml") || t == "thingml" => GType::ThingMl,
        (_, "external_node" | "external_host" | "rfxcom" | "external") => GType::External,
        (
            "/internal"
            | "software"
            | "/internal/mqtt"
            | "/internal/expressapi"
            | "/internal/jcasbin",
            _,
        ) => GType::Software,
        (t, _) if t.starts_with("/internal/") => GType::Software,
        (t, _) if t.starts_with("/external/") => GType::External,
        _ => return None,
    })
}

/// A GeneSIS name made into a Continuum id (a DNS label).
pub fn normalise_id(name: &str) -> String {
    let mut id = String::with_capacity(name.len());
    for ch in name.chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.ends_with('-') {
            id.push('-');
        }
    }
    let mut id = id.trim_matches('-').to_owned();
    id.truncate(63);
    let id = id.trim_end_matches('-').to_owned();
    if id.is_empty() {
        "component".to_owned()
    } else {
        id
    }
}

struct Ctx {
    problems: Vec<Problem>,
    summary: Summary,
}

impl Ctx {
    fn warn(&mut self, path: &JsonPath, message: impl Into<String>) {
        self.summary.warnings.push(Note {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn unmapped(&mut self, path: &JsonPath, message: impl Into<String>) {
        self.summary.unmapped.push(Note {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn error(&mut self, path: JsonPath, message: impl Into<String>, expected: impl Into<String>) {
        self.problems
            .push(Problem::new(path, message).expected(expected));
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn port_names(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect(),
        Some(Value::Object(o)) => o
            .get("name")
            .and_then(Value::as_str)
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Whether a component is firmware for a board (an Arduino sketch, or ThingML
/// compiled for Arduino).
fn is_firmware(gtype: GType, c: &Value) -> bool {
    match gtype {
        GType::Arduino => true,
        GType::ThingMl => str_field(c, "target_language") == Some("arduino"),
        _ => false,
    }
}

/// Software that a containment must place on a machine or device.
fn is_software(gtype: GType) -> bool {
    matches!(
        gtype,
        GType::Software | GType::NodeRed | GType::Arduino | GType::ThingMl
    )
}

/// What the importer decided about a component beyond its GeneSIS type.
#[derive(Debug, Clone, Copy, Default)]
struct Role {
    /// The machine that becomes the subsystem's gateway.
    gateway: bool,
    /// A device that hosts software, imported as a host.
    device_as_host: bool,
    /// A device that needs a deployer, when no gateway can be one.
    no_deployer: bool,
    /// Software with a Docker resource runs on it.
    runs_containers: bool,
}

/// What we keep about one GeneSIS component while mapping.
struct Entry {
    index: usize,
    gtype: GType,
    id: String,
    ports: HashSet<String>,
}

/// Imports a GeneSIS deployment model. Errors name the file, the JSON path and
/// what was expected; everything else is mapped or listed in the summary.
pub fn import(file: &str, text: &str) -> Result<Import, Invalid> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| crate::parse::json_error(file, text, JsonPath::root(), e))?;
    let fail = |path: JsonPath, msg: &str, expected: &str| {
        Invalid::from_problems(file, text, vec![Problem::new(path, msg).expected(expected)])
    };
    let Some(dm) = root.get("dm") else {
        return Err(fail(
            JsonPath::root(),
            "not a GeneSIS deployment model: there is no `dm` member",
            "a GeneSIS file: {\"dm\": {\"name\", \"components\", \"links\", \"containments\"}}",
        ));
    };
    let dm_path = JsonPath::root().key("dm");
    let Some(components) = dm.get("components").and_then(Value::as_array) else {
        return Err(fail(
            dm_path.key("components"),
            "`dm` has no `components` list",
            "`components`: a list of GeneSIS components",
        ));
    };
    let mut cx = Ctx {
        problems: Vec::new(),
        summary: Summary::default(),
    };
    for key in ["graph"] {
        if root.get(key).is_some() {
            cx.unmapped(&JsonPath::root().key(key), "editor layout, ignored");
        }
    }
    if dm.get("type_registry").is_some() {
        cx.unmapped(
            &dm_path.key("type_registry"),
            "GeneSIS type registry, ignored (Continuum kinds are fixed)",
        );
    }

    // First pass: names, ids, types and ports.
    let mut by_name: HashMap<String, Entry> = HashMap::new();
    let mut id_owner: HashMap<String, String> = HashMap::new();
    let cpath = dm_path.key("components");
    for (i, c) in components.iter().enumerate() {
        let path = cpath.index(i);
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            cx.error(
                path.clone(),
                "component has no `name`",
                "`name`: a string (links refer to components by name)",
            );
            continue;
        };
        let Some(t) = c.get("_type").and_then(Value::as_str) else {
            cx.error(
                path.clone(),
                format!("component `{name}` has no `_type`"),
                "`_type` such as \"/infra/docker_host\" or \"/internal/node_red\"",
            );
            continue;
        };
        let Some(gtype) = classify(t) else {
            cx.unmapped(
                &path.key("_type"),
                format!("component `{name}` has type `{t}`, which Continuum cannot map; left out"),
            );
            continue;
        };
        if by_name.contains_key(name) {
            cx.error(
                path.key("name"),
                format!("duplicate component name `{name}`"),
                "unique names: links refer to components by name",
            );
            continue;
        }
        let id = normalise_id(name);
        if let Some(other) = id_owner.get(&id) {
            cx.error(
                path.key("name"),
                format!("names `{other}` and `{name}` both become the Continuum id `{id}`"),
                "names that differ in more than case and punctuation; rename one",
            );
            continue;
        }
        id_owner.insert(id.clone(), name.to_owned());
        let mut ports: HashSet<String> = HashSet::new();
        for key in [
            "provided_execution_port",
            "required_execution_port",
            "provided_communication_port",
            "required_communication_port",
        ] {
            ports.extend(port_names(c, key));
        }
        by_name.insert(
            name.to_owned(),
            Entry {
                index: i,
                gtype,
                id,
                ports,
            },
        );
    }

    // Resolve "/<component name>/<port name>" references.
    let resolve = |cx: &mut Ctx, v: &Value, path: JsonPath| -> Option<String> {
        let Some(s) = v.as_str() else {
            cx.error(
                path,
                "reference is not a string",
                "\"/<component name>/<port name>\"",
            );
            return None;
        };
        let trimmed = s.strip_prefix('/').unwrap_or(s);
        let (name, port) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        match by_name.get(name) {
            None => {
                let unmappable = components
                    .iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(name));
                if unmappable {
                    cx.unmapped(
                        &path,
                        format!("refers to `{name}`, which was not mapped; left out"),
                    );
                } else {
                    cx.error(
                        path,
                        format!("reference to missing component `{name}`"),
                        "\"/<component name>/<port name>\" naming a component of `dm.components`",
                    );
                }
                None
            }
            Some(e) if !port.is_empty() && !e.ports.contains(port) => {
                let mut known: Vec<&String> = e.ports.iter().collect();
                known.sort();
                let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
                cx.error(
                    path,
                    format!("component `{name}` has no port `{port}`"),
                    format!(
                        "one of its ports: {}",
                        if known.is_empty() {
                            "(it declares none)".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                None
            }
            Some(e) => Some(e.id.clone()),
        }
    };

    // Containments become hosting links; links become communication links.
    let mut links: Vec<Link> = Vec::new();
    let mut hosts: HashMap<String, String> = HashMap::new();
    if let Some(list) = dm.get("containments").and_then(Value::as_array) {
        for (i, l) in list.iter().enumerate() {
            let path = dm_path.key("containments").index(i);
            let host = l.get("src").map(|v| resolve(&mut cx, v, path.key("src")));
            let hosted = l
                .get("target")
                .map(|v| resolve(&mut cx, v, path.key("target")));
            match (host, hosted) {
                (Some(Some(host)), Some(Some(component))) => {
                    hosts.insert(component.clone(), host.clone());
                    links.push(Link::Hosting { component, host });
                    cx.summary.containments += 1;
                }
                (None, _) | (_, None) => cx.error(
                    path,
                    "containment without `src` or `target`",
                    "{\"src\": \"/<host>/<port>\", \"target\": \"/<hosted>/<port>\"}",
                ),
                _ => {}
            }
        }
    }
    let mut deployers: Vec<(String, String)> = Vec::new();
    if let Some(list) = dm.get("links").and_then(Value::as_array) {
        for (i, l) in list.iter().enumerate() {
            let path = dm_path.key("links").index(i);
            let from = l.get("src").map(|v| resolve(&mut cx, v, path.key("src")));
            let to = l
                .get("target")
                .map(|v| resolve(&mut cx, v, path.key("target")));
            match (from, to) {
                (Some(Some(from)), Some(Some(to))) => {
                    let flag = |k: &str| l.get(k).and_then(Value::as_bool).unwrap_or(false);
                    let is_deployer = flag("isDeployer");
                    if is_deployer {
                        deployers.push((from.clone(), to.clone()));
                    }
                    links.push(Link::Communication(Communication {
                        from,
                        to,
                        is_deployer,
                        is_control: flag("isControl"),
                        physical: false,
                    }));
                    cx.summary.links += 1;
                }
                (None, _) | (_, None) => cx.error(
                    path,
                    "link without `src` or `target`",
                    "{\"src\": \"/<component>/<port>\", \"target\": \"/<component>/<port>\"}",
                ),
                _ => {}
            }
        }
    }

    let entry_of: HashMap<&str, &Entry> = by_name.values().map(|e| (e.id.as_str(), e)).collect();
    let value_of = |id: &str| &components[entry_of[id].index];

    // A device whose execution port hosts software runs it: it is a host.
    let mut device_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (hosted, host) in &hosts {
        let (Some(h), Some(s)) = (entry_of.get(host.as_str()), entry_of.get(hosted.as_str()))
        else {
            continue;
        };
        if h.gtype == GType::Device
            && is_software(s.gtype)
            && !is_firmware(s.gtype, value_of(hosted))
        {
            device_hosts
                .entry(host.clone())
                .or_default()
                .push(hosted.clone());
        }
    }
    for (device, software) in &mut device_hosts {
        software.sort();
        cx.warn(
            &cpath.index(entry_of[device.as_str()].index),
            format!(
                "device `{device}` offers an execution port to software ({}); imported as a host that runs it (a Continuum device only takes firmware)",
                software.join(", ")
            ),
        );
    }
    let runs_software = |id: &str| {
        entry_of
            .get(id)
            .is_some_and(|e| e.gtype == GType::Machine || device_hosts.contains_key(id))
    };

    // Software that no containment places on a machine or device is modelled,
    // not deployed: it stays out of the subsystems.
    let mut undeployed: BTreeMap<String, String> = BTreeMap::new();
    let mut software: Vec<&Entry> = by_name.values().filter(|e| is_software(e.gtype)).collect();
    software.sort_by_key(|e| e.index);
    for e in &software {
        let firmware = is_firmware(e.gtype, &components[e.index]);
        let mut at = e.id.as_str();
        let mut end = None;
        for _ in 0..=hosts.len() {
            match hosts.get(at) {
                Some(h) => at = h,
                None => {
                    end = Some(at);
                    break;
                }
            }
        }
        let why = match end {
            Some(end) if end == e.id => {
                Some("no containment places it on a machine or device".to_owned())
            }
            Some(end) => match entry_of.get(end).map(|x| x.gtype) {
                Some(GType::Machine) | Some(GType::Device) => None,
                _ => Some(format!(
                    "its hosting chain ends at `{end}`, which is not a machine or device"
                )),
            },
            None => Some("its containments form a loop".to_owned()),
        };
        let why = why.or_else(|| {
            let host = hosts.get(e.id.as_str())?;
            (firmware && runs_software(host)).then(|| {
                format!("it is firmware, and `{host}` runs software, so it is imported as a host, not a device")
            })
        });
        if let Some(why) = why {
            undeployed.insert(e.id.clone(), why);
        }
    }
    // What runs on undeployed software is not deployed either.
    loop {
        let more: Vec<(String, String)> = hosts
            .iter()
            .filter(|(hosted, host)| {
                undeployed.contains_key(*host) && !undeployed.contains_key(*hosted)
            })
            .map(|(hosted, host)| {
                (
                    hosted.clone(),
                    format!("it runs on `{host}`, which is not deployed"),
                )
            })
            .collect();
        if more.is_empty() {
            break;
        }
        undeployed.extend(more);
    }
    for (id, why) in &undeployed {
        let dropped = links.iter().filter(|l| l.touches(id)).count();
        let links_note = match dropped {
            0 => String::new(),
            1 => "; its one link is left out too".to_owned(),
            n => format!("; its {n} links are left out too"),
        };
        cx.warn(
            &cpath.index(entry_of[id.as_str()].index),
            format!("`{id}` is modelled but not deployed ({why}): left out of the subsystems{links_note}; add a containment to deploy it"),
        );
    }
    links.retain(|l| {
        let (a, b) = l.endpoints();
        !undeployed.contains_key(a) && !undeployed.contains_key(b)
    });
    deployers.retain(|(a, b)| !undeployed.contains_key(a) && !undeployed.contains_key(b));
    hosts.retain(|hosted, _| !undeployed.contains_key(hosted));
    cx.summary.undeployed = undeployed.keys().cloned().collect();
    // The summary counts what the model keeps.
    cx.summary.containments = links
        .iter()
        .filter(|l| matches!(l, Link::Hosting { .. }))
        .count();
    cx.summary.links = links.len() - cx.summary.containments;

    // The machine that hosts a deployer (directly or through its software) is the gateway.
    let machine_of = |start: &str| -> Option<String> {
        let mut id = start.to_owned();
        for _ in 0..=hosts.len() {
            match hosts.get(&id) {
                Some(h) => id = h.clone(),
                None => return Some(id),
            }
        }
        None
    };
    let mut gateway_ids: HashSet<String> = HashSet::new();
    let mut physical: Vec<(String, String)> = Vec::new();
    for (from, to) in &deployers {
        if let Some(m) = machine_of(from) {
            if runs_software(&m) {
                gateway_ids.insert(m.clone());
                if let Some(dev) = machine_of(to) {
                    let device = entry_of.get(dev.as_str()).map(|e| e.gtype) == Some(GType::Device);
                    if device && !device_hosts.contains_key(&dev) {
                        physical.push((m, dev));
                    }
                }
            }
        }
    }
    let mut entries: Vec<&Entry> = by_name
        .values()
        .filter(|e| !undeployed.contains_key(&e.id))
        .collect();
    entries.sort_by_key(|e| e.index);
    if gateway_ids.is_empty() {
        if let Some(first) = entries.iter().find(|e| runs_software(&e.id)) {
            gateway_ids.insert(first.id.clone());
            cx.warn(
                &cpath.index(first.index),
                format!(
                    "no host carries a deployer link; `{}` becomes the subsystem's gateway",
                    first.id
                ),
            );
        }
    }
    // A device that needs a deployer but that no deployer link reaches: the
    // gateway's agent deploys it, as GeneSIS's own deployer would have.
    let gateway = entries
        .iter()
        .find(|e| gateway_ids.contains(&e.id))
        .map(|e| e.id.clone());
    let mut no_deployer: HashSet<String> = HashSet::new();
    for e in &entries {
        let c = &components[e.index];
        let needs = c
            .get("needDeployer")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if e.gtype != GType::Device || !needs || device_hosts.contains_key(&e.id) {
            continue;
        }
        if physical.iter().any(|(_, d)| *d == e.id) {
            continue;
        }
        let path = cpath.index(e.index).key("needDeployer");
        match &gateway {
            Some(g) => {
                cx.warn(&path, format!("device `{}` needs a deployer but no deployer link reaches it; it is wired to the gateway `{g}`, whose agent deploys it (change the physical link if the device is plugged into another host)", e.id));
                physical.push((g.clone(), e.id.clone()));
            }
            None => {
                cx.warn(&path, format!("device `{}` needs a deployer but the model has no machine to be one; imported without `need_deployer`", e.id));
                no_deployer.insert(e.id.clone());
            }
        }
    }
    for (m, dev) in physical {
        let link = Link::Communication(Communication {
            from: m.clone(),
            to: dev.clone(),
            physical: true,
            ..Communication::default()
        });
        if !links.contains(&link) {
            links.push(link);
        }
    }

    // Second pass: map each component.
    let mut out_components = Vec::new();
    for e in &entries {
        let path = cpath.index(e.index);
        let c = &components[e.index];
        let role = Role {
            gateway: gateway_ids.contains(&e.id),
            device_as_host: device_hosts.contains_key(&e.id),
            no_deployer: no_deployer.contains(&e.id),
            runs_containers: device_hosts.get(&e.id).is_some_and(|hosted| {
                hosted.iter().any(|h| {
                    value_of(h)
                        .get("docker_resource")
                        .is_some_and(|d| !is_empty_value(d))
                })
            }),
        };
        let component = map_component(&mut cx, c, e, role, &path);
        *cx.summary
            .kinds
            .entry(component.kind().as_str().to_owned())
            .or_default() += 1;
        out_components.push(component);
    }
    if !cx.problems.is_empty() {
        return Err(Invalid::from_problems(file, text, cx.problems));
    }
    let name = dm
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("imported")
        .to_owned();
    Ok(Import {
        megamodel: Megamodel {
            name,
            description: Some(format!("Imported from GeneSIS model {file}")),
            components: out_components,
            links,
            ..Megamodel::default()
        },
        summary: cx.summary,
    })
}

fn map_component(cx: &mut Ctx, c: &Value, e: &Entry, role: Role, path: &JsonPath) -> Component {
    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
    let mut properties = BTreeMap::new();
    if let Some(id) = c.get("id").and_then(Value::as_str) {
        properties.insert("genesis.id".to_owned(), id.to_owned());
    }
    if let Some(t) = c.get("_type").and_then(Value::as_str) {
        properties.insert("genesis.type".to_owned(), t.to_owned());
    }
    if let Some(v) = c.get("version").filter(|v| !v.is_null()) {
        properties.insert("genesis.version".to_owned(), scalar(v));
    }
    if let Some(Value::Array(props)) = c.get("properties") {
        for (i, p) in props.iter().enumerate() {
            match (p.get("name").and_then(Value::as_str), p.get("value")) {
                (Some(k), Some(v)) => {
                    properties.insert(k.to_owned(), scalar(v));
                }
                _ => cx.unmapped(
                    &path.key("properties").index(i),
                    "property without `name` and `value`; left out",
                ),
            }
        }
    }
    let gtype = if role.device_as_host {
        GType::Machine
    } else {
        e.gtype
    };
    let spec = match gtype {
        GType::Machine => {
            let (access, docker) = machine_access(cx, c, path);
            let capabilities = Capabilities {
                docker: docker || role.runs_containers,
                ..Capabilities::default()
            };
            if c.get("monitoring_agent")
                .is_some_and(|m| !m.is_null() && m != "" && m != "none")
            {
                cx.unmapped(
                    &path.key("monitoring_agent"),
                    "monitoring agent: Continuum's gateway agent reports state itself",
                );
            }
            if role.gateway {
                ComponentSpec::Gateway(GatewaySpec {
                    capabilities,
                    access,
                    equipped_with_deployer: true,
                    equipped_with_bridge: false,
                    routes: Vec::new(),
                })
            } else {
                ComponentSpec::Host(HostSpec {
                    capabilities,
                    access,
                })
            }
        }
        GType::Device => {
            let board = str_field(c, "device_type")
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    cx.warn(
                        path,
                        format!("device `{name}` has no `device_type`; board set to \"arduino\""),
                    );
                    "arduino".to_owned()
                });
            if let Some(local) = c.get("isLocal").and_then(Value::as_bool) {
                properties.insert("genesis.is_local".to_owned(), local.to_string());
            }
            ComponentSpec::Device(DeviceSpec {
                board,
                port: str_field(c, "physical_port").map(str::to_owned),
                need_deployer: !role.no_deployer
                    && c.get("needDeployer")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
            })
        }
        GType::Software | GType::NodeRed => {
            let mut resources = internal_resources(cx, c, path);
            if gtype == GType::NodeRed {
                for key in ["nr_flow", "path_flow", "packages"] {
                    if let Some(v) = c.get(key).filter(|v| !is_empty_value(v)) {
                        resources.config.insert(key.to_owned(), v.clone());
                    }
                }
            }
            if resources.is_empty() {
                cx.warn(path, format!("`{name}` has no docker or ssh resource; add `resources` saying how to run it"));
            }
            ComponentSpec::Service(ServiceSpec { resources })
        }
        GType::Arduino => {
            let sketch = str_field(c, "sketch").unwrap_or_default().to_owned();
            cx.warn(path, format!("firmware `{name}`: the sketch `{sketch}` must be compiled to an Intel HEX image; `resources.flash.artefact` names the sketch until then"));
            let mut resources = Resources {
                flash: Some(Box::new(FlashSpec {
                    tool: FlashTool::Stk500v1,
                    artefact: sketch,
                    baud: None,
                    verify: true,
                    ..FlashSpec::default()
                })),
                ..Resources::default()
            };
            if let Some(l) = c.get("libraries").filter(|v| !is_empty_value(v)) {
                resources.config.insert("libraries".to_owned(), l.clone());
            }
            ComponentSpec::Firmware(FirmwareSpec { resources })
        }
        GType::ThingMl => {
            let language = str_field(c, "target_language").unwrap_or("java");
            let file = str_field(c, "file").unwrap_or_default().to_owned();
            if language == "arduino" {
                cx.warn(path, format!("ThingML firmware `{name}`: compile `{file}` to an Intel HEX image and point `resources.flash.artefact` at it"));
                ComponentSpec::Firmware(FirmwareSpec {
                    resources: Resources {
                        flash: Some(Box::new(FlashSpec {
                            tool: FlashTool::Stk500v1,
                            artefact: file,
                            baud: None,
                            verify: true,
                            ..FlashSpec::default()
                        })),
                        ..Resources::default()
                    },
                })
            } else {
                let mut resources = internal_resources(cx, c, path);
                resources.config.insert(
                    "thingml".to_owned(),
                    serde_json::json!({"file": file, "target_language": language}),
                );
                ComponentSpec::Service(ServiceSpec { resources })
            }
        }
        GType::External => {
            let ip = str_field(c, "ip");
            let port = first_port(c);
            ComponentSpec::External(ExternalSpec {
                endpoint: ip.map(|ip| match port {
                    Some(p) => format!("tcp://{ip}:{p}"),
                    None => format!("tcp://{ip}"),
                }),
            })
        }
    };
    drop_credentials(cx, c, path);
    Component {
        id: e.id.clone(),
        name: name.to_owned(),
        subsystem: None,
        properties,
        placeholder: false,
        spec,
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn first_port(c: &Value) -> Option<String> {
    match c.get("port") {
        Some(Value::Array(a)) => a.iter().map(scalar).find(|s| !s.is_empty()),
        Some(v) if !is_empty_value(v) => Some(scalar(v)),
        _ => None,
    }
}

fn machine_access(cx: &mut Ctx, c: &Value, path: &JsonPath) -> (Access, bool) {
    let ip = str_field(c, "ip").unwrap_or("127.0.0.1");
    let ports: Vec<String> = match c.get("port") {
        Some(Value::Array(a)) => a.iter().map(scalar).collect(),
        Some(v) if !is_empty_value(v) => vec![scalar(v)],
        _ => Vec::new(),
    };
    let docker_port = ports.iter().find(|p| *p == "2375" || *p == "2376");
    let is_docker_type = c
        .get("_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with("docker_host"));
    let user = c
        .get("credentials")
        .and_then(|cr| str_field(cr, "username"))
        .map(str::to_owned);
    let access = if let Some(p) = docker_port {
        Access::Docker {
            endpoint: format!("tcp://{ip}:{p}"),
        }
    } else if ports.iter().any(|p| p == "22") {
        Access::Ssh {
            address: ip.to_owned(),
            port: 22,
            user,
        }
    } else if matches!(ip, "127.0.0.1" | "localhost" | "::1") {
        Access::Local
    } else if is_docker_type {
        cx.warn(
            path,
            format!("docker host at {ip} lists no Docker port; assuming 2376"),
        );
        Access::Docker {
            endpoint: format!("tcp://{ip}:2376"),
        }
    } else {
        cx.warn(
            path,
            format!("host at {ip} lists neither a Docker nor an SSH port; assuming SSH on 22"),
        );
        Access::Ssh {
            address: ip.to_owned(),
            port: 22,
            user,
        }
    };
    (access, is_docker_type || docker_port.is_some())
}

fn internal_resources(cx: &mut Ctx, c: &Value, path: &JsonPath) -> Resources {
    let mut r = Resources::default();
    if let Some(d) = c.get("docker_resource").filter(|v| !is_empty_value(v)) {
        let dpath = path.key("docker_resource");
        if let Some(image) = str_field(d, "image") {
            let mut spec = ContainerSpec {
                image: Some(image.to_owned()),
                command: str_field(d, "command")
                    .map(|s| s.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                ..ContainerSpec::default()
            };
            if let Some(Value::Object(bindings)) = d.get("port_bindings") {
                for (container, host) in bindings {
                    let host = scalar(host);
                    match (container.trim().parse::<u16>(), host.trim().parse::<u16>()) {
                        (Ok(cp), Ok(hp)) if cp > 0 && hp > 0 => spec.ports.push(PortBinding {
                            container: cp,
                            host: Some(hp),
                            protocol: Protocol::Tcp,
                        }),
                        _ => cx.unmapped(&dpath.key("port_bindings").key(container.clone()), format!("port binding {container} -> {host} is not a pair of port numbers; left out")),
                    }
                }
            }
            let devices: Vec<&Value> = match d.get("devices") {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v @ Value::Object(_)) => vec![v],
                _ => Vec::new(),
            };
            for dev in devices {
                if let Some(host) = str_field(dev, "PathOnHost") {
                    spec.devices.push(DeviceMapping {
                        host: host.to_owned(),
                        container: str_field(dev, "PathInContainer").map(str::to_owned),
                        permissions: str_field(dev, "CgroupPermissions").map(str::to_owned),
                    });
                }
            }
            if d.get("links").is_some_and(|l| !is_empty_value(l)) {
                cx.unmapped(
                    &dpath.key("links"),
                    "Docker container links; use communication links and a Docker network instead",
                );
            }
            r.container = Some(Box::new(spec));
        } else {
            cx.unmapped(&dpath, "docker resource without an image; left out");
        }
    }
    if let Some(s) = c.get("ssh_resource").filter(|v| !is_empty_value(v)) {
        let cmd = |k: &str| str_field(s, k).map(str::to_owned);
        let commands = Commands {
            download: cmd("downloadCommand"),
            install: cmd("installCommand"),
            configure: cmd("configureCommand"),
            start: cmd("startCommand"),
            stop: cmd("stopCommand"),
        };
        if commands != Commands::default() {
            r.commands = Some(Box::new(commands));
        }
        drop_credentials(cx, s, &path.key("ssh_resource"));
    }
    if let Some(a) = c.get("ansible_resource").filter(|v| !is_empty_value(v)) {
        let playbook = str_field(a, "playbook_path").unwrap_or("?");
        cx.unmapped(&path.key("ansible_resource"), format!("Ansible playbook `{playbook}`: Continuum does not run playbooks; use a container or command resource"));
        drop_credentials(cx, a, &path.key("ansible_resource"));
    }
    r
}

/// Credentials never enter a Continuum model; say where they were and what to do.
fn drop_credentials(cx: &mut Ctx, v: &Value, path: &JsonPath) {
    let Some(cred) = v.get("credentials") else {
        return;
    };
    let secret: Vec<&str> = ["password", "sshkey", "agent"]
        .into_iter()
        .filter(|k| {
            cred.get(*k)
                .is_some_and(|x| !is_empty_value(x) && x != false)
        })
        .collect();
    if !secret.is_empty() {
        cx.warn(
            &path.key("credentials"),
            format!(
                "credentials dropped ({}): models never carry secrets; give them to the gateway agent through its environment or a secret file",
                secret.join(", ")
            ),
        );
    }
}
