//! One gateway this orchestrator stands in for at the tier above. To the
//! tier above it is that gateway: it registers under its id (with what the
//! real gateway registered here), takes its subsystem's targets, and reports
//! how the subsystem runs here, generations translated. A target from above
//! becomes a local revision (the subsystem replaced, the rest kept), which
//! this orchestrator pushes on to the real gateway as it would any other.

use std::sync::{Arc, Mutex};

use continuum_gateway::admission::Refusal;
use continuum_gateway::agent::{Offer, Snapshot};
use continuum_gateway::engine::{State, Status};
use continuum_gateway::exec::{Progress, StepState};
use continuum_gateway::link::{self, LinkConfig};
use continuum_gateway::store::LocalNote;
use continuum_models::{DeploymentModel, Megamodel};
use continuum_orchestrator::embed::SubsystemView;
use continuum_orchestrator::Orchestrator;
use continuum_proto::v1::{
    ApplyRequest, Capabilities, ComponentState, ComponentStatus, Document, StepProgress,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ledger::{Entry, Ledger};
use super::TierConfig;

/// What every uplink shares.
pub(super) struct Shared {
    pub orch: Orchestrator,
    pub ledger: Mutex<Ledger>,
    pub config: TierConfig,
    /// Fetches the blobs targets from above are pinned to.
    pub blobs: continuum_gateway::blobs::BlobCache,
}

impl Shared {
    fn entry(&self, gateway: &str) -> Entry {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(gateway)
    }
}

/// Who the real gateway said it is, as the tier above is told.
#[derive(Debug, Clone, PartialEq, Default)]
struct Identity {
    version: String,
    location: String,
    capabilities: Capabilities,
}

/// The gateway's own load and bridge counters, as it last reported them
/// here (sent above with every heartbeat instead of this machine's).
#[derive(Debug, Default)]
struct Reported {
    load: Option<continuum_proto::v1::HostLoad>,
    bridge: Option<continuum_proto::v1::BridgeReport>,
}

/// A running link to the tier above.
struct Link {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Steps to pass on (the link ends when this closes).
    progress: mpsc::UnboundedSender<Progress>,
}

/// What the manager tells an uplink as events happen here.
#[derive(Debug)]
pub(super) enum Nudge {
    /// Something about its subsystem changed: report again.
    Refresh,
    /// A step its gateway took, to pass on.
    Step(StepProgress),
}

/// How often the gateway's load and bridge counters are read for the tier above.
const HEARTBEAT_READ: std::time::Duration = std::time::Duration::from_secs(5);

/// Attempts at applying one target when local applies keep moving the head.
const APPLY_ATTEMPTS: usize = 5;

/// Stands in for `gateway` until `stop`.
pub(super) async fn run(
    shared: Arc<Shared>,
    gateway: String,
    mut nudges: mpsc::UnboundedReceiver<Nudge>,
    stop: CancellationToken,
) {
    let (snapshot_tx, snapshot) = watch::channel(Snapshot::default());
    let (offers_tx, mut offers) = mpsc::channel::<Offer>(4);
    let (connected_tx, mut connected) = watch::channel(false);
    let reported: Arc<Mutex<Reported>> = Arc::default();
    let mut identity = refresh(&shared, &gateway, &snapshot_tx, &reported).await;
    let relayed = {
        let reported = Arc::clone(&reported);
        link::Relayed(Arc::new(move || {
            let r = reported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (r.load, r.bridge)
        }))
    };
    let start = |identity: &Identity| {
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let config = LinkConfig {
            orchestrators: shared.config.above.clone(),
            tls: shared.config.tls.clone(),
            gateway_id: gateway.clone(),
            version: identity.version.clone(),
            location: identity.location.clone(),
            capabilities: identity.capabilities.clone(),
            max_backoff: shared.config.max_backoff,
            bus: None,
            fencing: None,
            bridge: None,
            agent_upgrade: None,
            agent_offers: None,
            relayed: Some(relayed.clone()),
        };
        let link_stop = stop.child_token();
        let task = tokio::spawn(
            link::run(
                config,
                offers_tx.clone(),
                snapshot.clone(),
                progress_rx,
                connected_tx.clone(),
                link_stop.clone(),
            )
            .in_current_span(),
        );
        Link {
            stop: link_stop,
            task,
            progress: progress_tx,
        }
    };
    let mut link = start(&identity);
    // Heartbeats change no state here, so no event says the gateway's load
    // moved: it is read again as often as it is sent above.
    let mut heartbeat = tokio::time::interval(HEARTBEAT_READ);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = heartbeat.tick() => {
                if let Ok(Some(g)) = shared.orch.gateway_record(&gateway).await {
                    let mut r = reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.load = g.load;
                    r.bridge = g.bridge;
                }
            }
            Some(offer) = offers.recv() => {
                let span = tracing::info_span!("target_from_above", subsystem = %offer.subsystem, generation = offer.generation);
                let subsystem = offer.subsystem.clone();
                accept(&shared, &gateway, offer).instrument(span).await;
                shared.orch.hold_for_above(&subsystem, *connected.borrow());
                identity = renew(&shared, &gateway, &snapshot_tx, &reported, identity, &mut link, &start).await;
            }
            nudge = nudges.recv() => match nudge {
                None => break,
                Some(Nudge::Refresh) => {
                    // Nudges that queued meanwhile: one refresh serves them all.
                    while let Ok(n) = nudges.try_recv() {
                        if let Nudge::Step(step) = n {
                            let _ = link.progress.send(progress(step));
                        }
                    }
                    identity = renew(&shared, &gateway, &snapshot_tx, &reported, identity, &mut link, &start).await;
                }
                Some(Nudge::Step(step)) => {
                    let _ = link.progress.send(progress(step));
                }
            },
            Ok(()) = connected.changed() => {
                let linked = *connected.borrow_and_update();
                let entry = shared.entry(&gateway);
                if !entry.subsystem.is_empty() {
                    shared.orch.hold_for_above(&entry.subsystem, linked);
                }
                tracing::info!(linked, "link to the tier above");
            }
        }
    }
    let entry = shared.entry(&gateway);
    if !entry.subsystem.is_empty() {
        shared.orch.hold_for_above(&entry.subsystem, false);
    }
    link.stop.cancel();
    let _ = link.task.await;
}

