//! From what runs to the current model: reality is the source of truth.

use std::collections::{BTreeMap, HashSet};

use continuum_models::route::{with_live_routes, Route};
use continuum_models::{Component, DeploymentModel, Kind, Link};

use crate::runtime::{RunState, Workload};
use crate::spec::{spec_hash, LABEL_COMPONENT, LABEL_DEFINITION, LABEL_SPEC_HASH};

/// Whether the agent runs this component as a workload (a container).
pub fn is_workload(c: &Component) -> bool {
    c.spec.resources().is_some_and(|r| r.container.is_some())
}

/// The workloads of each component, by component id.
pub fn by_component(workloads: &[Workload]) -> BTreeMap<&str, Vec<&Workload>> {
    let mut out: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in workloads {
        if let Some(c) = w.labels.get(LABEL_COMPONENT) {
            out.entry(c.as_str()).or_default().push(w);
        }
    }
    out
}

/// The current model: the target's infrastructure (the gateway runs this agent;
/// hosts and devices were checked when the target was accepted), and every
/// component that has a running workload — as the target describes it when
/// the workload runs the target's specification, else as the workload's own
/// label describes it. Links are the target's between present components.
pub fn current_model(
    target: &DeploymentModel,
    workloads: &[Workload],
    routes: &BTreeMap<String, Vec<Route>>,
    devices: &crate::devices::DeviceView,
) -> DeploymentModel {
    let wanted: BTreeMap<&str, &Component> = target
        .components
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    let mut components: Vec<Component> = target
        .components
        .iter()
        .filter(|c| c.kind().is_infrastructure() || c.kind() == Kind::External)
        .cloned()
        .collect();
    for (id, ws) in by_component(workloads) {
        let running: Vec<&&Workload> = ws.iter().filter(|w| w.state == RunState::Running).collect();
        let target_hash = wanted.get(id).map(|c| spec_hash(c));
        let matching = running.iter().find(|w| {
            target_hash.is_some() && w.labels.get(LABEL_SPEC_HASH) == target_hash.as_ref()
        });
        if let (Some(_), Some(c)) = (matching, wanted.get(id)) {
            components.push((*c).clone());
            continue;
        }
        // Running something else: its own definition says what.
        if let Some(def) = running
            .iter()
            .find_map(|w| w.labels.get(LABEL_DEFINITION))
            .and_then(|d| serde_json::from_str::<Component>(d).ok())
        {
            components.push(def);
        }
    }
    // Firmware is what its device runs, and a device proxy runs while its
    // port is open, as the deploy agent last said.
    for c in &target.components {
        if crate::firmware::runs(target, c, &devices.reports) || crate::proxies::runs(c, devices) {
            components.push(c.clone());
        }
    }
    // Routes are what the bridge carries, not what is wanted.
    for c in &mut components {
        with_live_routes(c, routes.get(&c.id).map_or(&[], Vec::as_slice));
    }
    let present: HashSet<String> = components.iter().map(|c| c.id.clone()).collect();
    let links: Vec<Link> = target
        .links
        .iter()
        .filter(|l| link_ends(l).iter().all(|e| present.contains(*e)))
        .cloned()
        .collect();
    DeploymentModel {
        id: target.id.clone(),
        on_failure: target.on_failure,
        components,
        links,
    }
    .canonical()
}

fn link_ends(l: &Link) -> [&str; 2] {
    match l {
        Link::Hosting { component, host } => [component, host],
        Link::Communication(c) => [&c.from, &c.to],
    }
}
