//! The gateway link: registration (with the target a gateway lacks),
//! acknowledgements, reports of what runs, heartbeats and disconnection.

use std::collections::BTreeMap;

use continuum_models::parse::parse_deployment_model;
use continuum_models::validate::is_valid_id;
use continuum_models::{DeploymentModel, Invalid};
use continuum_proto::v1::{
    event, Ack, Acknowledged, ComponentChanged, ComponentState, CurrentChanged, CurrentReport,
    Diverged, Document, Gateway, GatewayConnected, GatewayDisconnected, Heartbeat, Register,
    StatusReport, StepProgress, Target, TargetSent, Welcome,
};

use super::{counts, to_json, Batch, Core, Delivery, GatewayState, Transition, Update};
use crate::error::Error;
use crate::records::StoredTarget;

static NO_OVERLAY: BTreeMap<String, StoredTarget> = BTreeMap::new();

/// Refuses what cannot be a gateway id.
pub fn check_gateway_id(id: &str) -> Result<(), Error> {
    if is_valid_id(id) {
        return Ok(());
    }
    Err(Error::BadRequest(format!(
        "`{id}` is not a valid gateway id: expected 1 to 63 lowercase letters, digits and dashes, starting with a letter"
    )))
}

/// A gateway accepted on the link.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The number of this link; reports must come on it.
    pub session: u64,
    /// What the gateway is told first: its subsystem, the heartbeat, the bus.
    pub welcome: Welcome,
}

impl Core {
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
            .subsystems_of(gateway_id)
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

    /// Adds to `batch` the sending of a gateway's target unless it holds that
    /// generation; returns the target to deliver once the batch is committed.
    pub(super) fn plan_delivery(
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

    /// Accepts a gateway on the link, and sends it its target if it lacks it.
    pub fn register(&self, reg: Register, now: i64) -> Result<Transition<Registered>, Error> {
        let id = reg.gateway_id.clone();
        check_gateway_id(&id)?;
        if self.gateways.get(&id).is_some_and(|g| g.session.is_some()) {
            return Err(Error::AlreadyConnected(id));
        }
        let mut batch = self.batch(now);
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
            let seq = batch.event(event::Kind::Diverged(diverged.clone()));
            batch.changes.divergences.push((seq, diverged.clone()));
            record.diverged = Some(diverged);
            holds = 0;
        }
        record.version = reg.version.clone();
        record.agent_upgrade = reg.agent_upgrade.clone();
        record.location = reg.location;
        record.capabilities = reg.capabilities;
        record.last_seen_unix_ms = now;
        record.acked_generation = reg.accepted_generation;
        record.observed_generation = reg.observed_generation;
        record.sent_generation = record.sent_generation.min(reg.accepted_generation);
        batch.event(event::Kind::Connected(GatewayConnected {
            gateway_id: id.clone(),
            subsystem: subsystem.clone(),
            version: reg.version,
        }));
        let target = self.plan_delivery(&mut batch, &mut record, holds, &NO_OVERLAY);
        batch.changes.gateways.push(record.clone());
        let session = self.next_session;
        let mut update = Update {
            next_session: Some(session + 1),
            deliveries: target
                .map(|target| Delivery {
                    gateway_id: id.clone(),
                    session,
                    target,
                })
                .into_iter()
                .collect(),
            ..Update::default()
        };
        update.gateways.push(GatewayState {
            record,
            session: Some(session),
        });
        if self.subsystems.contains_key(&subsystem) {
            update
                .observed
                .push((subsystem.clone(), reg.observed_generation));
        }
        let reply = Registered {
            session,
            welcome: Welcome {
                subsystem,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                bus_url: self.config.bus_url.clone(),
                bus_port: self.config.bus_port,
                bus_tls: self.config.bus_tls,
            },
        };
        Ok(self.transition(batch, reply, update))
    }

