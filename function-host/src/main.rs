//! `continuum-function-host [OPTIONS] -- HANDLER [ARGS...]`: runs a function's
//! handler once per message of its inputs. Every option can also come from the
//! environment, which is how Continuum configures it inside a container.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use continuum_bus::args::duration;
use continuum_bus::BrokerUrl;
use continuum_function_host::invoke::Handler;
use continuum_function_host::{run, Config, Metrics};
use tokio_util::sync::CancellationToken;

/// Runs a Continuum function's handler once per message: the payload on its
/// standard input, its standard output published as the reply.
#[derive(Debug, Parser)]
#[command(name = "continuum-function-host", version)]
struct Args {
    /// The function's id: inputs on /<function>/in/#, replies on
    /// /<function>/out/<stream>, dead letters on /<function>/dlq.
    #[arg(long, env = "CONTINUUM_FUNCTION")]
    function: String,
    /// The local broker.
    #[arg(
        long,
        env = "CONTINUUM_BROKER",
        default_value = "mqtt://127.0.0.1:1883"
    )]
    broker: BrokerUrl,
    /// The function's output streams (comma-separated); replies go to the first.
    #[arg(
        long,
        env = "CONTINUUM_OUTPUTS",
        value_delimiter = ',',
        default_value = "out"
    )]
    outputs: Vec<String>,
    /// How long one run of the handler may take before it is killed.
    #[arg(long, env = "CONTINUUM_TIMEOUT", default_value = "10s", value_parser = duration)]
    timeout: Duration,
    /// Handler runs at once, at most.
    #[arg(long, env = "CONTINUUM_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Runs after a failed one before the message is dead-lettered.
    #[arg(long, env = "CONTINUUM_RETRIES", default_value_t = 2)]
    retries: u32,
    /// The pause before the first retry; it doubles for each next one.
    #[arg(long, env = "CONTINUUM_RETRY_BACKOFF", default_value = "200ms", value_parser = duration)]
    retry_backoff: Duration,
    /// The largest reply accepted, in bytes.
    #[arg(long, env = "CONTINUUM_MAX_REPLY", default_value_t = 1 << 20)]
    max_reply: usize,
    /// Where the ledger of handled messages is kept (it must outlive a restart).
    #[arg(long, env = "CONTINUUM_STATE_DIR", default_value = ".continuum-host")]
    state_dir: PathBuf,
    /// Serve metrics on http://ADDRESS/metrics.
    #[arg(long, env = "CONTINUUM_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as text, or as one JSON object per line (with the fields of
    /// the spans they happened in).
    #[arg(long, env = "CONTINUUM_LOG_FORMAT", value_enum, default_value_t = continuum_bus::logs::LogFormat::Text)]
    log_format: continuum_bus::logs::LogFormat,
    /// The handler and its arguments.
    #[arg(last = true, required = true, value_name = "HANDLER")]
    handler: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    continuum_bus::logs::init(
        &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        "info",
        args.log_format,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let output = args
        .outputs
        .iter()
        .find(|o| !o.is_empty())
        .cloned()
        .unwrap_or_else(|| "out".to_owned());
    let config = Config {
        function: args.function.clone(),
        broker: args.broker,
        output,
        handler: Handler {
            command: args.handler,
            timeout: args.timeout,
            max_output: args.max_reply,
        },
        concurrency: usize::from(args.concurrency),
        retries: args.retries,
        backoff: args.retry_backoff,
        state_dir: args.state_dir,
    };
    let metrics = Arc::new(Metrics::new(&args.function));
    let shutdown = CancellationToken::new();
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(address = %listener.local_addr()?, "metrics on /metrics");
        tokio::spawn(continuum_function_host::metrics::serve(
            listener,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    let stop = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    run(config, metrics, shutdown)
        .await
        .context("the function host stopped")
}
