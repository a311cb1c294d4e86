//! Deterministic generation of valid models and of valid changes to them, for
//! property tests and benchmarks.
//!
//! Every dependency (hosting, communication, deployer) points from a component to
//! one earlier in the component list, so generated models never have cycles.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::component::*;
use crate::link::{Communication, Link};
use crate::model::DeploymentModel;
use crate::resources::*;

/// SplitMix64: small, fast, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 >= 1.0 - p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

fn container(rng: &mut Rng, id: &str) -> Resources {
    let mut env = BTreeMap::new();
    env.insert("LEVEL".to_owned(), format!("{}", rng.below(4)));
    Resources {
        container: Some(Box::new(ContainerSpec {
            image: Some(format!("continuum/{id}:{}", rng.below(3))),
            env,
            ..ContainerSpec::default()
        })),
        ..Resources::default()
    }
}

fn new_component(rng: &mut Rng, id: String, kind: Kind) -> Component {
    let spec = match kind {
        Kind::Gateway => ComponentSpec::Gateway(GatewaySpec {
            capabilities: Capabilities {
                docker: true,
                cpus: Some(4),
                ..Capabilities::default()
            },
            equipped_with_deployer: true,
            equipped_with_bridge: true,
            ..GatewaySpec::default()
        }),
        Kind::Host => ComponentSpec::Host(HostSpec {
            access: Access::Docker {
                endpoint: format!("tcp://10.0.{}.{}:2376", rng.below(250), rng.below(250)),
            },
            ..HostSpec::default()
        }),
        Kind::Device => ComponentSpec::Device(DeviceSpec {
            board: "uno".to_owned(),
            port: Some(format!("/dev/ttyACM{}", rng.below(4))),
            need_deployer: false,
        }),
        Kind::Service => ComponentSpec::Service(ServiceSpec {
            resources: container(rng, &id),
        }),
        Kind::Function => ComponentSpec::Function(FunctionSpec {
            triggers: vec![format!("/{id}/in/+")],
            outputs: vec!["out".to_owned()],
            resources: container(rng, &id),
            ..FunctionSpec::default()
        }),
        Kind::Proxy => ComponentSpec::Proxy(ProxySpec {
            device: String::new(), // wired below
            baud: Some(115_200),
            resources: container(rng, &id),
            ..ProxySpec::default()
        }),
        Kind::Firmware => ComponentSpec::Firmware(FirmwareSpec {
            resources: Resources {
                flash: Some(Box::new(FlashSpec {
                    tool: FlashTool::Stk500v1,
                    artefact: format!("{id}-{}.hex", rng.below(3)),
                    baud: None,
                    verify: true,
                    ..FlashSpec::default()
                })),
                ..Resources::default()
            },
        }),
        Kind::External => ComponentSpec::External(ExternalSpec {
            endpoint: Some(format!("http://10.1.0.{}:1026", rng.below(250))),
        }),
    };
    let mut c = Component::new(id, spec);
    if rng.chance(0.3) {
        c.properties
            .insert("team".to_owned(), format!("t{}", rng.below(5)));
    }
    c
}

/// Picks a kind for a new component at position `i`, keeping a plausible mix.
fn kind_for(rng: &mut Rng, i: usize) -> Kind {
    if i == 0 {
        return Kind::Gateway;
    }
    match rng.below(100) {
        0..=1 => Kind::Gateway,
        2..=7 => Kind::Host,
        8..=13 => Kind::Device,
        14..=53 => Kind::Service,
        54..=79 => Kind::Function,
        80..=85 => Kind::Proxy,
        86..=93 => Kind::Firmware,
        _ => Kind::External,
    }
}

/// The components new ones may be wired to, by role, kept as the model grows so
/// generation stays linear in the model's size.
#[derive(Debug, Default)]
struct Pool {
    /// Gateways, hosts and services: what hosts services, functions and proxies.
    software_hosts: Vec<String>,
    devices: Vec<String>,
    /// Lifecycle components and externals: communication targets.
    peers: Vec<String>,
    /// Gateways and hosts: deployers and physical ends.
    machines: Vec<String>,
}

impl Pool {
    fn note(&mut self, c: &Component) {
        let id = c.id.clone();
        match c.kind() {
            Kind::Gateway | Kind::Host => {
                self.software_hosts.push(id.clone());
                self.machines.push(id);
            }
            Kind::Service => {
                self.software_hosts.push(id.clone());
                self.peers.push(id);
            }
            Kind::Device => self.devices.push(id),
            Kind::Function | Kind::Proxy | Kind::Firmware | Kind::External => self.peers.push(id),
        }
    }

