//! Workload policy: what a subsystem's containers may reach of the machine
//! that runs them. A model is data from whoever may apply; a container that
//! mounts the Docker socket or the host's `/etc` owns that machine. Each
//! reach is a rule; the policy allows rules per subsystem (or by default),
//! and the orchestrator (at apply) and the gateway (at admission) refuse a
//! model that needs a rule not allowed, naming the component, the field and
//! the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component as PathPart, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{DeploymentModel, Megamodel};

/// One kind of reach into the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Mounting the container engine's socket (control of every container).
    DockerSocket,
    /// Mounting `/` or a system directory (`/etc`, `/proc`, `/sys`, `/dev`,
    /// `/boot`, `/root`, `/run`, `/var/run`, `/var/lib/docker`, `/usr`...).
    SystemPaths,
    /// Mounting any other host path.
    HostMounts,
    /// Mapping a host device.
    Devices,
    /// The host's network namespace (`network: host`).
    HostNetwork,
    /// Another container's namespace (`network: container:<name>`).
    Namespaces,
}

impl Rule {
    /// Its name in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Rule::DockerSocket => "docker-socket",
            Rule::SystemPaths => "system-paths",
            Rule::HostMounts => "host-mounts",
            Rule::Devices => "devices",
            Rule::HostNetwork => "host-network",
            Rule::Namespaces => "namespaces",
        }
    }
}

/// What one subsystem (or every subsystem, by default) is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowed {
    /// The rules allowed.
    pub allow: BTreeSet<Rule>,
}

/// A policy: rules allowed by default and per subsystem (a subsystem's
/// entry replaces the default for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// For subsystems the policy does not name.
    #[serde(default = "Policy::default_allowed")]
    pub default: Allowed,
    /// By subsystem id.
    #[serde(default)]
    pub subsystems: BTreeMap<String, Allowed>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            default: Policy::default_allowed(),
            subsystems: BTreeMap::new(),
        }
    }
}

impl Policy {
    /// Without a policy file, or for subsystems a file does not name and
    /// whose `default` it leaves out: nothing — a container reaches no host
    /// path, device, network or other container's namespaces until a policy
    /// allows it for its subsystem.
    fn default_allowed() -> Allowed {
        Allowed {
            allow: BTreeSet::new(),
        }
    }

    /// Reads a policy file; the error names it.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("the workload policy {}: {e}", path.display()))?;
        Policy::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a policy file's text.
    pub fn from_json(text: &str) -> Result<Policy, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "{e} (expected {{\"default\": {{\"allow\": [RULE...]}}, \"subsystems\": {{\"ID\": {{\"allow\": [...]}}}}}} with rules docker-socket, system-paths, host-mounts, devices, host-network, namespaces)"
            )
        })
    }

    fn allowed(&self, subsystem: &str) -> &BTreeSet<Rule> {
        &self
            .subsystems
            .get(subsystem)
            .unwrap_or(&self.default)
            .allow
    }
}

