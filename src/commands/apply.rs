//! `continuum apply -f FILE` and `continuum rollback --to N`.

use std::path::Path;
use std::process::ExitCode;

use std::collections::BTreeMap;

use continuum_proto::v1::{
    event, ApplyRequest, ApplyResponse, ComponentState, DiffCounts, Document, Event,
    RollbackRequest, RolloutState,
};

use crate::remote;
use crate::style::Style;
use crate::Format;

use super::watch;

fn author() -> String {
    std::env::var("USER").unwrap_or_default()
}

/// The largest model file sent: an orchestrator's default message limit
/// (`serve --max-message-bytes`), unless `CONTINUUM_MAX_MODEL_BYTES` says.
const MODEL_LIMIT: u64 = 16 << 20;

/// Refuses a file the orchestrator would refuse for its size before reading
/// it: reading and packing a huge model costs seconds and gigabytes first.
fn check_size(file: &Path) -> anyhow::Result<()> {
    let limit = std::env::var("CONTINUUM_MAX_MODEL_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(MODEL_LIMIT);
    let size = std::fs::metadata(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
        .len();
    anyhow::ensure!(
        size <= limit,
        "{} is {size} bytes, more than the {limit} an orchestrator accepts (its --max-message-bytes); nothing was sent. Split the megamodel, or raise both limits (CONTINUUM_MAX_MODEL_BYTES here)",
        file.display()
    );
    Ok(())
}

/// Sends the file and the templates its functions name (read next to it). The
/// orchestrator validates everything itself, so the client does not: a file
/// that does not parse is still sent, and the answer says where it is broken.
fn request(file: &Path, change: Change) -> anyhow::Result<ApplyRequest> {
    check_size(file)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut templates = std::collections::HashMap::new();
    for runtime in continuum_models::load::template_runtimes(&text) {
        let path = dir.join(&runtime);
        let json = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the runtime template {} that {} names: {e}",
                path.display(),
                file.display()
            )
        })?;
        let name = path.display().to_string();
        templates.insert(runtime, Document { name, json });
    }
    Ok(ApplyRequest {
        megamodel: Some(Document {
            name: file.display().to_string(),
            json: text.into_bytes(),
        }),
        templates,
        expected_base: change.base,
        author: author(),
        message: change.message,
        artefacts: Default::default(),
        rollout: change.rollout,
    })
}

/// What an apply asks besides its file.
#[derive(Debug, Default)]
pub struct Change {
    /// Refuse unless the head is this revision.
    pub base: Option<u64>,
    /// A note kept in the history.
    pub message: String,
    /// Roll out in waves (`None`: all at once).
    pub rollout: Option<continuum_proto::v1::RolloutPolicy>,
}

pub fn apply(
    server: &remote::Server,
    file: &Path,
    change: Change,
    wait: Option<std::time::Duration>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let mut req = request(file, change)?;
    // Build contexts, function sources and firmware travel as blobs: packed
    // here (a source that cannot be read is refused now, with its path), and
    // sent only if the orchestrator lacks them.
    let packed = crate::artefacts::pack_all(file, &req)?;
    remote::block_on(async {
        let (artefacts, blobs, bytes) = crate::artefacts::upload(server, &packed).await?;
        if format != Format::Json {
            for p in &packed {
                eprintln!(
                    "packaged {} as sha256:{} ({} bytes)",
                    p.what,
                    &p.digest[..12],
                    p.bytes.len()
                );
            }
            match packed.len() - blobs {
                _ if packed.is_empty() => {}
                0 => eprintln!("uploaded {blobs} artefact(s), {bytes} bytes"),
                held => eprintln!(
                    "uploaded {blobs} artefact(s), {bytes} bytes; the orchestrator held {held} already"
                ),
            }
        }
        req.artefacts = artefacts.into_iter().collect();
        let mut client = remote::connect(server).await?;
        match client.apply(req).await {
            Ok(r) => {
                let r = r.into_inner();
                print(&r, format, style)?;
                match wait {
                    None => Ok(ExitCode::SUCCESS),
                    Some(wait) => rollout(server, &r, wait, format, style).await,
                }
            }
            Err(status) => match remote::rejection(&status) {
                Some(invalid) => {
                    if format == Format::Json {
                        super::print_json(&serde_json::json!({
                            "valid": false,
                            "diagnostics": invalid.diagnostics,
                        }))?;
                    } else {
                        super::report(&invalid, style);
                    }
                    Ok(ExitCode::from(1))
                }
                None => Err(remote::explain_change(status, "apply")),
            },
        }
    })
}

