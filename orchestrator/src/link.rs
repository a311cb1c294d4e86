//! `GatewayLink`: one bidirectional stream per gateway, opened by the gateway.
//! The gateway registers first; then the orchestrator pushes the newest target
//! down the stream and the gateway streams acknowledgements, reports and
//! heartbeats up. Three heartbeat intervals of silence end the link.

use std::pin::Pin;

use continuum_proto::v1::gateway_link_server::GatewayLink;
use continuum_proto::v1::{
    gateway_message, orchestrator_message, GatewayMessage, LinkError, OrchestratorMessage, Register,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::core::{Core, Transition};
use crate::error::Error;
use crate::handle::{Orchestrator, Session};

type OutStream = Pin<Box<dyn Stream<Item = Result<OrchestratorMessage, Status>> + Send>>;

/// A message on its way out. Boxed in the channels: a channel's memory is
/// blocks of 32 slots the size of its item, about 10 KiB per link unboxed
/// (an `OrchestratorMessage` beside a `Status`), twice per gateway.
type Out = Box<Result<OrchestratorMessage, Status>>;

fn out(kind: orchestrator_message::Kind) -> Out {
    Box::new(Ok(OrchestratorMessage { kind: Some(kind) }))
}

/// What one message of a registered gateway changes.
fn dispatch(
    core: &Core,
    gateway: &str,
    session: u64,
    message: GatewayMessage,
    now: i64,
) -> Result<Transition<()>, Error> {
    use gateway_message::Kind;
    match message.kind {
        None => Err(Error::BadRequest("an empty message".into())),
        Some(Kind::Register(_)) => Err(Error::BadRequest(
            "this link is already registered; open a new link to register again".into(),
        )),
        Some(Kind::Ack(a)) => core.ack(gateway, session, a, now),
        Some(Kind::Current(c)) => core.report_current(gateway, session, c, now),
        Some(Kind::Status(s)) => core.report_status(gateway, session, s, now),
        Some(Kind::Step(s)) => core.report_step(gateway, session, s, now),
        Some(Kind::Heartbeat(h)) => core.heartbeat(gateway, session, h, now),
    }
}

#[tonic::async_trait]
impl GatewayLink for Orchestrator {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let peer = request.remote_addr();
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let silence = self.heartbeat_interval * 3;
        let register: Register = match tokio::time::timeout(silence, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Register message within {silence:?}"
                )))
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::cancelled(
                    "the gateway closed the link before registering",
                ))
            }
            Ok(Ok(Some(GatewayMessage {
                kind: Some(gateway_message::Kind::Register(r)),
            }))) => r,
            Ok(Ok(Some(_))) => {
                return Err(Status::failed_precondition(
                    "the first message on the link must be Register",
                ))
            }
        };
        let gateway = register.gateway_id.clone();
        crate::core::check_gateway_id(&gateway)?;
        self.gatekeeper
            .check_certificate(certs.as_deref().map(Vec::as_slice), &gateway)?;
        self.until_named(&gateway, &mut inbound).await?;
        let session = self.register(register).await?;
        let (tx, rx) = mpsc::channel(16);
        let welcome = session.registered.welcome.clone();
        tx.send(out(orchestrator_message::Kind::Welcome(welcome)))
            .await
            .map_err(|_| Status::cancelled("the link closed"))?;
        let span = tracing::info_span!("gateway_link", gateway = %gateway, session = session.registered.session, ?peer);
        self.tasks
            .spawn(run_session(self.clone(), gateway, session, inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(|m: Out| *m),
        )))
    }
}

