//! One flash request, from the artefact's bytes to the device's record: what
//! the command line and the agent's service both run.
//!
//! In order: the board is known, the image reads and fits, the signature
//! verifies when a key is trusted; a firmware the device already runs (same
//! hash, same signature, confirmed) is left alone unless forced; then the
//! native flasher or the tool writes, verifies and confirms, rolling back to
//! the last confirmed firmware; and the device's record is saved.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::board::{board, names, show_signature, Board};
use crate::flash::{check, confirm, flash, Outcome, Plan, Progress, Stage};
use crate::image::{Image, ImageError};
use crate::serial::{Link, Port};
use crate::state::{Device, State};

/// A flash to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The device's name (its record's key).
    pub device: String,
    /// The serial port it is on.
    pub port: PathBuf,
    /// Its board type.
    pub board: String,
    /// The artefact's bytes (Intel HEX or raw binary).
    #[serde(with = "hex_bytes")]
    pub artefact: Vec<u8>,
    /// The bootloader's speed, if not the board's.
    #[serde(default)]
    pub baud: Option<u32>,
    /// Read back after writing.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The line the running firmware prints (a regular expression).
    #[serde(default)]
    pub health: Option<String>,
    /// How long it has to print it, in milliseconds.
    #[serde(default = "ten_seconds")]
    pub confirm_within_ms: u64,
    /// Sync attempts.
    #[serde(default = "ten")]
    pub tries: u32,
    /// Write even an unchanged firmware.
    #[serde(default)]
    pub force: bool,
    /// The ed25519 signature of the artefact's SHA-256 (hex).
    #[serde(default)]
    pub signature: Option<String>,
    /// A tool template (or `avrdude`, `esptool`, `arduino-cli`).
    #[serde(default)]
    pub tool: Option<String>,
}

fn yes() -> bool {
    true
}
fn ten_seconds() -> u64 {
    10_000
}
fn ten() -> u32 {
    10
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if !s.is_ascii() || s.len() % 2 != 0 {
            return Err(serde::de::Error::custom(
                "the artefact is not hexadecimal (an even number of digits)",
            ));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The device.
    pub device: String,
    /// The artefact's SHA-256.
    pub firmware: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A request that cannot even be tried.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such board.
    #[error("board `{0}` is unknown; known boards: {1}")]
    Board(String, String),
    /// The artefact does not read.
    #[error("the image is refused, nothing was written: {0}")]
    Image(#[from] ImageError),
    /// The health pattern is no regular expression.
    #[error("the health pattern is not a regular expression: {0}")]
    Health(String),
    /// The agent's own records cannot be read or written.
    #[error("the agent's state: {0}")]
    State(#[from] std::io::Error),
}

/// Runs `req` with the records in `state`, trusting `trusted_key` (hex) if
/// one is given.
pub fn run(
    state: &State,
    req: &Request,
    trusted_key: Option<&str>,
    progress: &mut dyn Progress,
) -> Result<Report, JobError> {
    let b =
        board(&req.board).ok_or_else(|| JobError::Board(req.board.clone(), names().join(", ")))?;
    let image = Image::read(&req.artefact)?;
    let digest: [u8; 32] = sha2::Sha256::digest(&req.artefact).into();
    let firmware = hex(&digest);
    let report = |outcome: Outcome| Report {
        device: req.device.clone(),
        firmware: firmware.clone(),
        outcome,
    };
    let refuse = |reason: String| {
        report(Outcome::Failed {
            stage: Stage::Connecting,
            reason,
        })
    };
    if let Some(k) = trusted_key {
        let checked = crate::sign::key(k)
            .and_then(|key| crate::sign::check(&digest, req.signature.as_deref(), &key));
        if let Err(e) = checked {
            return Ok(refuse(e.to_string()));
        }
    }
    let template = req
        .tool
        .as_deref()
        .map(|t| crate::tool::builtin(t).unwrap_or(t).to_owned());
    let checked = match &template {
        None => check(b, &image).err(),
        Some(_) => image.fits(b.flash_bytes).err().map(|e| Outcome::Failed {
            stage: Stage::Connecting,
            reason: e.to_string(),
        }),
    };
    if let Some(o) = checked {
        return Ok(report(o));
    }
    let health = req
        .health
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| JobError::Health(e.to_string()))?;
    let known = state.device(&req.device)?;
    let expected = show_signature(&b.signature);
    let confirmed = health.is_none() || known.confirmed.as_deref() == Some(firmware.as_str());
    if !req.force
        && known.flashed.as_deref() == Some(firmware.as_str())
        && known.signature.as_deref() == Some(expected.as_str())
        && confirmed
    {
        return Ok(report(Outcome::Unchanged));
    }
    if !req.force && known.rejected.as_deref() == Some(firmware.as_str()) {
        return Ok(report(Outcome::RolledBack {
            reason: format!(
                "not written again: this firmware was rolled back on this device before ({})",
                known.last.as_deref().unwrap_or("it did not confirm")
            ),
        }));
    }
    let fallback = known
        .confirmed
        .as_deref()
        .filter(|h| **h != firmware)
        .and_then(|h| state.image(h).map(|i| (h.to_owned(), i)));
    let baud = req.baud.unwrap_or(b.baud);
    let within = Duration::from_millis(req.confirm_within_ms);
    let outcome = match &template {
        Some(t) => with_tool(
            t,
            req,
            b,
            baud,
            &image,
            health.as_ref(),
            within,
            fallback.as_ref().map(|(_, i)| i),
            progress,
        ),
        None => natively(
            req,
            b,
            baud,
            &image,
            health.as_ref(),
            within,
            fallback.as_ref().map(|(_, i)| i),
            progress,
        ),
    };
    record(
        state,
        &req.device,
        known,
        &outcome,
        &firmware,
        &image,
        expected,
        fallback.map(|(h, _)| h),
    )?;
    Ok(report(outcome))
}

#[allow(clippy::too_many_arguments)]
fn natively(
    req: &Request,
    b: &Board,
    baud: u32,
    image: &Image,
    health: Option<&regex::Regex>,
    within: Duration,
    fallback: Option<&Image>,
    progress: &mut dyn Progress,
) -> Outcome {
    progress.report(Stage::Connecting, 0);
    let mut port = match Port::open(&req.port, baud) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::Failed {
                stage: Stage::Connecting,
                reason: e.to_string(),
            }
        }
    };
    if let Err(e) = port.reset() {
        return Outcome::Failed {
            stage: Stage::Connecting,
            reason: format!("resetting the board: {e}"),
        };
    }
    let plan = Plan {
        board: b,
        image,
        verify: req.verify,
        health,
        confirm_within: within,
        sync_tries: req.tries,
        fallback,
    };
    flash(&mut port, &plan, progress)
}

