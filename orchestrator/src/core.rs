//! The orchestrator's state and every change to it. Each operation builds one
//! batch of writes, commits it, and only then updates memory and pushes targets:
//! a failed commit leaves nothing half-applied.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use continuum_models::parse::parse_deployment_model;
use continuum_models::validate::is_valid_id;
use continuum_models::{DeploymentModel, Invalid, Kind, Megamodel, ModelDiff};
use continuum_proto::v1::{
    event, Ack, Acknowledged, ApplyRequest, ApplyResponse, ComponentChanged, ComponentState,
    ComponentStatus, CurrentChanged, CurrentReport, DiffCounts, Diverged, Document, Event, Gateway,
    GatewayConnected, GatewayDisconnected, Register, Revision, RollbackRequest, StatusReport,
    StepProgress, SubsystemPhase, SubsystemTarget, Target, TargetSent, Welcome,
};
use tokio::sync::watch;

use crate::error::Error;
use crate::records::{StoredCurrent, StoredRevision, StoredTarget};
use crate::store::{Changes, Store, StoreError};

/// Milliseconds since the Unix epoch, for timestamps users read.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn counts(d: &ModelDiff) -> DiffCounts {
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    DiffCounts {
        added: n(d.added.len()),
        removed: n(d.removed.len()),
        changed: n(d.changed.len()),
        links_added: n(d.links_added.len()),
        links_removed: n(d.links_removed.len()),
    }
}

pub fn is_zero(c: &DiffCounts) -> bool {
    *c == DiffCounts::default()
}

/// Models and protocol records always serialize: a failure is a bug.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("models serialize to JSON")
}

/// The subsystem's gateway component, if it has one.
fn gateway_of(model: &DeploymentModel) -> String {
    model
        .components
        .iter()
        .find(|c| c.kind() == Kind::Gateway)
        .map(|c| c.id.clone())
        .unwrap_or_default()
}

static NO_OVERLAY: BTreeMap<String, StoredTarget> = BTreeMap::new();

/// An Apply request whose megamodel is read, validated, expanded and
/// partitioned: the costly part of an apply, done before taking the core's lock.
#[derive(Debug)]
pub struct Prepared {
    megamodel: Megamodel,
    expected_base: Option<u64>,
    author: String,
    message: String,
}

impl Prepared {
    pub fn from_request(req: ApplyRequest) -> Result<Prepared, Error> {
        use continuum_proto::apply::{prepare, ApplyInputError};
        let prepared = prepare(&req).map_err(|e| match e {
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
        })
    }
}

/// The head revision, kept in memory.
#[derive(Debug)]
pub(crate) struct Head {
    pub meta: Revision,
    pub megamodel: Megamodel,
    pub canonical: Vec<u8>,
}

/// One subsystem: its target, and what its gateway reports.
#[derive(Debug)]
pub(crate) struct Subsystem {
    pub target: StoredTarget,
    pub target_model: DeploymentModel,
    pub observed_generation: u64,
    /// `None` until the gateway's first report.
    pub current_model: Option<DeploymentModel>,
    pub current_bytes: Vec<u8>,
    pub statuses: BTreeMap<String, ComponentStatus>,
    /// Target against current.
    pub live: DiffCounts,
}

impl Subsystem {
    pub(crate) fn live_diff(&self) -> ModelDiff {
        // Before the first report nothing runs; model-level fields are not
        // something to deploy, so they are taken as they are in the target.
        let empty = DeploymentModel {
            id: self.target_model.id.clone(),
            on_failure: self.target_model.on_failure,
            ..DeploymentModel::default()
        };
        let current = self.current_model.as_ref().unwrap_or(&empty);
        continuum_models::diff(current, &self.target_model)
    }

    fn refresh_live(&mut self) {
        self.live = counts(&self.live_diff());
    }

    fn stored_current(&self) -> StoredCurrent {
        StoredCurrent {
            observed_generation: self.observed_generation,
            model: self.current_bytes.clone(),
            components: self.statuses.values().cloned().collect(),
        }
    }

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

    pub fn converged(&self) -> bool {
        self.observed_generation == self.target.generation
            && self.current_model.is_some()
            && is_zero(&self.live)
            && self.failing().next().is_none()
    }

