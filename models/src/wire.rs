//! The JSON form of components and links.
//!
//! A component is one flat object whose fields depend on its `kind`. It is read into
//! [`RawComponent`] (every field of every kind), then converted to the typed
//! [`Component`] while collecting every misplaced or missing field as a [`Problem`],
//! so one pass reports all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::component::*;
use crate::diagnostic::{JsonPath, Problem};
use crate::link::{Communication, Link};
use crate::resources::Resources;

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

fn some_if(b: bool) -> Option<bool> {
    b.then_some(true)
}

fn none_if_empty<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawComponent {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsystem: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub placeholder: bool,
    // gateway, host
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    // gateway
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipped_with_deployer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipped_with_bridge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<crate::route::StaticRoute>>,
    // device
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_deployer: Option<bool>,
    // function
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<crate::invocation::Invocation>,
    // proxy
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_prefix: Option<String>,
    // external
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    // service, function, proxy, firmware
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Which kinds each kind-specific field applies to.
const KIND_FIELDS: &[(&str, &[Kind])] = &[
    ("capabilities", &[Kind::Gateway, Kind::Host]),
    ("access", &[Kind::Gateway, Kind::Host]),
    ("equipped_with_deployer", &[Kind::Gateway]),
    ("equipped_with_bridge", &[Kind::Gateway]),
    ("routes", &[Kind::Gateway]),
    ("board", &[Kind::Device]),
    ("port", &[Kind::Device]),
    ("need_deployer", &[Kind::Device]),
    ("triggers", &[Kind::Function]),
    ("inputs", &[Kind::Function]),
    ("outputs", &[Kind::Function]),
    ("runtime", &[Kind::Function]),
    ("src", &[Kind::Function]),
    ("context", &[Kind::Function]),
    ("requires", &[Kind::Function]),
    ("invocation", &[Kind::Function]),
    ("device", &[Kind::Proxy]),
    ("baud", &[Kind::Proxy]),
    ("topic_prefix", &[Kind::Proxy]),
    ("endpoint", &[Kind::External]),
    (
        "resources",
        &[Kind::Service, Kind::Function, Kind::Proxy, Kind::Firmware],
    ),
];

/// Fields every component has.
const COMMON_FIELDS: &[&str] = &[
    "id",
    "name",
    "kind",
    "subsystem",
    "properties",
    "placeholder",
];

/// The fields a component of `kind` may have.
pub fn component_fields(kind: Kind) -> Vec<&'static str> {
    COMMON_FIELDS
        .iter()
        .copied()
        .chain(
            KIND_FIELDS
                .iter()
                .filter(|(_, kinds)| kinds.contains(&kind))
                .map(|(f, _)| *f),
        )
        .collect()
}

impl RawComponent {
    fn present_fields(&self) -> Vec<&'static str> {
        let present = [
            ("capabilities", self.capabilities.is_some()),
            ("access", self.access.is_some()),
            (
                "equipped_with_deployer",
                self.equipped_with_deployer.is_some(),
            ),
            ("equipped_with_bridge", self.equipped_with_bridge.is_some()),
            ("routes", self.routes.is_some()),
            ("board", self.board.is_some()),
            ("port", self.port.is_some()),
            ("need_deployer", self.need_deployer.is_some()),
            ("triggers", self.triggers.is_some()),
            ("inputs", self.inputs.is_some()),
            ("outputs", self.outputs.is_some()),
            ("runtime", self.runtime.is_some()),
            ("src", self.src.is_some()),
            ("context", self.context.is_some()),
            ("requires", self.requires.is_some()),
            ("invocation", self.invocation.is_some()),
            ("device", self.device.is_some()),
            ("baud", self.baud.is_some()),
            ("topic_prefix", self.topic_prefix.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("resources", self.resources.is_some()),
        ];
        present
            .into_iter()
            .filter(|(_, p)| *p)
            .map(|(n, _)| n)
            .collect()
    }

