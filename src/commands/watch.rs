//! `continuum watch`: follows the orchestrator's events, with a progress bar
//! per subsystem while a rollout runs (on a terminal).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use continuum_gateway::backoff::Backoff;
use continuum_proto::v1::{event, ComponentState, DiffCounts, Event, StepState, WatchRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use tonic::Code;

use crate::remote::{self, clock, explain};
use crate::style::{clean, Style};
use crate::Format;

/// One line per event, as people read it.
pub fn describe(e: &Event, style: &Style) -> String {
    let Some(kind) = &e.kind else {
        return "an event of a kind this CLI does not know".to_owned();
    };
    match kind {
        event::Kind::Revision(r) => {
            let by = if r.author.is_empty() {
                String::new()
            } else {
                format!(" by {}", clean(&r.author))
            };
            let what = if r.restores > 0 {
                format!(" restoring revision {}", r.restores)
            } else {
                String::new()
            };
            format!(
                "{} {}{what}{by}: {}",
                style.bold("revision"),
                r.number,
                remote::counts(r.changes.as_ref()).replace("in sync", "no change")
            )
        }
        event::Kind::TargetSent(t) => format!(
            "{}: generation {} sent to {}",
            t.subsystem, t.generation, t.gateway_id
        ),
        event::Kind::Acknowledged(a) if a.accepted => format!(
            "{}: {} accepted generation {}",
            a.subsystem, a.gateway_id, a.generation
        ),
        event::Kind::Acknowledged(a) => format!(
            "{}: {} {} generation {}: {}",
            a.subsystem,
            a.gateway_id,
            style.red("refused"),
            a.generation,
            clean(&a.reason)
        ),
        event::Kind::Connected(c) => format!(
            "{} {} (subsystem {}, version {})",
            c.gateway_id,
            style.green("connected"),
            if c.subsystem.is_empty() {
                "none"
            } else {
                &c.subsystem
            },
            clean(&c.version)
        ),
        event::Kind::Disconnected(d) => format!(
            "{} {}: {}",
            d.gateway_id,
            style.yellow("disconnected"),
            clean(&d.reason)
        ),
        event::Kind::Component(c) => {
            let s = c.status.clone().unwrap_or_default();
            let state = ComponentState::try_from(s.state).unwrap_or(ComponentState::Unspecified);
            let word = state
                .as_str_name()
                .trim_start_matches("COMPONENT_STATE_")
                .to_ascii_lowercase();
            let word = match state {
                ComponentState::Failed => style.red(&word),
                ComponentState::Running => style.green(&word),
                _ => word,
            };
            if s.reason.is_empty() && !s.detail.is_empty() {
                format!(
                    "{}/{}: {word} ({})",
                    c.subsystem,
                    s.component,
                    clean(&s.detail)
                )
            } else if s.reason.is_empty() {
                format!("{}/{}: {word}", c.subsystem, s.component)
            } else {
                format!(
                    "{}/{}: {word}: {}",
                    c.subsystem,
                    s.component,
                    clean(&s.reason)
                )
            }
        }
        event::Kind::Step(s) => {
            let state = StepState::try_from(s.state).unwrap_or(StepState::Unspecified);
            let word = state
                .as_str_name()
                .trim_start_matches("STEP_STATE_")
                .to_ascii_lowercase();
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", clean(&s.reason))
            };
            let (word, reason) = if state == StepState::Failed {
                (style.red(&word), style.red(&reason))
            } else {
                (word, reason)
            };
            format!(
                "{}: step {} {word}{reason} ({}/{})",
                s.subsystem, s.step, s.done, s.total
            )
        }
        event::Kind::Diverged(d) => format!(
            "{}: {} {} from generation {} since {} ({}){}",
            d.subsystem,
            d.gateway_id,
            style.yellow("ran a local model"),
            d.base_generation,
            clock(d.since_unix_ms),
            remote::counts(d.changes.as_ref()),
            if d.message.is_empty() {
                String::new()
            } else {
                format!(": {}", clean(&d.message))
            }
        ),
        event::Kind::Current(c) => format!(
            "{}: running generation {}, live diff {}",
            c.subsystem,
            c.observed_generation,
            remote::counts(c.live.as_ref())
        ),
        event::Kind::Rollout(r) => super::rollout::summary(r, style),
    }
}

