//! Revisions: an applied megamodel (or a rollback) becomes a new revision,
//! and every subsystem whose model changed gets a new target generation.

use continuum_models::placement::{Measured, Observed};
use std::collections::{BTreeMap, HashSet};

use continuum_models::{DeploymentModel, Megamodel};
use continuum_proto::v1::{
    event, ApplyRequest, ApplyResponse, DiffCounts, Revision, RollbackRequest, RolloutPolicy,
    SubsystemTarget,
};

use super::rollout::Ending;
use super::{gateway_of, to_json, Batch, Core, Head, Revisions, Subsystem, Transition, Update};
use crate::error::Error;
use crate::records::{StoredRevision, StoredTarget};

/// An Apply request whose megamodel is read, validated, expanded and
/// partitioned: the costly part of an apply, done before taking the core's lock.
#[derive(Debug)]
pub struct Prepared {
    megamodel: Megamodel,
    expected_base: Option<u64>,
    author: String,
    message: String,
    rollout: Option<RolloutPolicy>,
}

impl Prepared {
    /// Reads, validates, expands and partitions the request's megamodel,
    /// placing its functions with what is `observed` of the gateways.
    pub fn from_request(req: ApplyRequest, observed: &Observed) -> Result<Prepared, Error> {
        use continuum_proto::apply::{prepare_with, ApplyInputError};
        let prepared = prepare_with(&req, observed).map_err(|e| match e {
            ApplyInputError::NoMegamodel => Error::BadRequest(e.to_string()),
            ApplyInputError::Invalid(invalid) => Error::Invalid(invalid),
        })?;
        let mut megamodel = prepared.megamodel;
        megamodel.canonicalize();
        Ok(Prepared {
            megamodel,
            expected_base: req.expected_base,
            author: req.author,
            message: req.message,
            rollout: req.rollout,
        })
    }
}

impl Prepared {
    /// Refuses the model if it changes a subsystem of `held` (those a tier
    /// above runs through a live link) from what `head` holds.
    pub fn check_held(
        &self,
        held: &std::collections::BTreeSet<String>,
        head: Option<&Megamodel>,
    ) -> Result<(), Error> {
        let changed: Vec<&str> = held
            .iter()
            .filter(|s| self.megamodel.subsystem(s) != head.and_then(|h| h.subsystem(s)))
            .map(String::as_str)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        Err(Error::HeldAbove(changed.join(", ")))
    }