/// Refreshes the report; when the real gateway said something new of
/// itself, registers again with it.
async fn renew(
    shared: &Shared,
    gateway: &str,
    snapshot: &watch::Sender<Snapshot>,
    reported: &Mutex<Reported>,
    identity: Identity,
    link: &mut Link,
    start: &impl Fn(&Identity) -> Link,
) -> Identity {
    let now = refresh(shared, gateway, snapshot, reported).await;
    if now == identity {
        return identity;
    }
    tracing::info!("the gateway registered here anew: registering again above");
    link.stop.cancel();
    let old = std::mem::replace(link, start(&now));
    let _ = old.task.await;
    now
}

/// Puts what runs here into the terms of the tier above; returns who the
/// real gateway said it is.
async fn refresh(
    shared: &Shared,
    gateway: &str,
    snapshot: &watch::Sender<Snapshot>,
    reported: &Mutex<Reported>,
) -> Identity {
    let entry = shared.entry(gateway);
    let views = match shared.orch.subsystems_of_gateway(gateway).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the subsystem to report above");
            return Identity::default();
        }
    };
    let view = views
        .iter()
        .find(|(name, _)| *name == entry.subsystem)
        .or(views.first());
    if let Some(g) = view.and_then(|(_, v)| v.gateway.as_ref()) {
        let mut r = reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        r.load = g.load;
        r.bridge = g.bridge;
    }
    let identity = view
        .and_then(|(_, v)| v.gateway.as_ref())
        .map(|g| Identity {
            version: g.version.clone(),
            location: if g.location.is_empty() {
                format!("via {}", shared.config.region)
            } else {
                format!("{} (via {})", g.location, shared.config.region)
            },
            capabilities: g.capabilities.clone().unwrap_or_default(),
        })
        .unwrap_or_else(|| Identity {
            version: env!("CARGO_PKG_VERSION").into(),
            location: format!("via {}", shared.config.region),
            capabilities: Capabilities::default(),
        });
    let local = match view {
        Some((_, v)) if diverged(&entry, v) => local_note(shared)
            .await
            .map(|note| (note, (*v.target_model).clone())),
        _ => None,
    };
    let next = translate(&entry, view, local);
    snapshot.send_if_modified(|s| {
        if *s == next {
            return false;
        }
        *s = next;
        true
    });
    identity
}

/// Whether a local apply changed the subsystem since the last target from above.
fn diverged(entry: &Entry, view: &SubsystemView) -> bool {
    entry.local() != 0 && view.target_generation != entry.local()
}

