//! Deployment models, megamodels and templates.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::component::Component;
use crate::link::Link;

/// What a gateway does when a step fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Mark the component failed and stop what depends on it; leave the rest running.
    #[default]
    Stop,
    /// Return the subsystem to the last generation that fully ran.
    Rollback,
}

impl FailurePolicy {
    fn is_default(&self) -> bool {
        *self == FailurePolicy::default()
    }
}

/// The deployment model of one local subsystem (or, flattened, of a whole megamodel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentModel {
    /// The subsystem id (`None` for a flattened megamodel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What a failed generation leads to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailurePolicy>,
    /// Its components.
    #[serde(default)]
    pub components: Vec<Component>,
    /// Its links.
    #[serde(default)]
    pub links: Vec<Link>,
}

impl DeploymentModel {
    /// A component by id.
    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.id == id)
    }

    /// Components by id (the first one wins on duplicates; validation reports those).
    pub fn index(&self) -> HashMap<&str, &Component> {
        let mut map = HashMap::with_capacity(self.components.len());
        for c in &self.components {
            map.entry(c.id.as_str()).or_insert(c);
        }
        map
    }

    /// The host of each hosted component.
    pub fn hosts(&self) -> HashMap<&str, &str> {
        self.links
            .iter()
            .filter_map(|l| match l {
                Link::Hosting { component, host } => Some((component.as_str(), host.as_str())),
                Link::Communication(_) => None,
            })
            .collect()
    }

    /// Components sorted by id and links sorted, so equal models compare equal.
    pub fn canonicalize(&mut self) {
        self.components.sort_by(|a, b| a.id.cmp(&b.id));
        self.links.sort();
    }

    /// The model in canonical order.
    pub fn canonical(mut self) -> Self {
        self.canonicalize();
        self
    }
}

/// The model of the whole system: one deployment model per local subsystem, plus the
/// links between subsystems. Components may also be given at the top level (the
/// single-file form): [`crate::partition`] assigns them to subsystems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Megamodel {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a failed generation leads to, unless a subsystem says otherwise.
    #[serde(default, skip_serializing_if = "FailurePolicy::is_default")]
    pub on_failure: FailurePolicy,
    /// How functions waiting for placement are placed (the weights of CPU
    /// and memory).
    #[serde(default, skip_serializing_if = "crate::placement::Weights::is_default")]
    pub placement: crate::placement::Weights,
    /// Its subsystems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<DeploymentModel>,
    /// Components not (yet) inside a subsystem: explicit `subsystem`, derived from the
    /// hosting chain, or functions waiting for placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Component>,
    /// Links between subsystems (and every link in the single-file form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

impl Megamodel {
    /// A subsystem by id.
    pub fn subsystem(&self, id: &str) -> Option<&DeploymentModel> {
        self.subsystems.iter().find(|s| s.id.as_deref() == Some(id))
    }

    /// Every component with the subsystem it belongs to (inside a subsystem: its id;
    /// at the top level: its explicit `subsystem`, if any).
    pub fn all_components(&self) -> impl Iterator<Item = (Option<&str>, &Component)> {
        self.subsystems
            .iter()
            .flat_map(|s| s.components.iter().map(move |c| (s.id.as_deref(), c)))
            .chain(self.components.iter().map(|c| (c.subsystem.as_deref(), c)))
    }

    /// Every link, of every subsystem and of the top level.
    pub fn all_links(&self) -> impl Iterator<Item = &Link> {
        self.subsystems
            .iter()
            .flat_map(|s| s.links.iter())
            .chain(self.links.iter())
    }

    /// Subsystems, components and links in a stable order, so equal megamodels
    /// serialize to the same text.
    pub fn canonicalize(&mut self) {
        self.subsystems.sort_by(|a, b| a.id.cmp(&b.id));
        for s in &mut self.subsystems {
            s.canonicalize();
        }
        self.components.sort_by(|a, b| a.id.cmp(&b.id));
        self.links.sort();
    }

    /// One deployment model holding every component (each with its subsystem set)
    /// and every link, in canonical order: what diff and plan compare.
    pub fn flatten(&self) -> DeploymentModel {
        let components = self
            .all_components()
            .map(|(sub, c)| {
                let mut c = c.clone();
                c.subsystem = sub.map(str::to_owned);
                c
            })
            .collect();
        DeploymentModel {
            id: None,
            on_failure: Some(self.on_failure),
            components,
            links: self.all_links().cloned().collect(),
        }
        .canonical()
    }
}

/// A function runtime template: a deployment model with one placeholder component
/// that a function refines (see [`crate::template`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// The template's name.
    pub template: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its components (one of them the placeholder a function refines).
    #[serde(default)]
    pub components: Vec<Component>,
    /// Its links.
    #[serde(default)]
    pub links: Vec<Link>,
}
