//! `continuum apply -f FILE` and `continuum rollback --to N`.

use std::path::Path;
use std::process::ExitCode;

use continuum_proto::v1::{ApplyRequest, ApplyResponse, Document, RollbackRequest};

use crate::remote::{self, explain};
use crate::style::Style;
use crate::Format;

fn author() -> String {
    std::env::var("USER").unwrap_or_default()
}

/// Sends the file and the templates its functions name (read next to it). The
/// orchestrator validates everything itself; a file that does not parse locally
/// is still sent, so the answer is the server's.
fn request(file: &Path, base: Option<u64>, message: String) -> anyhow::Result<ApplyRequest> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let mut templates = std::collections::HashMap::new();
    if let Ok(crate::load::Document::Megamodel(loaded)) = crate::load::document(file) {
        for (runtime, t) in loaded.texts {
            templates.insert(
                runtime,
                Document {
                    name: t.name,
                    json: t.text.into_bytes(),
                },
            );
        }
    }
    Ok(ApplyRequest {
        megamodel: Some(Document {
            name: file.display().to_string(),
            json: text.into_bytes(),
        }),
        templates,
        expected_base: base,
        author: author(),
        message,
    })
}

pub fn apply(
    server: &str,
    file: &Path,
    base: Option<u64>,
    message: String,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let req = request(file, base, message)?;
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        match client.apply(req).await {
            Ok(r) => {
                print(&r.into_inner(), format, style)?;
                Ok(ExitCode::SUCCESS)
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
                None => Err(explain(status)),
            },
        }
    })
}

pub fn rollback(
    server: &str,
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
            .map_err(explain)?;
        print(&r.into_inner(), format, style)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn print(r: &ApplyResponse, format: Format, style: &Style) -> anyhow::Result<()> {
    if format == Format::Json {
        return super::print_json(r);
    }
    let rev = r.revision.clone().unwrap_or_default();
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
    Ok(())
}
