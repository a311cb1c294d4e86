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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match continuum_gateway::cli::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
