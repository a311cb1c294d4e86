//! Staged rollouts: a revision reaches the subsystems it changes wave by
//! wave. The first wave is released with the revision; the others are held
//! (their gateways keep their earlier target) until the wave before has
//! settled — every subsystem in it converged, failed, or its gateway offline.
//! Too many failures stop the rollout and, by policy, give every subsystem it
//! changed its earlier target back, as a new revision.
//!
//! The next wave is chosen when it starts, from the subsystems still held,
//! those whose gateway holds a link first: a gateway that registers while a
//! rollout runs is given the target of the wave its subsystem is in (the
//! earlier one while held), and counts for the next wave once connected.

use std::collections::BTreeMap;
use std::sync::Arc;

use continuum_models::DeploymentModel;
use continuum_proto::v1::{
    event, ControlRolloutRequest, Rollout, RolloutAction, RolloutPolicy, RolloutState, RolloutWave,
    SubsystemPhase,
};

use super::{Batch, Core, Transition, Update};
use crate::error::Error;
use crate::records::{StoredChange, StoredTarget};

/// A subsystem a rollout changes.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its target in the revision rolled out.
    pub target: StoredTarget,
    /// That target's model.
    pub model: DeploymentModel,
    /// Its target before the rollout (`None`: the revision adds it).
    pub previous: Option<StoredTarget>,
}

impl Change {
    /// What the store keeps of it.
    pub fn stored(&self) -> StoredChange {
        StoredChange {
            target: Some(self.target.clone()),
            previous: self.previous.clone(),
        }
    }

    /// Reads a stored change back; the error says what is wrong.
    pub fn from_stored(subsystem: &str, c: StoredChange) -> Result<Change, String> {
        let target = c
            .target
            .ok_or_else(|| format!("the rollout change of `{subsystem}` has no target"))?;
        let model = serde_json::from_slice(&target.model)
            .map_err(|e| format!("the rollout target of `{subsystem}`: {e}"))?;
        Ok(Change {
            target,
            model,
            previous: c.previous,
        })
    }
}

/// The newest staged rollout, with what it changes while it has not ended.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its record, as stored (counts as of its last change).
    pub meta: Rollout,
    /// Every subsystem it changes, released or held (empty once it ended).
    pub changes: Arc<BTreeMap<String, Change>>,
}

/// How it stands for a rollout with a released subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Converged,
    Failed,
    /// Its gateway holds no link (or it names none): it gets its target when
    /// it connects, and does not hold the wave up.
    Away,
    Working,
}

/// What ends a rollout still running when a new revision replaces the head.
#[derive(Debug, Clone)]
pub enum Ending {
    /// A revision replaced the head.
    Superseded,
    /// The revision restores what the rollout changed; why.
    RolledBack(String),
}

impl Run {
    /// Whether it may still start waves (running, paused or halted).
    pub fn is_active(&self) -> bool {
        matches!(
            self.meta.state(),
            RolloutState::Running | RolloutState::Paused | RolloutState::Halted
        )
    }

    /// The wave each released subsystem is in.
    pub fn waves(&self) -> BTreeMap<&str, u32> {
        self.meta
            .waves
            .iter()
            .flat_map(|w| w.subsystems.iter().map(move |s| (s.as_str(), w.number)))
            .collect()
    }

    /// The target it holds back for `subsystem`, if it is active and does.
    pub fn held(&self, subsystem: &str) -> Option<&Change> {
        if !self.is_active() {
            return None;
        }
        let c = self.changes.get(subsystem)?;
        let released = self
            .meta
            .waves
            .iter()
            .any(|w| w.subsystems.iter().any(|s| s == subsystem));
        (!released).then_some(c)
    }
}

