//! One run of a handler: the classic-watchdog contract. The message's payload
//! is the handler's standard input, its standard output is the reply, and it
//! learns the rest from its environment. A handler that fails, hangs, or
//! writes too much is the handler's error, reported with a reason — never the
//! host's.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Environment variable holding the topic the message arrived on.
pub const ENV_TOPIC: &str = "CONTINUUM_TOPIC";
/// Environment variable holding the input stream (the topic's last level).
pub const ENV_STREAM: &str = "CONTINUUM_STREAM";
/// Environment variable holding the message's id (empty when it has none).
pub const ENV_MESSAGE_ID: &str = "CONTINUUM_MESSAGE_ID";
/// Environment variable holding the function's id.
pub const ENV_FUNCTION: &str = "CONTINUUM_FUNCTION";
/// Environment variable holding the attempt number, from 1.
pub const ENV_ATTEMPT: &str = "CONTINUUM_ATTEMPT";

/// The bytes of standard error kept for the reason of a failure.
const STDERR_TAIL: usize = 2048;

/// How to run the handler.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long one run may take.
    pub timeout: Duration,
    /// The largest reply accepted, in bytes.
    pub max_output: usize,
}

/// What one run is given.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The function's id.
    pub function: &'a str,
    /// The topic the message arrived on.
    pub topic: &'a str,
    /// The message's id, if it has one.
    pub id: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
    /// Which attempt this is, from 1.
    pub attempt: u32,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The handler could not be started.
    #[error("cannot start the handler `{program}`: {why}")]
    Spawn {
        /// The program.
        program: String,
        /// The system's answer.
        why: String,
    },
    /// It exited with a status other than 0.
    #[error("the handler exited with status {code}{}", tail(.stderr))]
    Exit {
        /// Its exit status.
        code: i32,
        /// The end of what it wrote on standard error.
        stderr: String,
    },
    /// A signal ended it.
    #[error("the handler was killed by signal {signal}{}", tail(.stderr))]
    Signal {
        /// The signal's number.
        signal: i32,
        /// The end of what it wrote on standard error.
        stderr: String,
    },
    /// It ran longer than the timeout and was killed.
    #[error("the handler ran longer than its timeout of {0:?} and was killed")]
    Timeout(Duration),
    /// It wrote more than the largest reply accepted.
    #[error("the handler's reply exceeds {0} bytes")]
    TooLarge(usize),
}

fn tail(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// The input stream of a topic `/<function>/in/<stream>`: its last level.
pub fn stream_of(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
}

/// Runs the handler once on `call`; its reply, or why it failed.
pub async fn invoke(handler: &Handler, call: Call<'_>) -> Result<Vec<u8>, Failure> {
    let Some((program, args)) = handler.command.split_first() else {
        return Err(Failure::Spawn {
            program: String::new(),
            why: "no handler command was given".into(),
        });
    };
    let mut child = Command::new(program)
        .args(args)
        .env(ENV_TOPIC, call.topic)
        .env(ENV_STREAM, stream_of(call.topic))
        .env(ENV_MESSAGE_ID, call.id.unwrap_or(""))
        .env(ENV_FUNCTION, call.function)
        .env(ENV_ATTEMPT, call.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends whatever it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Spawn {
            program: program.clone(),
            why: e.to_string(),
        })?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let payload = call.payload.to_vec();
    let limit = handler.max_output;
    let run = async move {
        // A handler may exit without reading its input: a closed pipe then
        // is not an error.
        let feed = async move {
            let _ = stdin.write_all(&payload).await;
            drop(stdin);
        };
        let read_out = async {
            let mut out = Vec::new();
            (&mut stdout)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .await
                .map(|_| out)
        };
        let read_err = async {
            let mut err = Vec::new();
            let _ = stderr.read_to_end(&mut err).await;
            err
        };
        let ((), out, err) = tokio::join!(feed, read_out, read_err);
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(handler.timeout, run).await {
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            Err(Failure::Timeout(handler.timeout))
        }
        Ok((out, err, status)) => {
            let stderr = {
                let from = err.len().saturating_sub(STDERR_TAIL);
                String::from_utf8_lossy(&err[from..]).into_owned()
            };
            let status = status.map_err(|e| Failure::Spawn {
                program: program.clone(),
                why: e.to_string(),
            })?;
            if let Some(code) = status.code().filter(|&c| c != 0) {
                return Err(Failure::Exit { code, stderr });
            }
            if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
                return Err(Failure::Signal { signal, stderr });
            }
            let out = out.unwrap_or_default();
            if out.len() > limit {
                return Err(Failure::TooLarge(limit));
            }
            Ok(out)
        }
    }
}

fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Handler {
        Handler {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout,
            max_output: 64,
        }
    }

    fn call(payload: &[u8]) -> Call<'_> {
        Call {
            function: "f",
            topic: "/f/in/readings",
            id: Some("o:7"),
            payload,
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn the_payload_is_stdin_the_reply_is_stdout_and_the_environment_says_the_rest() {
        let h = sh(
            r#"printf '%s|%s|%s|%s|%s|' "$CONTINUUM_TOPIC" "$CONTINUUM_STREAM" "$CONTINUUM_MESSAGE_ID" "$CONTINUUM_FUNCTION" "$CONTINUUM_ATTEMPT"; cat"#,
            Duration::from_secs(10),
        );
        let out = invoke(&h, call(b"hello")).await.unwrap();
        assert_eq!(out, b"/f/in/readings|readings|o:7|f|1|hello");
    }

    #[tokio::test]
    async fn failures_say_why() {
        let long = Duration::from_secs(10);
        let e = invoke(&sh("echo bad input >&2; exit 3", long), call(b""))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            Failure::Exit {
                code: 3,
                stderr: "bad input\n".into()
            }
        );
        assert!(e.to_string().ends_with("status 3: bad input"), "{e}");
        let e = invoke(&sh("kill -9 $$", long), call(b""))
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Signal { signal: 9, .. }), "{e:?}");
        let e = invoke(&sh("head -c 100 /dev/zero", long), call(b""))
            .await
            .unwrap_err();
        assert_eq!(e, Failure::TooLarge(64));
        let h = Handler {
            command: vec!["/nonexistent/handler".into()],
            timeout: long,
            max_output: 64,
        };
        let e = invoke(&h, call(b"")).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/handler"), "{e}");
        let none = Handler {
            command: Vec::new(),
            timeout: long,
            max_output: 64,
        };
        let e = invoke(&none, call(b"")).await.unwrap_err();
        assert!(e.to_string().contains("no handler command"), "{e}");
    }

    #[tokio::test]
    async fn a_handler_that_hangs_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let h = sh(
            &format!("sleep 1000 & echo $! > {}; wait", pidfile.display()),
            Duration::from_millis(300),
        );
        let e = invoke(&h, call(b"")).await.unwrap_err();
        assert_eq!(e, Failure::Timeout(Duration::from_millis(300)));
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background child was in the handler's group: it is gone (or a zombie
        // about to be reaped by init).
        continuum_bus::testing::wait_for(
            "the handler's child to die",
            Duration::from_secs(10),
            || {
                let stat =
                    std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
                (stat.is_empty() || stat.contains(") Z")).then_some(())
            },
        );
    }
}
