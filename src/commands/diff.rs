//! `continuum diff OLD NEW`

use std::path::Path;
use std::process::ExitCode;

use continuum_models::diff::{ChangeAction, FieldChange, ReplaceCause};
use continuum_models::{Component, ModelDiff};
use serde::Serialize;
use similar::{ChangeTag, TextDiff};

use crate::load::Comparable;
use crate::style::Style;
use crate::Format;

#[derive(Serialize)]
struct Output<'a> {
    old: String,
    new: String,
    diff: &'a ModelDiff,
}

pub fn run(
    old: &Path,
    new: &Path,
    text: bool,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let Some((a, b)) = super::load_pair(old, new, style) else {
        return Ok(ExitCode::from(1));
    };
    if text {
        print_text_diff(old, new, &a, &b, style)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (fa, fb) = (a.flat(), b.flat());
    let d = continuum_models::diff(&fa, &fb);
    match format {
        Format::Json => super::print_json(&Output {
            old: old.display().to_string(),
            new: new.display().to_string(),
            diff: &d,
        })?,
        Format::Human => {
            let index = fb.index();
            let title = format!(
                "{} {} {} {}",
                style.bold("diff"),
                old.display(),
                style.dim("->"),
                new.display()
            );
            print_summary(
                &title,
                &d,
                &|id| index.get(id).map(|c| subsystem_of(c)).unwrap_or_default(),
                style,
            )
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text_diff(
    old: &Path,
    new: &Path,
    a: &Comparable,
    b: &Comparable,
    style: &Style,
) -> anyhow::Result<()> {
    let (ta, tb) = (a.canonical_json()?, b.canonical_json()?);
    let diff = TextDiff::from_lines(&ta, &tb);
    let (on, nn) = (old.display().to_string(), new.display().to_string());
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header(&on, &nn)
        .to_string();
    for line in unified.lines() {
        let painted = if line.starts_with("+++") || line.starts_with("---") {
            style.bold(line)
        } else if line.starts_with('+') {
            style.green(line)
        } else if line.starts_with('-') {
            style.red(line)
        } else if line.starts_with("@@") {
            style.cyan(line)
        } else {
            line.to_owned()
        };
        outln!("{painted}");
    }
    // Keep `similar`'s own change count as the source of truth for "no change".
    if diff.iter_all_changes().all(|c| c.tag() == ChangeTag::Equal) {
        outln!("no differences");
    }
    Ok(())
}

fn subsystem_of(c: &Component) -> String {
    c.subsystem
        .as_deref()
        .map(|s| format!("[{s}]"))
        .unwrap_or_else(|| "[no subsystem]".to_owned())
}

fn short(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 72 {
                format!("{}…", s.chars().take(71).collect::<String>())
            } else {
                s
            }
        }
    }
}

fn print_fields(fields: &[FieldChange], style: &Style) {
    let width = fields.iter().map(|f| f.path.len()).max().unwrap_or(0);
    for f in fields {
        outln!(
            "      {:<width$}  {} {} {}",
            f.path,
            style.red(&short(&f.old)),
            style.dim("->"),
            style.green(&short(&f.new)),
        );
    }
}

/// The changes, one line per component; `label` gives the subsystem label of a
/// changed component.
fn print_summary(title: &str, d: &ModelDiff, label: &dyn Fn(&str) -> String, style: &Style) {
    // Components of a flattened model carry their subsystem; those of one
    // subsystem's model do not, and take the label.
    let own_label = |c: &Component| {
        if c.subsystem.is_some() {
            subsystem_of(c)
        } else {
            label(&c.id)
        }
    };
    outln!("{title}");
    if d.is_empty() {
        outln!("no changes");
        return;
    }
    let replaced = d.changed.iter().filter(|c| c.is_replace()).count();
    outln!(
        "{} added, {} removed, {} changed ({replaced} replaced, {} updated in place), {} link(s) added, {} removed",
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        d.changed.len() - replaced,
        d.links_added.len(),
        d.links_removed.len()
    );
    for f in &d.model {
        outln!(
            "  ~ model {}: {} -> {}",
            f.path,
            short(&f.old),
            short(&f.new)
        );
    }
    for c in &d.added {
        outln!(
            "  {} {:<9} {}  {}",
            style.green("+"),
            c.kind().as_str(),
            style.bold(&c.id),
            style.dim(&own_label(c))
        );
    }
    for c in &d.removed {
        outln!(
            "  {} {:<9} {}  {}",
            style.red("-"),
            c.kind().as_str(),
            style.bold(&c.id),
            style.dim(&own_label(c))
        );
    }
    for c in &d.changed {
        let how = match &c.action {
            ChangeAction::Update => "update in place".to_owned(),
            ChangeAction::Replace {
                cause: ReplaceCause::Spec,
            } => "replace: its specification changed".to_owned(),
            ChangeAction::Replace {
                cause: ReplaceCause::Moved { from, to },
            } => format!(
                "replace: moves from {} to {}",
                from.as_deref().unwrap_or("(unplaced)"),
                to.as_deref().unwrap_or("(unplaced)")
            ),
            ChangeAction::Replace {
                cause: ReplaceCause::Host { host },
            } => format!("replace: its host `{host}` is replaced"),
        };
        let sub = label(&c.id);
        outln!(
            "  {} {:<9} {}  {}  {}",
            style.yellow("~"),
            c.kind.as_str(),
            style.bold(&c.id),
            style.dim(&sub),
            how
        );
        print_fields(&c.fields, style);
    }
    if !d.links_added.is_empty() || !d.links_removed.is_empty() {
        outln!("links:");
        for l in &d.links_added {
            outln!("  {} {l}", style.green("+"));
        }
        for l in &d.links_removed {
            outln!("  {} {l}", style.red("-"));
        }
    }
}

/// What to compare on the orchestrator.
#[derive(Debug)]
pub enum Remote {
    /// Target against current.
    Live { subsystem: Option<String> },
    /// Revision `from` against `to` (0: the head).
    Revisions { from: u64, to: u64 },
}

/// `continuum diff --live` / `continuum diff --from N [--to M]`.
pub fn remote(
    server: &crate::remote::Server,
    what: Remote,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let (between, title) = between(&what);
    crate::remote::block_on(async {
        let r = fetch(server, between).await?;
        if format == Format::Json {
            super::print_json(&r)?;
        } else {
            print_diff(&r, &title, style)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn between(what: &Remote) -> (continuum_proto::v1::diff_request::Between, String) {
    use continuum_proto::v1::{diff_request::Between, Live, Revisions};
    match what {
        Remote::Live { subsystem } => (
            Between::Live(Live {
                subsystem: subsystem.clone().unwrap_or_default(),
            }),
            "live diff (current -> target)".to_owned(),
        ),
        Remote::Revisions { from, to } => (
            Between::Revisions(Revisions {
                from: *from,
                to: *to,
            }),
            format!(
                "diff revision {from} -> {}",
                if *to == 0 {
                    "head".to_owned()
                } else {
                    format!("revision {to}")
                }
            ),
        ),
    }
}

async fn fetch(
    server: &crate::remote::Server,
    between: continuum_proto::v1::diff_request::Between,
) -> anyhow::Result<continuum_proto::v1::DiffResponse> {
    let mut client = crate::remote::connect(server).await?;
    Ok(client
        .diff(continuum_proto::v1::DiffRequest {
            between: Some(between),
        })
        .await
        .map_err(crate::remote::explain)?
        .into_inner())
}

fn print_diff(
    r: &continuum_proto::v1::DiffResponse,
    title: &str,
    style: &Style,
) -> anyhow::Result<()> {
    outln!("{}", style.bold(title));
    let mut any = false;
    for s in &r.subsystems {
        let d: ModelDiff = serde_json::from_slice(&s.diff).map_err(|e| {
            anyhow::anyhow!("the orchestrator sent a diff this CLI cannot read: {e}")
        })?;
        if d.is_empty() {
            continue;
        }
        any = true;
        let name = if s.subsystem.is_empty() {
            "outside any subsystem"
        } else {
            &s.subsystem
        };
        let label = format!("[{name}]");
        print_summary(&style.bold(name), &d, &|_| label.clone(), style);
    }
    if !any {
        outln!("no changes");
    }
    Ok(())
}

/// `continuum diff --live --follow`: the live diff, then again each time it
/// changes (events say when; a burst of them makes one refresh). On a
/// terminal the view is redrawn in place; elsewhere each new diff follows
/// the last under a dated line; with `-o json`, one JSON object per line.
/// Runs until interrupted; a lost connection resumes where it left off.
pub fn follow_live(
    server: &crate::remote::Server,
    subsystem: Option<String>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    use std::sync::Arc;
    let what = Remote::Live { subsystem };
    let only = match &what {
        Remote::Live { subsystem } => subsystem.clone().unwrap_or_default(),
        Remote::Revisions { .. } => String::new(),
    };
    let terminal = std::io::stdout().is_terminal() && format == Format::Human;
    crate::remote::block_on(async {
        let (between, title) = between(&what);
        let first = fetch(server, between.clone()).await?;
        let after = first.event_seq;
        let mut shown = None;
        show_live(&first, &title, format, terminal, &mut shown, style)?;
        let changed = Arc::new(tokio::sync::Notify::new());
        let refresh = {
            let changed = Arc::clone(&changed);
            async move {
                loop {
                    changed.notified().await;
                    // A rollout sends events in bursts: let it settle a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                    match fetch(server, between.clone()).await {
                        Ok(r) => show_live(&r, &title, format, terminal, &mut shown, style)?,
                        Err(e) => eprintln!(
                            "{}",
                            style.dim(&format!("cannot read the live diff: {e:#}"))
                        ),
                    }
                }
            }
        };
        let events = super::watch::follow(server, after, &only, style, |e| {
            let step = matches!(e.kind, Some(continuum_proto::v1::event::Kind::Step(_)));
            if !step {
                changed.notify_one();
            }
            Ok(None)
        });
        tokio::select! {
            r = events => r,
            r = refresh => r,
        }
    })
}

/// Prints `r` unless it equals what was shown last.
fn show_live(
    r: &continuum_proto::v1::DiffResponse,
    title: &str,
    format: Format,
    terminal: bool,
    shown: &mut Option<Vec<continuum_proto::v1::SubsystemDiff>>,
    style: &Style,
) -> anyhow::Result<()> {
    if shown.as_ref() == Some(&r.subsystems) {
        return Ok(());
    }
    *shown = Some(r.subsystems.clone());
    match format {
        Format::Json => outln!("{}", serde_json::to_string(r)?),
        Format::Human => {
            let now = crate::remote::clock(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0)),
            );
            if terminal {
                // Clear the screen and home the cursor: the view is redrawn.
                outln!("\x1b[2J\x1b[H");
            }
            print_diff(
                r,
                &format!("{title} at {now}, after event #{}", r.event_seq),
                style,
            )?;
        }
    }
    Ok(())
}
