//! An agent as a child process of the gateway, for devices wired to the
//! gateway's own machine. Its standard input is a pipe the gateway holds: if
//! the gateway dies, even killed outright, the agent sees the pipe close and
//! stops, so no orphan is left to fight the next one over the devices.

use std::process::Stdio;
use std::time::Duration;

use super::launch::Launch;

/// A running child agent.
pub struct Child {
    process: tokio::process::Child,
    /// Held apart from the process: waiting on it would close it.
    _stdin: Option<tokio::process::ChildStdin>,
}

/// Starts the agent beside the gateway.
pub fn start(launch: &Launch) -> Result<Child, String> {
    let mut process = tokio::process::Command::new(&launch.program)
        .args(launch.serve_args(&launch.state_dir.to_string_lossy()))
        .arg("--exit-with-stdin")
        // In its environment, not its arguments: a password in the broker's
        // URL would show in the process list.
        .env(
            "CONTINUUM_BROKER",
            launch.broker.to_string_with_credentials(),
        )
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", launch.program.display()))?;
    tracing::info!(
        pid = process.id(),
        "deploy agent started as a child process"
    );
    let stdin = process.stdin.take();
    Ok(Child {
        process,
        _stdin: stdin,
    })
}

impl Child {
    /// Returns when the process exited.
    pub async fn exited(&mut self) {
        let status = self.process.wait().await;
        tracing::warn!(?status, "the deploy agent exited");
    }

    /// Asks it to stop (SIGTERM: it says offline and lets go of its ports),
    /// kills it if it does not within 5 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.process.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), self.process.wait())
            .await
            .is_err()
        {
            let _ = self.process.kill().await;
        }
    }
}
