//! A simulated gateway: a `GatewayLink` client that registers, and can accept
//! each target and report it as running, as a real gateway agent would once it
//! converged. Tests and the fan-out benchmark use it to drive the orchestrator
//! over real gRPC without Docker.

use std::time::Duration;

use continuum_models::DeploymentModel;
use continuum_proto::v1::gateway_link_client::GatewayLinkClient;
use continuum_proto::v1::{
    gateway_message, orchestrator_message, Ack, Capabilities, ComponentState, ComponentStatus,
    CurrentReport, Document, GatewayMessage, Heartbeat, OrchestratorMessage, Register,
    StatusReport, Target, Welcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// A gateway on the link.
#[derive(Debug)]
pub struct SimGateway {
    /// Its id.
    pub id: String,
    /// What the orchestrator welcomed it with.
    pub welcome: Welcome,
    tx: mpsc::Sender<GatewayMessage>,
    inbound: Streaming<OrchestratorMessage>,
}

/// A registration with plausible capabilities.
pub fn register(id: &str) -> Register {
    Register {
        gateway_id: id.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        location: "simulated".to_owned(),
        capabilities: Some(Capabilities {
            arch: std::env::consts::ARCH.to_owned(),
            cpus: 1,
            memory_bytes: 1 << 30,
            docker: false,
            labels: Default::default(),
        }),
        accepted_generation: 0,
        observed_generation: 0,
        divergence: None,
        agent_upgrade: String::new(),
    }
}

impl SimGateway {
    /// [`SimGateway::connect`] with an endpoint of its own (to spawn).
    pub async fn connect_owned(endpoint: String, register: Register) -> Result<SimGateway, Status> {
        SimGateway::connect(&endpoint, register).await
    }

    /// Opens the link and registers; fails with the orchestrator's status.
    pub async fn connect(endpoint: &str, register: Register) -> Result<SimGateway, Status> {
        SimGateway::connect_with(endpoint, None, register).await
    }

    /// Opens the link over TLS as `tls` says (an `https://` endpoint).
    pub async fn connect_with(
        endpoint: &str,
        tls: Option<&continuum_proto::tls::ClientTls>,
        register: Register,
    ) -> Result<SimGateway, Status> {
        let channel = continuum_proto::tls::endpoint(endpoint, tls)
            .map_err(Status::invalid_argument)?
            .connect()
            .await
            .map_err(|e| {
                let cause = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string);
                Status::unavailable(format!("cannot reach {endpoint}: {cause}"))
            })?;
        let mut client = GatewayLinkClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let id = register.gateway_id.clone();
        tx.send(GatewayMessage {
            kind: Some(gateway_message::Kind::Register(register)),
        })
        .await
        .map_err(|_| Status::internal("cannot queue Register"))?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(OrchestratorMessage {
                kind: Some(orchestrator_message::Kind::Welcome(w)),
            }) => w,
            other => return Err(Status::internal(format!("expected Welcome, got {other:?}"))),
        };
        Ok(SimGateway {
            id,
            welcome,
            tx,
            inbound,
        })
    }

    /// Sends one message on the link.
    pub async fn send(&self, kind: gateway_message::Kind) -> Result<(), Status> {
        self.tx
            .send(GatewayMessage { kind: Some(kind) })
            .await
            .map_err(|_| Status::unavailable("the link is closed"))
    }

    /// The next message from the orchestrator (`None`: the link ended).
    pub async fn next(&mut self) -> Result<Option<orchestrator_message::Kind>, Status> {
        Ok(self.inbound.message().await?.and_then(|m| m.kind))
    }

    /// The next message, or an error after `within`.
    pub async fn next_within(
        &mut self,
        within: Duration,
    ) -> Result<Option<orchestrator_message::Kind>, Status> {
        tokio::time::timeout(within, self.next())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("nothing from the orchestrator in {within:?}"))
            })?
    }

    /// Waits for the next target (link errors in between are returned as errors).
    pub async fn target(&mut self, within: Duration) -> Result<Target, Status> {
        match self.next_within(within).await? {
            Some(orchestrator_message::Kind::Target(t)) => Ok(t),
            other => Err(Status::internal(format!(
                "expected a target, got {other:?}"
            ))),
        }
    }

    /// Acknowledges (accepts) a generation.
    pub async fn ack(&self, generation: u64) -> Result<(), Status> {
        self.send(gateway_message::Kind::Ack(Ack {
            generation,
            accepted: true,
            reason: String::new(),
        }))
        .await
    }

    /// Says it is alive.
    pub async fn heartbeat(&self) -> Result<(), Status> {
        self.send(gateway_message::Kind::Heartbeat(Heartbeat {
            unix_ms: 0,
            load: None,
            bridge: None,
            agent_upgrade: String::new(),
        }))
        .await
    }

    /// Reports a current model at a generation.
    pub async fn report_current(
        &self,
        generation: u64,
        model: &DeploymentModel,
    ) -> Result<(), Status> {
        self.send(gateway_message::Kind::Current(CurrentReport {
            observed_generation: generation,
            model: Some(Document {
                name: format!("{} current", self.id),
                json: serde_json::to_vec(model).map_err(|e| Status::internal(e.to_string()))?,
            }),
        }))
        .await
    }

    /// Reports component states at a generation.
    pub async fn report_states(
        &self,
        generation: u64,
        states: &[(&str, ComponentState, &str)],
    ) -> Result<(), Status> {
        self.send(gateway_message::Kind::Status(StatusReport {
            generation,
            components: states
                .iter()
                .map(|(c, s, r)| ComponentStatus {
                    component: (*c).to_owned(),
                    state: *s as i32,
                    reason: (*r).to_owned(),
                    since_unix_ms: 0,
                    generation: 0,
                    detail: String::new(),
                    rolled_back_to: 0,
                })
                .collect(),
        }))
        .await
    }

    /// Does what a converged gateway does with a target: acknowledges it,
    /// reports every component running and the target as its current model.
    pub async fn converge(&self, target: &Target) -> Result<DeploymentModel, Status> {
        let model: DeploymentModel = serde_json::from_slice(
            &target
                .model
                .as_ref()
                .map(|d| d.json.clone())
                .unwrap_or_default(),
        )
        .map_err(|e| Status::internal(format!("target model: {e}")))?;
        self.ack(target.generation).await?;
        let states: Vec<(&str, ComponentState, &str)> = model
            .components
            .iter()
            .map(|c| (c.id.as_str(), ComponentState::Running, ""))
            .collect();
        self.report_states(target.generation, &states).await?;
        self.report_current(target.generation, &model).await?;
        Ok(model)
    }
}
