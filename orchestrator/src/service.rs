//! `ModelService`: what users and the CLI call.

use std::pin::Pin;

use continuum_proto::v1::model_service_server::ModelService;
use continuum_proto::v1::{
    event, AgentOffer, ApplyRequest, ApplyResponse, ControlRolloutRequest, DiffRequest,
    DiffResponse, Event, ForgetGatewayRequest, ForgetGatewayResponse, GetRequest, GetResponse,
    GetRolloutRequest, HistoryRequest, HistoryResponse, ListGatewaysRequest, ListGatewaysResponse,
    RollbackRequest, Rollout, StatusRequest, StatusResponse, WatchRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::access::Role;
use crate::core::Prepared;
use crate::handle::Orchestrator;
use crate::metrics::Outcome;

/// Events read from the store per batch when a watcher catches up.
const WATCH_BATCH: usize = 256;

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

fn subsystem_of(e: &Event) -> Option<&str> {
    match e.kind.as_ref()? {
        event::Kind::Revision(_) => None,
        event::Kind::TargetSent(x) => Some(&x.subsystem),
        event::Kind::Acknowledged(x) => Some(&x.subsystem),
        event::Kind::Connected(x) => Some(&x.subsystem),
        event::Kind::Disconnected(x) => Some(&x.subsystem),
        event::Kind::Component(x) => Some(&x.subsystem),
        event::Kind::Step(x) => Some(&x.subsystem),
        event::Kind::Current(x) => Some(&x.subsystem),
        event::Kind::Diverged(x) => Some(&x.subsystem),
        event::Kind::Rollout(_) => None,
    }
}

fn outcome(r: &Result<ApplyResponse, Status>) -> Outcome {
    match r {
        Ok(r) if r.unchanged => Outcome::Unchanged,
        Ok(_) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

impl Orchestrator {
    /// The author a change is recorded under: the token's subject when the
    /// API takes tokens, else what the client says.
    fn author<T>(
        &self,
        request: &Request<T>,
        what: &str,
        claimed: String,
    ) -> Result<String, Status> {
        Ok(self
            .api
            .allow(request.metadata(), Role::Apply, what)?
            .map_or(claimed, |grant| grant.subject))
    }

    fn reader<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        self.api
            .allow(request.metadata(), Role::Read, what)
            .map(drop)
    }
}

impl Orchestrator {
    /// Applies a megamodel for an author already checked (the API's caller,
    /// or a tier above this orchestrator).
    /// `from_above`: the tier above sends it, so the subsystems it holds may change.
    pub(crate) async fn apply_request(
        &self,
        req: ApplyRequest,
        from_above: bool,
    ) -> Result<ApplyResponse, Status> {
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "apply",
            file = %req.megamodel.as_ref().map_or("", |d| d.name.as_str())
        );
        let response = async {
            // Reading and validating the model needs no lock: other requests
            // and gateway reports go on meanwhile. Only so many at once.
            let _preparing = self
                .preparing
                .acquire()
                .await
                .map_err(|_| Status::unavailable("the orchestrator is stopping"))?;
            let observed = self.read(|core, _| Ok(core.observed())).await?;
            let blobs = self.blobs.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                let prepared = Prepared::from_request(req, &observed)?;
                // Blocks: a blob only the shared store has is copied here.
                if let Some(blobs) = &blobs {
                    prepared.check_artefacts(|d| blobs.has(d))?;
                }
                Ok::<_, Status>(prepared)
            })
            .await
            .map_err(|e| Status::internal(format!("apply task failed: {e}")))??;
            prepared.check_policy(&self.policy)?;
            let held = self
                .held_above
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default();
            let prepared = if !from_above && !held.is_empty() {
                self.read(move |core, _| {
                    prepared.check_held(&held, core.head.as_ref().map(|h| &h.megamodel))?;
                    Ok(prepared)
                })
                .await?
            } else {
                prepared
            };
            Ok::<_, Status>(
                self.transact(move |core, _, now| core.apply(prepared, now))
                    .await?,
            )
        }
        .instrument(span)
        .await;
        self.metrics.applied(outcome(&response), started.elapsed());
        response
    }
}

