//! The process driver, for hosts without Docker: each workload is a child
//! process running the container spec's `command` (its `image` names nothing
//! here), with its environment, supervised according to its restart policy,
//! its output kept in a ring of the last lines.
//!
//! Children belong to the agent: each runs in its own process group, and the
//! groups alive are written to a state file. An agent that was killed leaves
//! them behind; the next one ends them when it starts (checking that each pid
//! still is the process it started) and its first pass creates them again, so
//! nothing runs twice. Containers, by contrast, are re-adopted.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};

use crate::backoff::Backoff;

use super::{
    ContainerRuntime, ImageSource, RestartPolicy, RunState, RuntimeError, Workload, WorkloadSpec,
};

/// Lines of output kept per workload.
const LOG_LINES: usize = 200;
/// How long a stopped process gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Proc {
    spec: WorkloadSpec,
    state: RunState,
    /// The running child's pid (its process group).
    pid: Option<u32>,
    /// Runs started by the restart policy, and the last exit code.
    restarts: u64,
    last_exit: Option<i64>,
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Tells the supervisor to stop (true) — it then stays stopped.
    stop: Option<watch::Sender<bool>>,
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Registry {
    procs: BTreeMap<String, Proc>,
    next: u64,
}

/// The driver.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    registry: Arc<Mutex<Registry>>,
    changes: broadcast::Sender<()>,
    /// Where the live process groups are recorded (none: not recorded).
    state_file: Option<Arc<std::path::PathBuf>>,
    /// The mark put in every workload's environment (`OWNER_VAR`): a later
    /// agent finds by it what this one started, recorded or not.
    owner: Option<Arc<String>>,
    /// Where build contexts are laid out: a workload whose image was "built"
    /// runs in its context's directory.
    images_dir: Arc<std::path::PathBuf>,
    /// Directories put first on workloads' PATH (the function host's).
    path_dirs: Arc<Vec<std::path::PathBuf>>,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        ProcessRuntime {
            registry: Arc::default(),
            changes: broadcast::channel(16).0,
            state_file: None,
            owner: None,
            images_dir: Arc::new(
                std::env::temp_dir().join(format!("continuum-contexts-{}", std::process::id())),
            ),
            path_dirs: Arc::default(),
        }
    }
}

/// The environment variable that marks a workload process as this
/// gateway's (its value: the gateway's state file).
pub const OWNER_VAR: &str = "CONTINUUM_WORKLOAD_OWNER";

fn owner_mark(state_file: &std::path::Path) -> String {
    std::path::absolute(state_file)
        .unwrap_or_else(|_| state_file.to_owned())
        .display()
        .to_string()
}

/// The processes whose environment holds the owner mark `owner`.
fn marked(owner: &str) -> Vec<u32> {
    let wanted = format!("{OWNER_VAR}={owner}");
    let own = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()))
        })
        .collect()
}

/// A process's start time (field 22 of /proc/PID/stat), which tells a pid
/// reused by another process from the one recorded.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcessRuntime {
    /// A driver with no state file (what it starts ends with it).
    pub fn new() -> ProcessRuntime {
        ProcessRuntime::default()
    }

    /// A driver recording its process groups in `file`; the groups a previous
    /// agent left there are ended first.
    /// A process a previous agent started but had not recorded yet (killed
    /// between the spawn and the write) is found by the owner mark in its
    /// environment, and ended too.
    pub fn with_state_file(file: std::path::PathBuf) -> ProcessRuntime {
        let left: Vec<(u32, u64)> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (pid, started) in left {
            if start_time(pid) == Some(started) {
                tracing::info!(pid, "ending a process a previous agent left running");
                let _ = signal_group(pid, Signal::SIGKILL);
            }
        }
        let owner = owner_mark(&file);
        for pid in marked(&owner) {
            tracing::info!(
                pid,
                "ending a process a previous agent left running (unrecorded)"
            );
            let group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32)));
            match group {
                Ok(g) if g.as_raw() > 1 => {
                    let _ = nix::sys::signal::killpg(g, Signal::SIGKILL);
                }
                _ => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = std::fs::remove_file(&file);
        ProcessRuntime {
            state_file: Some(Arc::new(file)),
            owner: Some(Arc::new(owner)),
            ..ProcessRuntime::default()
        }
    }

    /// Lays build contexts out under `dir` (they outlive the agent there).
    pub fn with_images_dir(mut self, dir: std::path::PathBuf) -> ProcessRuntime {
        self.images_dir = Arc::new(dir);
        self
    }

    /// Puts `dirs` first on the PATH workloads run with.
    pub fn with_path_dirs(mut self, dirs: Vec<std::path::PathBuf>) -> ProcessRuntime {
        self.path_dirs = Arc::new(dirs);
        self
    }

    /// The directory image `tag`'s context is laid out in.
    fn image_dir(&self, tag: &str) -> std::path::PathBuf {
        let name: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.images_dir.join(name)
    }

    /// Writes the live process groups (atomically) to the state file.
    fn record(&self) {
        let Some(file) = &self.state_file else { return };
        let live: Vec<(u32, u64)> = self.with(|r| {
            r.procs
                .values()
                .filter_map(|p| p.pid)
                .filter_map(|pid| start_time(pid).map(|t| (pid, t)))
                .collect()
        });
        let tmp = file.with_extension("tmp");
        let bytes = serde_json::to_vec(&live).expect("pids serialize");
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, file.as_ref()))
            .is_err()
        {
            tracing::warn!(file = %file.display(), "cannot record the running processes");
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().expect("process registry lock"))
    }

    fn set_state(&self, id: &str, state: RunState, pid: Option<u32>) {
        self.with(|r| {
            if let Some(p) = r.procs.get_mut(id) {
                if let RunState::Exited(code) = state {
                    p.last_exit = code;
                }
                if state == RunState::Running && matches!(p.state, RunState::Exited(_)) {
                    p.restarts += 1;
                }
                p.state = state;
                p.pid = pid;
            }
        });
        self.record();
        let _ = self.changes.send(());
    }
}

