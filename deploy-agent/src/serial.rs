//! A serial port: raw, at a given speed, held exclusively (an advisory lock
//! and TIOCEXCL, which the agent's own proxy honours too), with reads that
//! wait at most a deadline and a reset line (DTR and RTS, as an Arduino's
//! auto-reset wants).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort, TTYPort};

/// Why the port cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No such device.
    #[error("port {0} does not exist")]
    Missing(PathBuf),
    /// Another program holds it.
    #[error("port {0} is busy: another program has it open (a serial monitor, a proxy, another flasher)")]
    Busy(PathBuf),
    /// Not a speed a serial port has.
    #[error("{0} baud is not a standard serial speed")]
    Speed(u32),
    /// Anything else the system says.
    #[error("port {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The byte stream a flasher talks over (a serial port, or a fake in tests).
pub trait Link: Send {
    /// Writes all of `bytes`.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Reads what arrives within `wait` into `buf` (0: nothing came).
    fn receive(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<usize>;
    /// Pulses the reset line (DTR/RTS low, then high), where there is one.
    fn reset(&mut self) -> std::io::Result<()>;
    /// Throws away what arrived and was not read.
    fn discard(&mut self) -> std::io::Result<()>;
}

/// An open serial port.
#[derive(Debug)]
pub struct Port {
    path: PathBuf,
    tty: TTYPort,
}

impl Port {
    /// Opens `path` raw at `baud`, exclusively.
    pub fn open(path: &Path, baud: u32) -> Result<Port, PortError> {
        if !matches!(
            baud,
            300 | 1200
                | 2400
                | 4800
                | 9600
                | 19_200
                | 38_400
                | 57_600
                | 115_200
                | 230_400
                | 460_800
                | 500_000
                | 921_600
                | 1_000_000
        ) {
            return Err(PortError::Speed(baud));
        }
        let io = |source: std::io::Error| PortError::Io {
            path: path.to_owned(),
            source,
        };
        if !path.exists() {
            return Err(PortError::Missing(path.to_owned()));
        }
        let tty = serialport::new(path.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open_native()
            .map_err(|e| {
                // The port takes an exclusive advisory lock (and TIOCEXCL):
                // another program holding it is the usual reason it fails.
                if e.description.contains("lock") || e.description.contains("busy") {
                    PortError::Busy(path.to_owned())
                } else if matches!(e.kind, serialport::ErrorKind::NoDevice) {
                    PortError::Missing(path.to_owned())
                } else {
                    io(std::io::Error::other(e.description))
                }
            })?;
        Ok(Port {
            path: path.to_owned(),
            tty,
        })
    }

    /// The port's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a line (without its end) within `wait`, `None` if none came;
    /// `pending` keeps what was read past it.
    pub fn read_line(
        &mut self,
        pending: &mut Vec<u8>,
        wait: Duration,
    ) -> std::io::Result<Option<String>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut buf = [0u8; 256];
            let n = self.receive(&mut buf, left)?;
            pending.extend_from_slice(&buf[..n]);
        }
    }
}

impl Link for Port {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tty.write_all(bytes)?;
        self.tty.flush()
    }

    fn receive(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<usize> {
        self.tty
            .set_timeout(wait.max(Duration::from_millis(1)))
            .map_err(std::io::Error::other)?;
        match self.tty.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn reset(&mut self) -> std::io::Result<()> {
        // A pseudo-terminal has no modem lines: the board behind one resets
        // when the port is opened (as the test board does), so failing to
        // pulse them there is no error.
        for on in [false, true] {
            let pulsed = self
                .tty
                .write_data_terminal_ready(on)
                .and_then(|()| self.tty.write_request_to_send(on));
            if pulsed.is_err() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn discard(&mut self) -> std::io::Result<()> {
        self.tty
            .clear(ClearBuffer::Input)
            .map_err(std::io::Error::other)
    }
}