    /// Where the rollout stands, given the subsystem's gateway record.
    pub fn phase(&self, gateway: Option<&Gateway>) -> SubsystemPhase {
        if self.target.gateway_id.is_empty() {
            return SubsystemPhase::NoGateway;
        }
        let Some(g) = gateway else {
            return SubsystemPhase::Waiting;
        };
        if !g.rejected.is_empty() {
            SubsystemPhase::Refused
        } else if self.failing_now().next().is_some() {
            SubsystemPhase::Failed
        } else if self.converged() {
            SubsystemPhase::Converged
        } else if !g.connected {
            SubsystemPhase::Offline
        } else {
            SubsystemPhase::Deploying
        }
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    targets: watch::Sender<Option<Target>>,
}

#[derive(Debug)]
pub(crate) struct GatewayState {
    pub record: Gateway,
    session: Option<Session>,
}

/// A gateway accepted on the link.
#[derive(Debug)]
pub struct Registered {
    pub session: u64,
    pub welcome: Welcome,
    /// The latest target for this gateway; only the newest matters.
    pub targets: watch::Receiver<Option<Target>>,
}

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Events kept for `Watch` resume.
    pub event_retention: u64,
    pub heartbeat_interval_ms: u64,
    /// The global bus told to gateways (see `Welcome`).
    pub bus_url: String,
    pub bus_port: u32,
}

/// Writes of one operation, with the events it emits.
struct Batch {
    changes: Changes,
    next_seq: u64,
    now: i64,
}

impl Batch {
    fn event(&mut self, kind: event::Kind) {
        self.changes.events.push(Event {
            seq: self.next_seq,
            unix_ms: self.now,
            kind: Some(kind),
        });
        self.next_seq += 1;
    }
}

#[derive(Debug)]
pub struct Core {
    pub(crate) store: Arc<Store>,
    config: CoreConfig,
    pub(crate) head: Option<Head>,
    pub(crate) subsystems: BTreeMap<String, Subsystem>,
    pub(crate) gateways: BTreeMap<String, GatewayState>,
    last_seq: u64,
    oldest_seq: u64,
    events: watch::Sender<u64>,
    next_session: u64,
}

impl Core {
    /// Loads the state kept in the store.
    pub fn load(store: Arc<Store>, config: CoreConfig) -> Result<Core, StoreError> {
        let snapshot = store.load()?;
        let corrupt = |what: String| StoreError::Corrupt {
            path: store.path().to_owned(),
            what,
        };
        let head = match snapshot.head {
            None => None,
            Some(r) => {
                let megamodel: Megamodel = serde_json::from_slice(&r.megamodel)
                    .map_err(|e| corrupt(format!("head revision: {e}")))?;
                Some(Head {
                    meta: r.meta.unwrap_or_default(),
                    megamodel,
                    canonical: r.megamodel,
                })
            }
        };
        let mut subsystems = BTreeMap::new();
        for (id, target) in snapshot.targets {
            let target_model: DeploymentModel = serde_json::from_slice(&target.model)
                .map_err(|e| corrupt(format!("target of `{id}`: {e}")))?;
            let mut sub = Subsystem {
                target,
                target_model,
                observed_generation: 0,
                current_model: None,
                current_bytes: Vec::new(),
                statuses: BTreeMap::new(),
                live: DiffCounts::default(),
            };
            if let Some((_, c)) = snapshot.currents.iter().find(|(k, _)| *k == id) {
                sub.observed_generation = c.observed_generation;
                if !c.model.is_empty() {
                    sub.current_model = Some(
                        serde_json::from_slice(&c.model)
                            .map_err(|e| corrupt(format!("current model of `{id}`: {e}")))?,
                    );
                    sub.current_bytes = c.model.clone();
                }
                sub.statuses = c
                    .components
                    .iter()
                    .map(|s| (s.component.clone(), s.clone()))
                    .collect();
            }
            sub.refresh_live();
            subsystems.insert(id, sub);
        }
        let gateways = snapshot
            .gateways
            .into_iter()
            .map(|mut record| {
                record.connected = false;
                (
                    record.id.clone(),
                    GatewayState {
                        record,
                        session: None,
                    },
                )
            })
            .collect();
        let oldest_seq = store.first_seq()?;
        let (events, _) = watch::channel(snapshot.last_seq);
        Ok(Core {
            store,
            config,
            head,
            subsystems,
            gateways,
            last_seq: snapshot.last_seq,
            oldest_seq,
            events,
            next_session: 1,
        })
    }

