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
    wait: Option<f64>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let req = request(file, base, message)?;
    remote::block_on(async {
        let mut client = remote::connect(server).await?;
        match client.apply(req).await {
            Ok(r) => {
                let r = r.into_inner();
                print(&r, format, style)?;
                match wait {
                    None => Ok(ExitCode::SUCCESS),
                    Some(seconds) => rollout(&mut client, &r, seconds, format, style).await,
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
    if rev.number == 0 {
        // A gateway's local API: no revision, a local model.
        outln!("{} {}", style.yellow("applied locally:"), rev.message);
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

/// Follows the subsystems a revision changed until each has converged on its
/// new generation, one fails or refuses it, or `seconds` pass. Subsystems
/// without a gateway in the model are not waited for.
async fn rollout(
    client: &mut remote::Client,
    applied: &ApplyResponse,
    seconds: f64,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    use continuum_proto::v1::{ComponentState, StatusRequest};
    if !(seconds.is_finite() && seconds > 0.0) {
        anyhow::bail!("--wait takes a positive number of seconds");
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let waiting: Vec<(String, u64)> = applied
        .targets
        .iter()
        .filter(|t| !t.gateway_id.is_empty())
        .map(|t| (t.subsystem.clone(), t.generation))
        .collect();
    loop {
        let status = client
            .status(StatusRequest {})
            .await
            .map_err(explain)?
            .into_inner();
        let mut done = true;
        let mut failures = Vec::new();
        for (subsystem, generation) in &waiting {
            let Some(s) = status.subsystems.iter().find(|s| &s.subsystem == subsystem) else {
                continue; // removed from the model: nothing to converge
            };
            if let Some(g) = s.gateway.as_ref().filter(|g| !g.rejected.is_empty()) {
                if g.sent_generation == *generation {
                    failures.push(format!("{subsystem}: target refused: {}", g.rejected));
                }
            }
            // A failure reported before this revision belongs to an earlier one.
            let since = applied.revision.as_ref().map_or(0, |r| r.created_unix_ms);
            for c in s
                .components
                .iter()
                .filter(|c| c.state == ComponentState::Failed as i32 && c.since_unix_ms >= since)
            {
                failures.push(format!("{subsystem}/{}: {}", c.component, c.reason));
            }
            if !(s.converged && s.target_generation == *generation) {
                done = false;
            }
        }
        if !failures.is_empty() {
            for f in &failures {
                eprintln!("{} {f}", style.red("failed:"));
            }
            return Ok(ExitCode::from(1));
        }
        if done {
            if format == Format::Human {
                outln!(
                    "{} every changed subsystem runs its new generation",
                    style.green("converged:")
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "{} the rollout did not converge within {seconds} s (see `continuum status`)",
                style.red("timed out:")
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
