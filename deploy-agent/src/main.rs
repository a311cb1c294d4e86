//! `continuum-agent`: the deploy agent's command line.
//!
//! `continuum-agent flash --port PORT --board BOARD --image FILE` writes a
//! firmware image (Intel HEX or raw binary) over the board's bootloader,
//! verifies it, waits for the health line if one is given, and rolls back to
//! the last confirmed firmware when the new one does not confirm. Progress
//! and the result are JSON lines on stdout; the exit status is 0 when the
//! firmware runs (or was already there), 2 when it was rolled back, 1 when
//! the flash failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use continuum_deploy_agent::board::{board, names, show_signature};
use continuum_deploy_agent::flash::{check, flash, Outcome, Plan, Stage};
use continuum_deploy_agent::image::Image;
use continuum_deploy_agent::serial::{Link, Port};
use continuum_deploy_agent::state::State;
use sha2::Digest;

#[derive(Parser, Debug)]
#[command(
    name = "continuum-agent",
    version,
    about = "Continuum's deploy agent: flashes leaf devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Flash a firmware image onto the board on a serial port.
    Flash(FlashArgs),
}

#[derive(clap::Args, Debug)]
struct FlashArgs {
    /// The serial port the board is on.
    #[arg(long)]
    port: PathBuf,
    /// The board type (its signature and flash size are checked).
    #[arg(long)]
    board: String,
    /// The firmware: Intel HEX, or a raw binary.
    #[arg(long)]
    image: PathBuf,
    /// The bootloader's speed (the board's by default).
    #[arg(long)]
    baud: Option<u32>,
    /// Skip reading the flash back.
    #[arg(long)]
    no_verify: bool,
    /// A line the running firmware prints (a regular expression): it must
    /// appear within --confirm-within or the firmware is rolled back.
    #[arg(long)]
    health: Option<String>,
    /// How long the firmware has to print its health line.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    confirm_within: Duration,
    /// Sync attempts before giving up on the bootloader.
    #[arg(long, default_value_t = 10)]
    tries: u32,
    /// Where the agent remembers what each device runs.
    #[arg(
        long,
        env = "CONTINUUM_AGENT_STATE",
        default_value = "continuum-agent-state"
    )]
    state_dir: PathBuf,
    /// The device's name in that memory (the port by default).
    #[arg(long)]
    device: Option<String>,
    /// Flash even when the device already runs this firmware.
    #[arg(long)]
    force: bool,
    /// The ed25519 signature of the image's SHA-256 (hex).
    #[arg(long)]
    signature: Option<String>,
    /// The public key firmware must be signed with (hex); unsigned or badly
    /// signed images are then refused before anything is written.
    #[arg(long, env = "CONTINUUM_TRUSTED_KEY")]
    trusted_key: Option<String>,
    /// Flash with a tool instead of natively: `avrdude`, `esptool`,
    /// `arduino-cli`, or a command line with {port}, {board}, {mcu}, {baud}
    /// and {artefact} placeholders.
    #[arg(long)]
    tool: Option<String>,
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

fn result(outcome: &Outcome, hash: &str) -> ExitCode {
    let mut v = serde_json::to_value(outcome).unwrap_or_default();
    v["firmware"] = serde_json::Value::from(hash);
    emit(v);
    match outcome {
        Outcome::Done { .. } => ExitCode::SUCCESS,
        Outcome::RolledBack { .. } => ExitCode::from(2),
        Outcome::Failed { .. } => ExitCode::from(1),
    }
}