/// Flashes with a tool: it writes (and verifies, as tools do); the agent
/// then confirms on the port and rolls back with the same tool.
#[allow(clippy::too_many_arguments)]
fn with_tool(
    template: &str,
    req: &Request,
    b: &Board,
    baud: u32,
    image: &Image,
    health: Option<&regex::Regex>,
    within: Duration,
    fallback: Option<&Image>,
    progress: &mut dyn Progress,
) -> Outcome {
    use crate::tool::{render, run};
    let write = |image: &Image| -> Result<(), String> {
        let file = hex_file(image)?;
        let words = render(template, &req.port, b, baud, file.path()).map_err(|e| e.to_string())?;
        run(&words).map(drop).map_err(|e| e.to_string())
    };
    progress.report(Stage::Writing, 5);
    if let Err(reason) = write(image) {
        return Outcome::Failed {
            stage: Stage::Writing,
            reason,
        };
    }
    let Some(health) = health else {
        progress.report(Stage::Confirming, 100);
        return Outcome::Done { health: None };
    };
    progress.report(Stage::Confirming, 95);
    let confirmed = || -> Result<String, String> {
        let mut port = Port::open(&req.port, baud).map_err(|e| e.to_string())?;
        port.reset().map_err(|e| e.to_string())?;
        confirm(&mut port, health, within)
    };
    match confirmed() {
        Ok(line) => {
            progress.report(Stage::Confirming, 100);
            Outcome::Done { health: Some(line) }
        }
        Err(why) => {
            let Some(previous) = fallback else {
                return Outcome::Failed {
                    stage: Stage::Confirming,
                    reason: format!("{why}; no confirmed firmware to roll back to"),
                };
            };
            match write(previous).and_then(|()| confirmed()) {
                Ok(_) => Outcome::RolledBack { reason: why },
                Err(e) => Outcome::Failed {
                    stage: Stage::Confirming,
                    reason: format!("{why}; rolling back failed too: {e}"),
                },
            }
        }
    }
}

/// `image` as an Intel HEX file that lives as long as the handle.
fn hex_file(image: &Image) -> Result<tempfile::NamedTempFile, String> {
    use std::io::Write;
    let mut f = tempfile::Builder::new()
        .suffix(".hex")
        .tempfile()
        .map_err(|e| e.to_string())?;
    f.write_all(image.to_hex().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(f)
}

/// Saves what the device now holds.
#[allow(clippy::too_many_arguments)]
fn record(
    state: &State,
    device: &str,
    mut known: Device,
    outcome: &Outcome,
    firmware: &str,
    image: &Image,
    signature: String,
    fallback: Option<String>,
) -> std::io::Result<()> {
    match outcome {
        Outcome::Done { .. } => {
            known.signature = Some(signature);
            known.flashed = Some(firmware.to_owned());
            known.confirmed = Some(firmware.to_owned());
            known.rejected = None;
            state.keep(firmware, image)?;
            known.last = Some("done".into());
        }
        Outcome::RolledBack { reason } => {
            known.signature = Some(signature);
            known.flashed = fallback;
            known.rejected = Some(firmware.to_owned());
            known.last = Some(format!("rolled back: {reason}"));
        }
        Outcome::Failed { stage, reason } => {
            // Once writing began, what the device holds is unknown.
            if matches!(stage, Stage::Writing | Stage::Verifying | Stage::Confirming) {
                known.flashed = None;
            }
            known.last = Some(format!("failed while {stage}: {reason}"));
        }
        Outcome::Unchanged => return Ok(()),
    }
    state.save(device, &known)
}
