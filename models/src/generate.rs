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
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

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
        container: Some(ContainerSpec {
            image: Some(format!("continuum/{id}:{}", rng.below(3))),
            env,
            ..ContainerSpec::default()
        }),
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
                flash: Some(FlashSpec {
                    tool: FlashTool::Stk500v1,
                    artefact: format!("{id}-{}.hex", rng.below(3)),
                    baud: None,
                    verify: true,
                }),
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

/// Appends a component of `kind` with id `id` wired to earlier components, if a
/// valid host exists for it. Returns whether it was added.
fn append(model: &mut DeploymentModel, rng: &mut Rng, id: String, kind: Kind) -> bool {
    let hosts: Vec<String> = model
        .components
        .iter()
        .filter(|h| h.kind().can_host(kind))
        .map(|h| h.id.clone())
        .collect();
    let host = if kind.needs_host() || (kind == Kind::Function && rng.chance(0.8)) {
        match rng.pick(&hosts) {
            Some(h) => Some(h.clone()),
            None if kind.needs_host() => return false,
            None => None,
        }
    } else {
        None
    };
    let devices: Vec<String> = model
        .components
        .iter()
        .filter(|d| d.kind() == Kind::Device)
        .map(|d| d.id.clone())
        .collect();
    let mut c = new_component(rng, id.clone(), kind);
    if let ComponentSpec::Proxy(p) = &mut c.spec {
        match rng.pick(&devices) {
            Some(d) => p.device = d.clone(),
            None => return false,
        }
    }
    let peers: Vec<String> = model
        .components
        .iter()
        .filter(|p| p.kind().has_lifecycle() || p.kind() == Kind::External)
        .map(|p| p.id.clone())
        .collect();
    let gateways: Vec<String> = model
        .components
        .iter()
        .filter(|g| matches!(g.kind(), Kind::Gateway | Kind::Host))
        .map(|g| g.id.clone())
        .collect();
    model.components.push(c);
    if let Some(h) = host {
        model.links.push(Link::hosting(id.clone(), h));
    }
    if kind.has_lifecycle() && kind != Kind::Firmware && rng.chance(0.5) {
        if let Some(to) = rng.pick(&peers) {
            model
                .links
                .push(Link::communication(id.clone(), to.clone()));
        }
    }
    if kind == Kind::Firmware && rng.chance(0.5) {
        if let Some(g) = rng.pick(&gateways) {
            model.links.push(Link::Communication(Communication {
                from: g.clone(),
                to: id.clone(),
                is_deployer: true,
                ..Communication::default()
            }));
        }
    }
    if kind == Kind::Device && rng.chance(0.7) {
        if let Some(g) = rng.pick(&gateways) {
            model.links.push(Link::Communication(Communication {
                from: g.clone(),
                to: id.clone(),
                physical: true,
                ..Communication::default()
            }));
        }
    }
    true
}

/// A valid model of about `n` components.
pub fn generate(seed: u64, n: usize) -> DeploymentModel {
    let mut rng = Rng::new(seed);
    let mut model = DeploymentModel::default();
    let mut i = 0;
    while model.components.len() < n {
        let kind = kind_for(&mut rng, model.components.len());
        append(&mut model, &mut rng, format!("c{i}"), kind);
        i += 1;
    }
    model
}

/// A valid variant of `model`: about `rate` of its components are removed,
/// changed (in place or not), moved or joined by new ones; links come and go.
pub fn mutate(model: &DeploymentModel, seed: u64, rate: f64) -> DeploymentModel {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut out = DeploymentModel {
        id: model.id.clone(),
        on_failure: model.on_failure,
        components: Vec::with_capacity(model.components.len()),
        links: Vec::new(),
    };
    let hosts = model.hosts();
    let mut removed: HashSet<&str> = HashSet::new();
    let mut moved: HashMap<String, Option<String>> = HashMap::new();
    // Walk in order so that a component's host has already been decided.
    let position: HashMap<&str, usize> = model
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    for c in &model.components {
        let host_gone = hosts
            .get(c.id.as_str())
            .is_some_and(|h| removed.contains(h));
        let devices_gone = match &c.spec {
            ComponentSpec::Proxy(p) => removed.contains(p.device.as_str()),
            _ => false,
        };
        if devices_gone || (host_gone && (c.kind() == Kind::Firmware || rng.chance(0.5))) {
            removed.insert(&c.id);
            continue;
        }
        if rng.chance(rate / 4.0) && c.kind() != Kind::Gateway {
            removed.insert(&c.id);
            continue;
        }
        let mut c = c.clone();
        if host_gone || (c.kind().has_lifecycle() && rng.chance(rate / 4.0)) {
            // Move to another earlier host of a suitable kind (or unplace a function).
            let me = position[c.id.as_str()];
            let candidates: Vec<String> = out
                .components
                .iter()
                .filter(|h| {
                    h.kind().can_host(c.kind())
                        && position.get(h.id.as_str()).is_some_and(|p| *p < me)
                })
                .map(|h| h.id.clone())
                .collect();
            match rng.pick(&candidates) {
                Some(h) => {
                    moved.insert(c.id.clone(), Some(h.clone()));
                }
                None if c.kind() == Kind::Function => {
                    moved.insert(c.id.clone(), None);
                }
                None => {
                    removed.insert(&model.components[me].id);
                    continue;
                }
            }
        }
        if rng.chance(rate / 2.0) {
            change(&mut rng, &mut c);
        }
        out.components.push(c);
    }
    let present: HashSet<String> = out.components.iter().map(|c| c.id.clone()).collect();
    for l in &model.links {
        let (a, b) = l.endpoints();
        if !present.contains(a) || !present.contains(b) {
            continue;
        }
        match l {
            Link::Hosting { component, .. } if moved.contains_key(component) => {}
            Link::Communication(_) if rng.chance(rate / 4.0) => {}
            _ => out.links.push(l.clone()),
        }
    }
    for (component, host) in &moved {
        if let Some(h) = host {
            out.links.push(Link::hosting(component.clone(), h.clone()));
        }
    }
    let additions = ((model.components.len() as f64) * rate / 4.0).ceil() as usize;
    let base = seed % 1_000_000;
    for k in 0..additions {
        let kind = kind_for(&mut rng, 1);
        append(&mut out, &mut rng, format!("n{base}-{k}"), kind);
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
