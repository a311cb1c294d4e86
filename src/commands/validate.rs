//! `continuum validate FILE...`

use std::path::PathBuf;
use std::process::ExitCode;

use continuum_models::Diagnostic;
use serde::Serialize;

use crate::load::{self, Document};
use crate::style::Style;
use crate::Format;

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

pub fn run(files: &[PathBuf], format: Format, style: &Style) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in files {
        let file = path.display().to_string();
        let report = match load::document(path) {
            Ok(doc) => {
                let (kind, summary) = describe(&doc);
                Report {
                    file,
                    valid: true,
                    kind: Some(kind),
                    summary: Some(summary),
                    diagnostics: Vec::new(),
                }
            }
            Err(invalid) => {
                if format == Format::Human {
                    super::report(&invalid, style);
                }
                Report {
                    file,
                    valid: false,
                    kind: None,
                    summary: None,
                    diagnostics: invalid.diagnostics,
                }
            }
        };
        if format == Format::Human {
            if report.valid {
                outln!(
                    "{} {}: {}",
                    style.green("valid"),
                    style.bold(&report.file),
                    report.summary.as_deref().unwrap_or_default()
                );
            } else {
                outln!("{} {}", style.red("invalid"), style.bold(&report.file));
            }
        }
        reports.push(report);
    }
    if format == Format::Json {
        super::print_json(&reports)?;
    }
    Ok(if reports.iter().all(|r| r.valid) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn describe(doc: &Document) -> (&'static str, String) {
    match doc {
        Document::Megamodel(l) => {
            let p = &l.prepared;
            let subs: Vec<String> = p
                .subsystems
                .iter()
                .map(|s| {
                    format!(
                        "{} ({})",
                        s.id.as_deref().unwrap_or("?"),
                        plural(s.components.len(), "component")
                    )
                })
                .collect();
            let links = p.all_links().count();
            let mut text = format!(
                "megamodel `{}`: {}: {}",
                p.name,
                plural(p.subsystems.len(), "subsystem"),
                subs.join(", ")
            );
            if !p.components.is_empty() {
                let ids: Vec<&str> = p.components.iter().map(|c| c.id.as_str()).collect();
                text.push_str(&format!("; outside subsystems: {}", ids.join(", ")));
            }
            text.push_str(&format!("; {}", plural(links, "link")));
            if l.templates > 0 {
                text.push_str(&format!("; {} expanded", plural(l.templates, "template")));
            }
            ("megamodel", text)
        }
        Document::Subsystem(m) => (
            "subsystem",
            format!(
                "subsystem model `{}`: {}, {}",
                m.id.as_deref().unwrap_or("(no id)"),
                plural(m.components.len(), "component"),
                plural(m.links.len(), "link")
            ),
        ),
        Document::Template(t) => (
            "template",
            format!(
                "template `{}`: {}",
                t.template,
                plural(t.components.len(), "component")
            ),
        ),
    }
}
