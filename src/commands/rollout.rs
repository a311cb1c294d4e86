//! Staged rollouts from the command line: the policy flags of `continuum
//! apply`, and `continuum rollout status|pause|resume|abort`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use continuum_proto::v1::{
    ControlRolloutRequest, GetRolloutRequest, Rollout, RolloutAction, RolloutPolicy, RolloutState,
};

use crate::remote::{self, clock, explain};
use crate::style::{clean, Style};
use crate::Format;

/// A count, or a percentage (`10%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

/// Reads `N` or `N%` (a percentage from 1 to 100).
pub fn amount(s: &str) -> Result<Amount, String> {
    let s = s.trim();
    if let Some(p) = s.strip_suffix('%') {
        let p: u32 = p
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage: expected e.g. 10%"))?;
        if !(1..=100).contains(&p) {
            return Err(format!("`{s}`: a percentage is from 1% to 100%"));
        }
        return Ok(Amount::Percent(p));
    }
    s.parse()
        .map(Amount::Count)
        .map_err(|_| format!("`{s}` is neither a count nor a percentage (e.g. 5 or 10%)"))
}

/// Reads a wave's size: at least one subsystem.
fn wave(s: &str) -> Result<Amount, String> {
    match amount(s)? {
        Amount::Count(0) => {
            Err("a wave holds at least one subsystem (or give a percentage)".into())
        }
        a => Ok(a),
    }
}

/// Reads a `KEY=VALUE` label.
fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("`{s}` is not a label: expected KEY=VALUE")),
    }
}

/// How `continuum apply` rolls a revision out (none of these: every changed
/// subsystem at once).
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Roll out in waves of this many subsystems, or this percentage of
    /// those the revision changes (`10%`), each once the one before settled.
    #[arg(long, value_name = "N|N%", value_parser = wave)]
    pub wave: Option<Amount>,
    /// A first wave of this many subsystems (those whose gateways carry the
    /// `--canary-label`s when given).
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// The canary wave is the gateways with this label (repeatable: all of them).
    #[arg(long = "canary-label", value_name = "KEY=VALUE", value_parser = label)]
    pub canary_labels: Vec<(String, String)>,
    /// Failed or refused subsystems tolerated before the rollout stops (a
    /// count, or a percentage of those released; default 0: the first stops it).
    #[arg(long, value_name = "N|N%", value_parser = amount)]
    pub max_failures: Option<Amount>,
    /// When the rollout stops on failures, give every subsystem it changed
    /// its earlier target back (otherwise it halts for `rollout resume|abort`).
    #[arg(long)]
    pub rollback_on_failure: bool,
}

impl PolicyArgs {
    /// The policy these flags ask for (`None`: all at once).
    pub fn policy(&self) -> Option<RolloutPolicy> {
        let staged = self.wave.is_some()
            || self.canary.is_some()
            || !self.canary_labels.is_empty()
            || self.max_failures.is_some()
            || self.rollback_on_failure;
        if !staged {
            return None;
        }
        let mut p = RolloutPolicy {
            canary_labels: self.canary_labels.iter().cloned().collect(),
            canary_count: self.canary.unwrap_or(0),
            rollback_on_failure: self.rollback_on_failure,
            ..RolloutPolicy::default()
        };
        match self.wave {
            Some(Amount::Count(n)) => p.wave_size = n,
            Some(Amount::Percent(n)) => p.wave_percent = n,
            None => {}
        }
        match self.max_failures {
            Some(Amount::Count(n)) => p.max_failures = n,
            Some(Amount::Percent(n)) => p.max_failures_percent = n,
            None => {}
        }
        Some(p)
    }
}

/// `continuum rollout ...`
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The newest staged rollout: its state, waves and counts.
    Status,
    /// Start no new wave (the current one goes on) until resumed.
    Pause(Control),
    /// Go on with a paused rollout, or a halted one (its failures accepted).
    Resume(Control),
    /// Stop the rollout and give every subsystem it changed its earlier
    /// target back (a new revision).
    Abort(Control),
}

