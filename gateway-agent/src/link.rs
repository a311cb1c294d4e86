//! The link to the orchestrator: dialled out by the gateway, re-dialled with
//! exponential backoff and jitter whenever it drops. Targets that arrive are
//! handed to the agent, which persists them before they are acknowledged; what
//! the agent observes is reported up as it changes (in full after each
//! reconnection), with heartbeats in between.

use crate::backoff::Backoff;
use std::collections::BTreeMap;
use std::time::Duration;

use continuum_proto::v1::gateway_link_client::GatewayLinkClient;
use continuum_proto::v1::{
    gateway_message, orchestrator_message, Ack, AgentOffer, BridgeReport, Capabilities,
    ComponentState, ComponentStatus, CurrentReport, Document, GatewayMessage, Heartbeat, HostLoad,
    LocalDivergence, Register, StatusReport, StepProgress, StepState,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::agent::{Offer, Snapshot};
use crate::engine::{State, Status};
use crate::exec::{self, Progress};

/// How the link dials, and who the gateway says it is.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The orchestrators to dial, in turn until one answers.
    pub orchestrators: crate::orchestrators::Orchestrators,
    /// Whom the orchestrator must be, and who this gateway is (`https://`).
    pub tls: Option<continuum_proto::tls::ClientTls>,
    /// The id it registers under.
    pub gateway_id: String,
    /// Its agent's version.
    pub version: String,
    /// Where it is, for people.
    pub location: String,
    /// What it offers (labels pick rollout canaries).
    pub capabilities: Capabilities,
    /// The longest wait between two dials.
    pub max_backoff: Duration,
    /// Told the global bus the orchestrator names in its welcome (URL, or
    /// the port of its embedded bus on the dialled host), and that host.
    pub bus: Option<mpsc::UnboundedSender<NamedBus>>,
    /// Told whether the orchestrator admits this agent (see [`crate::fence`]).
    pub fencing: Option<std::sync::Arc<crate::fence::Fencing>>,
    /// The bridge's counters, sent with every heartbeat (none: no bridge).
    pub bridge: Option<BridgeCounters>,
    /// How the agent's last self-upgrade went, told at registration and with
    /// every heartbeat.
    pub agent_upgrade: Option<watch::Receiver<String>>,
    /// Told the agent build the orchestrator offers.
    pub agent_offers: Option<watch::Sender<Option<AgentOffer>>>,
    /// Set when this link stands in for a gateway elsewhere (a tier): the
    /// load and bridge counters that gateway last reported, sent instead of
    /// this machine's.
    pub relayed: Option<Relayed>,
}

/// The host load and bridge counters of a gateway a tier stands in for.
#[derive(Clone)]
pub struct Relayed(
    pub std::sync::Arc<dyn Fn() -> (Option<HostLoad>, Option<BridgeReport>) + Send + Sync>,
);

impl std::fmt::Debug for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relayed")
    }
}

/// The global bus a welcome names: a URL, or the port of the orchestrator's
/// embedded bus (with TLS or not) on the orchestrator dialled.
#[derive(Debug, Clone)]
pub struct NamedBus {
    /// The bus's URL (empty: the embedded bus at `port`).
    pub url: String,
    /// The embedded bus's port on the orchestrator dialled.
    pub port: u32,
    /// Whether that port speaks TLS.
    pub tls: bool,
    /// The orchestrator dialled.
    pub dialled: String,
}

/// Reads a bridge's counters.
#[derive(Clone)]
pub struct BridgeCounters(pub std::sync::Arc<dyn Fn() -> BridgeReport + Send + Sync>);

impl std::fmt::Debug for BridgeCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeCounters")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn state(s: State) -> ComponentState {
    match s {
        State::Pending => ComponentState::Pending,
        State::Deploying => ComponentState::Deploying,
        State::Running => ComponentState::Running,
        State::Failed => ComponentState::Failed,
        State::Unknown => ComponentState::Unknown,
    }
}

/// A component's status as last observed.
pub(crate) fn status(component: &str, s: &Status) -> ComponentStatus {
    ComponentStatus {
        component: component.to_owned(),
        state: state(s.state) as i32,
        reason: s.reason.clone(),
        since_unix_ms: now_ms(),
        generation: s.generation,
        detail: s.detail.clone(),
        rolled_back_to: s.rolled_back_to,
    }
}

fn upgrade_note(config: &LinkConfig) -> String {
    config
        .agent_upgrade
        .as_ref()
        .map(|n| n.borrow().clone())
        .unwrap_or_default()
}

fn message(kind: gateway_message::Kind) -> GatewayMessage {
    GatewayMessage { kind: Some(kind) }
}

