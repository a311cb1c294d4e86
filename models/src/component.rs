//! Components: the nodes of a deployment model.

use std::collections::BTreeMap;

use crate::resources::Resources;

/// A component of a deployment model, identified by a stable id.
///
/// The JSON form is one flat object (`{"id", "kind", ...kind fields}`); see
/// `docs/model-format.md` and [`crate::wire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Stable, unique, DNS-label-like identifier (`[a-z0-9-]`, at most 63 characters).
    pub id: String,
    /// Human-readable name; defaults to the id.
    pub name: String,
    /// Subsystem this component belongs to, when stated explicitly. Inside a
    /// subsystem of a megamodel this is `None`: membership is the subsystem itself.
    pub subsystem: Option<String>,
    /// Free-form key/value metadata; changing it never redeploys anything.
    pub properties: BTreeMap<String, String>,
    /// Marks the component a template uses as the slot a function refines.
    pub placeholder: bool,
    /// What kind of component this is, with the fields of that kind.
    pub spec: ComponentSpec,
}

/// The kind of a component and the fields that only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSpec {
    /// The subsystem's gateway.
    Gateway(GatewaySpec),
    /// A machine behind the gateway.
    Host(HostSpec),
    /// A leaf device.
    Device(DeviceSpec),
    /// A managed service.
    Service(ServiceSpec),
    /// A serverless function.
    Function(FunctionSpec),
    /// A device proxy.
    Proxy(ProxySpec),
    /// Firmware for a device.
    Firmware(FirmwareSpec),
    /// Something managed elsewhere.
    External(ExternalSpec),
}

/// The kind of a component without its fields.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A gateway: runs the subsystem's agent.
    Gateway,
    /// A machine that runs software.
    Host,
    /// A leaf device (a board).
    Device,
    /// A managed service.
    #[default]
    Service,
    /// A serverless function.
    Function,
    /// A proxy between a device and the local broker.
    Proxy,
    /// Firmware flashed onto a device.
    Firmware,
    /// Something managed elsewhere, known by its endpoint.
    External,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Gateway,
        Kind::Host,
        Kind::Device,
        Kind::Service,
        Kind::Function,
        Kind::Proxy,
        Kind::Firmware,
        Kind::External,
    ];

    /// Its name in model files.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Host => "host",
            Kind::Device => "device",
            Kind::Service => "service",
            Kind::Function => "function",
            Kind::Proxy => "proxy",
            Kind::Firmware => "firmware",
            Kind::External => "external",
        }
    }

    /// Machines and boards: they host software and are never started or stopped.
    pub fn is_infrastructure(self) -> bool {
        matches!(self, Kind::Gateway | Kind::Host | Kind::Device)
    }

    /// Software Continuum manages through a lifecycle (add, start, stop, remove).
    pub fn has_lifecycle(self) -> bool {
        matches!(
            self,
            Kind::Service | Kind::Function | Kind::Proxy | Kind::Firmware
        )
    }

    /// Software that must be hosted somewhere (functions may wait for placement).
    pub fn needs_host(self) -> bool {
        matches!(self, Kind::Service | Kind::Proxy | Kind::Firmware)
    }

    /// Whether a component of this kind may host one of kind `hosted`.
    pub fn can_host(self, hosted: Kind) -> bool {
        match hosted {
            Kind::Firmware => self == Kind::Device,
            Kind::Service | Kind::Function | Kind::Proxy => {
                matches!(self, Kind::Gateway | Kind::Host | Kind::Service)
            }
            Kind::Gateway | Kind::Host | Kind::Device | Kind::External => false,
        }
    }

    /// Top-level JSON fields whose change does not require redeploying the component.
    pub fn in_place_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Gateway => &[
                "name",
                "properties",
                "capabilities",
                "equipped_with_deployer",
                "equipped_with_bridge",
                "routes",
            ],
            Kind::Host => &["name", "properties", "capabilities"],
            // The bridge re-routes a function in place, without restarting it.
            Kind::Function => &["name", "properties", "triggers", "inputs", "outputs"],
            _ => &["name", "properties"],
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ComponentSpec {
    /// The kind of component this is.
    pub fn kind(&self) -> Kind {
        match self {
            ComponentSpec::Gateway(_) => Kind::Gateway,
            ComponentSpec::Host(_) => Kind::Host,
            ComponentSpec::Device(_) => Kind::Device,
            ComponentSpec::Service(_) => Kind::Service,
            ComponentSpec::Function(_) => Kind::Function,
            ComponentSpec::Proxy(_) => Kind::Proxy,
            ComponentSpec::Firmware(_) => Kind::Firmware,
            ComponentSpec::External(_) => Kind::External,
        }
    }

    /// The lifecycle resources of internal components.
    pub fn resources(&self) -> Option<&Resources> {
        match self {
            ComponentSpec::Service(s) => Some(&s.resources),
            ComponentSpec::Function(f) => Some(&f.resources),
            ComponentSpec::Proxy(p) => Some(&p.resources),
            ComponentSpec::Firmware(f) => Some(&f.resources),
            _ => None,
        }
    }

    /// The lifecycle resources, to change them.
    pub fn resources_mut(&mut self) -> Option<&mut Resources> {
        match self {
            ComponentSpec::Service(s) => Some(&mut s.resources),
            ComponentSpec::Function(f) => Some(&mut f.resources),
            ComponentSpec::Proxy(p) => Some(&mut p.resources),
            ComponentSpec::Firmware(f) => Some(&mut f.resources),
            _ => None,
        }
    }
}

