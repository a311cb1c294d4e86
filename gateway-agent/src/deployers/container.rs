//! An agent as a container on the Docker engine of the machine its devices
//! are wired to. The image is FROM scratch: the gateway's own (static) agent
//! executable, imported into that engine, nothing pulled. The container
//! shares the machine's network (the agent dials the gateway's broker), keeps
//! its records in a named volume, and gets each serial port passed through:
//! a real device as a device, a pseudo-terminal (a simulated board) bound in
//! with the pty major allowed, since a pty cannot be re-created in the
//! container's own /dev.
//!
//! A container that runs the same build with the same ports is adopted as
//! it is (a restarted gateway does not restart its agents); any other is
//! replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;
use tokio_stream::StreamExt;

use super::launch::Launch;
use crate::runtime::docker::DockerRuntime;

/// The label naming the agent a container is.
pub const LABEL_AGENT: &str = "io.continuum.deploy-agent";
const LABEL_BUILD: &str = "io.continuum.deploy-agent.build";
const LABEL_PORTS: &str = "io.continuum.deploy-agent.ports";
/// Where the agent keeps its records in the container.
const STATE: &str = "/state";
/// The pseudo-terminal slaves' device major.
const PTY_MAJOR: u32 = 136;

/// A running agent container.
pub struct Container {
    docker: Docker,
    name: String,
}

/// The container's name for agent `id`.
pub fn name(id: &str) -> String {
    format!(
        "continuum-agent-{}",
        continuum_deploy_agent::state::key(id).replace('.', "-")
    )
}

/// Runs (or adopts) the agent's container on `endpoint`.
pub async fn start(launch: &Launch, endpoint: &str, build: &str) -> Result<Container, String> {
    let runtime = DockerRuntime::at(endpoint);
    let docker = runtime
        .client()
        .await
        .map_err(|e| format!("the Docker engine at {endpoint}: {e}"))?;
    let name = name(&launch.id);
    let ports = launch
        .ports
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(c) = docker.inspect_container(&name, None).await {
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        let running = c.state.and_then(|s| s.running).unwrap_or(false);
        if running
            && labels.get(LABEL_BUILD).map(String::as_str) == Some(build)
            && labels.get(LABEL_PORTS) == Some(&ports)
        {
            tracing::info!(container = %name, "adopted the running deploy agent container");
            return Ok(Container { docker, name });
        }
        remove(&docker, &name).await?;
    }
    let program = launch.program.clone();
    let (tag, rootfs) = tokio::task::spawn_blocking(move || image(&program))
        .await
        .map_err(|e| e.to_string())??;
    runtime
        .import(&tag, rootfs)
        .await
        .map_err(|e| format!("importing the deploy agent's image {tag}: {e}"))?;
    let mut binds = vec![format!("{name}:{STATE}")];
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for port in &launch.ports {
        match pty(port) {
            Some(real) => {
                binds.push(format!("{}:{}", real.display(), port.display()));
                let rule = format!("c {PTY_MAJOR}:* rwm");
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
            None => devices.push(DeviceMapping {
                path_on_host: Some(port.display().to_string()),
                path_in_container: Some(port.display().to_string()),
                cgroup_permissions: Some("rwm".into()),
            }),
        }
    }
    let mut cmd = vec!["/bin/continuum-agent".to_owned()];
    cmd.extend(launch.serve_args(STATE));
    let labels = HashMap::from([
        (LABEL_AGENT.to_owned(), launch.id.clone()),
        (LABEL_BUILD.to_owned(), build.to_owned()),
        (LABEL_PORTS.to_owned(), ports),
    ]);
    let body = ContainerCreateBody {
        image: Some(tag.clone()),
        cmd: Some(cmd),
        env: Some(vec![format!(
            "CONTINUUM_BROKER={}",
            launch.broker.to_string_with_credentials()
        )]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            binds: Some(binds),
            devices: Some(devices),
            device_cgroup_rules: (!rules.is_empty()).then_some(rules),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker
        .create_container(Some(options), body)
        .await
        .map_err(|e| format!("creating container {name}: {e}"))?;
    if let Err(e) = docker.start_container(&name, None).await {
        let _ = remove(&docker, &name).await;
        return Err(format!("starting container {name}: {e}"));
    }
    tracing::info!(container = %name, image = %tag, "deploy agent started as a container");
    Ok(Container { docker, name })
}

/// The image of the agent executable `program` (FROM scratch): its tag and
/// root filesystem.
pub fn image(program: &Path) -> Result<(String, Vec<u8>), String> {
    crate::function_image::static_image(program, "continuum-agent", "continuum/deploy-agent", None)
        .map_err(|e| match e {
            crate::function_image::FunctionImageError::Dynamic(p) => format!(
                "{} is linked dynamically and cannot run in a container FROM scratch: give --deploy-agent a static build (scripts/build-static.sh continuum-deploy-agent)",
                p.display()
            ),
            other => other.to_string(),
        })
}

/// The pseudo-terminal `port` leads to, if it is one (simulated boards are
/// links to one).
fn pty(port: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(port).ok()?;
    real.starts_with("/dev/pts").then_some(real)
}

async fn remove(docker: &Docker, name: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match docker.remove_container(name, Some(options)).await {
        Ok(())
        | Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(format!("removing container {name}: {e}")),
    }
}

impl Container {
    /// Returns when the container stopped.
    pub async fn exited(&mut self) {
        let mut wait = self.docker.wait_container(&self.name, None);
        let end = wait.next().await;
        tracing::warn!(container = %self.name, ?end, "the deploy agent container stopped");
    }

    /// Removes the container (its volume stays: what each device runs).
    pub async fn remove(self) {
        if let Err(e) = remove(&self.docker, &self.name).await {
            tracing::warn!(error = %e, "cannot remove the deploy agent container");
        }
    }
}