    fn hosts_for(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Firmware => &self.devices,
            Kind::Service | Kind::Function | Kind::Proxy => &self.software_hosts,
            _ => &[],
        }
    }
}

/// Appends a component of `kind` with id `id` wired to earlier components, if a
/// valid host exists for it. Returns whether it was added.
fn append(
    model: &mut DeploymentModel,
    pool: &mut Pool,
    rng: &mut Rng,
    id: String,
    kind: Kind,
) -> bool {
    let host = if kind.needs_host() || (kind == Kind::Function && rng.chance(0.8)) {
        match rng.pick(pool.hosts_for(kind)) {
            Some(h) => Some(h.clone()),
            None if kind.needs_host() => return false,
            None => None,
        }
    } else {
        None
    };
    let mut c = new_component(rng, id.clone(), kind);
    if let ComponentSpec::Proxy(p) = &mut c.spec {
        match rng.pick(&pool.devices) {
            Some(d) => p.device = d.clone(),
            None => return false,
        }
    }
    if let Some(h) = host {
        model.links.push(Link::hosting(id.clone(), h));
    }
    if kind.has_lifecycle() && kind != Kind::Firmware && rng.chance(0.5) {
        if let Some(to) = rng.pick(&pool.peers) {
            model
                .links
                .push(Link::communication(id.clone(), to.clone()));
        }
    }
    if kind == Kind::Firmware && rng.chance(0.5) {
        if let Some(g) = rng.pick(&pool.machines) {
            model.links.push(Link::Communication(Communication {
                from: g.clone(),
                to: id.clone(),
                is_deployer: true,
                ..Communication::default()
            }));
        }
    }
    if kind == Kind::Device && rng.chance(0.7) {
        if let Some(g) = rng.pick(&pool.machines) {
            model.links.push(Link::Communication(Communication {
                from: g.clone(),
                to: id.clone(),
                physical: true,
                ..Communication::default()
            }));
        }
    }
    pool.note(&c);
    model.components.push(c);
    true
}

/// A valid model of about `n` components.
pub fn generate(seed: u64, n: usize) -> DeploymentModel {
    let mut rng = Rng::new(seed);
    let mut model = DeploymentModel::default();
    let mut pool = Pool::default();
    let mut i = 0;
    while model.components.len() < n {
        let kind = kind_for(&mut rng, model.components.len());
        append(&mut model, &mut pool, &mut rng, format!("c{i}"), kind);
        i += 1;
    }
    model
}

/// A valid variant of `model`: about `rate` of its components are removed,
/// changed (in place or not), moved or joined by new ones; links come and go.
///
/// `model` must list every component after what it depends on, as [`generate`]
/// and `mutate` make them (not in canonical order): canonicalize afterwards.
pub fn mutate(model: &DeploymentModel, seed: u64, rate: f64) -> DeploymentModel {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut out = DeploymentModel {
        id: model.id.clone(),
        on_failure: model.on_failure,
        components: Vec::with_capacity(model.components.len()),
        links: Vec::new(),
    };
    let mut pool = Pool::default();
    let hosts = model.hosts();
    let mut removed: HashSet<&str> = HashSet::new();
    let mut moved: HashMap<String, Option<String>> = HashMap::new();
    // Walk in order: a component's possible hosts are the ones kept before it.
    for c in &model.components {
        let host_gone = hosts
            .get(c.id.as_str())
            .is_some_and(|h| removed.contains(h));
        let device_gone = match &c.spec {
            ComponentSpec::Proxy(p) => removed.contains(p.device.as_str()),
            _ => false,
        };
        if device_gone || (host_gone && (c.kind() == Kind::Firmware || rng.chance(0.5))) {
            removed.insert(&c.id);
            continue;
        }
        if rng.chance(rate / 4.0) && c.kind() != Kind::Gateway {
            removed.insert(&c.id);
            continue;
        }
        let mut c2 = c.clone();
        if host_gone || (c.kind().has_lifecycle() && rng.chance(rate / 4.0)) {
            // Move to another earlier host of a suitable kind (or unplace a function).
            match rng.pick(pool.hosts_for(c.kind())) {
                Some(h) => {
                    moved.insert(c.id.clone(), Some(h.clone()));
                }
                None if c.kind() == Kind::Function => {
                    moved.insert(c.id.clone(), None);
                }
                None => {
                    removed.insert(&c.id);
                    continue;
                }
            }
        }
        if rng.chance(rate / 2.0) {
            change(&mut rng, &mut c2);
        }
        pool.note(&c2);
        out.components.push(c2);
    }
    for l in &model.links {
        let (a, b) = l.endpoints();
        if removed.contains(a) || removed.contains(b) {
            continue;
        }
        match l {
            Link::Hosting { component, .. } if moved.contains_key(component) => {}
            Link::Communication(_) if rng.chance(rate / 4.0) => {}
            _ => out.links.push(l.clone()),
        }
    }
    let mut moved: Vec<(String, Option<String>)> = moved.into_iter().collect();
    moved.sort();
    for (component, host) in moved {
        if let Some(h) = host {
            out.links.push(Link::hosting(component, h));
        }
    }
    let additions = ((model.components.len() as f64) * rate / 4.0).ceil() as usize;
    let base = seed % 1_000_000;
    for k in 0..additions {
        let kind = kind_for(&mut rng, 1);
        append(&mut out, &mut pool, &mut rng, format!("n{base}-{k}"), kind);
    }
    out
}

