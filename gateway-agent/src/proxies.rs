//! Device proxies run by the deploy agent: a proxy component with no
//! container of its own is handed to the agent, which carries its device's
//! serial lines to the local broker (and `<topic>/in` back to the device).

use continuum_deploy_agent::proxy::ProxySpec;
use continuum_models::{Component, ComponentSpec, DeploymentModel};

use crate::devices::DeviceView;
use crate::engine::{State, Status};

/// Whether the agent runs `c`: a proxy without a container.
pub fn is_agent_proxy(c: &Component) -> bool {
    matches!(&c.spec, ComponentSpec::Proxy(p) if p.resources.container.is_none())
}

/// The topic a proxy publishes its device's lines on.
pub fn topic(c: &Component) -> Option<String> {
    let ComponentSpec::Proxy(p) = &c.spec else {
        return None;
    };
    Some(
        p.topic_prefix
            .clone()
            .unwrap_or_else(|| format!("/{}/readings", c.id)),
    )
}

/// What the agent must run for `model`'s proxies.
pub fn specs(
    model: &DeploymentModel,
    ports: &std::collections::BTreeMap<String, std::path::PathBuf>,
) -> Vec<ProxySpec> {
    model
        .components
        .iter()
        .filter(|c| is_agent_proxy(c))
        .filter_map(|c| {
            let ComponentSpec::Proxy(p) = &c.spec else {
                return None;
            };
            let device = model.components.iter().find(|d| d.id == p.device)?;
            let ComponentSpec::Device(d) = &device.spec else {
                return None;
            };
            Some(ProxySpec {
                device: device.id.clone(),
                port: crate::firmware::port_of(device, d, ports),
                baud: p.baud.unwrap_or(115_200),
                topic: topic(c)?,
            })
        })
        .collect()
}

/// Whether the agent has `c`'s device port open (its proxy runs).
pub fn runs(c: &Component, devices: &DeviceView) -> bool {
    match &c.spec {
        ComponentSpec::Proxy(p) if is_agent_proxy(c) => devices.port_open(&p.device) == Some(true),
        _ => false,
    }
}

/// The status of an agent-run proxy (none for other components).
pub fn status(c: &Component, devices: &DeviceView) -> Option<Status> {
    if !is_agent_proxy(c) {
        return None;
    }
    let ComponentSpec::Proxy(p) = &c.spec else {
        return None;
    };
    let topic = topic(c).unwrap_or_default();
    Some(match devices.port_open(&p.device) {
        Some(true) => Status::new(
            State::Running,
            format!("`{}` on the deploy agent, lines on {topic}", p.device),
        ),
        Some(false) => Status::new(
            State::Failed,
            format!(
                "the port of `{}` is not there (the agent keeps looking)",
                p.device
            ),
        ),
        None => Status::new(State::Deploying, "handed to the deploy agent"),
    })
}
