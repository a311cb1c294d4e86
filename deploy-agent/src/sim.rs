//! The simulated Arduino Uno (`continuum-sim-uno`, built from `sim/sim-uno.c`
//! by scripts/build-sim-board.sh) as a child process: what `continuum up` and
//! the tests wire to a gateway instead of a real board.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The board program's name.
pub const PROGRAM: &str = "continuum-sim-uno";

/// A running simulated board, stopped (its flash saved, its port removed)
/// when dropped.
#[derive(Debug)]
pub struct SimBoard {
    child: Child,
    port: PathBuf,
}

impl SimBoard {
    /// Starts `program` with its port at `port` and `extra` arguments
    /// (`--flash FILE`, `--stuck ADDR`), once it says its port exists.
    pub fn start(program: &Path, port: &Path, extra: &[&str]) -> std::io::Result<SimBoard> {
        let mut child = Command::new(program)
            .arg("--link")
            .arg(port)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let board = SimBoard {
            child,
            port: port.to_owned(),
        };
        if !line.starts_with("PTY ") {
            return Err(std::io::Error::other(format!(
                "the simulated board did not start: {line:?}"
            )));
        }
        Ok(board)
    }

    /// Its serial port.
    pub fn port(&self) -> &Path {
        &self.port
    }

    /// Its serial port, as text.
    pub fn port_str(&self) -> &str {
        self.port.to_str().unwrap_or_default()
    }
}

impl Drop for SimBoard {
    fn drop(&mut self) {
        // SIGTERM: the board saves its flash and removes its port.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// For tests: the board program from `CONTINUUM_SIM_BOARD`; its absence is
/// a failure in CI (`CI=true`), a skip with a message elsewhere.
#[cfg(feature = "testing")]
pub fn from_env() -> Option<PathBuf> {
    let found = std::env::var_os("CONTINUUM_SIM_BOARD")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but CONTINUUM_SIM_BOARD names no file (scripts/build-sim-board.sh)");
        }
        eprintln!("skipped: CONTINUUM_SIM_BOARD is not set (scripts/build-sim-board.sh builds it)");
    }
    found
}
