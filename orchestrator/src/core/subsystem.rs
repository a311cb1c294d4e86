//! One subsystem as the orchestrator knows it: its target, and what its
//! gateway last reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use continuum_models::{DeploymentModel, ModelDiff};
use continuum_proto::v1::{ComponentState, ComponentStatus, DiffCounts, Gateway, SubsystemPhase};

use super::{counts, is_zero};
use crate::records::{StoredCurrent, StoredTarget};

/// A subsystem: its target, and what its gateway reports.
#[derive(Debug, Clone)]
pub struct Subsystem {
    /// The target its gateway must run.
    pub target: StoredTarget,
    /// The target's model.
    pub target_model: Arc<DeploymentModel>,
    /// The generation its gateway last reported running.
    pub observed_generation: u64,
    /// `None` until the gateway's first report. The same allocation as the
    /// target's model while they are equal (a converged gateway's): one copy
    /// per subsystem, not two, and a report clones no model.
    pub current_model: Option<Arc<DeploymentModel>>,
    /// The current model's canonical JSON (empty before the first report).
    pub current_bytes: Vec<u8>,
    /// The last status of each component, by id.
    pub statuses: BTreeMap<String, ComponentStatus>,
    /// Target against current.
    pub live: DiffCounts,
}

impl Subsystem {
    /// A subsystem with this target and nothing reported yet.
    pub fn new(target: StoredTarget, target_model: DeploymentModel) -> Subsystem {
        Subsystem::assemble(target, Arc::new(target_model), 0, None, BTreeMap::new())
    }

    /// `model` shared with the target's when it equals it.
    fn shared(&self, model: DeploymentModel) -> Arc<DeploymentModel> {
        if *self.target_model == model {
            Arc::clone(&self.target_model)
        } else {
            Arc::new(model)
        }
    }

    /// The one place a subsystem's state is put together; the live diff is
    /// computed once, from what it holds.
    fn assemble(
        target: StoredTarget,
        target_model: Arc<DeploymentModel>,
        observed_generation: u64,
        current: Option<(Arc<DeploymentModel>, Vec<u8>)>,
        statuses: BTreeMap<String, ComponentStatus>,
    ) -> Subsystem {
        let (current_model, current_bytes) = match current {
            Some((m, b)) => (Some(m), b),
            None => (None, Vec::new()),
        };
        let mut s = Subsystem {
            target,
            target_model,
            observed_generation,
            current_model,
            current_bytes,
            statuses,
            live: DiffCounts::default(),
        };
        s.refresh_live();
        s
    }

    /// This subsystem as its gateway now reports it: running `model` at
    /// `observed_generation`.
    pub fn reported(
        &self,
        observed_generation: u64,
        model: DeploymentModel,
        bytes: Vec<u8>,
    ) -> Subsystem {
        Subsystem::assemble(
            self.target.clone(),
            Arc::clone(&self.target_model),
            observed_generation,
            Some((self.shared(model), bytes)),
            self.statuses.clone(),
        )
    }

    /// The same subsystem with what its gateway last reported.
    pub fn with_current(
        mut self,
        observed_generation: u64,
        current: Option<(DeploymentModel, Vec<u8>)>,
        statuses: BTreeMap<String, ComponentStatus>,
    ) -> Subsystem {
        self.observed_generation = observed_generation;
        if let Some((model, bytes)) = current {
            self.current_model = Some(self.shared(model));
            self.current_bytes = bytes;
        }
        self.statuses = statuses;
        self.refresh_live();
        self
    }

    /// The same subsystem given a new target (statuses of components in
    /// neither the new target nor what runs are forgotten).
    pub fn retarget(mut self, target: StoredTarget, model: DeploymentModel) -> Subsystem {
        let keep: std::collections::HashSet<&str> = model
            .components
            .iter()
            .chain(self.current_model.iter().flat_map(|m| m.components.iter()))
            .map(|c| c.id.as_str())
            .collect();
        let statuses = std::mem::take(&mut self.statuses)
            .into_iter()
            .filter(|(id, _)| keep.contains(id.as_str()))
            .collect();
        self.statuses = statuses;
        self.target = target;
        self.target_model = Arc::new(model);
        // Shared with the new target if what runs already equals it.
        if let Some(current) = self.current_model.take() {
            self.current_model = Some(if *current == *self.target_model {
                Arc::clone(&self.target_model)
            } else {
                current
            });
        }
        self.refresh_live();
        self
    }

    /// The target against what runs (everything, before the first report).
    pub fn live_diff(&self) -> ModelDiff {
        // Before the first report nothing runs; model-level fields are not
        // something to deploy, so they are taken as they are in the target.
        let empty = DeploymentModel {
            id: self.target_model.id.clone(),
            on_failure: self.target_model.on_failure,
            ..DeploymentModel::default()
        };
        let current = self.current_model.as_deref().unwrap_or(&empty);
        continuum_models::diff(current, &self.target_model)
    }

    fn refresh_live(&mut self) {
        self.live = counts(&self.live_diff());
    }

    /// What the store keeps of the gateway's reports.
    pub fn stored_current(&self) -> StoredCurrent {
        StoredCurrent {
            observed_generation: self.observed_generation,
            model: self.current_bytes.clone(),
            components: self.statuses.values().cloned().collect(),
        }
    }

    /// Components whose last status is failed, whatever the generation.
    pub fn failing(&self) -> impl Iterator<Item = &ComponentStatus> {
        self.statuses
            .values()
            .filter(|s| s.state == ComponentState::Failed as i32)
    }

    /// Components that failed while the gateway enforced the target generation
    /// (or a later one); failures of earlier generations are history.
    pub fn failing_now(&self) -> impl Iterator<Item = &ComponentStatus> {
        let target = self.target.generation;
        self.failing()
            .filter(move |s| s.generation == 0 || s.generation >= target)
    }

    /// Whether the gateway runs the target generation with nothing left to change and nothing failing.
    pub fn converged(&self) -> bool {
        self.observed_generation == self.target.generation
            && self.current_model.is_some()
            && is_zero(&self.live)
            && self.failing().next().is_none()
    }

    /// Where the rollout stands, given the subsystem's gateway record and
    /// whether that gateway holds a link now.
    pub fn phase(&self, gateway: Option<(&Gateway, bool)>) -> SubsystemPhase {
        if self.target.gateway_id.is_empty() {
            return SubsystemPhase::NoGateway;
        }
        let Some((g, connected)) = gateway else {
            return SubsystemPhase::Waiting;
        };
        if !g.rejected.is_empty() {
            SubsystemPhase::Refused
        } else if self.failing_now().next().is_some() {
            SubsystemPhase::Failed
        } else if self.converged() {
            SubsystemPhase::Converged
        } else if !connected {
            SubsystemPhase::Offline
        } else {
            SubsystemPhase::Deploying
        }
    }
}
