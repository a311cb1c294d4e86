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
/// does not parse), colours only for text on a terminal (`ansi`). With the
/// embedded broker, the count of what it skipped for lagging subscribers
/// ([`crate::lag`]) is kept whatever the filter.
pub fn init(filter: &str, fallback: &str, format: LogFormat, ansi: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(ansi).boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(lines.with_filter(filter));
    #[cfg(feature = "broker")]
    let registry = registry.with(crate::lag::layer());
    registry.init();
}
