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

mod artefacts;
mod commands;
mod load;
mod remote;
mod style;
mod tier;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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
    /// The embedded brokers' own connection errors are left out unless asked for.
    #[arg(
        long,
        global = true,
        env = "CONTINUUM_LOG",
        default_value = "warn,rumqttd=off"
    )]
    log: String,
    /// Log lines as text, or as one JSON object per line with the fields of
    /// the spans they happened in (reconcile, step: subsystem, generation,
    /// component), for `serve`, `gateway` and `up`.
    #[arg(long, global = true, env = "CONTINUUM_LOG_FORMAT", value_enum, default_value_t = continuum_bus::logs::LogFormat::Text)]
    log_format: continuum_bus::logs::LogFormat,
    /// The orchestrator to talk to (`host:port` or a URL; several, separated
    /// by commas, when orchestrators share an etcd store: the leader is the
    /// one that answers); `continuum gateway` dials it too.
    #[arg(long, global = true, env = "CONTINUUM_SERVER", default_value = remote::DEFAULT_SERVER)]
    server: String,
    /// The bearer token the orchestrator knows us by (see `continuum token`).
    #[arg(
        long,
        global = true,
        env = "CONTINUUM_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// A file whose first line is the token.
    #[arg(
        long,
        global = true,
        env = "CONTINUUM_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The CA (PEM) an `https://` orchestrator's certificate is checked
    /// against (default: the system's roots).
    #[arg(long, global = true, env = "CONTINUUM_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Output of the commands that report: `human`, or `json` (one JSON
    /// document on stdout, for machines).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Human)]
    output: Format,
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
    },
    /// Show what changes from OLD to NEW (two files), or on the orchestrator:
    /// target against current (`--live`), or between revisions (`--from`).
    Diff {
        #[arg(required_unless_present_any = ["live", "from"], requires = "new")]
        old: Option<PathBuf>,
        new: Option<PathBuf>,
        /// A unified diff of the two models' canonical JSON instead of the summary.
        #[arg(long, conflicts_with_all = ["output", "live", "from"])]
        text: bool,
        /// What the orchestrator's target still changes in what runs.
        #[arg(long, conflicts_with_all = ["old", "from"])]
        live: bool,
        /// With `--live`: only this subsystem.
        #[arg(long, requires = "live")]
        subsystem: Option<String>,
        /// With `--live`: keep following it, showing it again each time it
        /// changes (redrawn on a terminal; one JSON object per line with `-o json`).
        #[arg(long, requires = "live")]
        follow: bool,
        /// Compare this revision...
        #[arg(long, conflicts_with = "old")]
        from: Option<u64>,
        /// ...with this one (default: the head).
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
    /// Where placement puts a function of a megamodel, and why: every gateway,
    /// its score, and why the others are excluded
    Explain {
        /// The function's id.
        function: String,
        /// The megamodel file.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Score by the capacity the model declares, without asking the
        /// orchestrator for the load its gateways measured.
        #[arg(long)]
        offline: bool,
    },
    /// Show the ordered steps that turn OLD into NEW.
    Plan { old: PathBuf, new: PathBuf },
    /// Run the orchestrator.
    Serve(Box<commands::serve::Args>),
    /// Run the whole system on this machine: the orchestrator, a gateway agent
    /// per subsystem, a simulated sensor; apply the model and show it working
    /// (Ctrl-C stops everything and removes its containers)
    Up(commands::up::Args),
    /// Run a gateway agent (the same as `continuum-gateway`).
    Gateway(Box<continuum_gateway::cli::Args>),
    /// Submit a megamodel to the orchestrator as a new revision.
    Apply {
        /// The megamodel file (the templates its functions name are sent along).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Refuse unless the head is this revision (optimistic concurrency; 0: none yet).
        #[arg(long)]
        base: Option<u64>,
        /// A note kept in the history.
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        /// Then wait up to this long for the changed subsystems to run it
        /// (exit 1 if one fails or time runs out), e.g. `--wait 60s`.
        #[arg(long, value_name = "DURATION", value_parser = continuum_bus::args::duration)]
        wait: Option<std::time::Duration>,
        #[command(flatten)]
        rollout: commands::rollout::PolicyArgs,
    },
    /// Offer the gateways an agent build they upgrade themselves to.
    Agent {
        #[command(subcommand)]
        what: commands::agent::Command,
    },
    /// Follow or steer a staged rollout (`apply --wave`): status, pause,
    /// resume, abort.
    Rollout {
        #[command(subcommand)]
        what: commands::rollout::Command,
    },
    /// Print a target (default) or current model from the orchestrator.
    Get {
        /// One subsystem's model instead of the megamodel.
        #[arg(long)]
        subsystem: Option<String>,
        /// What runs, as the gateways report it.
        #[arg(long, conflicts_with_all = ["target", "revision"])]
        current: bool,
        /// The target (the default).
        #[arg(long)]
        target: bool,
        /// The target at this revision (default: the head).
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Follow the orchestrator's events (revisions, pushes, statuses, progress).
    Watch {
        /// Start after this event sequence number (to resume; 0: from the oldest kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only this subsystem's events (and revisions).
        #[arg(long)]
        subsystem: Option<String>,
    },
    /// Subsystems, their gateways, generations, live diffs and failing components.
    Status,
    /// Make an earlier revision's model the target again (as a new revision).
    Rollback {
        #[arg(long)]
        to: u64,
        /// Refuse unless the head is this revision.
        #[arg(long)]
        base: Option<u64>,
    },
    /// Gateways that registered with the orchestrator.
    Gateways,
    /// Remove the record of a gateway that is gone (not connected, named by no
    /// subsystem); needs the admin role.
    ForgetGateway {
        /// The gateway's id.
        id: String,
    },
    /// Revisions, newest first.
    History {
        /// At most this many (0: all).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Make the certificates of a mutually authenticated deployment: a CA,
    /// the orchestrator's certificate, one per gateway.
    Certs {
        #[command(subcommand)]
        what: commands::certs::Certs,
    },
    /// Make a bearer token for the client API and add its hash to the
    /// orchestrator's tokens file (the token is printed once, on stdout).
    Token(commands::token::Args),
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
        #[arg(long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Overwrite OUT if it exists.
        #[arg(long)]
        force: bool,
    },
}

/// The global flags mean one thing everywhere: `continuum gateway` dials the
/// `--server` it is given (as `--orchestrator`), and commands that report
/// nothing refuse `-o json` rather than ignore it.
fn settle_globals(cli: &mut Cli, matches: &ArgMatches) -> Result<(), clap::Error> {
    let (name, sub) = matches.subcommand().unwrap_or(("", matches));
    let given = |id: &str| sub.value_source(id) == Some(ValueSource::CommandLine);
    let usage =
        |message: String| Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message);
    if given("output")
        && cli.output == Format::Json
        && matches!(
            name,
            "serve" | "gateway" | "import" | "certs" | "token" | "forget-gateway"
        )
    {
        return Err(usage(format!(
            "`continuum {name}` reports nothing as JSON; -o json applies to the commands that report"
        )));
    }
    if let Command::Gateway(args) = &mut cli.command {
        if given("server") {
            if given("orchestrator") && args.orchestrator != cli.server {
                return Err(usage(format!(
                    "--server {} and --orchestrator {} name two orchestrators; give one",
                    cli.server, args.orchestrator
                )));
            }
            args.orchestrator = cli.server.clone();
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = settle_globals(&mut cli, &matches) {
        e.exit();
    }
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => style::auto(),
    };
    continuum_bus::logs::init(&cli.log, "warn", cli.log_format, color);
    let style = style::Style::new(color);
    let output = cli.output;
    let server = match remote::token(cli.token.clone(), cli.token_file.as_deref())
        .and_then(|token| remote::Server::new(&cli.server, cli.ca.as_deref(), token))
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("{} {e:#}", style.red("error:"));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Validate { files } => commands::validate::run(&files, output, &style),
        Command::Diff {
            old,
            new,
            text,
            live,
            subsystem,
            follow,
            from,
            to,
        } => match (old, new, from) {
            (Some(old), Some(new), _) => commands::diff::run(&old, &new, text, output, &style),
            (_, _, Some(from)) => commands::diff::remote(
                &server,
                commands::diff::Remote::Revisions {
                    from,
                    to: to.unwrap_or(0),
                },
                output,
                &style,
            ),
            _ if follow => commands::diff::follow_live(&server, subsystem, output, &style),
            _ => {
                debug_assert!(live);
                commands::diff::remote(
                    &server,
                    commands::diff::Remote::Live { subsystem },
                    output,
                    &style,
                )
            }
        },
        Command::Serve(args) => commands::serve::run(*args),
        Command::Up(args) => commands::up::run(args, &style),
        Command::Gateway(args) => continuum_gateway::cli::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Apply {
            file,
            base,
            message,
            wait,
            rollout,
        } => commands::apply::apply(
            &server,
            &file,
            commands::apply::Change {
                base,
                message,
                rollout: rollout.policy(),
            },
            wait,
            output,
            &style,
        ),
        Command::Rollout { what } => commands::rollout::run(&server, what, output, &style),
        Command::Agent { what } => commands::agent::run(&server, what, output, &style),
        Command::Get {
            subsystem,
            current,
            target: _,
            revision,
        } => commands::get::run(&server, subsystem, current, revision, output),
        Command::Watch { after, subsystem } => {
            commands::watch::run(&server, after, subsystem, output, &style)
        }
        Command::Status => commands::status::status(&server, output, &style),
        Command::Rollback { to, base } => {
            commands::apply::rollback(&server, to, base, output, &style)
        }
        Command::Gateways => commands::status::gateways(&server, output, &style),
        Command::ForgetGateway { id } => commands::status::forget_gateway(&server, &id),
        Command::History { limit } => commands::status::history(&server, limit, output, &style),
        Command::Plan { old, new } => commands::plan::run(&old, &new, output, &style),
        Command::Explain {
            function,
            file,
            offline,
        } => commands::explain::run(
            &function,
            &file,
            (!offline).then_some(&server),
            output,
            &style,
        ),
        Command::Certs { what } => commands::certs::run(what),
        Command::Token(args) => commands::token::run(args),
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
