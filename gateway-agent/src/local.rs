//! The gateway's local API, for adapting a subsystem while the orchestrator is
//! cut off: the same `ModelService` the CLI speaks (`continuum apply --server`
//! pointed at the gateway), serving `Apply`, `Get` and `Status`. A model applied
//! here is enforced like any target; when the link comes back, the gateway
//! reports that it diverged and the orchestrator's target replaces it.

use std::pin::Pin;

use continuum_models::{DeploymentModel, Kind};
use continuum_proto::v1::model_service_server::ModelService;
use continuum_proto::v1::{
    ApplyRequest, ApplyResponse, ComponentState, ComponentStatus, DiffCounts, DiffRequest,
    DiffResponse, Document, Event, GetRequest, GetResponse, HistoryRequest, HistoryResponse,
    ListGatewaysRequest, ListGatewaysResponse, Revision, RollbackRequest, StatusRequest,
    StatusResponse, SubsystemPhase, SubsystemStatus, SubsystemTarget, View, WatchRequest,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::agent::{Offer, Snapshot};
use crate::store::LocalNote;

#[derive(Debug, Clone)]
pub struct LocalApi {
    pub gateway_id: String,
    pub offers: mpsc::Sender<Offer>,
    pub snapshot: watch::Receiver<Snapshot>,
    /// Whether the link to the orchestrator is up.
    pub connected: watch::Receiver<bool>,
}

fn elsewhere(what: &str) -> Status {
    Status::unimplemented(format!(
        "a gateway's local API serves apply, get and status; ask the orchestrator for {what}"
    ))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl LocalApi {
    /// This gateway's subsystem in a submitted megamodel.
    fn subsystem(&self, req: &ApplyRequest) -> Result<(String, DeploymentModel), Status> {
        use continuum_proto::apply::{prepare, ApplyInputError};
        let prepared = prepare(req).map_err(|e| match e {
            ApplyInputError::NoMegamodel => Status::invalid_argument(e.to_string()),
            ApplyInputError::Invalid(invalid) => continuum_proto::rejection::to_status(&invalid),
        })?;
        prepared
            .megamodel
            .subsystems
            .into_iter()
            .find(|s| {
                s.components
                    .iter()
                    .any(|c| c.kind() == Kind::Gateway && c.id == self.gateway_id)
            })
            .map(|s| (s.id.clone().unwrap_or_default(), s.canonical()))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "no subsystem of this model has `{}` (this gateway) as its gateway",
                    self.gateway_id
                ))
            })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl ModelService for LocalApi {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        if *self.connected.borrow() {
            return Err(Status::failed_precondition(
                "this gateway is connected to its orchestrator: apply there; the local API is for when it is cut off",
            ));
        }
        let req = request.into_inner();
        let (subsystem, model) = self.subsystem(&req)?;
        let base = self.snapshot.borrow().accepted;
        let (reply, answer) = oneshot::channel();
        let note = LocalNote {
            since_unix_ms: now_ms(),
            author: req.author.clone(),
            message: req.message.clone(),
        };
        self.offers
            .send(Offer {
                generation: base,
                subsystem: subsystem.clone(),
                model: serde_json::to_vec(&model).expect("models serialize"),
                local: Some(note),
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("the agent is stopping"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("the agent is stopping"))?
            .map_err(|r| Status::failed_precondition(r.to_string()))?;
        Ok(Response::new(ApplyResponse {
            revision: Some(Revision {
                number: 0,
                base,
                created_unix_ms: now_ms(),
                author: req.author,
                message: format!(
                    "applied locally on gateway `{}`; it replaces generation {base} until the orchestrator is back",
                    self.gateway_id
                ),
                ..Revision::default()
            }),
            unchanged: false,
            targets: vec![SubsystemTarget {
                subsystem,
                generation: base,
                gateway_id: self.gateway_id.clone(),
                pushed: true,
                removed: false,
                held: false,
            }],
            event_seq: 0,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        let snap = self.snapshot.borrow().clone();
        let model = match View::try_from(req.view).unwrap_or(View::Unspecified) {
            View::Current => snap.current.clone().unwrap_or_default(),
            _ => match &snap.local {
                Some((_, m)) => m.clone(),
                None => return Err(Status::not_found(
                    "this gateway keeps only what it runs: ask for --current, or ask the orchestrator for targets",
                )),
            },
        };
        Ok(Response::new(GetResponse {
            model: Some(Document {
                name: snap.subsystem.clone(),
                json: serde_json::to_vec(&model).expect("models serialize"),
            }),
            revision: 0,
            generation: snap.observed,
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let snap = self.snapshot.borrow().clone();
        let components: Vec<ComponentStatus> = snap
            .statuses
            .iter()
            .map(|(c, s)| crate::link::status(c, s))
            .collect();
        let converged = snap.observed == snap.accepted
            && components
                .iter()
                .all(|c| c.state == ComponentState::Running as i32);
        let phase = if components
            .iter()
            .any(|c| c.state == ComponentState::Failed as i32)
        {
            SubsystemPhase::Failed
        } else if converged {
            SubsystemPhase::Converged
        } else {
            SubsystemPhase::Deploying
        };
        Ok(Response::new(StatusResponse {
            head: 0,
            subsystems: vec![SubsystemStatus {
                subsystem: snap.subsystem.clone(),
                gateway_id: self.gateway_id.clone(),
                gateway: None,
                target_generation: snap.accepted,
                phase: phase as i32,
                converged,
                live: Some(DiffCounts::default()),
                components,
                ..SubsystemStatus::default()
            }],
            ..StatusResponse::default()
        }))
    }

    async fn diff(&self, _r: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(elsewhere("diffs"))
    }

    type WatchStream = EventStream;

    async fn watch(&self, _r: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        Err(elsewhere("events"))
    }

    async fn rollback(
        &self,
        _r: Request<RollbackRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        Err(elsewhere("rollbacks"))
    }

    async fn offer_agent(
        &self,
        _r: Request<continuum_proto::v1::AgentOffer>,
    ) -> Result<Response<continuum_proto::v1::AgentOffer>, Status> {
        Err(elsewhere("agent builds"))
    }

    async fn get_rollout(
        &self,
        _r: Request<continuum_proto::v1::GetRolloutRequest>,
    ) -> Result<Response<continuum_proto::v1::Rollout>, Status> {
        Err(elsewhere("rollouts"))
    }

    async fn control_rollout(
        &self,
        _r: Request<continuum_proto::v1::ControlRolloutRequest>,
    ) -> Result<Response<continuum_proto::v1::Rollout>, Status> {
        Err(elsewhere("rollouts"))
    }

    async fn list_gateways(
        &self,
        _r: Request<ListGatewaysRequest>,
    ) -> Result<Response<ListGatewaysResponse>, Status> {
        Err(elsewhere("the gateways"))
    }

    async fn forget_gateway(
        &self,
        _r: Request<continuum_proto::v1::ForgetGatewayRequest>,
    ) -> Result<Response<continuum_proto::v1::ForgetGatewayResponse>, Status> {
        Err(elsewhere("forgetting gateways"))
    }

    async fn history(
        &self,
        _r: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        Err(elsewhere("the history"))
    }
}
