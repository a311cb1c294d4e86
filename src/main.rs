//! `continuum`: the command-line interface of Continuum.
//!
//! Exit codes: 0 success, 1 invalid model or failed operation, 2 usage error.

/// `println!` that ends the program quietly when stdout is closed (`| head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

mod commands;
mod load;
mod style;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "continuum",
    version,
    about = "Deploy and keep alive software across the cloud-edge-IoT continuum",
    propagate_version = true
)]
struct Cli {
    /// Colour output: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Log filter (tracing syntax), for example `debug` or `continuum=trace`.
    #[arg(long, global = true, env = "CONTINUUM_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Output format of commands that report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable by people.
    Human,
    /// One JSON document on stdout, for machines.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check model files (megamodels, subsystem models, templates) and report every problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Human)]
        output: Format,
    },
    /// Show what changes from OLD to NEW.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// A unified diff of the two models' canonical JSON instead of the summary.
        #[arg(long, conflicts_with = "output")]
        text: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Human)]
        output: Format,
    },
    /// Show the ordered steps that turn OLD into NEW.
    Plan {
        old: PathBuf,
        new: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Human)]
        output: Format,
    },
    /// Import a model from another tool's format.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
}

#[derive(Debug, Subcommand)]
enum ImportFrom {
    /// A GeneSIS deployment model (JSON with a `dm` member).
    Genesis {
        file: PathBuf,
        /// Where to write the Continuum megamodel (standard output when absent).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Overwrite OUT if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => style::auto(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
    let style = style::Style::new(color);
    let result = match cli.command {
        Command::Validate { files, output } => commands::validate::run(&files, output, &style),
        Command::Diff {
            old,
            new,
            text,
            output,
        } => commands::diff::run(&old, &new, text, output, &style),
        Command::Plan { old, new, output } => commands::plan::run(&old, &new, output, &style),
        Command::Import {
            from: ImportFrom::Genesis { file, out, force },
        } => commands::import::genesis(&file, out.as_deref(), force, &style),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} {e:#}", style.red("error:"));
            ExitCode::from(1)
        }
    }
}