/// Who last applied here, and why (the head revision's say).
async fn local_note(shared: &Shared) -> Option<LocalNote> {
    let head = shared.orch.head_view().await.ok().flatten()?;
    Some(LocalNote {
        since_unix_ms: head.revision.created_unix_ms,
        author: head.revision.author,
        message: head.revision.message,
    })
}

/// The report above: generations here become generations above.
fn translate(
    entry: &Entry,
    view: Option<&(String, SubsystemView)>,
    local: Option<(LocalNote, DeploymentModel)>,
) -> Snapshot {
    let Some((name, v)) = view else {
        return Snapshot {
            accepted: entry.accepted(),
            subsystem: entry.subsystem.clone(),
            ..Snapshot::default()
        };
    };
    Snapshot {
        accepted: entry.accepted(),
        observed: entry.above(v.observed_generation),
        subsystem: name.clone(),
        current: v.current_model.as_deref().cloned(),
        statuses: v
            .statuses
            .iter()
            .map(|(id, s)| (id.clone(), status(entry, s)))
            .collect(),
        local,
    }
}

/// A step taken here, as the link passes it on.
fn progress(step: StepProgress) -> Progress {
    use continuum_proto::v1::StepState as Wire;
    let state = match Wire::try_from(step.state).unwrap_or(Wire::Unspecified) {
        Wire::Failed => StepState::Failed(step.reason),
        Wire::Succeeded => StepState::Succeeded,
        Wire::Started | Wire::Unspecified => StepState::Started,
    };
    Progress {
        step: step.step,
        component: (!step.component.is_empty()).then_some(step.component),
        state,
        done: step.done as usize,
        total: step.total as usize,
    }
}

fn status(entry: &Entry, s: &ComponentStatus) -> Status {
    let state = match ComponentState::try_from(s.state).unwrap_or(ComponentState::Unknown) {
        ComponentState::Pending => State::Pending,
        ComponentState::Deploying => State::Deploying,
        ComponentState::Running => State::Running,
        ComponentState::Failed => State::Failed,
        ComponentState::Unknown | ComponentState::Unspecified => State::Unknown,
    };
    Status {
        state,
        reason: s.reason.clone(),
        detail: s.detail.clone(),
        generation: entry.above(s.generation),
        rolled_back_to: if s.rolled_back_to == 0 {
            0
        } else {
            entry.above(s.rolled_back_to)
        },
    }
}

/// Applies a target from above here and answers it.
async fn accept(shared: &Arc<Shared>, gateway: &str, offer: Offer) {
    let result = match serde_json::from_slice::<DeploymentModel>(&offer.model) {
        Err(e) => Err(format!(
            "the target of {} does not read: {e}",
            offer.subsystem
        )),
        Ok(model) => apply(shared, gateway, &offer.subsystem, offer.generation, model).await,
    };
    match &result {
        Ok(here) => tracing::info!(here, "target from above applied here"),
        Err(why) => tracing::warn!(%why, "target from above refused"),
    }
    let _ = offer.reply.send(result.map(drop).map_err(Refusal::Invalid));
}

