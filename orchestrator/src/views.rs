//! Read-only views of the orchestrator's state: models, diffs, status, gateways.

use std::collections::BTreeMap;

use continuum_models::{DeploymentModel, Megamodel, ModelDiff};
use continuum_proto::v1::{
    diff_request::Between, DiffRequest, DiffResponse, Document, Gateway, GetRequest, GetResponse,
    StatusResponse, SubsystemDiff, SubsystemStatus, View,
};

use continuum_proto::v1::{ComponentState, SubsystemPhase};

use crate::core::{counts, is_zero, to_json as json, Core, Revisions, Subsystem};
use crate::error::Error;

fn document(name: String, json: Vec<u8>) -> Option<Document> {
    Some(Document { name, json })
}

/// The subsystems of a megamodel by id, plus the components outside any (key "").
fn by_subsystem(mm: &Megamodel) -> BTreeMap<String, DeploymentModel> {
    let mut out: BTreeMap<String, DeploymentModel> = mm
        .subsystems
        .iter()
        .map(|s| (s.id.clone().unwrap_or_default(), s.clone()))
        .collect();
    if !mm.components.is_empty() || !mm.links.is_empty() {
        out.insert(
            String::new(),
            DeploymentModel {
                id: None,
                on_failure: None,
                components: mm.components.clone(),
                links: mm.links.clone(),
            }
            .canonical(),
        );
    }
    out
}

fn subsystem_diff(subsystem: &str, d: &ModelDiff) -> SubsystemDiff {
    SubsystemDiff {
        subsystem: subsystem.to_owned(),
        counts: Some(counts(d)),
        diff: json(d),
    }
}

impl Core {
    fn known_subsystem(&self, id: &str) -> Result<&Subsystem, Error> {
        self.subsystems
            .get(id)
            .filter(|s| !s.target.removed)
            .ok_or_else(|| Error::NoSubsystem(id.to_owned(), self.head_number()))
    }

    /// A target (at a revision) or current model, global or of one subsystem.
    pub fn get(&self, req: &GetRequest, revisions: &dyn Revisions) -> Result<GetResponse, Error> {
        let view = View::try_from(req.view).unwrap_or(View::Unspecified);
        match view {
            View::Unspecified | View::Target => {
                let (number, mm, bytes) = self.megamodel_at(req.revision, revisions)?;
                if req.subsystem.is_empty() {
                    return Ok(GetResponse {
                        model: document(format!("{}@{number}", mm.name), bytes),
                        revision: number,
                        generation: 0,
                    });
                }
                let model = mm
                    .subsystem(&req.subsystem)
                    .ok_or_else(|| Error::NoSubsystem(req.subsystem.clone(), number))?;
                let generation = if number == self.head_number() {
                    self.subsystems
                        .get(&req.subsystem)
                        .map_or(0, |s| s.target.generation)
                } else {
                    0
                };
                Ok(GetResponse {
                    model: document(format!("{}@{number}", req.subsystem), json(model)),
                    revision: number,
                    generation,
                })
            }
            View::Current => {
                if req.revision != 0 {
                    return Err(Error::BadRequest(
                        "the current model has no revisions; ask for the target at a revision"
                            .into(),
                    ));
                }
                let head = self.head_number();
                if !req.subsystem.is_empty() {
                    let sub = self.known_subsystem(&req.subsystem)?;
                    let model =
                        sub.current_model
                            .as_deref()
                            .cloned()
                            .unwrap_or_else(|| DeploymentModel {
                                id: Some(req.subsystem.clone()),
                                ..DeploymentModel::default()
                            });
                    return Ok(GetResponse {
                        model: document(format!("{} (current)", req.subsystem), json(&model)),
                        revision: head,
                        generation: sub.observed_generation,
                    });
                }
                let name = self
                    .head
                    .as_ref()
                    .map(|h| h.megamodel.name.clone())
                    .ok_or(Error::Empty)?;
                let mm = Megamodel {
                    name: name.clone(),
                    subsystems: self
                        .subsystems
                        .iter()
                        .filter(|(_, s)| !s.target.removed || s.current_model.is_some())
                        .filter_map(|(_, s)| s.current_model.as_deref().cloned())
                        .collect(),
                    ..Megamodel::default()
                };
                Ok(GetResponse {
                    model: document(format!("{name} (current)"), json(&mm)),
                    revision: head,
                    generation: 0,
                })
            }
        }
    }