impl Orchestrator {
    /// Returns once a revision names `gateway` (at once when one does or the
    /// allow-list holds it); the link meanwhile holds no registration.
    async fn until_named(
        &self,
        gateway: &str,
        inbound: &mut Streaming<GatewayMessage>,
    ) -> Result<(), Status> {
        if self.gatekeeper.allowed(gateway) {
            return Ok(());
        }
        let mut head = self.head.clone();
        let named = |orch: Orchestrator| {
            let id = gateway.to_owned();
            async move {
                orch.read(move |core, _| Ok(core.subsystem_of(&id).is_some()))
                    .await
            }
        };
        if named(self.clone()).await? {
            return Ok(());
        }
        let _slot = self.gatekeeper.wait_slot(gateway)?;
        tracing::info!(
            gateway,
            "no model names this gateway: its link waits, unregistered, for a revision that does"
        );
        loop {
            tokio::select! {
                () = self.stopping.cancelled() => {
                    return Err(Status::unavailable("the orchestrator is stopping"))
                }
                changed = head.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("the orchestrator is stopping"));
                    }
                    if named(self.clone()).await? {
                        tracing::info!(gateway, "a revision names the waiting gateway");
                        return Ok(());
                    }
                }
                // Nothing may come before the Welcome: anything ends the wait.
                next = inbound.message() => {
                    return Err(match next {
                        Ok(None) => Status::cancelled("the gateway closed the link while it waited to be named"),
                        Ok(Some(_)) => Status::failed_precondition("no message may follow Register before the Welcome"),
                        Err(status) => status,
                    });
                }
            }
        }
    }
}

/// Runs one registered link until it ends, then records the disconnection.
async fn run_session(
    orch: Orchestrator,
    gateway: String,
    mut registered: Session,
    mut inbound: Streaming<GatewayMessage>,
    tx: mpsc::Sender<Out>,
) {
    let silence = orch.heartbeat_interval * 3;
    let session = registered.registered.session;
    // Reading the inbound stream in its own task keeps the select below
    // cancel-safe: a message is never half-read when a target goes out.
    let (in_tx, mut in_rx) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let next = inbound.message().await;
            let end = !matches!(next, Ok(Some(_)));
            if in_tx.send(Box::new(next)).await.is_err() || end {
                return;
            }
        }
    });
    let stopping = orch.stopping.clone();
    let mut deadline = Instant::now() + silence;
    // The agent build on offer: now, and whenever another is offered.
    let mut offers = orch.agent_offer.clone();
    offers.mark_changed();
    let reason: String = loop {
        tokio::select! {
            () = stopping.cancelled() => break "the orchestrator is stopping".into(),
            () = tokio::time::sleep_until(deadline) => {
                break format!("no message for {silence:?} (three heartbeat intervals)")
            }
            changed = registered.targets.changed() => {
                if changed.is_err() {
                    break "the session was replaced".into();
                }
                let target = registered.targets.borrow_and_update().clone();
                if let Some(t) = target {
                    tracing::debug!(generation = t.generation, "sending target");
                    if tx.send(out(orchestrator_message::Kind::Target(t))).await.is_err() {
                        break "the link closed".into();
                    }
                }
            }
            changed = offers.changed() => {
                if changed.is_err() {
                    break "the orchestrator is stopping".into();
                }
                let offer = offers.borrow_and_update().clone();
                if let Some(o) = offer {
                    if tx.send(out(orchestrator_message::Kind::Agent(o))).await.is_err() {
                        break "the link closed".into();
                    }
                }
            }
            next = in_rx.recv() => match next.map(|b| *b) {
                None | Some(Ok(None)) => break "the gateway closed the link".into(),
                Some(Err(status)) => break format!("link error: {}", status.message()),
                Some(Ok(Some(message))) => {
                    deadline = Instant::now() + silence;
                    let g = gateway.clone();
                    match orch.transact(move |core, _, now| dispatch(core, &g, session, message, now)).await {
                        Ok(()) => {}
                        Err(e @ Error::Broken(_)) => break format!("orchestrator failure: {e}"),
                        Err(e) => {
                            tracing::warn!(error = %e, "message from the gateway refused");
                            let error = LinkError { message: e.to_string() };
                            if tx.send(out(orchestrator_message::Kind::Error(error))).await.is_err() {
                                break "the link closed".into();
                            }
                        }
                    }
                }
            },
        }
    };
    reader.abort();
    drop(tx);
    orch.disconnect(gateway, session, reason).await;
}
