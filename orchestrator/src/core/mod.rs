//! The orchestrator's state and every change to it, without I/O.
//!
//! As a protocol state machine is kept apart from its event loop, the core
//! never touches the disk, the network or the clock. Each operation reads the
//! state, takes the time it needs as an argument and returns a [`Transition`]:
//! the writes to commit, the reply, and what memory and the gateways' sessions
//! get once those writes are durable. The shell (`handle`) commits the writes,
//! then calls [`Core::complete`] and hands the deliveries to the sessions. A
//! failed commit is simply dropped: nothing in memory changed.
//!
//! The operations are split by concern: `revisions` (apply, rollback),
//! `gateways` (the link: register, acknowledgements, reports, disconnection),
//! `events` (numbering and retention of the event log); `subsystem` holds one
//! subsystem's state.

mod agent;
mod events;
mod gateways;
mod revisions;
mod rollout;
mod subsystem;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rollout;

use std::collections::{BTreeMap, BTreeSet};

use continuum_models::{DeploymentModel, Kind, Megamodel, ModelDiff};
use continuum_proto::v1::{AgentOffer, ComponentStatus, DiffCounts, Gateway, Revision, Target};

pub use events::{Batch, Log};
pub use gateways::{check_gateway_id, Registered};
pub use revisions::{Moved, Prepared};
pub use rollout::state_name as rollout_state_name;
pub use subsystem::Subsystem;

use crate::error::Error;
use crate::records::StoredRevision;
use crate::store::{Changes, Snapshot, Store};

/// Where revisions older than the head are read from: the store, or a map in
/// tests.
pub trait Revisions {
    /// One revision, if it exists.
    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, Error>;
}

impl Revisions for Store {
    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, Error> {
        Ok(Store::revision(self, number)?)
    }
}

impl Revisions for BTreeMap<u64, StoredRevision> {
    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, Error> {
        Ok(self.get(&number).cloned())
    }
}

/// Milliseconds since the Unix epoch, for timestamps users read. Only the
/// shell reads the clock; the core is given the time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The counts of a diff, as the protocol carries them.
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

/// Whether a diff's counts say nothing changed.
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

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Events kept for `Watch` resume.
    pub event_retention: u64,
    /// How often gateways must send a heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// The global bus told to gateways (see `Welcome`).
    pub bus_url: String,
    /// The port of the embedded global bus told to gateways (0: none).
    pub bus_port: u32,
    /// That port speaks MQTT over TLS.
    pub bus_tls: bool,
}

#[cfg(test)]
impl CoreConfig {
    /// Settings for unit tests: a small event log, no bus.
    pub(crate) fn for_tests() -> CoreConfig {
        CoreConfig {
            event_retention: 1000,
            heartbeat_interval_ms: 1000,
            bus_url: String::new(),
            bus_port: 0,
            bus_tls: false,
        }
    }
}

/// The head revision, kept in memory.
#[derive(Debug, Clone)]
pub struct Head {
    /// The revision's metadata.
    pub meta: Revision,
    /// The megamodel as deployed (expanded, partitioned).
    pub megamodel: Megamodel,
    /// Its canonical JSON, to tell an identical apply at once.
    pub canonical: Vec<u8>,
}

/// A gateway the orchestrator knows: its record, and the link it holds now.
/// Whether it is connected is whether it holds a session; the record does not
/// say it twice.
#[derive(Debug, Clone)]
pub struct GatewayState {
    /// What is stored about it (its `connected` is derived, never stored).
    pub record: Gateway,
    /// The link it holds now, if any.
    pub session: Option<u64>,
}

/// A target to hand to a gateway's session once the transition is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The gateway the target goes to.
    pub gateway_id: String,
    /// The session it must arrive on (a newer session gets its own).
    pub session: u64,
    /// The target.
    pub target: Target,
}

