//! The Docker driver, through the engine's API (bollard). Images come from the
//! engine or are built from a context this driver sends as a tar archive: no
//! registry is assumed reachable.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
    MountType, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use tokio_stream::StreamExt;

use super::{
    ContainerRuntime, ImageSource, RestartPolicy, RunState, RuntimeError, Workload, WorkloadSpec,
};

/// Seconds a container gets to stop before it is killed.
const STOP_GRACE_SECONDS: i32 = 5;

/// The driver. The engine may be down when the agent starts or go away later:
/// the client is (re)negotiated on first use, and every call reports an
/// unreachable engine as such.
#[derive(Debug, Default)]
pub struct DockerRuntime {
    /// The engine's endpoint (`unix://…`, `tcp://…`); the local defaults
    /// (`DOCKER_HOST` or the default socket) when none.
    endpoint: Option<String>,
    docker: tokio::sync::Mutex<Option<Docker>>,
    /// Network creation is check-then-create, and engines accept two networks
    /// of one name: concurrent steps take turns.
    networks: tokio::sync::Mutex<()>,
}

fn error(e: DockerError) -> RuntimeError {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        DockerError::DockerResponseServerError { message, .. } => RuntimeError::Failed(message),
        DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::RequestTimeoutError => RuntimeError::Unreachable(e.to_string()),
        other => RuntimeError::Failed(other.to_string()),
    }
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) now,
    /// failing if it cannot be reached.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let rt = DockerRuntime::default();
        rt.client().await?.ping().await.map_err(error)?;
        Ok(rt)
    }

    /// A driver that connects when first used (the engine may not be up yet).
    pub fn lazy() -> DockerRuntime {
        DockerRuntime::default()
    }

    /// A driver for the engine at `endpoint`, connecting when first used.
    pub fn at(endpoint: &str) -> DockerRuntime {
        DockerRuntime {
            endpoint: Some(endpoint.to_owned()),
            ..DockerRuntime::default()
        }
    }

    /// Makes `tag` an image of the root filesystem `rootfs` (a tar archive),
    /// as `docker import` does, unless the engine has it already.
    pub async fn import(&self, tag: &str, rootfs: Vec<u8>) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        if docker.inspect_image(tag).await.is_ok() {
            return Ok(());
        }
        let (repo, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        // Imported under a tag of this import's own, then given the real tag
        // unless another agent on this engine gave it first; the own tag is
        // removed either way, which deletes the image that lost. Imported
        // straight under the real tag, two agents importing at once would
        // leave one image untagged for good.
        let own = format!(
            "{version}-import-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(&own)
            .build();
        let mut stream =
            docker.create_image(Some(options), Some(bollard::body_full(rootfs.into())), None);
        let mut failed = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                failed = Some(RuntimeError::Build {
                    image: tag.to_owned(),
                    reason: error(e).to_string(),
                });
                break;
            }
        }
        let imported = format!("{repo}:{own}");
        if failed.is_none() && docker.inspect_image(tag).await.is_err() {
            let options = bollard::query_parameters::TagImageOptionsBuilder::default()
                .repo(repo)
                .tag(version)
                .build();
            if let Err(e) = docker.tag_image(&imported, Some(options)).await {
                failed = Some(RuntimeError::Build {
                    image: tag.to_owned(),
                    reason: error(e).to_string(),
                });
            }
        }
        let _ = docker
            .remove_image(
                &imported,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(())
    }

    /// A client speaking an API version the engine accepts.
    pub async fn client(&self) -> Result<Docker, RuntimeError> {
        let mut slot = self.docker.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        const TIMEOUT_SECONDS: u64 = 120;
        let connected = match self.endpoint.as_deref() {
            None => Docker::connect_with_local_defaults(),
            Some(e) if e.starts_with("unix://") => {
                Docker::connect_with_unix(e, TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
            }
            Some(e) if e.starts_with("tcp://") || e.starts_with("http://") => {
                Docker::connect_with_http(e, TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
            }
            Some(e) => {
                return Err(RuntimeError::Unreachable(format!(
                    "`{e}` is not a Docker endpoint (unix:///path or tcp://host:port)"
                )))
            }
        };
        let docker = connected
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    async fn build(
        &self,
        context: &[super::ContextPart],
        dockerfile: Option<&str>,
        args: &std::collections::BTreeMap<String, String>,
        tag: &str,
    ) -> Result<(), RuntimeError> {
        let build_error = |reason: String| RuntimeError::Build {
            image: tag.to_owned(),
            reason,
        };
        // The context streams to the engine as it is archived: a large one
        // costs a few chunks of memory, not its size.
        let parts = context.to_vec();
        let (writer, chunks) = super::context::ChunkWriter::new();
        let packing = tokio::task::spawn_blocking(move || {
            super::context::pack_into(&parts, writer).and_then(|mut w| {
                use std::io::Write;
                w.flush()
            })
        });
        let archive = tokio_stream::wrappers::ReceiverStream::new(chunks);
        let buildargs: HashMap<String, String> =
            args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(dockerfile.unwrap_or("Dockerfile"))
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&buildargs)
            .build();
        let docker = self.client().await?;
        let mut stream = docker.build_image(options, None, Some(bollard::body_try_stream(archive)));
        let mut last_lines: Vec<String> = Vec::new();
        let mut outcome = Ok(());
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        outcome = Err(build_error(detail));
                        break;
                    }
                    if let Some(line) = info.stream {
                        let line = line.trim_end().to_owned();
                        if !line.is_empty() {
                            last_lines.push(line);
                            if last_lines.len() > 5 {
                                last_lines.remove(0);
                            }
                        }
                    }
                }
                Err(DockerError::DockerStreamError { error }) => {
                    outcome = Err(build_error(error));
                    break;
                }
                Err(e) => {
                    let mut reason = error(e).to_string();
                    if !last_lines.is_empty() {
                        reason = format!("{reason} (after: {})", last_lines.join(" | "));
                    }
                    outcome = Err(build_error(reason));
                    break;
                }
            }
        }
        // The request (and the archive's receiving end) goes: a packer still
        // writing stops. Its own failure explains the build's best.
        drop(stream);
        match packing.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(build_error(format!("cannot pack the build context: {e}"))),
            Err(e) => return Err(build_error(e.to_string())),
        }
        outcome?;
        // The build may end without an error message yet without the image.
        self.client()
            .await?
            .inspect_image(tag)
            .await
            .map(|_| ())
            .map_err(|e| build_error(format!("no image after the build: {}", error(e))))
    }
}