/// Progress of the rollouts under way, one bar per subsystem under the event
/// lines (indicatif keeps the lines above the bars).
struct Bars {
    multi: MultiProgress,
    rollouts: BTreeMap<String, ProgressBar>,
}

impl Default for Bars {
    fn default() -> Bars {
        Bars {
            // Event lines belong on stdout (a terminal here), bars with them.
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            rollouts: BTreeMap::new(),
        }
    }
}

impl Bars {
    fn update(&mut self, e: &Event) {
        match &e.kind {
            Some(event::Kind::Step(s)) => {
                let multi = &self.multi;
                let bar = self.rollouts.entry(s.subsystem.clone()).or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "  {prefix:<16} {msg:<14} [{bar:30}] {pos}/{len}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("#-");
                    multi.add(
                        ProgressBar::new(0)
                            .with_style(style)
                            .with_prefix(s.subsystem.clone()),
                    )
                });
                bar.set_length(u64::from(s.total));
                bar.set_position(u64::from(s.done.min(s.total)));
                bar.set_message(format!("generation {}", s.generation));
            }
            Some(event::Kind::Current(c))
                if c.live.unwrap_or_default() == DiffCounts::default() =>
            {
                if let Some(bar) = self.rollouts.remove(&c.subsystem) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            _ => {}
        }
    }
}

/// Follows the events; when the orchestrator goes away (a restart, a network
/// cut) it reconnects with backoff and resumes right after the last event shown,
/// so nothing is missed. The first connection's failure is an error.
pub fn run(
    server: &remote::Server,
    after: u64,
    subsystem: Option<String>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal() && format == Format::Human;
    let subsystem = subsystem.unwrap_or_default();
    let mut bars = Bars::default();
    remote::block_on(follow(server, after, &subsystem, style, |e| {
        show(e, format, terminal, &mut bars, style)?;
        Ok(None)
    }))
}

/// Hands every event after `after` to `on_event` until it returns an exit
/// code, reconnecting after a lost stream and resuming after the last event
/// handed over (so nothing is missed and nothing is seen twice).
pub async fn follow(
    server: &remote::Server,
    after: u64,
    subsystem: &str,
    style: &Style,
    mut on_event: impl FnMut(&Event) -> anyhow::Result<Option<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    {
        let mut last = after;
        let mut first = true;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let opened = async {
                let mut client = remote::connect(server).await?;
                let request = WatchRequest {
                    after: last,
                    subsystem: subsystem.to_owned(),
                };
                client.watch(request).await.map_err(explain)
            };
            let mut stream = match opened.await {
                Ok(s) => s.into_inner(),
                Err(e) if first => return Err(e),
                Err(_) => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if !first {
                eprintln!(
                    "{}",
                    style.dim(&format!("reconnected; resuming after event #{last}"))
                );
            }
            first = false;
            backoff.reset();
            let why = loop {
                let e = match stream.message().await {
                    Ok(Some(e)) => e,
                    Ok(None) => break "the orchestrator ended the stream".to_owned(),
                    Err(status) if status.code() == Code::OutOfRange => {
                        return Err(explain(status))
                    }
                    Err(status) => break explain(status).to_string(),
                };
                last = e.seq;
                if let Some(code) = on_event(&e)? {
                    return Ok(code);
                }
            };
            eprintln!("{}", style.dim(&format!("{why}; reconnecting")));
        }
    }
}

fn show(
    e: &Event,
    format: Format,
    terminal: bool,
    bars: &mut Bars,
    style: &Style,
) -> anyhow::Result<()> {
    match format {
        Format::Json => outln!("{}", serde_json::to_string(e)?),
        Format::Human if terminal => {
            let line = format!(
                "{} {} {}",
                style.dim(&clock(e.unix_ms)),
                style.dim(&format!("#{}", e.seq)),
                describe(e, style)
            );
            bars.multi.println(line)?;
            bars.update(e);
        }
        Format::Human => outln!("{} #{} {}", clock(e.unix_ms), e.seq, describe(e, style)),
    }
    Ok(())
}