#[derive(Debug, Clone, Args)]
pub struct Control {
    /// Refuse unless the running rollout is of this revision.
    #[arg(long)]
    revision: Option<u64>,
    /// Why, kept with the rollout.
    #[arg(short = 'm', long, default_value = "")]
    message: String,
}

pub fn run(
    server: &remote::Server,
    command: Command,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let (action, c) = match command {
            Command::Status => {
                let r = client
                    .get_rollout(GetRolloutRequest {})
                    .await
                    .map_err(explain)?
                    .into_inner();
                print(&r, format, style)?;
                return Ok(ExitCode::SUCCESS);
            }
            Command::Pause(c) => (RolloutAction::Pause, c),
            Command::Resume(c) => (RolloutAction::Resume, c),
            Command::Abort(c) => (RolloutAction::Abort, c),
        };
        let r = client
            .control_rollout(ControlRolloutRequest {
                action: action as i32,
                revision: c.revision.unwrap_or(0),
                author: std::env::var("USER").unwrap_or_default(),
                reason: c.message,
            })
            .await
            .map_err(explain)?
            .into_inner();
        print(&r, format, style)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A rollout's state as people read it.
pub fn state(r: &Rollout, style: &Style) -> String {
    let name = r
        .state()
        .as_str_name()
        .trim_start_matches("ROLLOUT_STATE_")
        .to_ascii_lowercase()
        .replace('_', " ");
    match r.state() {
        RolloutState::Running | RolloutState::Completed => style.green(&name),
        RolloutState::Paused | RolloutState::Superseded => style.yellow(&name),
        _ => style.red(&name),
    }
}

/// One line: the rollout's revision, state, and counts.
pub fn summary(r: &Rollout, style: &Style) -> String {
    let mut s = format!(
        "rollout of revision {}: {}, wave {} — {} of {} released, {} converged, {} failing",
        r.revision,
        state(r, style),
        r.waves.len(),
        r.released,
        r.total,
        r.converged,
        r.failed
    );
    if r.tolerated > 0 {
        s.push_str(&format!(" ({} accepted at resume)", r.tolerated));
    }
    if !r.reason.is_empty() {
        s.push_str(&format!(": {}", clean(&r.reason)));
    }
    s
}

fn print(r: &Rollout, format: Format, style: &Style) -> anyhow::Result<()> {
    if format == Format::Json {
        return super::print_json(r);
    }
    outln!("{}", summary(r, style));
    if r.ended_by > 0 {
        outln!("  ended by revision {}", r.ended_by);
    }
    for w in &r.waves {
        let settled = if w.settled_unix_ms > 0 {
            format!("settled {}", clock(w.settled_unix_ms))
        } else {
            "settling".to_owned()
        };
        let names: Vec<&str> = w.subsystems.iter().take(6).map(String::as_str).collect();
        let more = w.subsystems.len().saturating_sub(names.len());
        outln!(
            "  wave {:<3}{} {:>5} subsystem(s), started {}, {settled}: {}{}",
            w.number,
            if w.canary { " (canary)" } else { "         " },
            w.subsystems.len(),
            clock(w.started_unix_ms),
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let held = r.total.saturating_sub(r.released);
    if held > 0 {
        outln!("  {held} subsystem(s) held for later waves");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_counts_or_percentages() {
        assert_eq!(amount("5"), Ok(Amount::Count(5)));
        assert_eq!(amount("10%"), Ok(Amount::Percent(10)));
        assert!(amount("0%").unwrap_err().contains("from 1% to 100%"));
        assert!(amount("ten").unwrap_err().contains("neither a count"));
        assert!(label("ring").unwrap_err().contains("KEY=VALUE"));
        assert!(wave("0").unwrap_err().contains("at least one"));
        assert_eq!(wave("3"), Ok(Amount::Count(3)));
    }

    #[test]
    fn no_flag_means_all_at_once_and_any_flag_stages() {
        assert_eq!(PolicyArgs::default().policy(), None);
        let p = PolicyArgs {
            wave: Some(Amount::Percent(10)),
            max_failures: Some(Amount::Count(2)),
            ..PolicyArgs::default()
        }
        .policy()
        .unwrap();
        assert_eq!((p.wave_percent, p.wave_size, p.max_failures), (10, 0, 2));
    }
}
