//! Resources: how an internal component is built, run and stopped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::is_false;

/// The lifecycle of an internal component. Several resources may be combined
/// (a container plus a configuration document, say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Run as a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// Installed and run by commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Box<Commands>>,
    /// Flashed onto a device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash: Option<Box<FlashSpec>>,
    /// Named configuration documents handed to the component (a Node-RED flow...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
}

impl Resources {
    /// Whether no resource is given.
    pub fn is_empty(&self) -> bool {
        self == &Resources::default()
    }
}

/// A container: from an image already on the engine, or built from a context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Or the image to build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    /// The command (the image's entry point when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Ports to publish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortBinding>,
    /// Host devices to map in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceMapping>,
    /// Mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// What happens when it exits.
    #[serde(default, skip_serializing_if = "RestartPolicy::is_default")]
    pub restart: RestartPolicy,
    /// Docker network mode or name (`host`, `none`, a network of the subsystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Secrets the gateway gives it from its own secrets directory: the model
    /// names them, never holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// A secret a container receives: the file `name` of its gateway's secrets
/// directory, as an environment variable or as a read-only file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name on the gateway.
    pub name: String,
    /// The environment variable that holds its value...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// ...or the absolute path in the container where it is mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl SecretRef {
    /// Whether `name` can name a secret: a file name of letters, digits,
    /// `.`, `_` and `-` that does not start with a dot (no path, no `..`).
    pub fn valid_name(name: &str) -> bool {
        (1..=128).contains(&name.len())
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

/// A local image build: no registry is assumed reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Directory holding the build context (relative to the model file).
    pub context: String,
    /// The Dockerfile, when not `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// Build arguments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// More directories put into the context: the directory inside the
    /// context → the directory to put there (relative to the model file). A
    /// function template puts the function's src at `function` this way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include: BTreeMap<String, String>,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    /// The port inside the container.
    pub container: u16,
    /// Host port; `None` publishes on an ephemeral port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// TCP or UDP.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }
}

/// A host device mapped into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    /// Its path on the host.
    pub host: String,
    /// Path in the container; the host path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// cgroup permissions (`rwm` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

/// A directory or volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// What is mounted (a host path or a volume).
    pub source: String,
    /// Where, inside the container.
    pub target: String,
    /// Whether it is read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// What happens when a container exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Nothing.
    No,
    /// It is started again.
    Always,
    /// It is started again if it failed.
    OnFailure,
    /// It is started again unless it was stopped.
    #[default]
    UnlessStopped,
}

impl RestartPolicy {
    fn is_default(&self) -> bool {
        *self == RestartPolicy::default()
    }
}

/// Shell commands for software installed directly on a host (GeneSIS's ssh resource).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    /// Fetches what is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
    /// Installs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Configures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configure: Option<String>,
    /// Starts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// Flashing an artefact onto a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashSpec {
    /// The flasher.
    #[serde(default)]
    pub tool: FlashTool,
    /// The firmware image (Intel HEX for AVR boards), relative to the model file.
    pub artefact: String,
    /// The serial speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// Read the flash back and compare after writing.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub verify: bool,
    /// A line the running firmware prints on its serial port (a regular
    /// expression): without it within `confirm_within`, the firmware is
    /// rolled back to the last one that confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// How long the firmware has to print its health line (`10s` if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_within: Option<String>,
    /// The ed25519 signature of the artefact's SHA-256, in hex (checked when
    /// the gateway trusts a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for FlashSpec {
    fn default() -> Self {
        FlashSpec {
            tool: FlashTool::default(),
            artefact: String::new(),
            baud: None,
            verify: true,
            health: None,
            confirm_within: None,
            signature: None,
        }
    }
}

fn is_true(b: &bool) -> bool {
    *b
}

/// How firmware is flashed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashTool {
    /// Continuum's own STK500v1 implementation (Arduino bootloaders).
    #[default]
    Stk500v1,
    /// With avrdude.
    Avrdude,
    /// With esptool.
    Esptool,
}
