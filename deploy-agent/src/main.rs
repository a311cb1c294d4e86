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
use continuum_deploy_agent::flash::{Outcome, Stage};
use continuum_deploy_agent::job::{self, JobError, Request};
use continuum_deploy_agent::state::State;

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
    /// Serve a gateway: take flash orders and run device proxies over its
    /// local MQTT broker.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The agent's id (its topics are continuum/agents/<id>/...).
    #[arg(long, env = "CONTINUUM_AGENT_ID")]
    id: String,
    /// The gateway's local broker.
    #[arg(
        long,
        env = "CONTINUUM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: continuum_bus::BrokerUrl,
    /// Where the agent remembers what each device runs.
    #[arg(
        long,
        env = "CONTINUUM_AGENT_STATE",
        default_value = "continuum-agent-state"
    )]
    state_dir: PathBuf,
    /// The public key firmware must be signed with (hex).
    #[arg(long, env = "CONTINUUM_TRUSTED_KEY")]
    trusted_key: Option<String>,
    /// Devices flashed at once.
    #[arg(long, default_value_t = 4)]
    max_flashes: usize,
    /// Stop when standard input closes: a gateway that starts the agent as
    /// its child passes a pipe, so the agent never outlives it (not even a
    /// gateway killed outright).
    #[arg(long)]
    exit_with_stdin: bool,
    /// Log lines as text, or as one JSON object per line (with the fields of
    /// the spans they happened in).
    #[arg(long, env = "CONTINUUM_LOG_FORMAT", value_enum, default_value_t = continuum_bus::logs::LogFormat::Text)]
    log_format: continuum_bus::logs::LogFormat,
}

fn run_serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    continuum_bus::logs::init(
        &std::env::var("CONTINUUM_LOG").unwrap_or_else(|_| "info,rumqttc=warn".into()),
        "info,rumqttc=warn",
        a.log_format,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing a SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.cancel();
        });
        if a.exit_with_stdin {
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 64];
                let end = loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) => break "closed".to_owned(),
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break e.to_string(),
                    }
                };
                tracing::info!(end, "standard input ended: the gateway is gone; stopping");
                stop.cancel();
            });
        }
        let config = continuum_deploy_agent::service::Config {
            id: a.id,
            broker: a.broker,
            state_dir: a.state_dir,
            trusted_key: a.trusted_key,
            max_flashes: a.max_flashes,
            build: continuum_deploy_agent::service::own_build(),
        };
        continuum_deploy_agent::service::serve(config, shutdown)
            .await
            .context("the agent's service")
    })?;
    Ok(ExitCode::SUCCESS)
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

fn run_flash(a: FlashArgs) -> anyhow::Result<ExitCode> {
    let artefact =
        std::fs::read(&a.image).with_context(|| format!("reading {}", a.image.display()))?;
    let req = Request {
        device: a
            .device
            .clone()
            .unwrap_or_else(|| a.port.display().to_string()),
        port: a.port.clone(),
        board: a.board.clone(),
        artefact,
        baud: a.baud,
        verify: !a.no_verify,
        health: a.health.clone(),
        confirm_within_ms: u64::try_from(a.confirm_within.as_millis()).unwrap_or(u64::MAX),
        tries: a.tries,
        force: a.force,
        signature: a.signature.clone(),
        tool: a.tool.clone(),
    };
    let state = State::open(&a.state_dir)
        .with_context(|| format!("state directory {}", a.state_dir.display()))?;
    let mut last = (Stage::Connecting, 0u8, false);
    let report = job::run(
        &state,
        &req,
        a.trusted_key.as_deref(),
        &mut |stage: Stage, percent: u8| {
            // One line per stage and per 10%: enough to follow, not a flood.
            if !last.2 || stage != last.0 || percent / 10 != last.1 / 10 || percent == 100 {
                emit(serde_json::json!({"stage": stage, "percent": percent}));
                last = (stage, percent, true);
            }
        },
    )
    .map_err(|e| match e {
        JobError::Image(_) => anyhow::anyhow!("{}: {e}", a.image.display()),
        e => e.into(),
    })?;
    emit(serde_json::to_value(&report)?);
    Ok(match report.outcome {
        Outcome::Done { .. } | Outcome::Unchanged => ExitCode::SUCCESS,
        Outcome::RolledBack { .. } => ExitCode::from(2),
        Outcome::Failed { .. } => ExitCode::from(1),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Flash(a) => run_flash(a),
        Command::Serve(a) => run_serve(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
