//! A real orchestrator on 127.0.0.1 (ephemeral port, temporary data directory)
//! and helpers to talk to it.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use continuum_orchestrator::{start, Config, Running};
use continuum_proto::v1::model_service_client::ModelServiceClient;
use continuum_proto::v1::{ApplyRequest, Document};
use tonic::transport::Channel;

pub const WITHIN: Duration = Duration::from_secs(10);

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub config: Config,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.heartbeat_interval = Duration::from_secs(2);
        // The examples run functions on the host's network and map a serial port.
        config.policy = continuum_models::policy::Policy::load(
            &examples().join("policies/single-machine.json"),
        )
        .expect("the single-machine policy");
        adjust(&mut config);
        let running = start(config.clone()).await.expect("orchestrator starts");
        let addr = running.local_addr();
        Harness {
            dir,
            running: Some(running),
            addr,
            config,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> ModelServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect to the orchestrator");
        ModelServiceClient::new(channel)
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("orchestrator stops cleanly");
        }
    }

    /// Stops and starts again on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let running = start(self.config.clone())
            .await
            .expect("orchestrator restarts");
        self.addr = running.local_addr();
        self.running = Some(running);
    }
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// An Apply request for a model file, with the templates its functions name.
pub fn apply_file(path: &Path) -> ApplyRequest {
    let text = std::fs::read_to_string(path).expect("model file");
    let base = path.parent().unwrap();
    let templates = continuum_models::load::template_runtimes(&text)
        .into_iter()
        .map(|r| {
            let tpath = base.join(&r);
            let json = std::fs::read(&tpath).expect("template file");
            (
                r,
                Document {
                    name: tpath.display().to_string(),
                    json,
                },
            )
        })
        .collect();
    ApplyRequest {
        megamodel: Some(Document {
            name: path.display().to_string(),
            json: text.into_bytes(),
        }),
        templates,
        ..ApplyRequest::default()
    }
}

pub fn v1() -> ApplyRequest {
    apply_file(&examples().join("smart-building/v1.json"))
}

pub fn v2() -> ApplyRequest {
    apply_file(&examples().join("smart-building/v2.json"))
}

/// An Apply request for inline JSON.
pub fn apply_json(json: &str) -> ApplyRequest {
    ApplyRequest {
        megamodel: Some(Document {
            name: "inline.json".into(),
            json: json.as_bytes().to_vec(),
        }),
        ..ApplyRequest::default()
    }
}

/// Polls `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    continuum_bus::testing::eventually_async(what, within, check).await
}