fn run_flash(a: FlashArgs) -> anyhow::Result<ExitCode> {
    let Some(b) = board(&a.board) else {
        anyhow::bail!(
            "board `{}` is unknown; known boards: {}",
            a.board,
            names().join(", ")
        );
    };
    let bytes =
        std::fs::read(&a.image).with_context(|| format!("reading {}", a.image.display()))?;
    let image = Image::read(&bytes).with_context(|| format!("{}", a.image.display()))?;
    let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let hash = hex(&digest);
    if let Some(k) = &a.trusted_key {
        let refused = continuum_deploy_agent::sign::key(k).and_then(|key| {
            continuum_deploy_agent::sign::check(&digest, a.signature.as_deref(), &key)
        });
        if let Err(e) = refused {
            let o = Outcome::Failed {
                stage: Stage::Connecting,
                reason: e.to_string(),
            };
            return Ok(result(&o, &hash));
        }
    }
    let template = a.tool.as_deref().map(|t| {
        continuum_deploy_agent::tool::builtin(t)
            .unwrap_or(t)
            .to_owned()
    });
    let checked = match &template {
        None => check(b, &image),
        Some(_) => image.fits(b.flash_bytes).map_err(|e| Outcome::Failed {
            stage: Stage::Connecting,
            reason: e.to_string(),
        }),
    };
    if let Err(o) = checked {
        return Ok(result(&o, &hash));
    }
    let health = a
        .health
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--health is not a regular expression")?;
    let state = State::open(&a.state_dir)
        .with_context(|| format!("state directory {}", a.state_dir.display()))?;
    let device = a
        .device
        .clone()
        .unwrap_or_else(|| a.port.display().to_string());
    let known = state.device(&device)?;
    let expected = show_signature(&b.signature);
    let confirmed_here = health.is_none() || known.confirmed.as_deref() == Some(hash.as_str());
    if !a.force
        && known.flashed.as_deref() == Some(hash.as_str())
        && known.signature.as_deref() == Some(expected.as_str())
        && confirmed_here
    {
        emit(serde_json::json!({"result": "unchanged", "firmware": hash}));
        return Ok(ExitCode::SUCCESS);
    }
    let fallback = known
        .confirmed
        .as_deref()
        .filter(|h| *h != hash)
        .and_then(|h| state.image(h).map(|i| (h.to_owned(), i)));
    let baud = a.baud.unwrap_or(b.baud);
    if let Some(template) = &template {
        let outcome = with_tool(
            template,
            &a,
            b,
            baud,
            &a.image,
            health.as_ref(),
            fallback.as_ref().map(|(_, i)| i),
        );
        return finish(
            &state,
            &device,
            known,
            outcome,
            &hash,
            &image,
            expected,
            fallback.map(|(h, _)| h),
        );
    }
    emit(serde_json::json!({"stage": Stage::Connecting, "percent": 0}));
    let mut port = match Port::open(&a.port, baud) {
        Ok(p) => p,
        Err(e) => {
            let o = Outcome::Failed {
                stage: Stage::Connecting,
                reason: e.to_string(),
            };
            return Ok(result(&o, &hash));
        }
    };
    port.reset().context("resetting the board")?;
    let plan = Plan {
        board: b,
        image: &image,
        verify: !a.no_verify,
        health: health.as_ref(),
        confirm_within: a.confirm_within,
        sync_tries: a.tries,
        fallback: fallback.as_ref().map(|(_, i)| i),
    };
    let mut last = (Stage::Connecting, 0u8);
    let outcome = flash(&mut port, &plan, &mut |stage: Stage, percent: u8| {
        // One line per stage and per 10%: enough to follow, not a flood.
        if stage != last.0 || percent / 10 != last.1 / 10 || percent == 100 {
            emit(serde_json::json!({"stage": stage, "percent": percent}));
            last = (stage, percent);
        }
    });
    drop(port);
    finish(
        &state,
        &device,
        known,
        outcome,
        &hash,
        &image,
        expected,
        fallback.map(|(h, _)| h),
    )
}

/// Records how the flash ended and reports it.
#[allow(clippy::too_many_arguments)]
fn finish(
    state: &State,
    device: &str,
    mut known: continuum_deploy_agent::state::Device,
    outcome: Outcome,
    hash: &str,
    image: &Image,
    signature: String,
    fallback: Option<String>,
) -> anyhow::Result<ExitCode> {
    match &outcome {
        Outcome::Done { .. } => {
            known.signature = Some(signature);
            known.flashed = Some(hash.to_owned());
            known.confirmed = Some(hash.to_owned());
            state.keep(hash, image)?;
            known.last = Some("done".into());
        }
        Outcome::RolledBack { reason } => {
            known.signature = Some(signature);
            known.flashed = fallback;
            known.last = Some(format!("rolled back: {reason}"));
        }
        Outcome::Failed { stage, reason } => {
            // Once writing began, what the device holds is unknown.
            if matches!(stage, Stage::Writing | Stage::Verifying | Stage::Confirming) {
                known.flashed = None;
            }
            known.last = Some(format!("failed while {stage}: {reason}"));
        }
    }
    state.save(device, &known)?;
    Ok(result(&outcome, hash))
}

/// Flashes with a tool: it writes (and verifies, as tools do); the agent
/// then confirms on the port and rolls back with the same tool.
fn with_tool(
    template: &str,
    a: &FlashArgs,
    b: &continuum_deploy_agent::board::Board,
    baud: u32,
    artefact: &std::path::Path,
    health: Option<&regex::Regex>,
    fallback: Option<&Image>,
) -> Outcome {
    use continuum_deploy_agent::tool::{render, run};
    let write = |artefact: &std::path::Path| -> Result<(), String> {
        let words = render(template, &a.port, b, baud, artefact).map_err(|e| e.to_string())?;
        run(&words).map(drop).map_err(|e| e.to_string())
    };
    emit(serde_json::json!({"stage": Stage::Writing, "percent": 5}));
    if let Err(reason) = write(artefact) {
        return Outcome::Failed {
            stage: Stage::Writing,
            reason,
        };
    }
    let Some(health) = health else {
        emit(serde_json::json!({"stage": Stage::Confirming, "percent": 100}));
        return Outcome::Done { health: None };
    };
    emit(serde_json::json!({"stage": Stage::Confirming, "percent": 95}));
    let confirm = || -> Result<String, String> {
        let mut port = Port::open(&a.port, baud).map_err(|e| e.to_string())?;
        port.reset().map_err(|e| e.to_string())?;
        continuum_deploy_agent::flash::confirm(&mut port, health, a.confirm_within)
    };
    match confirm() {
        Ok(line) => Outcome::Done { health: Some(line) },
        Err(why) => {
            let Some(previous) = fallback else {
                return Outcome::Failed {
                    stage: Stage::Confirming,
                    reason: format!("{why}; no confirmed firmware to roll back to"),
                };
            };
            let back = tempfile_hex(previous)
                .and_then(|f| write(f.path()).map(|()| f))
                .and_then(|_| confirm());
            match back {
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
fn tempfile_hex(image: &Image) -> Result<tempfile::NamedTempFile, String> {
    use std::io::Write;
    let mut f = tempfile::Builder::new()
        .suffix(".hex")
        .tempfile()
        .map_err(|e| e.to_string())?;
    f.write_all(image.to_hex().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(f)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Flash(a) => run_flash(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