    /// The state of a gateway on its live session.
    fn live(&self, gateway_id: &str, session: u64) -> Result<&GatewayState, Error> {
        self.gateways
            .get(gateway_id)
            .filter(|g| g.session == Some(session))
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

    /// A gateway accepted or refused a target.
    pub fn ack(
        &self,
        gateway_id: &str,
        session: u64,
        ack: Ack,
        now: i64,
    ) -> Result<Transition<()>, Error> {
        let g = self.live(gateway_id, session)?;
        if ack.generation == 0 {
            return Err(Error::BadRequest(
                "an acknowledgement needs the generation it acknowledges".into(),
            ));
        }
        self.check_sent(g, ack.generation, "an acknowledgement")?;
        let mut state = g.clone();
        let record = &mut state.record;
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
        let mut batch = self.batch(now);
        batch.changes.gateways.push(record.clone());
        batch.event(event::Kind::Acknowledged(Acknowledged {
            subsystem,
            gateway_id: gateway_id.to_owned(),
            generation: ack.generation,
            accepted: ack.accepted,
            reason: record.rejected.clone(),
        }));
        let update = Update {
            gateways: vec![state],
            ..Update::default()
        };
        Ok(self.transition(batch, (), update))
    }

    /// A gateway reported its current model.
    pub fn report_current(
        &self,
        gateway_id: &str,
        session: u64,
        report: CurrentReport,
        now: i64,
    ) -> Result<Transition<()>, Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, report.observed_generation, "a current model")?;
        let mut state = g.clone();
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
        state.record.observed_generation = report.observed_generation;
        state.record.last_seen_unix_ms = now;
        let sub = &self.subsystems[&subsystem];
        let next = sub.reported(report.observed_generation, model, bytes);
        let mut batch = self.batch(now);
        batch.changes.gateways.push(state.record.clone());
        batch
            .changes
            .currents
            .push((subsystem.clone(), next.stored_current()));
        batch.event(event::Kind::Current(CurrentChanged {
            subsystem: subsystem.clone(),
            observed_generation: report.observed_generation,
            live: Some(next.live),
        }));
        let update = Update {
            gateways: vec![state],
            subsystems: vec![(subsystem, next)],
            ..Update::default()
        };
        Ok(self.transition(batch, (), update))
    }

    /// A gateway reported the statuses of components that changed.
    pub fn report_status(
        &self,
        gateway_id: &str,
        session: u64,
        report: StatusReport,
        now: i64,
    ) -> Result<Transition<()>, Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, report.generation, "a status report")?;
        let subsystem = self.subsystem_for_report(gateway_id)?;
        let sub = &self.subsystems[&subsystem];
        let mut statuses = sub.statuses.clone();
        let mut batch = self.batch(now);
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
                s.since_unix_ms = now;
            }
            if s.generation == 0 {
                s.generation = report.generation;
            }
            let same = statuses.get(&s.component).is_some_and(|old| {
                old.state == s.state
                    && old.reason == s.reason
                    && old.generation == s.generation
                    && old.detail == s.detail
                    && old.rolled_back_to == s.rolled_back_to
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
            return Ok(Transition::none(()));
        }
        let current = crate::records::StoredCurrent {
            observed_generation: sub.observed_generation,
            model: sub.current_bytes.clone(),
            components: statuses.values().cloned().collect(),
        };
        batch.changes.currents.push((subsystem.clone(), current));
        let update = Update {
            statuses: vec![(subsystem, statuses)],
            ..Update::default()
        };
        Ok(self.transition(batch, (), update))
    }

    /// A gateway reported the progress of a step.
    pub fn report_step(
        &self,
        gateway_id: &str,
        session: u64,
        mut step: StepProgress,
        now: i64,
    ) -> Result<Transition<()>, Error> {
        let g = self.live(gateway_id, session)?;
        self.check_sent(g, step.generation, "step progress")?;
        step.subsystem = self.subsystem_for_report(gateway_id)?;
        let mut batch = self.batch(now);
        batch.event(event::Kind::Step(step));
        Ok(self.transition(batch, (), Update::default()))
    }

    /// A gateway is alive: only memory changes (when it was last seen).
    pub fn heartbeat(
        &self,
        gateway_id: &str,
        session: u64,
        heartbeat: Heartbeat,
        now: i64,
    ) -> Result<Transition<()>, Error> {
        let mut state = self.live(gateway_id, session)?.clone();
        state.record.last_seen_unix_ms = now;
        if heartbeat.load.is_some() {
            state.record.load = heartbeat.load;
        }
        state.record.bridge = heartbeat.bridge;
        if !heartbeat.agent_upgrade.is_empty() {
            state.record.agent_upgrade = heartbeat.agent_upgrade;
        }
        let update = Update {
            gateways: vec![state],
            ..Update::default()
        };
        Ok(Transition {
            changes: Default::default(),
            reply: (),
            update,
        })
    }

    /// Removes the record of a gateway that is gone: not connected, and
    /// named by no subsystem of the head (a removed subsystem's is fine).
    pub fn forget_gateway(&self, gateway_id: &str, now: i64) -> Result<Transition<()>, Error> {
        let Some(g) = self.gateways.get(gateway_id) else {
            return Err(Error::NoGateway(gateway_id.to_owned()));
        };
        if g.session.is_some() {
            return Err(Error::BadRequest(format!(
                "gateway `{gateway_id}` is connected: stop its agent first"
            )));
        }
        if let Some((subsystem, t)) = self.resolve(gateway_id, &NO_OVERLAY) {
            if !t.removed {
                return Err(Error::BadRequest(format!(
                    "subsystem `{subsystem}` names gateway `{gateway_id}`: remove it from the model first"
                )));
            }
        }
        let mut batch = self.batch(now);
        batch.changes.forget_gateways.push(gateway_id.to_owned());
        let update = Update {
            forgotten: vec![gateway_id.to_owned()],
            ..Update::default()
        };
        Ok(self.transition(batch, (), update))
    }

    /// Ends a gateway's session (only the one given: a newer session stays).
    /// `None` when that session is already over.
    pub fn disconnect(
        &self,
        gateway_id: &str,
        session: u64,
        reason: &str,
        now: i64,
    ) -> Option<Transition<()>> {
        let mut state = self.live(gateway_id, session).ok()?.clone();
        state.session = None;
        state.record.last_seen_unix_ms = now;
        let mut batch = self.batch(now);
        batch.changes.gateways.push(state.record.clone());
        batch.event(event::Kind::Disconnected(GatewayDisconnected {
            gateway_id: gateway_id.to_owned(),
            subsystem: self.subsystem_of(gateway_id).unwrap_or_default().to_owned(),
            reason: reason.to_owned(),
        }));
        let update = Update {
            gateways: vec![state],
            ..Update::default()
        };
        Some(self.transition(batch, (), update))
    }
}
