//! An agent copied to a machine without Docker and started over SSH, with
//! the system's OpenSSH client (its configuration, keys and known hosts are
//! the operator's; `--ssh-config` points at another file). Nothing secret
//! goes on a command line: the broker's URL reaches the agent through a
//! script read on standard input.
//!
//! On the machine the agent lives in `<remote dir>/<id>/`: the executable,
//! the build it is (`build`), its pid, its log and its state. A running agent
//! of the same build is adopted; another is stopped first.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::launch::{Launch, Placement};

/// An agent running on another machine.
pub struct Remote {
    launch: Launch,
}

/// Quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The agent's directory on the machine, as a shell word (`$HOME` expanded
/// there when the directory is relative).
fn dir(launch: &Launch) -> String {
    let own = format!(
        "{}/{}",
        launch.remote_dir.trim_end_matches('/'),
        continuum_deploy_agent::state::key(&launch.id)
    );
    if own.starts_with('/') {
        quote(&own)
    } else {
        format!("\"$HOME\"/{}", quote(&own))
    }
}

/// Runs `command` on the machine with `input` on its standard input: its
/// exit status and what it said (ssh's own failures are errors).
async fn run(launch: &Launch, command: &str, input: &[u8]) -> Result<(i32, String), String> {
    let Placement::Ssh {
        address,
        port,
        user,
    } = &launch.placement
    else {
        return Err("not an SSH placement".into());
    };
    let mut ssh = tokio::process::Command::new("ssh");
    if let Some(config) = &launch.ssh_config {
        ssh.arg("-F").arg(config);
    }
    ssh.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
        .args(["-p", &port.to_string()]);
    if let Some(u) = user {
        ssh.args(["-l", u]);
    }
    ssh.arg(address)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = ssh.spawn().map_err(|e| format!("cannot run ssh: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = input.to_vec();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&data).await;
        let _ = stdin.shutdown().await;
    });
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| format!("ssh {address}: no answer within 120s"))?
        .map_err(|e| format!("ssh {address}: {e}"))?;
    let _ = feed.await;
    let code = out.status.code().unwrap_or(-1);
    if code == 255 {
        return Err(format!(
            "ssh {address}:{port}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((code, said.trim().to_owned()))
}

/// Exit status of the start script when the machine lacks this build.
const NEEDS_COPY: i32 = 3;

/// Starts (or adopts) the agent on the machine, copying the executable when
/// the machine does not have this build.
pub async fn start(launch: &Launch, build: &str) -> Result<Remote, String> {
    let d = dir(launch);
    let mut args = String::new();
    for a in launch.serve_args("state") {
        args.push(' ');
        args.push_str(&quote(&a));
    }
    let script = format!(
        r#"set -e
mkdir -p {d}
cd {d}
if [ -f pid ] && kill -0 "$(cat pid)" 2>/dev/null; then
  if [ "$(cat build 2>/dev/null)" = {build} ]; then echo adopted; exit 0; fi
  kill "$(cat pid)" 2>/dev/null || true
  n=0; while kill -0 "$(cat pid)" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
fi
[ "$(cat build 2>/dev/null)" = {build} ] || exit {NEEDS_COPY}
CONTINUUM_BROKER={broker}
export CONTINUUM_BROKER
nohup "$(pwd)/continuum-agent"{args} >agent.log 2>&1 </dev/null &
echo $! >pid
echo started
"#,
        build = quote(build),
        broker = quote(&launch.broker.to_string_with_credentials()),
    );
    let (code, said) = run(launch, "sh -s", script.as_bytes()).await?;
    let (code, said) = if code == NEEDS_COPY {
        let path = launch.program.clone();
        let program = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", launch.program.display()))?;
        let copy = format!(
            "set -e; mkdir -p {d}; cd {d}; cat >continuum-agent.new; chmod 755 continuum-agent.new; mv continuum-agent.new continuum-agent; echo {b} >build",
            b = quote(build)
        );
        let (code, said) = run(launch, &copy, &program).await?;
        if code != 0 {
            return Err(format!("copying the deploy agent: {said}"));
        }
        tracing::info!(bytes = program.len(), "copied the deploy agent over SSH");
        run(launch, "sh -s", script.as_bytes()).await?
    } else {
        (code, said)
    };
    if code != 0 {
        return Err(format!("starting the deploy agent over SSH: {said}"));
    }
    tracing::info!(said, "deploy agent over SSH");
    Ok(Remote {
        launch: launch.clone(),
    })
}

impl Remote {
    /// Stops the agent (its state stays on the machine).
    pub async fn stop(self) {
        let d = dir(&self.launch);
        let script = format!(
            r#"cd {d} 2>/dev/null || exit 0
[ -f pid ] || exit 0
kill "$(cat pid)" 2>/dev/null || true
n=0; while kill -0 "$(cat pid)" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
kill -9 "$(cat pid)" 2>/dev/null || true
rm -f pid
"#
        );
        if let Err(e) = run(&self.launch, "sh -s", script.as_bytes()).await {
            tracing::warn!(error = %e, "cannot stop the deploy agent over SSH");
        }
    }
}
