//! Firmware components: flashed onto their device by the deploy agent,
//! present in the current model when the agent says the device runs them.

use std::collections::BTreeMap;
use std::time::Duration;

use continuum_deploy_agent::job::Request;
use continuum_deploy_agent::service::DeviceReport;
use continuum_models::{Component, ComponentSpec, DeploymentModel, Link};

use crate::engine::{State, Status};

/// Whether `c` is flashed rather than run.
pub fn is_firmware(c: &Component) -> bool {
    c.spec.resources().is_some_and(|r| r.flash.is_some())
}

/// The device `firmware` is hosted on, in `model`.
pub fn device_of<'m>(model: &'m DeploymentModel, firmware: &str) -> Option<&'m Component> {
    let host = model.links.iter().find_map(|l| match l {
        Link::Hosting { component, host } if component == firmware => Some(host),
        _ => None,
    })?;
    model
        .components
        .iter()
        .find(|c| &c.id == host && matches!(c.spec, ComponentSpec::Device(_)))
}

/// The SHA-256 a firmware component is pinned to.
pub fn pinned_digest(c: &Component) -> Option<String> {
    let flash = c.spec.resources()?.flash.as_ref()?;
    continuum_models::artefact::split(&flash.artefact)
        .1
        .map(str::to_owned)
}

/// Whether the device runs what `c` says, by the agent's last report.
pub fn runs(
    model: &DeploymentModel,
    c: &Component,
    devices: &BTreeMap<String, DeviceReport>,
) -> bool {
    let Some(device) = device_of(model, &c.id) else {
        return false;
    };
    let Some(r) = devices.get(&device.id) else {
        return false;
    };
    let confirmed = matches!(r.state.as_str(), "running" | "unchanged");
    confirmed && pinned_digest(c).is_none_or(|d| r.firmware.as_deref() == Some(d.as_str()))
}

/// The status of firmware component `c`, from the agent's reports (none for
/// other components).
pub fn status(
    model: &DeploymentModel,
    c: &Component,
    devices: &BTreeMap<String, DeviceReport>,
) -> Option<Status> {
    if !is_firmware(c) {
        return None;
    }
    let device = device_of(model, &c.id)?;
    let short = |h: &Option<String>| {
        h.as_deref()
            .map_or(String::new(), |h| h.chars().take(12).collect())
    };
    Some(match devices.get(&device.id) {
        None => Status::new(
            State::Pending,
            format!("not flashed onto `{}` yet", device.id),
        ),
        Some(r) if r.state == "flashing" => Status::new(
            State::Deploying,
            format!(
                "flashing `{}`: {} {}%",
                device.id,
                r.stage.as_deref().unwrap_or(""),
                r.percent
            ),
        ),
        Some(r) if runs(model, c, devices) => Status::new(
            State::Running,
            format!(
                "on `{}`, firmware sha256:{}{}",
                device.id,
                short(&r.firmware),
                r.health
                    .as_deref()
                    .map_or(String::new(), |h| format!(", says {h}"))
            ),
        ),
        Some(r) if r.state == "failed" || r.state == "rolled_back" => Status::new(
            State::Failed,
            format!(
                "{} on `{}`{}: {}",
                r.state.replace('_', " "),
                device.id,
                r.stage
                    .as_deref()
                    .map_or(String::new(), |s| format!(" while {s}")),
                r.reason.as_deref().unwrap_or("")
            ),
        ),
        Some(r) => Status::new(
            State::Deploying,
            format!("`{}` runs sha256:{}", device.id, short(&r.firmware)),
        ),
    })
}

/// Where `device` is wired on this host: the gateway's own mapping, else the
/// model's port.
pub fn port_of(
    device: &Component,
    d: &continuum_models::component::DeviceSpec,
    ports: &BTreeMap<String, std::path::PathBuf>,
) -> std::path::PathBuf {
    ports.get(&device.id).cloned().unwrap_or_else(|| {
        d.port
            .clone()
            .unwrap_or_else(|| "/dev/ttyACM0".into())
            .into()
    })
}

/// The flash order for firmware `c` onto `device`, with the artefact's bytes.
pub fn request(
    c: &Component,
    device: &Component,
    artefact: Vec<u8>,
    ports: &BTreeMap<String, std::path::PathBuf>,
) -> Option<(Request, Duration)> {
    let flash = c.spec.resources()?.flash.as_ref()?;
    let ComponentSpec::Device(d) = &device.spec else {
        return None;
    };
    let within = flash
        .confirm_within
        .as_deref()
        .and_then(|s| humantime::parse_duration(s).ok())
        .unwrap_or(Duration::from_secs(10));
    let tool = match flash.tool {
        continuum_models::resources::FlashTool::Stk500v1 => None,
        continuum_models::resources::FlashTool::Avrdude => Some("avrdude".to_owned()),
        continuum_models::resources::FlashTool::Esptool => Some("esptool".to_owned()),
    };
    Some((
        Request {
            device: device.id.clone(),
            port: port_of(device, d, ports),
            board: d.board.clone(),
            artefact,
            baud: flash.baud,
            verify: flash.verify,
            health: flash.health.clone(),
            confirm_within_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
            tries: 10,
            force: false,
            signature: flash.signature.clone(),
            tool,
        },
        within,
    ))
}