/// Runs the link until `shutdown`.
pub async fn run(
    config: LinkConfig,
    offers: mpsc::Sender<Offer>,
    snapshot: watch::Receiver<Snapshot>,
    mut progress: mpsc::UnboundedReceiver<Progress>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    // Orchestrators dialled without an answer since the last link.
    let mut unanswered = 0;
    loop {
        // The session answers shutdown itself once established; before that
        // (dialling, or held by an orchestrator that does not know this id
        // yet) nothing inside it is listening.
        let result = tokio::select! {
            biased;
            r = session(
                &config,
                &offers,
                snapshot.clone(),
                &mut progress,
                &connected,
                &shutdown,
            ) => r,
            () = shutdown.cancelled() => return,
        };
        connected.send_replace(false);
        let dialled = config.orchestrators.current().to_owned();
        match result {
            Ok(()) => return,
            Err(Ended { connected, why }) => {
                if connected {
                    backoff.reset();
                    unanswered = 0;
                } else if config.orchestrators.len() > 1 {
                    // A standby does not listen: the leader is another.
                    config.orchestrators.failed(&dialled);
                    unanswered += 1;
                    if unanswered < config.orchestrators.len() {
                        tracing::info!(endpoint = %dialled, reason = %why, next = %config.orchestrators.current(), "orchestrator did not answer; dialling the next");
                        continue;
                    }
                    unanswered = 0;
                }
                tracing::warn!(endpoint = %dialled, reason = %why, "orchestrator link down");
            }
        }
        let sleep = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut sleep => break,
                // Progress of a rollout is only worth sending live.
                p = progress.recv() => if p.is_none() { return },
            }
        }
    }
}

/// Why a session ended, and whether it had been established.
struct Ended {
    connected: bool,
    why: String,
}

fn ended(connected: bool, why: impl Into<String>) -> Ended {
    Ended {
        connected,
        why: why.into(),
    }
}

async fn session(
    config: &LinkConfig,
    offers: &mpsc::Sender<Offer>,
    mut snapshot: watch::Receiver<Snapshot>,
    progress: &mut mpsc::UnboundedReceiver<Progress>,
    connected: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), Ended> {
    let dialled = config.orchestrators.current().to_owned();
    let channel = continuum_proto::tls::endpoint(&dialled, config.tls.as_ref())
        .map_err(|e| ended(false, format!("bad endpoint: {e}")))?
        .connect()
        .await
        .map_err(|e| {
            if let Some(f) = &config.fencing {
                f.unreachable();
            }
            ended(false, format!("cannot connect: {e}"))
        })?;
    let mut client = GatewayLinkClient::new(channel);
    let (tx, rx) = mpsc::channel::<GatewayMessage>(64);
    let snap = snapshot.borrow_and_update().clone();
    let register = Register {
        gateway_id: config.gateway_id.clone(),
        version: config.version.clone(),
        location: config.location.clone(),
        capabilities: Some(config.capabilities.clone()),
        accepted_generation: snap.accepted,
        observed_generation: snap.observed,
        agent_upgrade: upgrade_note(config),
        divergence: snap.local.as_ref().map(|(note, model)| LocalDivergence {
            base_generation: snap.accepted,
            since_unix_ms: note.since_unix_ms,
            author: note.author.clone(),
            message: note.message.clone(),
            model: Some(Document {
                name: format!("{} (local)", snap.subsystem),
                json: serde_json::to_vec(model).expect("models serialize"),
            }),
        }),
    };
    tx.send(message(gateway_message::Kind::Register(register)))
        .await
        .map_err(|_| ended(false, "cannot queue Register"))?;
    // Another agent holding this id: this one must not act.
    let refused = |s: tonic::Status| {
        if let Some(f) = &config.fencing {
            match s.code() {
                tonic::Code::AlreadyExists => f.superseded(s.message().to_owned()),
                // Not an answer about the id: as good as unreachable.
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => f.unreachable(),
                _ => {}
            }
        }
        ended(false, format!("refused: {}", s.message()))
    };
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .map_err(refused)?
        .into_inner();
    let welcome = match inbound.message().await {
        Ok(Some(m)) => match m.kind {
            Some(orchestrator_message::Kind::Welcome(w)) => w,
            other => return Err(ended(false, format!("expected Welcome, got {other:?}"))),
        },
        Ok(None) => return Err(ended(false, "closed before Welcome")),
        Err(s) => return Err(refused(s)),
    };
    tracing::info!(subsystem = %welcome.subsystem, "registered with the orchestrator");
    if let Some(f) = &config.fencing {
        f.admitted();
    }
    let mut fence = config.fencing.as_ref().map(|f| f.subscribe());
    if let Some(bus) = &config.bus {
        if !welcome.bus_url.is_empty() || welcome.bus_port > 0 {
            let _ = bus.send(NamedBus {
                url: welcome.bus_url.clone(),
                port: welcome.bus_port,
                tls: welcome.bus_tls,
                dialled: dialled.clone(),
            });
        }
    }
    connected.send_replace(true);
    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
    let mut heartbeat = tokio::time::interval(interval);
    let send = |kind: gateway_message::Kind| {
        let tx = tx.clone();
        async move {
            tx.send(message(kind))
                .await
                .map_err(|_| ended(true, "link closed"))
        }
    };
    // Everything is re-sent on a new link: the orchestrator may have missed it.
    let mut sent_current: Option<(u64, continuum_models::DeploymentModel)> = None;
    let mut sent_statuses: BTreeMap<String, Status> = BTreeMap::new();
    report(&snap, &mut sent_current, &mut sent_statuses, &send).await?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            // Paused for a while: the orchestrator has most likely ended this
            // link and may have admitted another agent; ask it again.
            Ok(()) = async { fence.as_mut().expect("guarded").changed().await }, if fence.is_some() => {
                let resumed = fence
                    .as_mut()
                    .is_some_and(|f| matches!(*f.borrow_and_update(), crate::fence::Fence::Resumed(_)));
                if resumed {
                    return Err(ended(true, "the agent was paused; registering again"));
                }
            }
            _ = heartbeat.tick() => {
                let (load, bridge) = match &config.relayed {
                    Some(r) => (r.0)(),
                    None => (
                        crate::host_load::measure(),
                        config.bridge.as_ref().map(|b| (b.0)()),
                    ),
                };
                send(gateway_message::Kind::Heartbeat(Heartbeat {
                    unix_ms: now_ms(),
                    load,
                    bridge,
                    agent_upgrade: upgrade_note(config),
                }))
                .await?;
            }
            changed = snapshot.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let snap = snapshot.borrow_and_update().clone();
                report(&snap, &mut sent_current, &mut sent_statuses, &send).await?;
            }
            p = progress.recv() => {
                let Some(p) = p else { return Ok(()) };
                let generation = snapshot.borrow().accepted;
                let (state, reason) = match p.state {
                    exec::StepState::Started => (StepState::Started, String::new()),
                    exec::StepState::Succeeded => (StepState::Succeeded, String::new()),
                    exec::StepState::Failed(r) => (StepState::Failed, r),
                };
                send(gateway_message::Kind::Step(StepProgress {
                    subsystem: String::new(),
                    generation,
                    step: p.step,
                    component: p.component.unwrap_or_default(),
                    state: state as i32,
                    reason,
                    done: u32::try_from(p.done).unwrap_or(u32::MAX),
                    total: u32::try_from(p.total).unwrap_or(u32::MAX),
                }))
                .await?;
            }
            m = inbound.message() => match m {
                Ok(Some(m)) => match m.kind {
                    Some(orchestrator_message::Kind::Target(t)) => {
                        // The agent may be in the middle of a long pass: the
                        // acknowledgement follows when it has persisted the target,
                        // without holding up heartbeats.
                        let (reply, answer) = oneshot::channel();
                        let offer = Offer {
                            generation: t.generation,
                            subsystem: t.subsystem,
                            model: t.model.map(|d| d.json).unwrap_or_default(),
                            local: None,
                            reply,
                        };
                        let generation = offer.generation;
                        offers.send(offer).await.map_err(|_| ended(true, "the agent stopped"))?;
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let (accepted, reason) = match answer.await {
                                Ok(Ok(())) => (true, String::new()),
                                Ok(Err(r)) => (false, r.to_string()),
                                Err(_) => return,
                            };
                            let ack = Ack { generation, accepted, reason };
                            let _ = tx.send(message(gateway_message::Kind::Ack(ack))).await;
                        });
                    }
                    Some(orchestrator_message::Kind::Agent(offer)) => {
                        if let Some(o) = &config.agent_offers {
                            o.send_replace(Some(offer));
                        }
                    }
                    Some(orchestrator_message::Kind::Error(e)) => {
                        tracing::warn!(error = %e.message, "the orchestrator refused a message");
                    }
                    Some(orchestrator_message::Kind::Welcome(_)) | None => {}
                },
                Ok(None) => return Err(ended(true, "the orchestrator closed the link")),
                Err(s) => return Err(ended(true, s.message().to_owned())),
            },
        }
    }
}