    /// Follows the newest event's sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    pub fn head_number(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.meta.number)
    }

    fn batch(&self) -> Batch {
        Batch {
            changes: Changes::default(),
            next_seq: self.last_seq + 1,
            now: now_ms(),
        }
    }

    fn commit(&mut self, mut batch: Batch) -> Result<(), Error> {
        let last = batch.next_seq - 1;
        let retention = self.config.event_retention.max(1);
        // Trim in chunks of a tenth of the retention, not on every event.
        let trim = self.oldest_seq > 0
            && last.saturating_sub(self.oldest_seq) >= retention + retention / 10;
        if trim {
            batch.changes.forget_events_before = Some(last + 1 - retention);
        }
        self.store.commit(&batch.changes)?;
        if self.oldest_seq == 0 && !batch.changes.events.is_empty() {
            self.oldest_seq = batch.changes.events[0].seq;
        }
        if trim {
            self.oldest_seq = last + 1 - retention;
        }
        if last != self.last_seq {
            self.last_seq = last;
            self.events.send_replace(last);
        }
        Ok(())
    }

    /// The subsystem a gateway runs: the one whose gateway it is in the head, or
    /// else a removed one it must empty.
    pub fn subsystem_of(&self, gateway_id: &str) -> Option<&str> {
        self.resolve(gateway_id, &NO_OVERLAY).map(|(id, _)| id)
    }

    /// The subsystem a gateway runs and its target, with `overlay` taking the
    /// place of the stored targets it names (targets about to be committed).
    fn resolve<'a>(
        &'a self,
        gateway_id: &str,
        overlay: &'a BTreeMap<String, StoredTarget>,
    ) -> Option<(&'a str, &'a StoredTarget)> {
        let stored = self
            .subsystems
            .iter()
            .filter(|(id, _)| !overlay.contains_key(*id))
            .map(|(id, s)| (id, &s.target));
        let mut removed = None;
        for (id, t) in stored.chain(overlay.iter()) {
            if t.gateway_id == gateway_id {
                if !t.removed {
                    return Some((id, t));
                }
                removed = Some((id.as_str(), t));
            }
        }
        removed
    }

    // ------------------------------------------------------------ revisions

    /// Validates, expands and partitions a megamodel and stores it as a revision.
    pub fn apply(&mut self, req: ApplyRequest) -> Result<ApplyResponse, Error> {
        let prepared = Prepared::from_request(req)?;
        self.apply_prepared(prepared)
    }

    /// Stores an already prepared megamodel as a revision.
    pub fn apply_prepared(&mut self, p: Prepared) -> Result<ApplyResponse, Error> {
        self.commit_revision(p.megamodel, p.expected_base, p.author, p.message, 0)
    }

    /// Restores an earlier revision's model as a new revision.
    pub fn rollback(&mut self, req: RollbackRequest) -> Result<ApplyResponse, Error> {
        let stored = self
            .store
            .revision(req.to)?
            .ok_or(Error::NoRevision(req.to))?;
        let megamodel: Megamodel =
            serde_json::from_slice(&stored.megamodel).map_err(|e| StoreError::Corrupt {
                path: self.store.path().to_owned(),
                what: format!("revision {}: {e}", req.to),
            })?;
        self.commit_revision(
            megamodel,
            req.expected_base,
            req.author,
            format!("rollback to revision {}", req.to),
            req.to,
        )
    }

    fn commit_revision(
        &mut self,
        mut megamodel: Megamodel,
        expected_base: Option<u64>,
        author: String,
        message: String,
        restores: u64,
    ) -> Result<ApplyResponse, Error> {
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
                return Ok(ApplyResponse {
                    revision: Some(head.meta.clone()),
                    unchanged: true,
                    targets: Vec::new(),
                    event_seq: 0,
                });
            }
        }
        let number = base + 1;
        let previous = self
            .head
            .as_ref()
            .map(|h| h.megamodel.flatten())
            .unwrap_or_default();
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let mut batch = self.batch();
        let meta = Revision {
            number,
            base,
            created_unix_ms: batch.now,
            restores,
            author,
            message,
            subsystems: n(megamodel.subsystems.len()),
            components: n(megamodel.all_components().count()),
            changes: Some(counts(&continuum_models::diff(
                &previous,
                &megamodel.flatten(),
            ))),
        };
        batch.changes.revision = Some(StoredRevision {
            meta: Some(meta.clone()),
            megamodel: canonical.clone(),
        });
        let event_seq = batch.next_seq;
        batch.event(event::Kind::Revision(meta.clone()));

        let mut targets: Vec<(String, StoredTarget, DeploymentModel)> = Vec::new();
        let mut present = HashSet::new();
        for s in &megamodel.subsystems {
            let id = s.id.clone().unwrap_or_default();
            present.insert(id.clone());
            let model = s.clone();
            let bytes = to_json(&model);
            let gateway_id = gateway_of(&model);
            if let Some(old) = self.subsystems.get(&id) {
                if !old.target.removed
                    && old.target.model == bytes
                    && old.target.gateway_id == gateway_id
                {
                    continue;
                }
            }
            let target = StoredTarget {
                generation: number,
                gateway_id,
                model: bytes,
                removed: false,
            };
            targets.push((id, target, model));
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
        batch.changes.targets = targets
            .iter()
            .map(|(id, t, _)| (id.clone(), t.clone()))
            .collect();
        let overlay: BTreeMap<String, StoredTarget> =
            batch.changes.targets.iter().cloned().collect();
        let mut deliveries = Vec::new();
        let mut notified = HashSet::new();
        for (_, t, _) in &targets {
            let Some(g) = self.gateways.get(&t.gateway_id) else {
                continue;
            };
            if g.session.is_none() || !notified.insert(t.gateway_id.clone()) {
                continue;
            }
            let mut record = g.record.clone();
            let holds = record.sent_generation;
            if let Some(message) = self.plan_delivery(&mut batch, &mut record, holds, &overlay) {
                batch.changes.gateways.push(record.clone());
                deliveries.push((record, message));
            }
        }
        self.commit(batch)?;

        self.head = Some(Head {
            meta: meta.clone(),
            megamodel,
            canonical,
        });
        let mut affected = Vec::new();
        for (id, target, model) in targets {
            affected.push((id.clone(), target.gateway_id.clone(), target.removed));
            let sub = self.subsystems.entry(id).or_insert_with(|| Subsystem {
                target: StoredTarget::default(),
                target_model: DeploymentModel::default(),
                observed_generation: 0,
                current_model: None,
                current_bytes: Vec::new(),
                statuses: BTreeMap::new(),
                live: DiffCounts::default(),
            });
            let keep: HashSet<&str> = model
                .components
                .iter()
                .chain(sub.current_model.iter().flat_map(|m| m.components.iter()))
                .map(|c| c.id.as_str())
                .collect();
            sub.statuses.retain(|id, _| keep.contains(id.as_str()));
            sub.target = target;
            sub.target_model = model;
            sub.refresh_live();
        }
        let pushed_to: HashSet<String> = deliveries.iter().map(|(g, _)| g.id.clone()).collect();
        self.deliver(deliveries);
        let mut response = Vec::new();
        for (subsystem, gateway_id, removed) in affected {
            let pushed = pushed_to.contains(&gateway_id);
            response.push(SubsystemTarget {
                subsystem,
                generation: number,
                gateway_id,
                pushed,
                removed,
            });
        }
        tracing::info!(
            revision = number,
            changed = response.len(),
            "revision stored"
        );
        Ok(ApplyResponse {
            revision: Some(meta),
            unchanged: false,
            targets: response,
            event_seq,
        })
    }

    /// Adds to `batch` the sending of a gateway's target unless it holds that
    /// generation; returns the message to send once the batch is committed.
    fn plan_delivery(
        &self,
        batch: &mut Batch,
        record: &mut Gateway,
        holds: u64,
        overlay: &BTreeMap<String, StoredTarget>,
    ) -> Option<Target> {
        let (subsystem, target) = self.resolve(&record.id, overlay)?;
        if target.generation == holds {
            return None;
        }
        batch.event(event::Kind::TargetSent(TargetSent {
            subsystem: subsystem.to_owned(),
            gateway_id: record.id.clone(),
            generation: target.generation,
        }));
        record.sent_generation = target.generation;
        Some(Target {
            subsystem: subsystem.to_owned(),
            generation: target.generation,
            model: Some(Document {
                name: format!("{subsystem}@{}", target.generation),
                json: target.model.clone(),
            }),
        })
    }

    /// Hands committed deliveries to the gateways' sessions.
    fn deliver(&mut self, deliveries: Vec<(Gateway, Target)>) {
        for (record, target) in deliveries {
            if let Some(g) = self.gateways.get_mut(&record.id) {
                if let Some(session) = &g.session {
                    session.targets.send_replace(Some(target));
                }
                g.record = record;
            }
        }
    }

    // ------------------------------------------------------------ gateway link

    /// Accepts a gateway on the link and sends it its target if it lacks it.
    pub fn register(&mut self, reg: Register) -> Result<Registered, Error> {
        let id = reg.gateway_id.clone();
        if !is_valid_id(&id) {
            return Err(Error::BadRequest(format!(
                "`{id}` is not a valid gateway id: expected 1 to 63 lowercase letters, digits and dashes, starting with a letter"
            )));
        }
        if self.gateways.get(&id).is_some_and(|g| g.session.is_some()) {
            return Err(Error::AlreadyConnected(id));
        }
        let mut batch = self.batch();
        let mut record = self
            .gateways
            .get(&id)
            .map(|g| g.record.clone())
            .unwrap_or_else(|| Gateway {
                id: id.clone(),
                ..Gateway::default()
            });
        if reg.accepted_generation > record.sent_generation {
            tracing::warn!(
                gateway = %id,
                accepted = reg.accepted_generation,
                sent = record.sent_generation,
                "the gateway holds a generation this orchestrator never sent; it gets the current target"
            );
        }
        let subsystem = self.subsystem_of(&id).unwrap_or_default().to_owned();
        record.subsystem = subsystem.clone();
        // A gateway that ran a model of its own while cut off: record it; the
        // target then replaces it (whatever generation the gateway holds).
        let mut holds = reg.accepted_generation;
        if let Some(local) = &reg.divergence {
            let changes = self.subsystems.get(&subsystem).map(|sub| {
                let model = local
                    .model
                    .as_ref()
                    .and_then(|d| serde_json::from_slice::<DeploymentModel>(&d.json).ok())
                    .unwrap_or_default();
                counts(&continuum_models::diff(&sub.target_model, &model))
            });
            let diverged = Diverged {
                subsystem: subsystem.clone(),
                gateway_id: id.clone(),
                base_generation: local.base_generation,
                since_unix_ms: local.since_unix_ms,
                author: local.author.clone(),
                message: local.message.clone(),
                changes,
            };
            tracing::warn!(gateway = %id, base = local.base_generation, "the gateway ran a local model while cut off");
            batch.event(event::Kind::Diverged(diverged.clone()));
            let seq = batch.next_seq - 1;
            batch.changes.divergences.push((seq, diverged.clone()));
            record.diverged = Some(diverged);
            holds = 0;
        }
        record.version = reg.version.clone();
        record.location = reg.location;
        record.capabilities = reg.capabilities;
        record.connected = true;
        record.last_seen_unix_ms = batch.now;
        record.acked_generation = reg.accepted_generation;
        record.observed_generation = reg.observed_generation;
        record.sent_generation = record.sent_generation.min(reg.accepted_generation);
        batch.event(event::Kind::Connected(GatewayConnected {
            gateway_id: id.clone(),
            subsystem: subsystem.clone(),
            version: reg.version,
        }));
        let delivery = self.plan_delivery(&mut batch, &mut record, holds, &NO_OVERLAY);
        batch.changes.gateways.push(record.clone());
        self.commit(batch)?;
        let session = self.next_session;
        self.next_session += 1;
        let (tx, rx) = watch::channel(None);
        self.gateways.insert(
            id.clone(),
            GatewayState {
                record,
                session: Some(Session {
                    id: session,
                    targets: tx,
                }),
            },
        );
        if let Some(sub) = self.subsystems.get_mut(&subsystem) {
            sub.observed_generation = reg.observed_generation;
        }
        if let Some(target) = delivery {
            self.deliver(vec![(self.gateways[&id].record.clone(), target)]);
        }
        tracing::info!(gateway = %id, subsystem = %subsystem, session, "gateway connected");
        Ok(Registered {
            session,
            welcome: Welcome {
                subsystem,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                bus_url: self.config.bus_url.clone(),
                bus_port: self.config.bus_port,
            },
            targets: rx,
        })
    }

    /// The record of a gateway on its live session.
    fn live(&self, gateway_id: &str, session: u64) -> Result<&GatewayState, Error> {
        self.gateways
            .get(gateway_id)
            .filter(|g| g.session.as_ref().is_some_and(|s| s.id == session))
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "gateway `{gateway_id}` is not connected on this link"
                ))
            })
    }

    fn check_sent(&self, g: &GatewayState, generation: u64, what: &str) -> Result<(), Error> {
        if generation > g.record.sent_generation {
            return Err(Error::BadRequest(format!(
                "{what} for generation {generation}, which was never sent to gateway `{}` (the last sent is {})",
                g.record.id, g.record.sent_generation
            )));
        }
        Ok(())
    }

    fn subsystem_for_report(&self, gateway_id: &str) -> Result<String, Error> {
        self.subsystem_of(gateway_id)
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "gateway `{gateway_id}` runs no subsystem yet; there is nothing to report on"
                ))
            })
    }

    pub fn ack(&mut self, gateway_id: &str, session: u64, ack: Ack) -> Result<(), Error> {
        let g = self.live(gateway_id, session)?;
        if ack.generation == 0 {
            return Err(Error::BadRequest(
                "an acknowledgement needs the generation it acknowledges".into(),
            ));
        }
        self.check_sent(g, ack.generation, "an acknowledgement")?;
        let mut record = g.record.clone();
        let subsystem = self.subsystem_of(gateway_id).unwrap_or_default().to_owned();
        if ack.accepted {
            record.acked_generation = ack.generation;
            record.rejected.clear();
        } else {
            record.rejected = if ack.reason.is_empty() {
                format!("generation {} refused, no reason given", ack.generation)
            } else {
                ack.reason.clone()
            };
            tracing::warn!(gateway = gateway_id, generation = ack.generation, reason = %record.rejected, "target refused");
        }
        let mut batch = self.batch();
        batch.changes.gateways.push(record.clone());
        batch.event(event::Kind::Acknowledged(Acknowledged {
            subsystem,
            gateway_id: gateway_id.to_owned(),
            generation: ack.generation,
            accepted: ack.accepted,
            reason: record.rejected.clone(),
        }));
        self.commit(batch)?;
        self.set_record(record);
        Ok(())
    }

    fn set_record(&mut self, record: Gateway) {
        if let Some(g) = self.gateways.get_mut(&record.id) {
            g.record = record;
        }
    }

    pub fn report_current(
        &mut self,
        gateway_id: &str,
        session: u64,
        report: CurrentReport,
    ) -> Result<(), Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, report.observed_generation, "a current model")?;
        let mut record = g.record.clone();
        let subsystem = self.subsystem_for_report(gateway_id)?;
        let doc = report
            .model
            .ok_or_else(|| Error::BadRequest("the current report holds no model".into()))?;
        let name = format!("current model of `{subsystem}`");
        let text = std::str::from_utf8(&doc.json)
            .map_err(|_| Error::BadRequest(format!("the {name} is not UTF-8 text")))?;
        let (mut model, problems) =
            parse_deployment_model(&name, text).map_err(|e| Error::BadRequest(e.to_string()))?;
        if !problems.is_empty() {
            return Err(Error::BadRequest(
                Invalid::from_problems(&name, text, problems).to_string(),
            ));
        }
        model.canonicalize();
        let bytes = to_json(&model);
        record.observed_generation = report.observed_generation;
        record.last_seen_unix_ms = now_ms();

        let sub = &self.subsystems[&subsystem];
        let mut next = Subsystem {
            target: sub.target.clone(),
            target_model: sub.target_model.clone(),
            observed_generation: report.observed_generation,
            current_model: Some(model),
            current_bytes: bytes,
            statuses: sub.statuses.clone(),
            live: DiffCounts::default(),
        };
        next.refresh_live();
        let mut batch = self.batch();
        batch.changes.gateways.push(record.clone());
        batch
            .changes
            .currents
            .push((subsystem.clone(), next.stored_current()));
        batch.event(event::Kind::Current(CurrentChanged {
            subsystem: subsystem.clone(),
            observed_generation: report.observed_generation,
            live: Some(next.live),
        }));
        self.commit(batch)?;
        self.subsystems.insert(subsystem, next);
        self.set_record(record);
        Ok(())
    }

    pub fn report_status(
        &mut self,
        gateway_id: &str,
        session: u64,
        report: StatusReport,
    ) -> Result<(), Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, report.generation, "a status report")?;
        let subsystem = self.subsystem_for_report(gateway_id)?;
        let mut statuses = self.subsystems[&subsystem].statuses.clone();
        let mut batch = self.batch();
        for mut s in report.components {
            if s.component.is_empty() {
                return Err(Error::BadRequest(
                    "a component status names no component".into(),
                ));
            }
            let state = ComponentState::try_from(s.state)
                .ok()
                .filter(|s| *s != ComponentState::Unspecified)
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "the status of `{}` has no valid state",
                        s.component
                    ))
                })?;
            if state == ComponentState::Failed && s.reason.is_empty() {
                s.reason = "failed; the gateway gave no reason".into();
            }
            if s.since_unix_ms == 0 {
                s.since_unix_ms = batch.now;
            }
            if s.generation == 0 {
                s.generation = report.generation;
            }
            let same = statuses.get(&s.component).is_some_and(|old| {
                old.state == s.state
                    && old.reason == s.reason
                    && old.generation == s.generation
                    && old.detail == s.detail
            });
            if same {
                continue;
            }
            batch.event(event::Kind::Component(ComponentChanged {
                subsystem: subsystem.clone(),
                status: Some(s.clone()),
            }));
            statuses.insert(s.component.clone(), s);
        }
        if batch.changes.events.is_empty() {
            return Ok(());
        }
        let sub = &self.subsystems[&subsystem];
        let current = StoredCurrent {
            observed_generation: sub.observed_generation,
            model: sub.current_bytes.clone(),
            components: statuses.values().cloned().collect(),
        };
        batch.changes.currents.push((subsystem.clone(), current));
        self.commit(batch)?;
        if let Some(sub) = self.subsystems.get_mut(&subsystem) {
            sub.statuses = statuses;
        }
        Ok(())
    }

    pub fn report_step(
        &mut self,
        gateway_id: &str,
        session: u64,
        mut step: StepProgress,
    ) -> Result<(), Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, step.generation, "step progress")?;
        step.subsystem = self.subsystem_for_report(gateway_id)?;
        let mut batch = self.batch();
        batch.event(event::Kind::Step(step));
        self.commit(batch)
    }

    pub fn heartbeat(&mut self, gateway_id: &str, session: u64) -> Result<(), Error> {
        self.live(gateway_id, session)?;
        if let Some(g) = self.gateways.get_mut(gateway_id) {
            g.record.last_seen_unix_ms = now_ms();
        }
        Ok(())
    }

    /// Ends a gateway's session (only the one given: a newer session stays).
    pub fn disconnect(&mut self, gateway_id: &str, session: u64, reason: &str) {
        if self.live(gateway_id, session).is_err() {
            return;
        }
        let mut record = self.gateways[gateway_id].record.clone();
        record.connected = false;
        record.last_seen_unix_ms = now_ms();
        let mut batch = self.batch();
        batch.changes.gateways.push(record.clone());
        batch.event(event::Kind::Disconnected(GatewayDisconnected {
            gateway_id: gateway_id.to_owned(),
            subsystem: self.subsystem_of(gateway_id).unwrap_or_default().to_owned(),
            reason: reason.to_owned(),
        }));
        if let Err(e) = self.commit(batch) {
            tracing::error!(gateway = gateway_id, error = %e, "cannot record a disconnection");
        }
        if let Some(g) = self.gateways.get_mut(gateway_id) {
            g.record = record;
            g.session = None;
        }
        tracing::info!(gateway = gateway_id, reason, "gateway disconnected");
    }
}