/// A component that needs a rule its subsystem is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The subsystem.
    pub subsystem: String,
    /// The component.
    pub component: String,
    /// The field, from the component (`resources.container.mounts[0].source`).
    pub field: String,
    /// Its value.
    pub value: String,
    /// The rule it needs.
    pub rule: Rule,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` of subsystem `{}`: {} `{}` needs rule `{}`, which the workload policy does not allow for this subsystem",
            self.component,
            self.subsystem,
            self.field,
            self.value,
            self.rule.name()
        )
    }
}

/// The system directories: mounting one, or anything under it, is
/// [`Rule::SystemPaths`].
const SYSTEM: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib/docker",
    "/var/run",
];

/// `path` with `.` and `..` resolved as written (`/tmp/../etc` is `/etc`).
fn lexical(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in Path::new(path).components() {
        match part {
            PathPart::ParentDir => {
                out.pop();
            }
            PathPart::Normal(p) => out.push(p),
            PathPart::RootDir | PathPart::CurDir | PathPart::Prefix(_) => {}
        }
    }
    out
}

/// The rule mounting host path `source` needs (none for a named volume).
fn mount_rule(source: &str) -> Option<Rule> {
    if !source.starts_with('/') {
        return None;
    }
    let path = lexical(source);
    if path.file_name().is_some_and(|n| n == "docker.sock") {
        return Some(Rule::DockerSocket);
    }
    let system = SYSTEM.iter().any(|s| {
        let s = Path::new(s);
        if s == Path::new("/") {
            path == s
        } else {
            path.starts_with(s)
        }
    });
    Some(if system {
        Rule::SystemPaths
    } else {
        Rule::HostMounts
    })
}

/// What subsystem `subsystem`'s model needs that `policy` does not allow.
pub fn check_model(subsystem: &str, model: &DeploymentModel, policy: &Policy) -> Vec<Refusal> {
    let allowed = policy.allowed(subsystem);
    let mut refusals = Vec::new();
    for c in &model.components {
        let Some(container) = c.spec.resources().and_then(|r| r.container.as_ref()) else {
            continue;
        };
        let mut need = |field: String, value: &str, rule: Rule| {
            if !allowed.contains(&rule) {
                refusals.push(Refusal {
                    subsystem: subsystem.to_owned(),
                    component: c.id.clone(),
                    field,
                    value: value.to_owned(),
                    rule,
                });
            }
        };
        for (i, m) in container.mounts.iter().enumerate() {
            if let Some(rule) = mount_rule(&m.source) {
                need(
                    format!("resources.container.mounts[{i}].source"),
                    &m.source,
                    rule,
                );
            }
        }
        for (i, d) in container.devices.iter().enumerate() {
            need(
                format!("resources.container.devices[{i}].host"),
                &d.host,
                Rule::Devices,
            );
        }
        match container.network.as_deref() {
            Some("host") => need(
                "resources.container.network".into(),
                "host",
                Rule::HostNetwork,
            ),
            Some(n) if n.starts_with("container:") => {
                need("resources.container.network".into(), n, Rule::Namespaces)
            }
            _ => {}
        }
    }
    refusals
}

/// What `megamodel` needs that `policy` does not allow, subsystem by
/// subsystem.
pub fn check(megamodel: &Megamodel, policy: &Policy) -> Vec<Refusal> {
    megamodel
        .subsystems
        .iter()
        .flat_map(|s| check_model(s.id.as_deref().unwrap_or_default(), s, policy))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(container: serde_json::Value) -> DeploymentModel {
        let doc = serde_json::json!({"id": "s", "components": [
            {"id": "gw", "kind": "gateway"},
            {"id": "svc", "kind": "service", "resources": {"container": container}}
        ], "links": [{"kind": "hosting", "component": "svc", "host": "gw"}]});
        crate::load::load_deployment_model("t.json", &doc.to_string()).expect("valid")
    }

    fn rules(r: &[Refusal]) -> Vec<(&str, Rule)> {
        r.iter().map(|r| (r.field.as_str(), r.rule)).collect()
    }

    #[test]
    fn the_engine_socket_system_paths_and_namespaces_are_refused_by_default() {
        let m = model(serde_json::json!({"image": "x:1",
            "mounts": [
                {"source": "/var/run/docker.sock", "target": "/s"},
                {"source": "/", "target": "/host"},
                {"source": "/tmp/../etc/passwd", "target": "/p"},
                {"source": "/srv/data", "target": "/data"},
                {"source": "named-volume", "target": "/v"}
            ],
            "network": "container:other"}));
        let r = check_model("s", &m, &Policy::default());
        assert_eq!(
            rules(&r),
            vec![
                ("resources.container.mounts[0].source", Rule::DockerSocket),
                ("resources.container.mounts[1].source", Rule::SystemPaths),
                ("resources.container.mounts[2].source", Rule::SystemPaths),
                ("resources.container.mounts[3].source", Rule::HostMounts),
                ("resources.container.network", Rule::Namespaces),
            ]
        );
        // Allowing host mounts does not allow the engine's socket or system paths.
        let mounts = Policy::from_json(r#"{"default": {"allow": ["host-mounts"]}}"#).unwrap();
        assert_eq!(rules(&check_model("s", &m, &mounts)).len(), 4);
        assert!(r[0].to_string().starts_with(
            "`svc` of subsystem `s`: resources.container.mounts[0].source `/var/run/docker.sock` needs rule `docker-socket`"
        ));
    }

    #[test]
    fn a_policy_allows_per_subsystem() {
        let m = model(serde_json::json!({"image": "x:1", "network": "host",
            "devices": [{"host": "/dev/ttyACM0"}]}));
        assert_eq!(
            rules(&check_model("s", &m, &Policy::default())),
            vec![
                ("resources.container.devices[0].host", Rule::Devices),
                ("resources.container.network", Rule::HostNetwork),
            ],
            "refused without a policy"
        );
        let strict =
            Policy::from_json(r#"{"subsystems": {"lab": {"allow": ["devices", "host-network"]}}}"#)
                .unwrap();
        assert_eq!(
            rules(&check_model("s", &m, &strict)),
            vec![
                ("resources.container.devices[0].host", Rule::Devices),
                ("resources.container.network", Rule::HostNetwork),
            ]
        );
        assert!(check_model("lab", &m, &strict).is_empty());
        let e = Policy::from_json(r#"{"default": {"allow": ["root"]}}"#).unwrap_err();
        assert!(e.contains("docker-socket, system-paths"), "{e}");
    }
}