/// Makes generation `above` of `subsystem` a revision here; the generation
/// here it became, recorded before it is answered.
async fn apply(
    shared: &Arc<Shared>,
    gateway: &str,
    subsystem: &str,
    above: u64,
    mut model: DeploymentModel,
) -> Result<u64, String> {
    fetch_blobs(shared, &model).await?;
    model.id = Some(subsystem.to_owned());
    let mut attempt = 0;
    let response = loop {
        attempt += 1;
        let head = shared.orch.head_view().await.map_err(|e| e.to_string())?;
        let base = head.as_ref().map_or(0, |h| h.revision.number);
        let mut mm = head.map(|h| h.megamodel).unwrap_or_else(|| Megamodel {
            name: shared.config.region.clone(),
            ..Megamodel::default()
        });
        replace(&mut mm, subsystem, model.clone());
        let request = ApplyRequest {
            megamodel: Some(Document {
                name: format!("{subsystem}@{above} from the tier above"),
                json: serde_json::to_vec(&mm).map_err(|e| e.to_string())?,
            }),
            expected_base: Some(base),
            author: format!("tier above ({})", shared.config.above),
            message: format!("generation {above} of subsystem {subsystem} from the tier above"),
            ..ApplyRequest::default()
        };
        match shared.orch.apply_in_process(request).await {
            Ok(r) => break r,
            // A local apply moved the head meanwhile: on the new head.
            Err(s) if s.code() == tonic::Code::Aborted && attempt < APPLY_ATTEMPTS => continue,
            // The model's problems, not only how many (the tier above shows
            // the reason as the subsystem's refusal).
            Err(s) => {
                return Err(match continuum_proto::rejection::from_status(&s) {
                    Some(invalid) => format!("refused here: {invalid}"),
                    None => s.message().to_owned(),
                })
            }
        }
    };
    let here = match response.targets.iter().find(|t| t.subsystem == subsystem) {
        Some(t) => t.generation,
        // Unchanged here: the generation it already has.
        None => shared
            .orch
            .subsystems_of_gateway(gateway)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(name, _)| name == subsystem)
            .map_or(response.revision.map_or(0, |r| r.number), |(_, v)| {
                v.target_generation
            }),
    };
    let (writer, gw, sub) = (Arc::clone(shared), gateway.to_owned(), subsystem.to_owned());
    tokio::task::spawn_blocking(move || {
        writer
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(&gw, &sub, above, here)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot record the target: {e}"))?;
    Ok(here)
}

/// `mm` with subsystem `id` as `model` (gone when the model is empty: the
/// tier above removed it).
fn replace(mm: &mut Megamodel, id: &str, model: DeploymentModel) {
    mm.subsystems.retain(|s| s.id.as_deref() != Some(id));
    if !model.components.is_empty() {
        mm.subsystems.push(model);
    }
    mm.canonicalize();
}

/// Copies here every blob `model` is pinned to that this orchestrator lacks
/// (its gateways fetch them from here).
async fn fetch_blobs(shared: &Shared, model: &DeploymentModel) -> Result<(), String> {
    let digests: std::collections::BTreeSet<String> = model
        .components
        .iter()
        .flat_map(continuum_models::artefact::of_component)
        .filter_map(|r| r.digest)
        .collect();
    for digest in digests {
        let orch = shared.orch.clone();
        let d = digest.clone();
        if tokio::task::spawn_blocking(move || orch.has_blob(&d))
            .await
            .unwrap_or(false)
        {
            continue;
        }
        shared
            .blobs
            .fetch(&digest)
            .await
            .map_err(|e| format!("cannot fetch blob {digest} from the tier above: {e}"))?;
        let path = shared.blobs.file(&digest);
        let orch = shared.orch.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path)?;
            orch.put_blob(&bytes)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot keep blob {digest}: {e}"))?;
        if stored != digest {
            return Err(format!(
                "blob {digest} from the tier above hashes to {stored}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_models::{Component, ComponentSpec};

    fn view(target: u64, observed: u64) -> SubsystemView {
        SubsystemView {
            target_generation: target,
            removed: false,
            target_model: Arc::new(DeploymentModel::default()),
            observed_generation: observed,
            current_model: Some(Arc::new(DeploymentModel::default())),
            statuses: [(
                "svc".to_owned(),
                ComponentStatus {
                    component: "svc".into(),
                    state: ComponentState::Failed as i32,
                    reason: "boom".into(),
                    generation: observed,
                    ..ComponentStatus::default()
                },
            )]
            .into(),
            gateway: None,
        }
    }

    #[test]
    fn reports_above_are_in_generations_above() {
        let mut entry = Entry {
            subsystem: "a".into(),
            ..Entry::default()
        };
        entry.record(10, 3);
        entry.record(12, 5);
        let v = ("a".to_owned(), view(5, 3));
        let s = translate(&entry, Some(&v), None);
        assert_eq!(
            (s.accepted, s.observed, s.subsystem.as_str()),
            (12, 10, "a")
        );
        let svc = &s.statuses["svc"];
        assert_eq!((svc.state, svc.generation), (State::Failed, 10));
        assert!(!diverged(&entry, &v.1));
        // A local apply made it 6: diverged from what came from above.
        assert!(diverged(&entry, &view(6, 5)));
    }

    #[test]
    fn an_empty_target_removes_the_subsystem() {
        let sub = |id: &str| DeploymentModel {
            id: Some(id.into()),
            components: vec![Component::new(
                format!("gw-{id}"),
                ComponentSpec::Gateway(Default::default()),
            )],
            ..DeploymentModel::default()
        };
        let mut mm = Megamodel {
            subsystems: vec![sub("b"), sub("a")],
            ..Megamodel::default()
        };
        replace(&mut mm, "a", DeploymentModel::default());
        assert_eq!(mm.subsystems, vec![sub("b")]);
        replace(&mut mm, "c", sub("c"));
        assert_eq!(mm.subsystems, vec![sub("b"), sub("c")]);
    }
}