fn run_state(s: Option<ContainerSummaryStateEnum>) -> RunState {
    match s {
        Some(ContainerSummaryStateEnum::RUNNING) => RunState::Running,
        Some(ContainerSummaryStateEnum::CREATED) => RunState::Created,
        Some(ContainerSummaryStateEnum::EXITED) => RunState::Exited(None),
        Some(other) => RunState::Other(other.to_string()),
        None => RunState::Other("unknown".into()),
    }
}

impl ContainerRuntime for DockerRuntime {
    async fn list(&self, label: &str, value: &str) -> Result<Vec<Workload>, RuntimeError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .client()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(error)?;
        Ok(containers
            .into_iter()
            .map(|c| Workload {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: run_state(c.state),
            })
            .collect())
    }

    async fn ensure_image(&self, source: &ImageSource) -> Result<(), RuntimeError> {
        let name = source.reference();
        match self.client().await?.inspect_image(name).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(error(e)),
        }
        match source {
            ImageSource::Named(n) => Err(RuntimeError::NoImage(n.clone())),
            ImageSource::Build {
                context,
                dockerfile,
                args,
                tag,
            } => {
                let dirs: Vec<String> = context
                    .iter()
                    .map(|p| p.dir.display().to_string())
                    .collect();
                tracing::info!(image = %tag, context = ?dirs, "building image");
                self.build(context, dockerfile.as_deref(), args, tag).await
            }
        }
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<String, RuntimeError> {
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for p in &spec.ports {
            let proto = match p.protocol {
                continuum_models::resources::Protocol::Tcp => "tcp",
                continuum_models::resources::Protocol::Udp => "udp",
            };
            let key = format!("{}/{proto}", p.container);
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![bollard::models::PortBinding {
                    host_ip: None,
                    host_port: Some(p.host.map(|h| h.to_string()).unwrap_or_default()),
                }]),
            );
        }
        let devices = spec
            .devices
            .iter()
            .map(|d| bollard::models::DeviceMapping {
                path_on_host: Some(d.host.clone()),
                path_in_container: Some(d.container.clone().unwrap_or_else(|| d.host.clone())),
                cgroup_permissions: Some(d.permissions.clone().unwrap_or_else(|| "rwm".into())),
            })
            .collect();
        let mounts = spec
            .mounts
            .iter()
            .map(|m| bollard::models::Mount {
                source: Some(m.source.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                typ: Some(if m.source.starts_with('/') {
                    MountType::BIND
                } else {
                    MountType::VOLUME
                }),
                ..Default::default()
            })
            .collect();
        let restart = match spec.restart {
            RestartPolicy::No => RestartPolicyNameEnum::NO,
            RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(port_bindings),
                devices: Some(devices),
                mounts: Some(mounts),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                network_mode: spec.network.clone(),
                ..Default::default()
            }),
            networking_config: spec
                .network
                .as_deref()
                .filter(|n| super::is_custom_network(n) && !spec.aliases.is_empty())
                .map(|n| bollard::models::NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        n.to_owned(),
                        bollard::models::EndpointSettings {
                            aliases: Some(spec.aliases.clone()),
                            ..Default::default()
                        },
                    )])),
                }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .client()
            .await?
            .create_container(Some(options), body)
            .await
            .map_err(error)?;
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.client()
            .await?
            .start_container(id, None)
            .await
            .map_err(error)
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECONDS)
            .build();
        match self.client().await?.stop_container(id, Some(options)).await {
            // 304: already stopped; 404: already gone.
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(error(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .client()
            .await?
            .remove_container(id, Some(options))
            .await
        {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(error(e)),
        }
    }

    async fn state(&self, id: &str) -> Result<RunState, RuntimeError> {
        let c = self
            .client()
            .await?
            .inspect_container(id, None)
            .await
            .map_err(error)?;
        let state = c.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
            Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
            // Restarting means it exited and its restart policy brings it back:
            // for whoever just started it, it exited at once.
            Some(
                ContainerStateStatusEnum::EXITED
                | ContainerStateStatusEnum::DEAD
                | ContainerStateStatusEnum::RESTARTING,
            ) => RunState::Exited(state.exit_code),
            Some(other) => RunState::Other(other.to_string()),
            None => RunState::Other("unknown".into()),
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let _turn = self.networks.lock().await;
        match docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(error(e)),
        }
        tracing::info!(network = name, "creating network");
        let request = bollard::models::NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match docker.create_network(request).await {
            // 409: created meanwhile by a concurrent step.
            Ok(_)
            | Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(error(e)),
        }
    }

    async fn prune_networks(
        &self,
        label: &str,
        value: &str,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        for n in docker.list_networks(Some(options)).await.map_err(error)? {
            let Some(name) = n.name else { continue };
            if keep.contains(&name) {
                continue;
            }
            match docker.remove_network(&name).await {
                // 403/409: still in use; a later pass removes it.
                Ok(())
                | Err(DockerError::DockerResponseServerError {
                    status_code: 403 | 404 | 409,
                    ..
                }) => {}
                Err(e) => return Err(error(e)),
            }
        }
        Ok(())
    }

    async fn watch(
        &self,
        label: &str,
        value: &str,
        changes: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), RuntimeError> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("{label}={value}")]),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let docker = self.client().await?;
        let mut stream = docker.events(Some(options));
        loop {
            tokio::select! {
                () = changes.closed() => return Ok(()),
                event = stream.next() => match event {
                    None => return Err(RuntimeError::Unreachable("the event stream ended".into())),
                    Some(Err(e)) => return Err(error(e)),
                    Some(Ok(_)) => {
                        // A full channel already holds a wake-up: nothing is lost.
                        let _ = changes.try_send(());
                    }
                },
            }
        }
    }

    async fn restarts(&self, id: &str) -> Result<(u64, Option<i64>), RuntimeError> {
        let c = self
            .client()
            .await?
            .inspect_container(id, None)
            .await
            .map_err(error)?;
        let count = c.restart_count.unwrap_or(0).max(0) as u64;
        Ok((count, c.state.and_then(|s| s.exit_code)))
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let docker = self.client().await?;
        let mut stream = docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            out.push_str(&chunk.map_err(error)?.to_string());
        }
        Ok(out)
    }
}