    /// Refuses the model if a workload needs what `policy` does not allow
    /// its subsystem (templates expanded: a runtime's settings count).
    pub fn check_policy(&self, policy: &continuum_models::policy::Policy) -> Result<(), Error> {
        let refused = continuum_models::policy::check(&self.megamodel, policy);
        if refused.is_empty() {
            return Ok(());
        }
        Err(Error::Policy(
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }

    /// Refuses the model unless every artefact it is pinned to is held (`has`).
    pub fn check_artefacts(&self, has: impl Fn(&str) -> bool) -> Result<(), Error> {
        let missing: Vec<String> = continuum_models::artefact::of_megamodel(&self.megamodel)
            .into_iter()
            .filter_map(|r| {
                let d = r.digest?;
                (!has(&d)).then(|| {
                    format!(
                        "component `{}`: {} `{}` (sha256:{d}) was not uploaded",
                        r.component, r.field, r.path
                    )
                })
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(continuum_models::Invalid::file(
            "artefacts",
            format!(
                "{}; upload them with BlobService.Upload before applying (`continuum apply` does)",
                missing.join("; ")
            ),
        )))
    }
}

/// What moving the functions off gateways that went away came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// No gateway away long enough holds a placed function.
    Nothing,
    /// A revision moved them; its message.
    Moved(String),
    /// They have nowhere else to go; why.
    Stuck(String),
}

impl Core {
    /// What placement needs beyond a model: the load each connected gateway
    /// last measured, and where the head placed its functions.
    pub fn observed(&self) -> Observed {
        let load = self
            .gateways
            .iter()
            .filter(|(_, g)| g.session.is_some())
            .filter_map(|(id, g)| {
                let l = g.record.load.as_ref()?;
                Some((
                    id.clone(),
                    Measured {
                        cpus: l.cpus,
                        load: l.load1,
                        memory_available_mb: l.memory_available_bytes / (1024 * 1024),
                    },
                ))
            })
            .collect();
        let placed = self
            .head
            .iter()
            .flat_map(|h| h.megamodel.subsystems.iter())
            .flat_map(|s| s.components.iter())
            .filter_map(|c| {
                let g = c
                    .properties
                    .get(continuum_models::placement::PLACED_PROPERTY)?;
                Some((c.id.clone(), g.clone()))
            })
            .collect();
        Observed { load, placed }
    }

    /// Moves the functions placement put on gateways that have held no link
    /// for longer than `grace_ms` at `now` to the best other gateways, as one
    /// revision whose message says so (authored by `continuum`).
    pub fn move_from_away(&self, now: i64, grace_ms: i64) -> Result<Transition<Moved>, Error> {
        let Some(head) = &self.head else {
            return Ok(Transition::none(Moved::Nothing));
        };
        let away: Vec<&str> = self
            .gateways
            .iter()
            .filter(|(_, g)| g.session.is_none() && now - g.record.last_seen_unix_ms > grace_ms)
            .map(|(id, _)| id.as_str())
            .collect();
        if away.is_empty() {
            return Ok(Transition::none(Moved::Nothing));
        }
        match continuum_models::placement::move_off(&head.megamodel, &away, &self.observed()) {
            Ok(None) => Ok(Transition::none(Moved::Nothing)),
            Err(problems) => {
                let why: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
                Ok(Transition::none(Moved::Stuck(why.join("; "))))
            }
            Ok(Some((megamodel, moves))) => {
                let moved: Vec<String> = moves
                    .iter()
                    .map(|(f, g)| format!("function {f} to {g}"))
                    .collect();
                let message = format!(
                    "placement: {} away for more than {}s; moved {}",
                    away.join(", "),
                    grace_ms / 1000,
                    moved.join(", ")
                );
                let t = self.revision(
                    megamodel,
                    None,
                    "continuum".into(),
                    message.clone(),
                    0,
                    now,
                    None,
                    Ending::Superseded,
                )?;
                Ok(t.map(|_| Moved::Moved(message)))
            }
        }
    }

    /// The megamodel of a revision (0: the head), with its number and its
    /// canonical JSON; older revisions are read from `revisions`.
    pub fn megamodel_at(
        &self,
        revision: u64,
        revisions: &dyn Revisions,
    ) -> Result<(u64, Megamodel, Vec<u8>), Error> {
        let head = self.head.as_ref().ok_or(Error::Empty)?;
        if revision == 0 || revision == head.meta.number {
            return Ok((
                head.meta.number,
                head.megamodel.clone(),
                head.canonical.clone(),
            ));
        }
        let stored = revisions
            .revision(revision)?
            .ok_or(Error::NoRevision(revision))?;
        let mm: Megamodel = serde_json::from_slice(&stored.megamodel)
            .map_err(|e| Error::Corrupt(format!("revision {revision}: {e}")))?;
        Ok((revision, mm, stored.megamodel))
    }

    /// Stores a prepared megamodel as a revision.
    pub fn apply(&self, p: Prepared, now: i64) -> Result<Transition<ApplyResponse>, Error> {
        if let Some(policy) = &p.rollout {
            super::rollout::check(policy)?;
        }
        self.revision(
            p.megamodel,
            p.expected_base,
            p.author,
            p.message,
            0,
            now,
            p.rollout,
            Ending::Superseded,
        )
    }

    /// Restores revision `req.to`'s model as a new revision.
    pub fn rollback(
        &self,
        req: RollbackRequest,
        revisions: &dyn Revisions,
        now: i64,
    ) -> Result<Transition<ApplyResponse>, Error> {
        let (_, megamodel, _) = self.megamodel_at(req.to, revisions)?;
        self.revision(
            megamodel,
            req.expected_base,
            req.author,
            format!("rollback to revision {}", req.to),
            req.to,
            now,
            None,
            Ending::Superseded,
        )
    }

    /// Makes `megamodel` the head as a new revision; the subsystems whose
    /// model it changes get its number as their generation, at once or, with
    /// a `rollout` policy, wave by wave. A rollout still running ends as
    /// `ending` says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn revision(
        &self,
        mut megamodel: Megamodel,
        expected_base: Option<u64>,
        author: String,
        message: String,
        restores: u64,
        now: i64,
        rollout: Option<RolloutPolicy>,
        ending: Ending,
    ) -> Result<Transition<ApplyResponse>, Error> {
        megamodel.canonicalize();
        let canonical = to_json(&megamodel);
        let base = self.head_number();
        if let Some(expected) = expected_base {
            if expected != base {
                return Err(Error::Conflict {
                    head: base,
                    expected,
                });
            }
        }
        if let Some(head) = &self.head {
            if head.canonical == canonical {
                return Ok(Transition::none(ApplyResponse {
                    revision: Some(head.meta.clone()),
                    unchanged: true,
                    targets: Vec::new(),
                    event_seq: 0,
                }));
            }
        }
        let number = base + 1;
        let empty = Megamodel::default();
        let previous = self.head.as_ref().map_or(&empty, |h| &h.megamodel);
        let changes = continuum_models::megadiff::megamodel_counts(previous, &megamodel);
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let mut batch = self.batch(now);
        let meta = Revision {
            number,
            base,
            created_unix_ms: now,
            restores,
            author,
            message,
            subsystems: n(megamodel.subsystems.len()),
            components: n(megamodel.all_components().count()),
            changes: Some(DiffCounts {
                added: n(changes.added),
                removed: n(changes.removed),
                changed: n(changes.changed),
                links_added: n(changes.links_added),
                links_removed: n(changes.links_removed),
            }),
        };
        batch.changes.revisions.push(StoredRevision {
            meta: Some(meta.clone()),
            megamodel: canonical.clone(),
        });
        let event_seq = batch.event(event::Kind::Revision(meta.clone()));
        let mut update = Update::default();
        self.end_rollout(&mut batch, &mut update, ending, number, now);

        // The subsystems whose model changed, and those that left the model.
        let mut targets: Vec<(String, StoredTarget, DeploymentModel)> = Vec::new();
        let mut present = HashSet::new();
        for s in &megamodel.subsystems {
            let id = s.id.clone().unwrap_or_default();
            present.insert(id.clone());
            let bytes = to_json(s);
            let gateway_id = gateway_of(s);
            let unchanged = self.subsystems.get(&id).is_some_and(|old| {
                !old.target.removed
                    && old.target.model == bytes
                    && old.target.gateway_id == gateway_id
            });
            if !unchanged {
                let target = StoredTarget {
                    generation: number,
                    gateway_id,
                    model: bytes,
                    removed: false,
                };
                targets.push((id, target, s.clone()));
            }
        }
        for (id, old) in &self.subsystems {
            if present.contains(id) || old.target.removed {
                continue;
            }
            let model = DeploymentModel {
                id: Some(id.clone()),
                ..DeploymentModel::default()
            };
            let target = StoredTarget {
                generation: number,
                gateway_id: old.target.gateway_id.clone(),
                model: to_json(&model),
                removed: true,
            };
            targets.push((id.clone(), target, model));
        }

        // Staged: only the first wave is released now; the rest is held.
        let listed: Vec<SubsystemTarget> = targets
            .iter()
            .map(|(subsystem, t, _)| SubsystemTarget {
                subsystem: subsystem.clone(),
                generation: number,
                gateway_id: t.gateway_id.clone(),
                pushed: false,
                removed: t.removed,
                held: false,
            })
            .collect();
        let released = match rollout.filter(|_| !targets.is_empty()) {
            None => targets,
            Some(policy) => self.start_rollout(&mut batch, &mut update, policy, targets, now),
        };
        let released_ids: HashSet<String> = released.iter().map(|(id, _, _)| id.clone()).collect();
        let pushed_to = self.release(&mut batch, &mut update, released);
        let response = listed
            .into_iter()
            .map(|mut t| {
                t.pushed = pushed_to.contains(&t.gateway_id) && released_ids.contains(&t.subsystem);
                t.held = !released_ids.contains(&t.subsystem);
                t
            })
            .collect();
        update.head = Some(Head {
            meta: meta.clone(),
            megamodel,
            canonical,
        });
        let reply = ApplyResponse {
            revision: Some(meta),
            unchanged: false,
            targets: response,
            event_seq,
        };
        Ok(self.transition(batch, reply, update))
    }

    /// Gives subsystems their new targets once `batch` is committed: writes
    /// them, and delivers each connected gateway concerned its target.
    /// Returns the gateways a target was pushed to.
    pub(super) fn release(
        &self,
        batch: &mut Batch,
        update: &mut Update,
        targets: Vec<(String, StoredTarget, DeploymentModel)>,
    ) -> HashSet<String> {
        let written: Vec<(String, StoredTarget)> = targets
            .iter()
            .map(|(id, t, _)| (id.clone(), t.clone()))
            .collect();
        let overlay: BTreeMap<String, StoredTarget> = written.iter().cloned().collect();
        batch.changes.targets.extend(written);
        let mut pushed = HashSet::new();
        for (_, t, _) in &targets {
            let Some(g) = self.gateways.get(&t.gateway_id) else {
                continue;
            };
            let Some(session) = g.session else { continue };
            if pushed.contains(&t.gateway_id) {
                continue;
            }
            let mut state = g.clone();
            let holds = state.record.sent_generation;
            if let Some(target) = self.plan_delivery(batch, &mut state.record, holds, &overlay) {
                pushed.insert(t.gateway_id.clone());
                batch.changes.gateways.push(state.record.clone());
                update.deliveries.push(super::Delivery {
                    gateway_id: state.record.id.clone(),
                    session,
                    target,
                });
                update.gateways.push(state);
            }
        }
        for (id, target, model) in targets {
            let sub = match self.subsystems.get(&id) {
                Some(old) => old.clone().retarget(target, model),
                None => Subsystem::new(target, model),
            };
            update.subsystems.push((id, sub));
        }
        pushed
    }
}