    /// Converts to a typed component, pushing a problem (under `path`) for every
    /// field that does not apply to the kind or that the kind requires. Returns a
    /// component whenever the fields that identify it are usable.
    pub fn into_component(
        self,
        path: impl Fn() -> JsonPath,
        problems: &mut Vec<Problem>,
    ) -> Component {
        let kind = self.kind;
        for field in self.present_fields() {
            let kinds = KIND_FIELDS
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, k)| *k)
                .unwrap_or(&[]);
            if !kinds.contains(&kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                problems.push(
                    Problem::new(
                        path().key(field),
                        format!("field `{field}` does not apply to a {kind}"),
                    )
                    .expected(format!(
                        "`{field}` only on a {}; remove it or change `kind`",
                        names.join(" or ")
                    )),
                );
            }
        }
        let spec = match kind {
            Kind::Gateway => ComponentSpec::Gateway(GatewaySpec {
                capabilities: self.capabilities.unwrap_or_default(),
                access: self.access.unwrap_or_default(),
                equipped_with_deployer: self.equipped_with_deployer.unwrap_or(false),
                equipped_with_bridge: self.equipped_with_bridge.unwrap_or(false),
                routes: self.routes.unwrap_or_default(),
            }),
            Kind::Host => ComponentSpec::Host(HostSpec {
                capabilities: self.capabilities.unwrap_or_default(),
                access: self.access.unwrap_or_default(),
            }),
            Kind::Device => ComponentSpec::Device(DeviceSpec {
                board: self.board.unwrap_or_else(|| {
                    problems.push(
                        Problem::new(path(), "device has no `board`")
                            .expected("`board`: the board type, such as \"uno\" or \"mega\""),
                    );
                    String::new()
                }),
                port: self.port,
                need_deployer: self.need_deployer.unwrap_or(false),
            }),
            Kind::Service => ComponentSpec::Service(ServiceSpec {
                resources: self.resources.unwrap_or_default(),
            }),
            Kind::Function => ComponentSpec::Function(FunctionSpec {
                triggers: self.triggers.unwrap_or_default(),
                inputs: self.inputs.unwrap_or_default(),
                outputs: self.outputs.unwrap_or_default(),
                runtime: self.runtime,
                src: self.src,
                context: self.context.unwrap_or_default(),
                requires: self.requires.unwrap_or_default(),
                invocation: self.invocation.unwrap_or_default(),
                resources: self.resources.unwrap_or_default(),
            }),
            Kind::Proxy => ComponentSpec::Proxy(ProxySpec {
                device: self.device.unwrap_or_else(|| {
                    problems.push(
                        Problem::new(path(), "proxy has no `device`")
                            .expected("`device`: the id of the device it bridges"),
                    );
                    String::new()
                }),
                baud: self.baud,
                topic_prefix: self.topic_prefix,
                resources: self.resources.unwrap_or_default(),
            }),
            Kind::Firmware => ComponentSpec::Firmware(FirmwareSpec {
                resources: self.resources.unwrap_or_default(),
            }),
            Kind::External => ComponentSpec::External(ExternalSpec {
                endpoint: self.endpoint,
            }),
        };
        Component {
            name: self.name.unwrap_or_else(|| self.id.clone()),
            id: self.id,
            subsystem: self.subsystem,
            properties: self.properties,
            placeholder: self.placeholder,
            spec,
        }
    }
}

impl From<&Component> for RawComponent {
    fn from(c: &Component) -> Self {
        let mut raw = RawComponent {
            id: c.id.clone(),
            name: (c.name != c.id).then(|| c.name.clone()),
            kind: c.kind(),
            subsystem: c.subsystem.clone(),
            properties: c.properties.clone(),
            placeholder: c.placeholder,
            ..RawComponent::default()
        };
        match &c.spec {
            ComponentSpec::Gateway(g) => {
                raw.capabilities = none_if_empty(g.capabilities.clone());
                raw.access = none_if_empty(g.access.clone());
                raw.equipped_with_deployer = some_if(g.equipped_with_deployer);
                raw.equipped_with_bridge = some_if(g.equipped_with_bridge);
                raw.routes = none_if_empty(g.routes.clone());
            }
            ComponentSpec::Host(h) => {
                raw.capabilities = none_if_empty(h.capabilities.clone());
                raw.access = none_if_empty(h.access.clone());
            }
            ComponentSpec::Device(d) => {
                raw.board = Some(d.board.clone());
                raw.port = d.port.clone();
                raw.need_deployer = some_if(d.need_deployer);
            }
            ComponentSpec::Service(s) => raw.resources = none_if_empty(s.resources.clone()),
            ComponentSpec::Function(f) => {
                raw.triggers = none_if_empty(f.triggers.clone());
                raw.inputs = none_if_empty(f.inputs.clone());
                raw.outputs = none_if_empty(f.outputs.clone());
                raw.runtime = f.runtime.clone();
                raw.src = f.src.clone();
                raw.context = none_if_empty(f.context.clone());
                raw.requires = none_if_empty(f.requires.clone());
                raw.invocation = none_if_empty(f.invocation.clone());
                raw.resources = none_if_empty(f.resources.clone());
            }
            ComponentSpec::Proxy(p) => {
                raw.device = Some(p.device.clone());
                raw.baud = p.baud;
                raw.topic_prefix = p.topic_prefix.clone();
                raw.resources = none_if_empty(p.resources.clone());
            }
            ComponentSpec::Firmware(f) => raw.resources = none_if_empty(f.resources.clone()),
            ComponentSpec::External(e) => raw.endpoint = e.endpoint.clone(),
        }
        raw
    }
}