/// PATH for workloads: the given directories and the agent's own first, so
/// the programs that ship with it (the function host) are found as in their
/// images.
fn workload_path(first: &[std::path::PathBuf]) -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> = first.to_vec();
    dirs.extend(
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(std::path::Path::to_path_buf)),
    );
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn spawn(
    spec: &WorkloadSpec,
    workdir: Option<&std::path::Path>,
    path_dirs: &[std::path::PathBuf],
    owner: Option<&str>,
    logs: &Arc<Mutex<VecDeque<String>>>,
) -> std::io::Result<(Child, Vec<tokio::task::JoinHandle<()>>)> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("the workload has no command to run"))?;
    let mut command = Command::new(program);
    if let Some(dir) = workdir {
        command.current_dir(dir);
    }
    let mut child = command
        .args(args)
        .env_clear()
        .env("PATH", workload_path(path_dirs))
        .envs(&spec.env)
        .envs(owner.map(|o| (OWNER_VAR, o)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()?;
    let mut readers = Vec::with_capacity(2);
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let logs = Arc::clone(logs);
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = logs.lock().expect("log ring lock");
                if l.len() == LOG_LINES {
                    l.pop_front();
                }
                l.push_back(line);
            }
        }));
    }
    Ok((child, readers))
}

/// How long an exited workload's output is waited for: a process it left in
/// the background can hold its pipes open for ever.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Sends `signal` to a workload's whole process group (its leader is the
/// workload: each runs in a group of its own).
fn signal_group(pid: u32, signal: Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal)
}

