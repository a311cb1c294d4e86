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
    let hash = hex(&sha2::Sha256::digest(&bytes));
    if let Err(o) = check(b, &image) {
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
    let mut known = state.device(&device)?;
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
    emit(serde_json::json!({"stage": Stage::Connecting, "percent": 0}));
    let mut port = match Port::open(&a.port, a.baud.unwrap_or(b.baud)) {
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
    match &outcome {
        Outcome::Done { .. } => {
            known.signature = Some(expected);
            known.flashed = Some(hash.clone());
            known.confirmed = Some(hash.clone());
            state.keep(&hash, &image)?;
            known.last = Some("done".into());
        }
        Outcome::RolledBack { reason } => {
            known.signature = Some(expected);
            known.flashed = fallback.as_ref().map(|(h, _)| h.clone());
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
    state.save(&device, &known)?;
    Ok(result(&outcome, &hash))
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