impl Serialize for Component {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawComponent::from(self).serialize(s)
    }
}

/// Lenient about nothing: the first problem becomes the error. Files are read with
/// [`crate::parse`], which reports every problem at once.
impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawComponent::deserialize(d)?;
        let mut problems = Vec::new();
        let c = raw.into_component(JsonPath::root, &mut problems);
        match problems.into_iter().next() {
            None => Ok(c),
            Some(p) => Err(serde::de::Error::custom(p.message)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    #[default]
    Hosting,
    Communication,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawLink {
    pub kind: LinkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deployer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_control: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<bool>,
}

impl RawLink {
    /// Converts to a typed link, pushing a problem for every missing or misplaced
    /// field. A missing endpoint becomes an empty id, which validation skips: the
    /// link keeps its place so every later path stays right.
    pub fn into_link(self, path: impl Fn() -> JsonPath, problems: &mut Vec<Problem>) -> Link {
        let kind = match self.kind {
            LinkKind::Hosting => "hosting",
            LinkKind::Communication => "communication",
        };
        let mut require = |v: Option<String>, field: &str, what: &str| {
            v.unwrap_or_else(|| {
                problems.push(
                    Problem::new(path(), format!("{kind} link has no `{field}`"))
                        .expected(format!("`{field}`: {what}")),
                );
                String::new()
            })
        };
        let (link, misplaced): (Link, &[(&str, bool)]) = match self.kind {
            LinkKind::Hosting => (
                Link::Hosting {
                    component: require(
                        self.component,
                        "component",
                        "the id of the hosted component",
                    ),
                    host: require(self.host, "host", "the id of the component hosting it"),
                },
                &[
                    ("from", self.from.is_some()),
                    ("to", self.to.is_some()),
                    ("is_deployer", self.is_deployer.is_some()),
                    ("is_control", self.is_control.is_some()),
                    ("physical", self.physical.is_some()),
                ],
            ),
            LinkKind::Communication => (
                Link::Communication(Communication {
                    from: require(self.from, "from", "the id of the component that talks"),
                    to: require(self.to, "to", "the id of the component it talks to"),
                    is_deployer: self.is_deployer.unwrap_or(false),
                    is_control: self.is_control.unwrap_or(false),
                    physical: self.physical.unwrap_or(false),
                }),
                &[
                    ("component", self.component.is_some()),
                    ("host", self.host.is_some()),
                ],
            ),
        };
        for (field, _) in misplaced.iter().filter(|(_, present)| *present) {
            let expected = match self.kind {
                LinkKind::Hosting => "a hosting link has `component` and `host`",
                LinkKind::Communication => "a communication link has `from`, `to` and optional `is_deployer`, `is_control`, `physical`",
            };
            problems.push(
                Problem::new(
                    path().key(*field),
                    format!("field `{field}` does not apply to a {kind} link"),
                )
                .expected(expected),
            );
        }
        link
    }
}

impl From<&Link> for RawLink {
    fn from(l: &Link) -> Self {
        match l {
            Link::Hosting { component, host } => RawLink {
                kind: LinkKind::Hosting,
                component: Some(component.clone()),
                host: Some(host.clone()),
                ..RawLink::default()
            },
            Link::Communication(c) => RawLink {
                kind: LinkKind::Communication,
                from: Some(c.from.clone()),
                to: Some(c.to.clone()),
                is_deployer: some_if(c.is_deployer),
                is_control: some_if(c.is_control),
                physical: some_if(c.physical),
                ..RawLink::default()
            },
        }
    }
}

impl Serialize for Link {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawLink::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Link {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawLink::deserialize(d)?;
        let mut problems = Vec::new();
        let link = raw.into_link(JsonPath::root, &mut problems);
        match problems.into_iter().next() {
            None => Ok(link),
            Some(p) => Err(serde::de::Error::custom(p.message)),
        }
    }
}