/// What memory becomes once a transition's writes are durable.
#[derive(Debug, Default)]
struct Update {
    log: Option<Log>,
    head: Option<Head>,
    subsystems: Vec<(String, Subsystem)>,
    /// New component statuses of a subsystem (the rest of it unchanged).
    statuses: Vec<(String, BTreeMap<String, ComponentStatus>)>,
    /// The generation a subsystem's gateway said it runs when it registered.
    observed: Vec<(String, u64)>,
    gateways: Vec<GatewayState>,
    /// Gateway records removed.
    forgotten: Vec<String>,
    next_session: Option<u64>,
    deliveries: Vec<Delivery>,
    /// The newest rollout's new state.
    rollout: Option<rollout::Run>,
    /// A new agent build on offer.
    agent_offer: Option<AgentOffer>,
}

/// What an operation decided: the writes to commit durably, the reply, and
/// (applied by [`Core::complete`] after the commit) the changes to memory and
/// the targets to deliver.
#[derive(Debug)]
#[must_use = "a transition does nothing until it is committed and completed"]
pub struct Transition<T> {
    /// The writes to commit durably before anything else happens.
    pub changes: Changes,
    /// What the caller is answered once committed.
    pub reply: T,
    update: Update,
}

impl<T> Transition<T> {
    /// The same transition with its reply turned into another.
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Transition<U> {
        Transition {
            changes: self.changes,
            reply: f(self.reply),
            update: self.update,
        }
    }

    /// A transition that changes nothing.
    fn none(reply: T) -> Transition<T> {
        Transition {
            changes: Changes::default(),
            reply,
            update: Update::default(),
        }
    }

    /// The targets this transition will deliver.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.update.deliveries
    }
}

/// What completing a transition gives the shell.
#[derive(Debug)]
pub struct Completed<T> {
    /// What the caller is answered.
    pub reply: T,
    /// The targets to hand to the gateways' sessions.
    pub deliveries: Vec<Delivery>,
    /// The newest event, when the transition added events.
    pub new_last_seq: Option<u64>,
    /// What puts memory back if the writes do not become durable.
    pub undo: Undo,
}

/// What a completion replaced in memory, to put back (see [`Core::undo`]).
/// Old values are moved here, not copied.
#[derive(Debug, Default)]
#[must_use = "dropping an undo keeps the completion"]
pub struct Undo {
    log: Option<Log>,
    head: Option<Option<Head>>,
    subsystems: Vec<(String, Option<Subsystem>)>,
    statuses: Vec<(String, BTreeMap<String, ComponentStatus>)>,
    observed: Vec<(String, u64)>,
    gateways: Vec<(String, Option<GatewayState>)>,
    next_session: Option<u64>,
    rollout: Option<Option<rollout::Run>>,
    agent_offer: Option<Option<AgentOffer>>,
}

/// The orchestrator's state: the head revision, the subsystems, the gateways and the event log's bounds.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    pub(crate) head: Option<Head>,
    pub(crate) subsystems: BTreeMap<String, Subsystem>,
    /// The subsystems whose target names each gateway (kept with
    /// `subsystems`: every report looks its gateway's subsystem up, and a scan
    /// of every subsystem per report made a fleet's rollout quadratic).
    by_gateway: BTreeMap<String, BTreeSet<String>>,
    pub(crate) gateways: BTreeMap<String, GatewayState>,
    log: Log,
    next_session: u64,
    /// The newest staged rollout, if a revision was ever staged.
    rollout: Option<rollout::Run>,
    /// The agent build on offer to the gateways.
    agent_offer: Option<AgentOffer>,
}

