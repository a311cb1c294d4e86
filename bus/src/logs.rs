//! Logging for every long-running command: a `tracing` subscriber writing to
//! standard error, as text for people or as one JSON object per line for
//! log collectors (with the fields of the spans an event happened in, so a
//! step's line names its subsystem, generation and component).

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line: time, level, target, fields, the current
    /// span and every span it is in.
    Json,
}

/// Installs the subscriber: `filter` in tracing's syntax (`fallback` when it
/// does not parse), colours only for text on a terminal (`ansi`).
pub fn init(filter: &str, fallback: &str, format: LogFormat, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