#[tonic::async_trait]
impl ModelService for Orchestrator {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let claimed = request.get_ref().author.clone();
        let author = self.author(&request, "apply", claimed)?;
        let mut req = request.into_inner();
        req.author = author;
        Ok(Response::new(self.apply_request(req, false).await?))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.reader(&request, "get")?;
        let req = request.into_inner();
        Ok(Response::new(
            self.read(move |core, store| core.get(&req, store)).await?,
        ))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        self.reader(&request, "diff")?;
        let req = request.into_inner();
        Ok(Response::new(
            self.read(move |core, store| core.diff(&req, store)).await?,
        ))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.reader(&request, "watch")?;
        let req = request.into_inner();
        let store = self.store.clone();
        let first = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.first_seq())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| crate::error::Error::from(e).to_status())?
        };
        let newest = *self.events.borrow();
        if req.after > 0 && first > 0 && req.after + 1 < first {
            return Err(Status::out_of_range(format!(
                "events {}..{} are no longer kept (the orchestrator keeps the latest ones); watch from {} or from 0",
                req.after + 1,
                first - 1,
                first - 1
            )));
        }
        if req.after > newest {
            return Err(Status::out_of_range(format!(
                "event {} does not exist yet: the newest is {newest}",
                req.after
            )));
        }
        let (tx, rx) = mpsc::channel(WATCH_BATCH);
        let mut head = self.events.clone();
        let stopping = self.stopping.clone();
        let only = req.subsystem;
        let watching = self.metrics.watching();
        self.tasks.spawn(async move {
            let _watching = watching;
            let mut last = req.after;
            loop {
                head.borrow_and_update();
                let batch = {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.events_after(last, WATCH_BATCH)).await
                };
                let batch = match batch {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(crate::error::Error::from(e).to_status())).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                // A watcher slower than the log's retention: the events it
                // has not read yet are gone. It is told so, and where it can
                // resume, rather than shown a gap.
                if let Some(first) = batch.first().filter(|e| last > 0 && e.seq > last + 1) {
                    let _ = tx
                        .send(Err(Status::out_of_range(format!(
                            "this watch fell behind: events {}..{} are no longer kept; resume after {} (or watch from 0)",
                            last + 1,
                            first.seq - 1,
                            first.seq - 1
                        ))))
                        .await;
                    return;
                }
                if batch.is_empty() {
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        () = stopping.cancelled() => return,
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for e in batch {
                    last = e.seq;
                    if !only.is_empty() && subsystem_of(&e).is_some_and(|s| s != only) {
                        continue;
                    }
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let claimed = request.get_ref().author.clone();
        let author = self.author(&request, "rollback", claimed)?;
        let mut req = request.into_inner();
        req.author = author;
        let response = self
            .transact(move |core, store, now| core.rollback(req, store, now))
            .await
            .map_err(Status::from);
        self.metrics.rolled_back(outcome(&response));
        Ok(Response::new(response?))
    }

    async fn list_gateways(
        &self,
        request: Request<ListGatewaysRequest>,
    ) -> Result<Response<ListGatewaysResponse>, Status> {
        self.reader(&request, "listing gateways")?;
        let gateways = self.read(|core, _| Ok(core.gateways())).await?;
        Ok(Response::new(ListGatewaysResponse { gateways }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.reader(&request, "status")?;
        let brief = request.get_ref().brief;
        Ok(Response::new(
            self.read(move |core, _| Ok(core.status_of(brief))).await?,
        ))
    }

    async fn forget_gateway(
        &self,
        request: Request<ForgetGatewayRequest>,
    ) -> Result<Response<ForgetGatewayResponse>, Status> {
        let by = self
            .api
            .allow(request.metadata(), Role::Admin, "forgetting a gateway")?
            .map_or_else(|| "anyone".to_owned(), |g| g.subject);
        let id = request.into_inner().gateway_id;
        let gateway = id.clone();
        self.transact(move |core, _, now| core.forget_gateway(&gateway, now))
            .await?;
        tracing::info!(gateway = %id, %by, "gateway record forgotten");
        Ok(Response::new(ForgetGatewayResponse {}))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        self.reader(&request, "history")?;
        let limit = request.into_inner().limit as usize;
        let store = self.store.clone();
        let (revisions, divergences, mut rollouts) = tokio::task::spawn_blocking(move || {
            let revisions = store.history(limit)?;
            let numbers: Vec<u64> = revisions.iter().map(|r| r.number).collect();
            let rollouts = store.rollouts_of(&numbers)?;
            Ok::<_, crate::store::StoreError>((revisions, store.divergences()?, rollouts))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| crate::error::Error::from(e).to_status())?;
        // The running rollout as it stands now, not as last recorded.
        if let Some(now) = self.read(|core, _| Ok(core.rollout())).await? {
            for r in rollouts.iter_mut().filter(|r| r.revision == now.revision) {
                *r = now.clone();
            }
        }
        Ok(Response::new(HistoryResponse {
            revisions,
            divergences,
            rollouts,
        }))
    }

    async fn offer_agent(
        &self,
        request: Request<AgentOffer>,
    ) -> Result<Response<AgentOffer>, Status> {
        let by = self
            .api
            .allow(request.metadata(), Role::Admin, "offering an agent build")?
            .map_or_else(|| "anyone".to_owned(), |g| g.subject);
        let offer = request.into_inner();
        let blobs = self.blobs.clone();
        let offered = self
            .transact(move |core, _, now| {
                core.offer_agent(
                    offer,
                    &by,
                    |d| blobs.as_ref().is_some_and(|b| b.has(d)),
                    now,
                )
            })
            .await?;
        Ok(Response::new(offered))
    }

    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        self.reader(&request, "reading the rollout")?;
        let rollout = self
            .read(|core, _| {
                core.rollout().ok_or_else(|| {
                    crate::error::Error::NoRollout(
                        "no revision was ever rolled out in waves".into(),
                    )
                })
            })
            .await?;
        Ok(Response::new(rollout))
    }

    async fn control_rollout(
        &self,
        request: Request<ControlRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let claimed = request.get_ref().author.clone();
        let author = self.author(&request, "controlling a rollout", claimed)?;
        let author = if author.is_empty() {
            "anonymous".to_owned()
        } else {
            author
        };
        let req = request.into_inner();
        let rollout = self
            .transact(move |core, _, now| core.control_rollout(&req, &author, now))
            .await?;
        Ok(Response::new(rollout))
    }
}