pub fn rollback(
    server: &remote::Server,
    to: u64,
    base: Option<u64>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        let r = client
            .rollback(RollbackRequest {
                to,
                expected_base: base,
                author: author(),
            })
            .await
            .map_err(|s| remote::explain_change(s, "rollback"))?;
        print(&r.into_inner(), format, style)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn print(r: &ApplyResponse, format: Format, style: &Style) -> anyhow::Result<()> {
    if format == Format::Json {
        return super::print_json(r);
    }
    let rev = r.revision.clone().unwrap_or_default();
    if rev.number == 0 {
        // A gateway's local API: no revision, a local model.
        outln!(
            "{} {}",
            style.yellow("applied locally:"),
            crate::style::clean(&rev.message)
        );
        return Ok(());
    }
    if r.unchanged {
        outln!(
            "no change: the model equals revision {} (the head)",
            rev.number
        );
        return Ok(());
    }
    let what = if rev.restores > 0 {
        format!(" (restores revision {})", rev.restores)
    } else {
        String::new()
    };
    outln!(
        "{} revision {}{what}: {}",
        style.green("applied"),
        style.bold(&rev.number.to_string()),
        remote::counts(rev.changes.as_ref())
    );
    for t in &r.targets {
        let gateway = if t.gateway_id.is_empty() {
            style.yellow("no gateway in the model")
        } else if t.held {
            format!("held for a later wave ({})", t.gateway_id)
        } else if t.pushed {
            format!("sent to {}", t.gateway_id)
        } else {
            format!("waiting for {} to connect", t.gateway_id)
        };
        outln!(
            "  {:<16} generation {:<4} {gateway}",
            t.subsystem,
            t.generation
        );
    }
    let held = r.targets.iter().filter(|t| t.held).count();
    if held > 0 {
        outln!(
            "staged: {} subsystem(s) in the first wave, {held} held; `continuum rollout status` follows it",
            r.targets.len() - held
        );
    }
    Ok(())
}

/// What a rollout still waits for, and what went wrong, from the events of
/// the orchestrator's log. Everything is judged by generation, never by time:
/// a gateway's clock may be anything.
#[derive(Debug)]
struct Rollout {
    /// The revision applied.
    revision: u64,
    /// It is rolled out in waves: the rollout's own end ends the wait.
    staged: bool,
    /// Subsystem → the generation it must run.
    waiting: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Rollout {
    /// The subsystems a revision changed that have a gateway to run them
    /// (removed subsystems are not waited for).
    fn new(applied: &ApplyResponse) -> Rollout {
        Rollout {
            revision: applied.revision.as_ref().map_or(0, |r| r.number),
            staged: applied.targets.iter().any(|t| t.held),
            waiting: applied
                .targets
                .iter()
                .filter(|t| !t.gateway_id.is_empty() && !t.removed)
                .map(|t| (t.subsystem.clone(), t.generation))
                .collect(),
            failures: Vec::new(),
        }
    }

    /// Takes one event; says whether the rollout is over (failed or converged).
    fn on(&mut self, e: &Event) -> Option<Outcome> {
        let wanted = |subsystem: &str| self.waiting.get(subsystem).copied();
        match e.kind.as_ref()? {
            event::Kind::Acknowledged(a)
                if !a.accepted && wanted(&a.subsystem) == Some(a.generation) =>
            {
                self.failures.push(format!(
                    "{}: target refused: {}",
                    a.subsystem,
                    crate::style::clean(&a.reason)
                ));
            }
            event::Kind::Component(c) => {
                let s = c.status.as_ref()?;
                let at = wanted(&c.subsystem)?;
                if s.state == ComponentState::Failed as i32 && s.generation >= at {
                    self.failures.push(format!(
                        "{}/{}: {}",
                        c.subsystem,
                        s.component,
                        crate::style::clean(&s.reason)
                    ));
                }
            }
            // A staged rollout ends the wait itself: the failures it
            // tolerates do not, its stopping does.
            event::Kind::Rollout(r) if r.revision == self.revision => match r.state() {
                RolloutState::Halted | RolloutState::RolledBack | RolloutState::Superseded => {
                    self.failures
                        .push(super::rollout::summary(r, &Style::new(false)));
                    return Some(Outcome::Failed);
                }
                RolloutState::Completed if self.failures.is_empty() && self.waiting.is_empty() => {
                    return Some(Outcome::Converged)
                }
                RolloutState::Completed => {
                    self.failures.extend(
                        self.waiting
                            .keys()
                            .map(|s| format!("{s}: the rollout completed without it converging")),
                    );
                    return Some(Outcome::Failed);
                }
                _ => {}
            },
            event::Kind::Current(c) => {
                let at = wanted(&c.subsystem)?;
                let settled = c.live.as_ref().is_none_or(|l| *l == DiffCounts::default());
                if c.observed_generation >= at && settled {
                    self.waiting.remove(&c.subsystem);
                }
            }
            _ => {}
        }
        if self.staged {
            None
        } else if !self.failures.is_empty() {
            Some(Outcome::Failed)
        } else if self.waiting.is_empty() {
            Some(Outcome::Converged)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Converged,
    Failed,
}

/// Follows the orchestrator's events from the revision on until each changed
/// subsystem has converged on its new generation, one fails or refuses it, or
/// `seconds` pass.
async fn rollout(
    server: &remote::Server,
    applied: &ApplyResponse,
    wait: std::time::Duration,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    if applied.event_seq == 0 && applied.revision.as_ref().is_some_and(|r| r.number == 0) {
        anyhow::bail!(
            "--wait follows the orchestrator's events, which a gateway's local API does not keep; see `continuum status` there"
        );
    }
    let mut rollout = Rollout::new(applied);
    let converged = |style: &Style| {
        if format == Format::Human {
            outln!(
                "{} every changed subsystem runs its new generation",
                style.green("converged:")
            );
        }
        ExitCode::SUCCESS
    };
    if rollout.waiting.is_empty() {
        return Ok(converged(style));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let after = applied.event_seq.saturating_sub(1);
    let followed = watch::follow(server, after, "", style, |e| {
        Ok(rollout.on(e).map(|outcome| match outcome {
            Outcome::Converged => converged(style),
            Outcome::Failed => {
                for f in &rollout.failures {
                    eprintln!("{} {f}", style.red("failed:"));
                }
                ExitCode::from(1)
            }
        }))
    });
    match tokio::time::timeout_at(deadline, followed).await {
        Ok(result) => result,
        Err(_) => {
            eprintln!(
                "{} the rollout did not converge within {} (see `continuum status`)",
                style.red("timed out:"),
                humantime::format_duration(wait)
            );
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_proto::v1::{
        Acknowledged, ComponentChanged, ComponentStatus, CurrentChanged, SubsystemTarget,
    };

    fn applied() -> ApplyResponse {
        let t = |s: &str, g: &str, removed| SubsystemTarget {
            subsystem: s.into(),
            generation: 5,
            gateway_id: g.into(),
            pushed: true,
            removed,
            held: false,
        };
        ApplyResponse {
            targets: vec![
                t("a", "gw-a", false),
                t("b", "", false),
                t("c", "gw-c", true),
            ],
            event_seq: 10,
            ..ApplyResponse::default()
        }
    }

    fn event(kind: event::Kind) -> Event {
        Event {
            seq: 11,
            unix_ms: 0,
            kind: Some(kind),
        }
    }

    fn failed(generation: u64, since_unix_ms: i64) -> Event {
        event(event::Kind::Component(ComponentChanged {
            subsystem: "a".into(),
            status: Some(ComponentStatus {
                component: "web".into(),
                state: ComponentState::Failed as i32,
                reason: "exited".into(),
                since_unix_ms,
                generation,
                ..ComponentStatus::default()
            }),
        }))
    }

    fn current(observed_generation: u64, changed: u32) -> Event {
        event(event::Kind::Current(CurrentChanged {
            subsystem: "a".into(),
            observed_generation,
            live: Some(DiffCounts {
                changed,
                ..DiffCounts::default()
            }),
        }))
    }

    #[test]
    fn only_subsystems_with_a_gateway_that_stay_are_waited_for() {
        let r = Rollout::new(&applied());
        assert_eq!(r.waiting.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_failure_of_an_older_generation_is_history_whatever_its_clock_says() {
        let mut r = Rollout::new(&applied());
        // Stamped far in the future (a gateway clock ahead), but generation 4.
        assert_eq!(r.on(&failed(4, i64::MAX / 2)), None);
        assert_eq!(
            r.on(&current(4, 0)),
            None,
            "an older generation converges nothing"
        );
        assert_eq!(r.on(&current(5, 1)), None, "something left to do");
        assert_eq!(r.on(&current(5, 0)), Some(Outcome::Converged));
    }

    #[test]
    fn a_failure_at_the_new_generation_ends_the_wait_whatever_its_clock_says() {
        let mut r = Rollout::new(&applied());
        // Stamped an hour in the past (a gateway clock behind), but generation 5.
        assert_eq!(r.on(&failed(5, 0)), Some(Outcome::Failed));
        assert_eq!(r.failures, ["a/web: exited"]);
    }

    #[test]
    fn a_refusal_of_the_new_generation_ends_the_wait() {
        let mut r = Rollout::new(&applied());
        let refused = |generation| {
            event(event::Kind::Acknowledged(Acknowledged {
                subsystem: "a".into(),
                gateway_id: "gw-a".into(),
                generation,
                accepted: false,
                reason: "an image build".into(),
            }))
        };
        assert_eq!(r.on(&refused(4)), None);
        assert_eq!(r.on(&refused(5)), Some(Outcome::Failed));
        assert_eq!(r.failures, ["a: target refused: an image build"]);
    }
}
