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
        Format::Human => print_summary(old, new, &d, &fb, style),
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

fn print_summary(
    old: &Path,
    new: &Path,
    d: &ModelDiff,
    target: &continuum_models::DeploymentModel,
    style: &Style,
) {
    outln!(
        "{} {} {} {}",
        style.bold("diff"),
        old.display(),
        style.dim("->"),
        new.display()
    );
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
            style.dim(&subsystem_of(c))
        );
    }
    for c in &d.removed {
        outln!(
            "  {} {:<9} {}  {}",
            style.red("-"),
            c.kind().as_str(),
            style.bold(&c.id),
            style.dim(&subsystem_of(c))
        );
    }
    let index = target.index();
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
        let sub = index
            .get(c.id.as_str())
            .map(|c| subsystem_of(c))
            .unwrap_or_default();
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