fn change(rng: &mut Rng, c: &mut Component) {
    match rng.below(3) {
        0 => {
            c.properties
                .insert("rev".to_owned(), format!("{}", rng.next_u64() % 1000));
        }
        1 => match &mut c.spec {
            ComponentSpec::Host(h) => {
                h.access = Access::Docker {
                    endpoint: format!("tcp://10.9.{}.{}:2376", rng.below(250), rng.below(250)),
                }
            }
            ComponentSpec::Gateway(g) => g.capabilities.cpus = Some(1 + rng.below(8) as u32),
            // A function re-routed in place (its resources unchanged).
            ComponentSpec::Function(f) if rng.chance(0.5) => {
                f.triggers = vec![format!("site/{}/#", rng.below(4))];
                if rng.chance(0.5) {
                    f.outputs.clear();
                }
            }
            ComponentSpec::Device(d) => d.port = Some(format!("/dev/ttyUSB{}", rng.below(4))),
            ComponentSpec::External(e) => {
                e.endpoint = Some(format!("http://10.2.0.{}:80", rng.below(250)))
            }
            spec => {
                if let Some(r) = spec.resources_mut() {
                    if let Some(c) = r.container.as_mut() {
                        c.env
                            .insert("LEVEL".to_owned(), format!("x{}", rng.below(100)));
                    }
                    if let Some(f) = r.flash.as_mut() {
                        f.artefact = format!("fw-{}.hex", rng.below(100));
                    }
                }
            }
        },
        _ => c.name = format!("{} v{}", c.id, rng.below(10)),
    }
}

/// A fleet's megamodel as JSON text: subsystems `site-1..site-N`, each with its
/// gateway `sim-i` (the ids `continuum gateway sim` gives), `services` services
/// and a function listening to the site's presence topic. `version` is the
/// function's image tag: a new version changes every gateway's function.
pub fn fleet_megamodel(subsystems: usize, services: usize, version: u32) -> String {
    let subsystems: Vec<serde_json::Value> = (1..=subsystems)
        .map(|i| {
            let gw = format!("sim-{i}");
            let mut components = vec![serde_json::json!({"id": gw, "kind": "gateway"})];
            let mut links = Vec::new();
            for s in 0..services {
                let id = format!("svc-{i}-{s}");
                components.push(serde_json::json!({
                    "id": id, "kind": "service",
                    "resources": {"container": {"image": "fleet/svc:1", "env": {"INDEX": s.to_string()}}}
                }));
                links.push(serde_json::json!({"kind": "hosting", "component": id, "host": gw}));
            }
            let f = format!("count-{i}");
            components.push(serde_json::json!({
                "id": f, "kind": "function",
                "triggers": [format!("site-{i}/presence")],
                "outputs": ["occupancy"],
                "resources": {"container": {"image": format!("fleet/count:{version}")}}
            }));
            links.push(serde_json::json!({"kind": "hosting", "component": f, "host": gw}));
            serde_json::json!({"id": format!("site-{i}"), "components": components, "links": links})
        })
        .collect();
    serde_json::json!({"name": "fleet", "subsystems": subsystems}).to_string()
}