/// The name of a rollout state, as users read it.
pub fn state_name(state: RolloutState) -> String {
    state
        .as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// Refuses a policy that cannot mean anything: percentages over 100.
pub fn check(policy: &RolloutPolicy) -> Result<(), Error> {
    for (name, pct) in [
        ("wave_percent", policy.wave_percent),
        ("max_failures_percent", policy.max_failures_percent),
    ] {
        if pct > 100 {
            return Err(Error::BadRequest(format!(
                "rollout.{name} is {pct}: expected a percentage from 0 to 100"
            )));
        }
    }
    if policy.wave_size > 0 && policy.wave_percent > 0 {
        return Err(Error::BadRequest(
            "rollout: give wave_size or wave_percent, not both".into(),
        ));
    }
    if policy.max_failures > 0 && policy.max_failures_percent > 0 {
        return Err(Error::BadRequest(
            "rollout: give max_failures or max_failures_percent, not both".into(),
        ));
    }
    if policy.canary_labels.keys().any(|k| k.trim().is_empty()) {
        return Err(Error::BadRequest(
            "rollout.canary_labels: a label needs a key".into(),
        ));
    }
    Ok(())
}

/// Whether `failed` failures beyond those tolerated, out of `released`
/// subsystems, are more than `policy` allows.
fn too_many(policy: &RolloutPolicy, failed: u32, released: u32) -> bool {
    if policy.max_failures_percent > 0 {
        u64::from(failed) * 100 > u64::from(policy.max_failures_percent) * u64::from(released)
    } else {
        failed > policy.max_failures
    }
}

impl Core {
    /// How a released subsystem stands now.
    fn standing(&self, subsystem: &str) -> Standing {
        let Some(sub) = self.subsystems.get(subsystem) else {
            return Standing::Away;
        };
        let g = self.gateways.get(&sub.target.gateway_id);
        match sub.phase(g.map(|g| (&g.record, g.session.is_some()))) {
            SubsystemPhase::Converged => Standing::Converged,
            SubsystemPhase::Failed | SubsystemPhase::Refused => Standing::Failed,
            SubsystemPhase::NoGateway | SubsystemPhase::Waiting | SubsystemPhase::Offline => {
                Standing::Away
            }
            SubsystemPhase::Deploying | SubsystemPhase::Pending | SubsystemPhase::Unspecified => {
                Standing::Working
            }
        }
    }

    /// `meta` with the counts of its released subsystems as they stand now.
    fn counted(&self, mut meta: Rollout) -> Rollout {
        let (mut released, mut converged, mut failed) = (0u32, 0u32, 0u32);
        for s in meta.waves.iter().flat_map(|w| w.subsystems.iter()) {
            released += 1;
            match self.standing(s) {
                Standing::Converged => converged += 1,
                Standing::Failed => failed += 1,
                Standing::Away | Standing::Working => {}
            }
        }
        meta.released = released;
        meta.converged = converged;
        meta.failed = failed;
        meta
    }

    /// The newest rollout as users see it (counts as they stand now).
    pub fn rollout(&self) -> Option<Rollout> {
        let run = self.rollout.as_ref()?;
        Some(if run.is_active() {
            self.counted(run.meta.clone())
        } else {
            run.meta.clone()
        })
    }

    /// The rollout that may still start waves, if any.
    pub fn active_rollout(&self) -> Option<&Run> {
        self.rollout.as_ref().filter(|r| r.is_active())
    }

    /// Records `meta` as the rollout's new state (with `changes`, or none
    /// once it ended), and tells watchers.
    fn record_rollout(
        &self,
        batch: &mut Batch,
        update: &mut Update,
        meta: Rollout,
        changes: Arc<BTreeMap<String, Change>>,
    ) {
        batch.changes.rollouts.push(meta.clone());
        batch.event(event::Kind::Rollout(meta.clone()));
        let run = Run { meta, changes };
        if !run.is_active() {
            batch.changes.clear_rollout_changes = true;
            update.rollout = Some(Run {
                changes: Arc::default(),
                ..run
            });
        } else {
            update.rollout = Some(run);
        }
    }

    /// Ends the active rollout, if any, because revision `by` replaces the head.
    pub(super) fn end_rollout(
        &self,
        batch: &mut Batch,
        update: &mut Update,
        ending: Ending,
        by: u64,
        now: i64,
    ) {
        let Some(run) = self.active_rollout() else {
            return;
        };
        let mut meta = self.counted(run.meta.clone());
        match ending {
            Ending::Superseded => {
                meta.set_state(RolloutState::Superseded);
                meta.reason = format!("revision {by} replaced the head before it completed");
            }
            Ending::RolledBack(why) => {
                meta.set_state(RolloutState::RolledBack);
                meta.reason = why;
            }
        }
        meta.ended_by = by;
        meta.updated_unix_ms = now;
        tracing::info!(revision = meta.revision, state = %state_name(meta.state()), reason = %meta.reason, "rollout ended");
        self.record_rollout(batch, update, meta, Arc::default());
    }

    /// Starts rolling revision `targets` out under `policy`: records the
    /// rollout and returns the targets of its first wave (the rest are held).
    pub(super) fn start_rollout(
        &self,
        batch: &mut Batch,
        update: &mut Update,
        policy: RolloutPolicy,
        targets: Vec<(String, StoredTarget, DeploymentModel)>,
        now: i64,
    ) -> Vec<(String, StoredTarget, DeploymentModel)> {
        let number = batch_revision(batch);
        let changes: BTreeMap<String, Change> = targets
            .into_iter()
            .map(|(id, target, model)| {
                let previous = self.subsystems.get(&id).map(|s| s.target.clone());
                (
                    id,
                    Change {
                        target,
                        model,
                        previous,
                    },
                )
            })
            .collect();
        let total = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        batch.changes.clear_rollout_changes = true;
        batch.changes.rollout_changes = changes
            .iter()
            .map(|(id, c)| (id.clone(), c.stored()))
            .collect();
        let mut run = Run {
            meta: Rollout {
                revision: number,
                state: RolloutState::Running as i32,
                policy: Some(policy),
                total,
                started_unix_ms: now,
                updated_unix_ms: now,
                ..Rollout::default()
            },
            changes: Arc::new(changes),
        };
        let wave = self.next_wave(&run, now).unwrap_or_default();
        let released = wave_targets(&run, &wave);
        tracing::info!(
            revision = number,
            total,
            first_wave = wave.subsystems.len(),
            "staged rollout started"
        );
        run.meta.waves.push(wave);
        let meta = self.counted(run.meta.clone());
        self.record_rollout(batch, update, meta, Arc::clone(&run.changes));
        released
    }

    /// The next wave of `run`: the subsystems it still holds, those whose
    /// gateway holds a link first, as many as the policy says (`None`: it
    /// holds none).
    fn next_wave(&self, run: &Run, now: i64) -> Option<RolloutWave> {
        let released = run.waves();
        let mut held: Vec<(&str, &Change, bool)> = run
            .changes
            .iter()
            .filter(|(id, _)| !released.contains_key(id.as_str()))
            .map(|(id, c)| {
                let connected = self
                    .gateways
                    .get(&c.target.gateway_id)
                    .is_some_and(|g| g.session.is_some());
                (id.as_str(), c, connected)
            })
            .collect();
        if held.is_empty() {
            return None;
        }
        held.sort_by_key(|(id, _, connected)| (!connected, *id));
        let policy = run.meta.policy.clone().unwrap_or_default();
        let number = u32::try_from(run.meta.waves.len() + 1).unwrap_or(u32::MAX);
        let canary = number == 1 && (!policy.canary_labels.is_empty() || policy.canary_count > 0);
        let chosen: Vec<&str> = if canary {
            let labelled = |c: &Change| {
                let labels = self
                    .gateways
                    .get(&c.target.gateway_id)
                    .and_then(|g| g.record.capabilities.as_ref())
                    .map(|c| &c.labels);
                policy
                    .canary_labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            };
            let mut c: Vec<&str> = held
                .iter()
                .filter(|(_, c, _)| labelled(c))
                .map(|(id, _, _)| *id)
                .collect();
            if c.is_empty() {
                // No gateway carries the labels: the canary is the first
                // subsystems still, never the whole fleet at once.
                let n = usize::try_from(policy.canary_count.max(1)).unwrap_or(1);
                c = held.iter().take(n).map(|(id, _, _)| *id).collect();
            } else if policy.canary_count > 0 {
                c.truncate(usize::try_from(policy.canary_count).unwrap_or(usize::MAX));
            }
            c
        } else {
            let size = if policy.wave_size > 0 {
                usize::try_from(policy.wave_size).unwrap_or(usize::MAX)
            } else if policy.wave_percent > 0 {
                let total = u64::from(run.meta.total);
                let n = (total * u64::from(policy.wave_percent)).div_ceil(100);
                usize::try_from(n.max(1)).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            held.iter().take(size).map(|(id, _, _)| *id).collect()
        };
        Some(RolloutWave {
            number,
            canary,
            subsystems: chosen.into_iter().map(str::to_owned).collect(),
            started_unix_ms: now,
            settled_unix_ms: 0,
        })
    }

    /// Moves the active rollout on after whatever just changed: stops it when
    /// too many subsystems failed, starts the next wave once the last one
    /// settled, completes it when none is held. `None`: nothing to do.
    pub fn advance_rollout(&self, now: i64) -> Result<Option<Transition<()>>, Error> {
        let Some(run) = self.active_rollout() else {
            return Ok(None);
        };
        let state = run.meta.state();
        if state == RolloutState::Halted {
            return Ok(None);
        }
        let mut meta = self.counted(run.meta.clone());
        let policy = meta.policy.clone().unwrap_or_default();
        let beyond = meta.failed.saturating_sub(meta.tolerated);
        if too_many(&policy, beyond, meta.released) {
            let failing: Vec<&str> = meta
                .waves
                .iter()
                .flat_map(|w| w.subsystems.iter())
                .filter(|s| self.standing(s) == Standing::Failed)
                .map(String::as_str)
                .take(5)
                .collect();
            let more = if meta.failed as usize > failing.len() {
                ", …"
            } else {
                ""
            };
            let reason = format!(
                "{} of {} released subsystems failed ({}{more}); the policy tolerates {}",
                meta.failed,
                meta.released,
                failing.join(", "),
                if policy.max_failures_percent > 0 {
                    format!("{}%", policy.max_failures_percent)
                } else {
                    policy.max_failures.to_string()
                }
            );
            tracing::warn!(revision = meta.revision, %reason, "rollout stopped");
            if policy.rollback_on_failure {
                return self.roll_back(run, reason, now).map(|t| Some(t.map(drop)));
            }
            meta.set_state(RolloutState::Halted);
            meta.reason = reason;
            meta.updated_unix_ms = now;
            let mut batch = self.batch(now);
            let mut update = Update::default();
            self.record_rollout(&mut batch, &mut update, meta, Arc::clone(&run.changes));
            return Ok(Some(self.transition(batch, (), update)));
        }
        if state != RolloutState::Running {
            return Ok(None);
        }
        let Some(last) = meta.waves.last_mut() else {
            return Ok(None);
        };
        let settled = last
            .subsystems
            .iter()
            .all(|s| self.standing(s) != Standing::Working);
        if !settled {
            return Ok(None);
        }
        last.settled_unix_ms = now;
        let mut batch = self.batch(now);
        let mut update = Update::default();
        meta.updated_unix_ms = now;
        match self.next_wave(run, now) {
            None => {
                meta.set_state(RolloutState::Completed);
                meta.reason.clear();
                tracing::info!(revision = meta.revision, "rollout completed");
                self.record_rollout(&mut batch, &mut update, meta, Arc::default());
            }
            Some(wave) => {
                tracing::info!(
                    revision = meta.revision,
                    wave = wave.number,
                    subsystems = wave.subsystems.len(),
                    "rollout wave started"
                );
                let released = wave_targets(run, &wave);
                meta.waves.push(wave);
                self.release(&mut batch, &mut update, released);
                self.record_rollout(&mut batch, &mut update, meta, Arc::clone(&run.changes));
            }
        }
        Ok(Some(self.transition(batch, (), update)))
    }

    /// A new revision giving every subsystem `run` changed its target from
    /// before the rollout; the rollout ends rolled back, for `reason`.
    fn roll_back(&self, run: &Run, reason: String, now: i64) -> Result<Transition<Rollout>, Error> {
        let head = self.head.as_ref().ok_or(Error::Empty)?;
        let mut megamodel = head.megamodel.clone();
        megamodel.subsystems.retain(|s| {
            !run.changes
                .contains_key(s.id.as_deref().unwrap_or_default())
        });
        for (id, c) in run.changes.iter() {
            let Some(p) = c.previous.as_ref().filter(|p| !p.removed) else {
                continue;
            };
            let model: DeploymentModel = serde_json::from_slice(&p.model)
                .map_err(|e| Error::Corrupt(format!("the earlier target of `{id}`: {e}")))?;
            megamodel.subsystems.push(model);
        }
        let message = format!(
            "rollout of revision {} rolled back: {reason}",
            run.meta.revision
        );
        let t = self.revision(
            megamodel,
            None,
            "continuum".into(),
            message,
            head.meta.base,
            now,
            None,
            Ending::RolledBack(reason.clone()),
        )?;
        if t.reply.unchanged {
            // Nothing differs from the head: the rollout ends all the same.
            let mut batch = self.batch(now);
            let mut update = Update::default();
            self.end_rollout(&mut batch, &mut update, Ending::RolledBack(reason), 0, now);
            let meta = update
                .rollout
                .as_ref()
                .map(|r| r.meta.clone())
                .unwrap_or_default();
            return Ok(self.transition(batch, meta, update));
        }
        let meta = t
            .update
            .rollout
            .as_ref()
            .map(|r| r.meta.clone())
            .unwrap_or_default();
        Ok(t.map(|_| meta))
    }

    /// Pauses, resumes or aborts the active rollout for `author`.
    pub fn control_rollout(
        &self,
        req: &ControlRolloutRequest,
        author: &str,
        now: i64,
    ) -> Result<Transition<Rollout>, Error> {
        let action = RolloutAction::try_from(req.action)
            .ok()
            .filter(|a| *a != RolloutAction::Unspecified)
            .ok_or_else(|| {
                Error::BadRequest("the rollout action must be pause, resume or abort".into())
            })?;
        let (verb, done) = match action {
            RolloutAction::Pause => ("pause", "paused"),
            RolloutAction::Resume => ("resume", "resumed"),
            _ => ("abort", "aborted"),
        };
        let run = self.rollout.as_ref().ok_or_else(|| {
            Error::NoRollout(
                "no revision was ever rolled out in waves; apply with a rollout policy first (`continuum apply --wave`)".into(),
            )
        })?;
        if req.revision != 0 && req.revision != run.meta.revision {
            return Err(Error::RolloutState(format!(
                "the newest rollout is of revision {}, not {}",
                run.meta.revision, req.revision
            )));
        }
        if !run.is_active() {
            return Err(Error::RolloutState(format!(
                "the rollout of revision {} is {}: there is nothing to {verb}",
                run.meta.revision,
                state_name(run.meta.state())
            )));
        }
        let by = if req.reason.is_empty() {
            format!("{done} by {author}")
        } else {
            format!("{done} by {author}: {}", req.reason)
        };
        let mut meta = self.counted(run.meta.clone());
        let state = meta.state();
        match action {
            RolloutAction::Abort => return self.roll_back(run, by, now),
            RolloutAction::Pause if state == RolloutState::Paused => {
                return Ok(Transition::none(meta))
            }
            RolloutAction::Pause if state == RolloutState::Halted => {
                return Err(Error::RolloutState(format!(
                    "the rollout of revision {} is halted ({}): resume it to go on, or abort it to roll back",
                    meta.revision, meta.reason
                )))
            }
            RolloutAction::Pause => meta.set_state(RolloutState::Paused),
            RolloutAction::Resume if state == RolloutState::Running => {
                return Ok(Transition::none(meta))
            }
            RolloutAction::Resume => {
                if state == RolloutState::Halted {
                    // The failures seen so far are accepted; the threshold
                    // counts new ones.
                    meta.tolerated = meta.failed;
                }
                meta.set_state(RolloutState::Running);
            }
            RolloutAction::Unspecified => unreachable!("refused above"),
        }
        tracing::info!(revision = meta.revision, reason = %by, "rollout {done}");
        meta.reason = by;
        meta.updated_unix_ms = now;
        let mut batch = self.batch(now);
        let mut update = Update::default();
        self.record_rollout(
            &mut batch,
            &mut update,
            meta.clone(),
            Arc::clone(&run.changes),
        );
        Ok(self.transition(batch, meta, update))
    }
}

/// The revision a batch stores (the one it is making).
fn batch_revision(batch: &Batch) -> u64 {
    batch
        .changes
        .revisions
        .last()
        .and_then(|r| r.meta.as_ref())
        .map_or(0, |m| m.number)
}

/// The targets `wave` releases.
fn wave_targets(run: &Run, wave: &RolloutWave) -> Vec<(String, StoredTarget, DeploymentModel)> {
    wave.subsystems
        .iter()
        .filter_map(|id| {
            let c = run.changes.get(id)?;
            Some((id.clone(), c.target.clone(), c.model.clone()))
        })
        .collect()
}

/// The subsystems a set of waves names.
#[cfg(test)]
pub(super) fn released_in(meta: &Rollout) -> std::collections::HashSet<String> {
    meta.waves
        .iter()
        .flat_map(|w| w.subsystems.iter().cloned())
        .collect()
}
