//! The device proxy (the paper's bridge for serial devices): lines from the
//! device are published on an MQTT topic; messages on `<topic>/in` are
//! written to the device. It survives the device going away and coming back,
//! and lets go of the port while the device is being flashed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::serial::{Link, Port};

/// A proxy to run: the device on `port`, its lines on `topic`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProxySpec {
    /// The device's name.
    pub device: String,
    /// Its serial port.
    pub port: PathBuf,
    /// Its speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Where its lines are published (`<topic>/in` is written to it).
    pub topic: String,
}

fn default_baud() -> u32 {
    115_200
}

/// Who may use a port now: a flash takes it from the proxy and gives it back.
#[derive(Debug, Default)]
pub struct Leases {
    ports: Mutex<HashMap<PathBuf, Arc<Lease>>>,
}

/// One port's lease.
#[derive(Debug, Default)]
pub struct Lease {
    /// Held by whoever has the port open.
    held: Mutex<()>,
    /// A flash wants (or has) the port.
    wanted: AtomicBool,
    /// Flashes wanting the port, and the proxy waiting for them to be done.
    waiting: Mutex<usize>,
    done: Condvar,
}

impl Lease {
    /// Waits (at most `at_most`) while a flash wants the port.
    fn wait_while_wanted(&self, at_most: Duration) {
        let n = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .done
            .wait_timeout_while(n, at_most, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
    }
}

impl Leases {
    /// The lease of `port`.
    pub fn of(&self, port: &Path) -> Arc<Lease> {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(ports.entry(port.to_owned()).or_default())
    }

    /// Runs `f` with `port` taken from its proxy (if any).
    pub fn exclusively<T>(&self, port: &Path, f: impl FnOnce() -> T) -> T {
        let lease = self.of(port);
        *lease.waiting.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        lease.wanted.store(true, Ordering::SeqCst);
        let out = {
            let _held = lease.held.lock().unwrap_or_else(|e| e.into_inner());
            f()
        };
        let mut n = lease.waiting.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            lease.wanted.store(false, Ordering::SeqCst);
        }
        drop(n);
        lease.done.notify_all();
        out
    }
}

/// What a proxy tells the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line from the device.
    Line { topic: String, line: String },
    /// The port opened, or could not be (why).
    Port {
        device: String,
        open: bool,
        why: Option<String>,
    },
}

/// Runs a proxy on a thread of its own until `stop` is set: lines go to
/// `events`, what arrives on `writes` goes to the device.
pub fn spawn(
    spec: ProxySpec,
    leases: Arc<Leases>,
    events: mpsc::UnboundedSender<Event>,
    writes: std::sync::mpsc::Receiver<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || run(&spec, &leases, &events, &writes, &stop))
}

fn run(
    spec: &ProxySpec,
    leases: &Leases,
    events: &mpsc::UnboundedSender<Event>,
    writes: &std::sync::mpsc::Receiver<Vec<u8>>,
    stop: &AtomicBool,
) {
    let lease = leases.of(&spec.port);
    let mut reported: Option<bool> = None;
    while !stop.load(Ordering::SeqCst) {
        if lease.wanted.load(Ordering::SeqCst) {
            // Woken when the flash gives the port back (or to look at `stop`).
            lease.wait_while_wanted(Duration::from_millis(500));
            continue;
        }
        let held = lease.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut port = match Port::open(&spec.port, spec.baud) {
            Ok(p) => p,
            Err(e) => {
                drop(held);
                if reported != Some(false) {
                    let _ = events.send(Event::Port {
                        device: spec.device.clone(),
                        open: false,
                        why: Some(e.to_string()),
                    });
                    reported = Some(false);
                }
                // The device may come back: look again in a moment.
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if reported != Some(true) {
            let _ = events.send(Event::Port {
                device: spec.device.clone(),
                open: true,
                why: None,
            });
            reported = Some(true);
        }
        let mut pending = Vec::new();
        while !stop.load(Ordering::SeqCst) && !lease.wanted.load(Ordering::SeqCst) {
            while let Ok(bytes) = writes.try_recv() {
                if port.send(&bytes).is_err() {
                    break;
                }
            }
            match port.read_line(&mut pending, Duration::from_millis(100)) {
                Ok(Some(line)) if !line.is_empty() => {
                    let _ = events.send(Event::Line {
                        topic: spec.topic.clone(),
                        line,
                    });
                }
                Ok(_) => {}
                // Unplugged: close, and open again when it is back.
                Err(_) => break,
            }
        }
        drop(port);
        drop(held);
    }
}
