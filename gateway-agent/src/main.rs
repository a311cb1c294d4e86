//! `continuum-gateway`: the gateway agent of one subsystem (also available as
//! `continuum gateway`).

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "continuum-gateway",
    version,
    about = "Continuum's gateway agent"
)]
struct Cli {
    #[command(flatten)]
    args: continuum_gateway::cli::Args,
    /// Log filter (tracing syntax).
    #[arg(long, env = "CONTINUUM_LOG", default_value = "info")]
    log: String,
    /// Log lines as text, or as one JSON object per line (with the fields of
    /// the spans they happened in).
    #[arg(long, env = "CONTINUUM_LOG_FORMAT", value_enum, default_value_t = continuum_bus::logs::LogFormat::Text)]
    log_format: continuum_bus::logs::LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    continuum_bus::logs::init(
        &cli.log,
        "info",
        cli.log_format,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    match continuum_gateway::cli::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