/// Asks a child to end (SIGTERM to its group), then kills it after the grace
/// period.
async fn terminate(child: &mut Child) -> Option<i64> {
    if let Some(pid) = child.id() {
        let _ = signal_group(pid, Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => status.code().map(i64::from),
        _ => {
            if let Some(pid) = child.id() {
                let _ = signal_group(pid, Signal::SIGKILL);
            }
            let _ = child.kill().await;
            child
                .wait()
                .await
                .ok()
                .and_then(|s| s.code())
                .map(i64::from)
        }
    }
}

/// Completes once the supervisor is told to stop (or its owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs a workload and restarts it as its policy says, until told to stop.
async fn supervise(
    rt: ProcessRuntime,
    id: String,
    spec: WorkloadSpec,
    logs: Arc<Mutex<VecDeque<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let started = tokio::time::Instant::now();
        let workdir = Some(rt.image_dir(&spec.image)).filter(|d| d.is_dir());
        let (mut child, readers) = match spawn(
            &spec,
            workdir.as_deref(),
            &rt.path_dirs,
            rt.owner.as_deref().map(String::as_str),
            &logs,
        ) {
            Ok(c) => c,
            Err(e) => {
                logs.lock()
                    .expect("log ring lock")
                    .push_back(format!("cannot start `{}`: {e}", spec.command.join(" ")));
                rt.set_state(&id, RunState::Exited(Some(127)), None);
                return;
            }
        };
        rt.set_state(&id, RunState::Running, child.id());
        let code = tokio::select! {
            status = child.wait() => {
                // What it wrote before it exited is in its logs before anyone
                // sees it exited (a failure's reason is read from them).
                let _ = tokio::time::timeout(OUTPUT_DRAIN, async {
                    for r in readers {
                        let _ = r.await;
                    }
                })
                .await;
                status.ok().and_then(|s| s.code()).map(i64::from)
            }
            () = stopped(&mut stop) => {
                let code = terminate(&mut child).await;
                rt.set_state(&id, RunState::Exited(code), None);
                return;
            }
        };
        rt.set_state(&id, RunState::Exited(code), None);
        let again = match spec.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => code != Some(0),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        };
        if !again {
            return;
        }
        // A run that lasted was healthy: a crash after it restarts quickly
        // again (as Docker's restart policy does).
        if started.elapsed() >= Duration::from_secs(10) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

impl ContainerRuntime for ProcessRuntime {
    async fn list(&self, label: &str, value: &str) -> Result<Vec<Workload>, RuntimeError> {
        Ok(self.with(|r| {
            r.procs
                .iter()
                .filter(|(_, p)| p.spec.labels.get(label).is_some_and(|v| v == value))
                .map(|(id, p)| Workload {
                    id: id.clone(),
                    name: p.spec.name.clone(),
                    labels: p.spec.labels.clone(),
                    state: p.state.clone(),
                })
                .collect()
        }))
    }

    async fn ensure_image(&self, source: &ImageSource) -> Result<(), RuntimeError> {
        match source {
            ImageSource::Named(_) => Ok(()),
            // No image here: the context is laid out in a directory, which
            // the workload's command runs in.
            ImageSource::Build { context, tag, .. } => {
                let dest = self.image_dir(tag);
                if dest.is_dir() {
                    return Ok(());
                }
                let parts = context.clone();
                tokio::task::spawn_blocking(move || super::context::materialize(&parts, &dest))
                    .await
                    .map_err(|e| RuntimeError::Failed(e.to_string()))?
                    .map_err(|e| RuntimeError::Build {
                        image: tag.clone(),
                        reason: format!("cannot lay out the build context: {e}"),
                    })
            }
        }
    }

    async fn create(&self, spec: &WorkloadSpec) -> Result<String, RuntimeError> {
        if spec.command.is_empty() {
            return Err(RuntimeError::Failed(format!(
                "`{}` has no command: the process driver runs the container's command",
                spec.name
            )));
        }
        let id = self.with(|r| {
            if r.procs.values().any(|p| p.spec.name == spec.name) {
                return Err(RuntimeError::Failed(format!(
                    "the name `{}` is already in use",
                    spec.name
                )));
            }
            r.next += 1;
            let id = format!("proc-{}", r.next);
            r.procs.insert(
                id.clone(),
                Proc {
                    spec: spec.clone(),
                    state: RunState::Created,
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                    logs: Arc::default(),
                    stop: None,
                    supervisor: None,
                },
            );
            Ok(id)
        })?;
        let _ = self.changes.send(());
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let started = self.with(|r| {
            let p = r
                .procs
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            if p.state == RunState::Running {
                return Ok(None);
            }
            if let Some(old) = p.supervisor.take() {
                old.abort();
            }
            let (tx, rx) = watch::channel(false);
            p.stop = Some(tx);
            Ok(Some((p.spec.clone(), Arc::clone(&p.logs), rx)))
        })?;
        let Some((spec, logs, stop)) = started else {
            return Ok(());
        };
        // Subscribed before the supervisor exists: its first change is not missed.
        let mut changes = self.changes.subscribe();
        let task = tokio::spawn(supervise(self.clone(), id.to_owned(), spec, logs, stop));
        self.with(|r| {
            if let Some(p) = r.procs.get_mut(id) {
                p.supervisor = Some(task);
            }
        });
        // The supervisor marks it running once spawned (or exited if it could
        // not be): wait for that change.
        let settled = async {
            while self.state(id).await? == RunState::Created {
                if let Err(broadcast::error::RecvError::Closed) = changes.recv().await {
                    break;
                }
            }
            Ok::<(), RuntimeError>(())
        };
        tokio::time::timeout(Duration::from_secs(5), settled)
            .await
            .map_err(|_| RuntimeError::Failed(format!("`{id}` did not start within 5 s")))?
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let supervisor = self.with(|r| {
            r.procs.get_mut(id).and_then(|p| {
                if let Some(stop) = &p.stop {
                    stop.send_replace(true);
                }
                p.supervisor.take()
            })
        });
        if let Some(task) = supervisor {
            let _ = task.await;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop(id).await?;
        self.with(|r| r.procs.remove(id));
        let _ = self.changes.send(());
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<RunState, RuntimeError> {
        self.with(|r| {
            r.procs
                .get(id)
                .map(|p| p.state.clone())
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
        })
    }

    async fn ensure_network(
        &self,
        name: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Failed(format!(
            "processes cannot join the network `{name}`"
        )))
    }

    async fn prune_networks(
        &self,
        _label: &str,
        _value: &str,
        _keep: &[String],
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn watch(
        &self,
        _label: &str,
        _value: &str,
        changes: tokio::sync::mpsc::Sender<()>,
    ) -> Result<(), RuntimeError> {
        let mut rx = self.changes.subscribe();
        loop {
            tokio::select! {
                () = changes.closed() => return Ok(()),
                r = rx.recv() => match r {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = changes.try_send(());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn restarts(&self, id: &str) -> Result<(u64, Option<i64>), RuntimeError> {
        self.with(|r| {
            r.procs
                .get(id)
                .map(|p| (p.restarts, p.last_exit))
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
        })
    }

    async fn logs(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let logs = self.with(|r| {
            r.procs
                .get(id)
                .map(|p| Arc::clone(&p.logs))
                .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
        })?;
        let l = logs.lock().expect("log ring lock");
        let skip = l.len().saturating_sub(lines);
        Ok(l.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::LABEL_SUBSYSTEM;

    #[test]
    fn a_process_started_but_never_recorded_is_found_by_its_mark_and_ended() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("processes.json");
        // What an agent killed between a spawn and its record leaves: a
        // marked process the state file does not name.
        let mut orphan = std::process::Command::new("sleep")
            .arg("600")
            .env(OWNER_VAR, owner_mark(&file))
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stranger = std::process::Command::new("sleep")
            .arg("600")
            .env(OWNER_VAR, "another gateway")
            .spawn()
            .unwrap();
        let _rt = ProcessRuntime::with_state_file(file);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was ended: {status:?}");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "another gateway's process lives"
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    fn spec(name: &str, script: &str, restart: RestartPolicy) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            image: "none".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::from([("WHO".into(), "world".into())]),
            ports: vec![],
            devices: vec![],
            mounts: vec![],
            restart,
            network: None,
            aliases: vec![],
            labels: BTreeMap::from([(LABEL_SUBSYSTEM.into(), "t".into())]),
        }
    }

    async fn eventually(
        rt: &ProcessRuntime,
        id: &str,
        want: impl Fn(&RunState) -> bool,
    ) -> RunState {
        continuum_bus::testing::eventually_async(
            "the wanted state",
            Duration::from_secs(10),
            || async { Some(rt.state(id).await.unwrap()).filter(|s| want(s)) },
        )
        .await
    }

    #[tokio::test]
    async fn a_process_runs_logs_and_stops() {
        let rt = ProcessRuntime::new();
        let id = rt
            .create(&spec(
                "p",
                "echo hello $WHO; exec sleep 30",
                RestartPolicy::No,
            ))
            .await
            .unwrap();
        rt.start(&id).await.unwrap();
        assert_eq!(rt.state(&id).await.unwrap(), RunState::Running);
        assert_eq!(rt.list(LABEL_SUBSYSTEM, "t").await.unwrap().len(), 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !rt.logs(&id, 5).await.unwrap().contains("hello world") {
            assert!(tokio::time::Instant::now() < deadline, "no output captured");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rt.stop(&id).await.unwrap();
        assert!(matches!(rt.state(&id).await.unwrap(), RunState::Exited(_)));
        rt.remove(&id).await.unwrap();
        assert!(rt.list(LABEL_SUBSYSTEM, "t").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_restart_policy_brings_a_failed_process_back() {
        let rt = ProcessRuntime::new();
        let id = rt
            .create(&spec(
                "r",
                "echo run >> \"$0\"; exit 3",
                RestartPolicy::OnFailure,
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("runs");
        // $0 of `sh -c script name`: where each run leaves a line.
        rt.with(|r| {
            r.procs
                .get_mut(&id)
                .unwrap()
                .spec
                .command
                .push(marker.display().to_string())
        });
        rt.start(&id).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let runs = std::fs::read_to_string(&marker)
                .unwrap_or_default()
                .lines()
                .count();
            if runs >= 3 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "restarted {runs} times"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.stop(&id).await.unwrap();
        let s = eventually(&rt, &id, |s| matches!(s, RunState::Exited(_))).await;
        assert!(matches!(s, RunState::Exited(_)));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_exit_with_its_reason() {
        let rt = ProcessRuntime::new();
        let mut s = spec("m", "", RestartPolicy::No);
        s.command = vec!["/no/such/program".into()];
        let id = rt.create(&s).await.unwrap();
        rt.start(&id).await.unwrap();
        let state = eventually(&rt, &id, |s| matches!(s, RunState::Exited(_))).await;
        assert_eq!(state, RunState::Exited(Some(127)));
        assert!(rt.logs(&id, 5).await.unwrap().contains("cannot start"));
    }
}