    /// Target against current (live), or between two revisions.
    pub fn diff(
        &self,
        req: &DiffRequest,
        revisions: &dyn Revisions,
    ) -> Result<DiffResponse, Error> {
        match &req.between {
            None | Some(Between::Live(_)) => {
                let only = match &req.between {
                    Some(Between::Live(l)) if !l.subsystem.is_empty() => {
                        self.known_subsystem(&l.subsystem)?;
                        Some(l.subsystem.as_str())
                    }
                    _ => None,
                };
                if self.head.is_none() {
                    return Err(Error::Empty);
                }
                let subsystems = self
                    .subsystems
                    .iter()
                    .filter(|(id, s)| {
                        only.is_none_or(|o| o == id.as_str())
                            && !(s.target.removed && s.current_model.is_none())
                    })
                    .map(|(id, s)| subsystem_diff(id, &s.live_diff()))
                    .collect();
                Ok(DiffResponse {
                    subsystems,
                    event_seq: self.last_seq(),
                })
            }
            Some(Between::Revisions(r)) => {
                let (_, a, _) = self.megamodel_at(r.from, revisions)?;
                let (_, b, _) = self.megamodel_at(r.to, revisions)?;
                let (a, b) = (by_subsystem(&a), by_subsystem(&b));
                let mut ids: Vec<&String> = a.keys().chain(b.keys()).collect();
                ids.sort();
                ids.dedup();
                let subsystems = ids
                    .into_iter()
                    .map(|id| {
                        let empty = DeploymentModel::default();
                        let d = continuum_models::diff(
                            a.get(id).unwrap_or(&empty),
                            b.get(id).unwrap_or(&empty),
                        );
                        subsystem_diff(id, &d)
                    })
                    .filter(|d| d.counts.as_ref().is_some_and(|c| !is_zero(c)))
                    .collect();
                Ok(DiffResponse {
                    subsystems,
                    event_seq: self.last_seq(),
                })
            }
        }
    }

    /// A gateway's record as clients see it.
    pub fn gateways(&self) -> Vec<Gateway> {
        self.gateways
            .values()
            .map(|g| self.gateway_view(g))
            .collect()
    }

    /// Every subsystem with its gateway, generations, phase, live diff and statuses.
    pub fn status(&self) -> StatusResponse {
        self.status_of(false)
    }

    /// [`Core::status`]; `brief`: of the components, only the failing ones.
    pub fn status_of(&self, brief: bool) -> StatusResponse {
        let mut assigned = std::collections::HashSet::new();
        let rollout = self.active_rollout();
        let waves = rollout.map(|r| r.waves()).unwrap_or_default();
        let subsystems = self
            .subsystems
            .iter()
            .filter(|(_, s)| !s.target.removed)
            .map(|(id, s)| {
                let gateway = self
                    .gateways
                    .get(&s.target.gateway_id)
                    .map(|g| self.gateway_view(g));
                assigned.insert(s.target.gateway_id.clone());
                // Held: changed by the rollout and in no wave yet (`waves`
                // is looked up, not scanned: thousands of subsystems).
                let held = rollout
                    .filter(|_| !waves.contains_key(id.as_str()))
                    .and_then(|r| r.changes.get(id.as_str()));
                let mut phase = s.phase(gateway.as_ref().map(|g| (g, g.connected)));
                if held.is_some()
                    && matches!(phase, SubsystemPhase::Converged | SubsystemPhase::Deploying)
                {
                    phase = SubsystemPhase::Pending;
                }
                SubsystemStatus {
                    subsystem: id.clone(),
                    gateway_id: s.target.gateway_id.clone(),
                    target_generation: s.target.generation,
                    pending_generation: held.map_or(0, |c| c.target.generation),
                    wave: waves.get(id.as_str()).copied().unwrap_or(0),
                    phase: phase as i32,
                    converged: s.converged(),
                    live: Some(s.live),
                    components: s
                        .statuses
                        .values()
                        .filter(|c| !brief || c.state == ComponentState::Failed as i32)
                        .cloned()
                        .collect(),
                    gateway,
                }
            })
            .collect();
        let unassigned = self
            .gateways
            .values()
            .filter(|g| !assigned.contains(&g.record.id))
            .map(|g| self.gateway_view(g))
            .collect();
        StatusResponse {
            head: self.head_number(),
            subsystems,
            unassigned,
            rollout: self.rollout(),
        }
    }
}