/// The machine `device` is wired to, in `model`: the one a deployer link
/// comes from (following what hosts its source), else the single gateway or
/// host physically linked to it. Links to the firmware on the device count
/// as links to the device.
pub fn wired_to<'m>(model: &'m DeploymentModel, device: &str) -> Result<&'m Component, String> {
    let by_id = |id: &str| model.components.iter().find(|c| c.id == id);
    let is_machine =
        |c: &Component| matches!(c.spec, ComponentSpec::Gateway(_) | ComponentSpec::Host(_));
    let host_of = |id: &str| {
        model.links.iter().find_map(|l| match l {
            Link::Hosting { component, host } if component == id => Some(host.as_str()),
            _ => None,
        })
    };
    // Whether `id` is the device or runs on it.
    let at_device = |id: &str| id == device || host_of(id) == Some(device);
    // The machine `id` runs on, following the hosting chain.
    let machine_of = |mut id: &'m str| {
        for _ in 0..=model.components.len() {
            match by_id(id) {
                Some(c) if is_machine(c) => return Some(c),
                _ => id = host_of(id)?,
            }
        }
        None
    };
    let mut physical: Vec<&Component> = Vec::new();
    for l in &model.links {
        let Link::Communication(c) = l else { continue };
        if c.is_deployer && at_device(&c.to) {
            if let Some(m) = machine_of(&c.from) {
                return Ok(m);
            }
        }
        if c.physical {
            for (a, b) in [(&c.from, &c.to), (&c.to, &c.from)] {
                if let Some(m) = by_id(a).filter(|m| is_machine(m)) {
                    if at_device(b) && !physical.iter().any(|p| p.id == m.id) {
                        physical.push(m);
                    }
                }
            }
        }
    }
    match physical.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "`{device}` is wired to no gateway or host: add a communication link with `\"physical\": true` (or an `is_deployer` link from the software that deploys it)"
        )),
        several => Err(format!(
            "`{device}` is physically linked to {}: say which one deploys it with an `is_deployer` link",
            several
                .iter()
                .map(|m| format!("`{}`", m.id))
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(links: serde_json::Value) -> DeploymentModel {
        model_with(links, true)
    }

    fn model_with(links: serde_json::Value, need_deployer: bool) -> DeploymentModel {
        let doc = serde_json::json!({
            "id": "s",
            "components": [
                {"id": "gw", "kind": "gateway", "equipped_with_deployer": true},
                {"id": "pi", "kind": "host", "access": {"ssh": {"address": "10.0.0.2"}}},
                {"id": "box", "kind": "host", "access": {"docker": {"endpoint": "tcp://10.0.0.3:2375"}}},
                {"id": "uno", "kind": "device", "board": "uno", "need_deployer": need_deployer},
                {"id": "flow", "kind": "firmware", "resources": {"flash": {"artefact": "a.hex"}}},
                {"id": "flasher", "kind": "service", "resources": {"container": {"image": "f:1"}}}
            ],
            "links": links
        });
        continuum_models::load::load_deployment_model("t.json", &doc.to_string()).expect("valid")
    }

    #[test]
    fn a_single_physical_link_says_where_the_device_is_wired() {
        let m = model(serde_json::json!([
            {"kind": "hosting", "component": "flow", "host": "uno"},
            {"kind": "hosting", "component": "flasher", "host": "gw"},
            {"kind": "communication", "from": "uno", "to": "pi", "physical": true}
        ]));
        assert_eq!(wired_to(&m, "uno").unwrap().id, "pi");
    }

    #[test]
    fn a_deployer_link_wins_and_follows_what_hosts_its_source() {
        let m = model(serde_json::json!([
            {"kind": "hosting", "component": "flow", "host": "uno"},
            {"kind": "hosting", "component": "flasher", "host": "box"},
            {"kind": "communication", "from": "pi", "to": "uno", "physical": true},
            {"kind": "communication", "from": "gw", "to": "uno", "physical": true},
            {"kind": "communication", "from": "flasher", "to": "flow", "is_deployer": true}
        ]));
        assert_eq!(wired_to(&m, "uno").unwrap().id, "box");
    }

    #[test]
    fn several_physical_links_and_none_are_explained() {
        let m = model(serde_json::json!([
            {"kind": "hosting", "component": "flow", "host": "uno"},
            {"kind": "hosting", "component": "flasher", "host": "gw"},
            {"kind": "communication", "from": "pi", "to": "uno", "physical": true},
            {"kind": "communication", "from": "gw", "to": "flow", "physical": true}
        ]));
        let e = wired_to(&m, "uno").unwrap_err();
        assert!(
            e.contains("`pi` and `gw`") && e.contains("is_deployer"),
            "{e}"
        );
        // (Validation refuses a device that needs a deployer and is wired
        // to nothing; one that does not say so still gets a clear refusal.)
        let m = model_with(
            serde_json::json!([
                {"kind": "hosting", "component": "flow", "host": "uno"},
                {"kind": "hosting", "component": "flasher", "host": "gw"},
                {"kind": "communication", "from": "gw", "to": "pi", "physical": true}
            ]),
            false,
        );
        assert!(wired_to(&m, "uno")
            .unwrap_err()
            .contains("wired to no gateway or host"));
    }
}
