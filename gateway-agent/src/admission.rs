//! Whether this gateway can run a target, and why not: checked before a
//! target is accepted, so a model the gateway cannot run is refused with the
//! reason instead of failing step after step.

use std::path::Path;

use continuum_models::policy::Policy;
use continuum_models::route::routes_of;
use continuum_models::DeploymentModel;

use crate::agent::Driver;

/// Why a gateway refuses a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target does not read as a valid subsystem model.
    #[error("{0}")]
    Invalid(String),
    /// A component needs the bridge and the agent runs without one.
    #[error("`{owner}` needs the bridge ({route}), and this gateway agent runs none (started with --no-bridge)")]
    NoBridge {
        /// The component.
        owner: String,
        /// One of its routes.
        route: String,
    },
    /// Firmware, and no deploy agent to flash it.
    #[error("`{0}` must be flashed onto a device, and this gateway has no deploy agent")]
    NoDeployAgent(String),
    /// Firmware that no device hosts.
    #[error("`{0}` is firmware, and no device of the model hosts it")]
    NoDevice(String),
    /// A workload needs what the gateway's workload policy does not allow.
    #[error("refused by the workload policy: {0}")]
    Policy(String),
    /// Firmware on a device that no machine of the model is wired to.
    #[error("`{0}` cannot be flashed: {1}")]
    Unwired(String, String),
    /// Installed by commands, which no driver here runs.
    #[error("`{0}` is installed by commands, which this gateway's drivers do not run")]
    Commands(String),
    /// Nothing to run.
    #[error("`{0}` has nothing this gateway can run (no container)")]
    NothingToRun(String),
    /// A target older than the one held: a replay, or an orchestrator
    /// restored from an older backup.
    #[error("generation {offered} of `{subsystem}` is older than generation {holds}, which this gateway holds already: a replayed target is not enforced (if the orchestrator was restored from an older backup, restart this agent once with --accept-older-targets)")]
    Older {
        /// The subsystem.
        subsystem: String,
        /// The generation offered.
        offered: u64,
        /// The generation held.
        holds: u64,
    },
    /// The process driver cannot give the component what it needs.
    #[error("`{component}` needs {what}, which the process driver of this gateway cannot provide")]
    ProcessDriver {
        /// The component.
        component: String,
        /// What it needs.
        what: &'static str,
    },
    /// A device the component maps is missing.
    #[error("`{component}` needs the device {device}, which is not present on this gateway")]
    MissingDevice {
        /// The component.
        component: String,
        /// The device's path on the host.
        device: String,
    },
    /// The target could not be written to the agent's store.
    #[error("cannot persist the target: {0}")]
    Store(String),
}

/// Checks that a gateway with `driver` (and a bridge or not) can run `model`.
pub fn admit(
    model: &DeploymentModel,
    driver: Driver,
    bridge: bool,
    deployer: bool,
) -> Result<(), Refusal> {
    admit_with(model, driver, bridge, deployer, &Policy::default())
}

/// [`admit`], under the workload policy `policy` (checked again here: a
/// gateway does not rely on its orchestrator alone for what runs on it).
pub fn admit_with(
    model: &DeploymentModel,
    driver: Driver,
    bridge: bool,
    deployer: bool,
    policy: &Policy,
) -> Result<(), Refusal> {
    let refused = continuum_models::policy::check_model(
        model.id.as_deref().unwrap_or_default(),
        model,
        policy,
    );
    if !refused.is_empty() {
        return Err(Refusal::Policy(
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if !bridge {
        if let Some(r) = model.components.iter().flat_map(routes_of).next() {
            return Err(Refusal::NoBridge {
                owner: r.owner.clone(),
                route: r.to_string(),
            });
        }
    }
    for c in model.components.iter().filter(|c| c.kind().has_lifecycle()) {
        let id = || c.id.clone();
        let resources = c.spec.resources();
        if resources.is_some_and(|r| r.flash.is_some()) {
            if !deployer {
                return Err(Refusal::NoDeployAgent(id()));
            }
            let Some(device) = crate::firmware::device_of(model, &c.id) else {
                return Err(Refusal::NoDevice(id()));
            };
            if let Err(why) = crate::firmware::wired_to(model, &device.id) {
                return Err(Refusal::Unwired(id(), why));
            }
            continue;
        }
        if deployer && crate::proxies::is_agent_proxy(c) {
            continue;
        }
        if resources.is_some_and(|r| r.commands.is_some() && r.container.is_none()) {
            return Err(Refusal::Commands(id()));
        }
        let Some(spec) = resources.and_then(|r| r.container.as_ref()) else {
            return Err(Refusal::NothingToRun(id()));
        };
        if driver == Driver::Process {
            // A build context is laid out in a directory the command runs in.
            let lacks = if spec.command.is_empty() {
                Some("an image's own entry point (give it a `command`)")
            } else if !spec.mounts.is_empty() {
                Some("mounts")
            } else if spec.secrets.iter().any(|s| s.file.is_some()) {
                Some("secrets as files (mounts; give them as `env`)")
            } else if spec
                .network
                .as_deref()
                .is_some_and(crate::runtime::is_custom_network)
            {
                Some("a network of its own")
            } else {
                None
            };
            if let Some(what) = lacks {
                return Err(Refusal::ProcessDriver {
                    component: id(),
                    what,
                });
            }
        }
        // A simulated gateway has whatever devices it is given.
        if driver == Driver::Sim {
            continue;
        }
        if let Some(d) = spec.devices.iter().find(|d| !Path::new(&d.host).exists()) {
            return Err(Refusal::MissingDevice {
                component: id(),
                device: d.host.clone(),
            });
        }
    }
    Ok(())
}