impl Component {
    /// The kind this specification is of.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// A component of `kind` with default fields, named after its id.
    pub fn new(id: impl Into<String>, spec: ComponentSpec) -> Self {
        let id = id.into();
        Component {
            name: id.clone(),
            id,
            subsystem: None,
            properties: BTreeMap::new(),
            placeholder: false,
            spec,
        }
    }

    /// The function specification, if this is a function.
    pub fn as_function(&self) -> Option<&FunctionSpec> {
        match &self.spec {
            ComponentSpec::Function(f) => Some(f),
            _ => None,
        }
    }
}

/// What a machine offers, as reported or declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capabilities {
    /// The CPU architecture (`x86_64`, `armv7`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// How many CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Whether a container engine is available.
    #[serde(default, skip_serializing_if = "crate::wire::is_false")]
    pub docker: bool,
    /// Free labels such as `location`, matched by placement.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How the agent reaches a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// The machine the agent itself runs on.
    #[default]
    Local,
    /// A Docker engine endpoint (`unix:///var/run/docker.sock`, `tcp://host:2376`).
    Docker {
        /// The engine's endpoint.
        endpoint: String,
    },
    /// A machine reached over SSH.
    Ssh {
        /// Its address.
        address: String,
        /// Its SSH port (22).
        #[serde(default = "default_ssh_port")]
        port: u16,
        /// The user to log in as.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
}

fn default_ssh_port() -> u16 {
    22
}

impl Access {
    /// Whether this is the agent's own machine.
    pub fn is_local(&self) -> bool {
        matches!(self, Access::Local)
    }
}

/// A SERVERLESS4IOT gateway: the machine running a subsystem's gateway agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySpec {
    /// What it offers.
    pub capabilities: Capabilities,
    /// How the agent reaches it.
    pub access: Access,
    /// Can spawn deploy agents for leaf devices.
    pub equipped_with_deployer: bool,
    /// Runs the bridge between its local broker and the global bus.
    pub equipped_with_bridge: bool,
    /// Static bridge routes, besides those of its functions.
    pub routes: Vec<crate::route::StaticRoute>,
}

/// A machine behind a gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSpec {
    /// What it offers.
    pub capabilities: Capabilities,
    /// How the agent reaches it.
    pub access: Access,
}

/// A leaf device (an Arduino-class board).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Board type (`uno`, `mega`, `atmega328p`, `esp32`...).
    pub board: String,
    /// Physical port on the host wired to it (`/dev/ttyACM0`).
    pub port: Option<String>,
    /// Needs a deploy agent on a host physically linked to it.
    pub need_deployer: bool,
}

/// Internal software managed by Continuum through its resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSpec {
    /// How it is run.
    pub resources: Resources,
}

/// A serverless function (SERVERLESS4IOT).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionSpec {
    /// MQTT topic filters on the global bus that invoke the function.
    pub triggers: Vec<String>,
    /// Named input datastreams, republished locally on `/<function>/in/<stream>`.
    pub inputs: Vec<String>,
    /// Named output datastreams, published on `/<function>/out/<stream>`.
    pub outputs: Vec<String>,
    /// The runtime template refining this function (a path relative to the model file).
    pub runtime: Option<String>,
    /// The function's source (a path relative to the model file).
    pub src: Option<String>,
    /// Key/value context handed to the function.
    pub context: BTreeMap<String, String>,
    /// Capabilities a host must offer to run this function (`docker`, `arch=arm64`...).
    pub requires: Vec<String>,
    /// How its handler is run (timeout, concurrency, retries).
    pub invocation: crate::invocation::Invocation,
    /// Filled in by template expansion (or written by hand).
    pub resources: Resources,
}

/// A ProxyToFaaSBridge: connects a device to the local broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySpec {
    /// The device it talks to.
    pub device: String,
    /// The serial speed.
    pub baud: Option<u32>,
    /// The topics its readings are published under.
    pub topic_prefix: Option<String>,
    /// How it is run.
    pub resources: Resources,
}

/// An artefact flashed onto a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareSpec {
    /// How it is flashed.
    pub resources: Resources,
}

/// Software managed elsewhere: only its endpoint is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalSpec {
    /// Where it is reached (a URL).
    pub endpoint: Option<String>,
}