impl Core {
    /// The state kept in a store's snapshot; `corrupt` names what cannot be read.
    pub fn from_snapshot(
        snapshot: Snapshot,
        oldest_seq: u64,
        config: CoreConfig,
    ) -> Result<Core, String> {
        let head = match snapshot.head {
            None => None,
            Some(r) => {
                let megamodel: Megamodel = serde_json::from_slice(&r.megamodel)
                    .map_err(|e| format!("head revision: {e}"))?;
                Some(Head {
                    meta: r.meta.unwrap_or_default(),
                    megamodel,
                    canonical: r.megamodel,
                })
            }
        };
        let mut currents: BTreeMap<String, _> = snapshot.currents.into_iter().collect();
        let mut subsystems = BTreeMap::new();
        for (id, target) in snapshot.targets {
            let model: DeploymentModel = serde_json::from_slice(&target.model)
                .map_err(|e| format!("target of `{id}`: {e}"))?;
            let mut sub = Subsystem::new(target, model);
            if let Some(c) = currents.remove(&id) {
                let current = if c.model.is_empty() {
                    None
                } else {
                    let model = serde_json::from_slice(&c.model)
                        .map_err(|e| format!("current model of `{id}`: {e}"))?;
                    Some((model, c.model))
                };
                let statuses = c
                    .components
                    .into_iter()
                    .map(|s| (s.component.clone(), s))
                    .collect();
                sub = sub.with_current(c.observed_generation, current, statuses);
            }
            subsystems.insert(id, sub);
        }
        let gateways = snapshot
            .gateways
            .into_iter()
            .map(|mut record| {
                record.connected = false;
                let state = GatewayState {
                    record,
                    session: None,
                };
                (state.record.id.clone(), state)
            })
            .collect();
        let rollout = match snapshot.rollout {
            None => None,
            Some(meta) => {
                let mut changes = BTreeMap::new();
                for (id, c) in snapshot.rollout_changes {
                    let change = rollout::Change::from_stored(&id, c)?;
                    changes.insert(id, change);
                }
                Some(rollout::Run {
                    meta,
                    changes: std::sync::Arc::new(changes),
                })
            }
        };
        let log = Log {
            last: snapshot.last_seq,
            oldest: oldest_seq,
            retention: config.event_retention,
        };
        let mut core = Core {
            config,
            head,
            subsystems: BTreeMap::new(),
            by_gateway: BTreeMap::new(),
            gateways,
            log,
            next_session: 1,
            rollout,
            agent_offer: snapshot.agent_offer,
        };
        for (id, sub) in subsystems {
            core.put_subsystem(id, sub);
        }
        Ok(core)
    }

    /// Sets a subsystem, keeping the index by gateway; returns what it replaces.
    fn put_subsystem(&mut self, id: String, sub: Subsystem) -> Option<Subsystem> {
        self.by_gateway
            .entry(sub.target.gateway_id.clone())
            .or_default()
            .insert(id.clone());
        let old = self.subsystems.insert(id.clone(), sub);
        if let Some(o) = &old {
            self.unindex(&id, &o.target.gateway_id);
        }
        old
    }

    /// Removes a subsystem, keeping the index by gateway.
    fn take_subsystem(&mut self, id: &str) -> Option<Subsystem> {
        let old = self.subsystems.remove(id);
        if let Some(o) = &old {
            self.unindex(id, &o.target.gateway_id);
        }
        old
    }

    /// Drops `id` from `gateway`'s entry unless the subsystem now there still
    /// names that gateway.
    fn unindex(&mut self, id: &str, gateway: &str) {
        if self
            .subsystems
            .get(id)
            .is_some_and(|s| s.target.gateway_id == gateway)
        {
            return;
        }
        if let Some(set) = self.by_gateway.get_mut(gateway) {
            set.remove(id);
            if set.is_empty() {
                self.by_gateway.remove(gateway);
            }
        }
    }

    /// The subsystems whose stored target names `gateway_id`, in id order.
    pub(crate) fn subsystems_of(
        &self,
        gateway_id: &str,
    ) -> impl Iterator<Item = (&String, &Subsystem)> {
        self.by_gateway
            .get(gateway_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.subsystems.get_key_value(id))
    }

    /// The newest event's sequence number.
    pub fn last_seq(&self) -> u64 {
        self.log.last
    }