/// Sends what changed since the last report on this link.
async fn report<F, Fut>(
    snap: &Snapshot,
    sent_current: &mut Option<(u64, continuum_models::DeploymentModel)>,
    sent_statuses: &mut BTreeMap<String, Status>,
    send: &F,
) -> Result<(), Ended>
where
    F: Fn(gateway_message::Kind) -> Fut,
    Fut: std::future::Future<Output = Result<(), Ended>>,
{
    // A status carries its generation, so one seen again under a newer
    // generation is sent again: the orchestrator tells old failures from new
    // ones by generation.
    let changed: Vec<ComponentStatus> = snap
        .statuses
        .iter()
        .filter(|(c, s)| sent_statuses.get(*c) != Some(s))
        .map(|(c, s)| status(c, s))
        .collect();
    if !changed.is_empty() {
        send(gateway_message::Kind::Status(StatusReport {
            generation: snap.accepted,
            components: changed,
        }))
        .await?;
        *sent_statuses = snap.statuses.clone();
    }
    if let Some(current) = &snap.current {
        let fresh = sent_current
            .as_ref()
            .is_none_or(|(g, m)| *g != snap.observed || m != current);
        if fresh {
            send(gateway_message::Kind::Current(CurrentReport {
                observed_generation: snap.observed,
                model: Some(Document {
                    name: format!("{} current", snap.subsystem),
                    json: serde_json::to_vec(current).expect("models serialize"),
                }),
            }))
            .await?;
            *sent_current = Some((snap.observed, current.clone()));
        }
    }
    Ok(())
}