    /// The head revision's number (0: none yet).
    pub fn head_number(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.meta.number)
    }

    /// A batch for an operation happening at `now`.
    fn batch(&self, now: i64) -> Batch {
        Batch::new(self.log.last, now)
    }

    /// A transition that commits `batch` and then applies `update`.
    fn transition<T>(&self, mut batch: Batch, reply: T, mut update: Update) -> Transition<T> {
        if !batch.changes.events.is_empty() {
            update.log = Some(self.log.after(&mut batch));
        }
        Transition {
            changes: batch.changes,
            reply,
            update,
        }
    }

    /// Applies a transition to memory. Its writes must be durable before its
    /// reply and deliveries leave; until then [`Core::undo`] with the returned
    /// undo puts memory back as it was (group commit completes several
    /// transitions before their one commit, and a failed commit undoes them).
    pub fn complete<T>(&mut self, t: Transition<T>) -> Completed<T> {
        let Update {
            log,
            head,
            subsystems,
            statuses,
            observed,
            gateways,
            forgotten,
            next_session,
            deliveries,
            rollout,
            agent_offer,
        } = t.update;
        let mut undo = Undo::default();
        let new_last_seq = log.filter(|l| l.last != self.log.last).map(|l| l.last);
        if let Some(log) = log {
            undo.log = Some(std::mem::replace(&mut self.log, log));
        }
        if let Some(head) = head {
            undo.head = Some(self.head.replace(head));
        }
        for (id, sub) in subsystems {
            let old = self.put_subsystem(id.clone(), sub);
            undo.subsystems.push((id, old));
        }
        for (id, s) in statuses {
            if let Some(sub) = self.subsystems.get_mut(&id) {
                undo.statuses
                    .push((id, std::mem::replace(&mut sub.statuses, s)));
            }
        }
        for (id, generation) in observed {
            if let Some(sub) = self.subsystems.get_mut(&id) {
                let old = std::mem::replace(&mut sub.observed_generation, generation);
                undo.observed.push((id, old));
            }
        }
        for g in gateways {
            let id = g.record.id.clone();
            let old = self.gateways.insert(id.clone(), g);
            undo.gateways.push((id, old));
        }
        for id in forgotten {
            if let Some(old) = self.gateways.remove(&id) {
                undo.gateways.push((id, Some(old)));
            }
        }
        if let Some(n) = next_session {
            undo.next_session = Some(std::mem::replace(&mut self.next_session, n));
        }
        if let Some(run) = rollout {
            undo.rollout = Some(self.rollout.replace(run));
        }
        if let Some(o) = agent_offer {
            undo.agent_offer = Some(self.agent_offer.replace(o));
        }
        Completed {
            reply: t.reply,
            deliveries,
            new_last_seq,
            undo,
        }
    }

    /// Puts memory back as it was before the completion `undo` came from.
    /// Undo completions newest first.
    pub fn undo(&mut self, undo: Undo) {
        let Undo {
            log,
            head,
            subsystems,
            statuses,
            observed,
            gateways,
            next_session,
            rollout,
            agent_offer,
        } = undo;
        if let Some(o) = agent_offer {
            self.agent_offer = o;
        }
        if let Some(run) = rollout {
            self.rollout = run;
        }
        if let Some(n) = next_session {
            self.next_session = n;
        }
        for (id, old) in gateways.into_iter().rev() {
            match old {
                Some(g) => self.gateways.insert(id, g),
                None => self.gateways.remove(&id),
            };
        }
        for (id, generation) in observed.into_iter().rev() {
            if let Some(sub) = self.subsystems.get_mut(&id) {
                sub.observed_generation = generation;
            }
        }
        for (id, s) in statuses.into_iter().rev() {
            if let Some(sub) = self.subsystems.get_mut(&id) {
                sub.statuses = s;
            }
        }
        for (id, old) in subsystems.into_iter().rev() {
            match old {
                Some(sub) => self.put_subsystem(id, sub),
                None => self.take_subsystem(&id),
            };
        }
        if let Some(head) = head {
            self.head = head;
        }
        if let Some(log) = log {
            self.log = log;
        }
    }

    /// A gateway's record as clients see it: the subsystem it runs now, and
    /// whether it holds a link.
    pub fn gateway_view(&self, state: &GatewayState) -> Gateway {
        let mut g = state.record.clone();
        g.subsystem = self.subsystem_of(&g.id).unwrap_or_default().to_owned();
        g.connected = state.session.is_some();
        g
    }
}
