//! `continuum explain FUNCTION -f MODEL`: where placement puts a function and
//! why — every gateway, its score, and why the others are excluded. Scores
//! use the load the orchestrator's connected gateways last measured, as an
//! apply would; without an orchestrator (or with `--offline`), the capacity
//! the model declares.

use std::path::Path;
use std::process::ExitCode;

use continuum_models::placement::{Measured, Observed};
use continuum_proto::v1::StatusRequest;

use crate::style::Style;
use crate::Format;

/// The load each connected gateway of the orchestrator at `server` last
/// measured, or why it cannot be had.
fn measured(server: &crate::remote::Server) -> anyhow::Result<Observed> {
    crate::remote::block_on(async {
        let mut client = crate::remote::connect(server).await?;
        let s = client
            .status(StatusRequest::default())
            .await
            .map_err(crate::remote::explain)?
            .into_inner();
        let load = s
            .subsystems
            .into_iter()
            .filter_map(|sub| sub.gateway)
            .chain(s.unassigned)
            .filter(|g| g.connected)
            .filter_map(|g| {
                let l = g.load?;
                Some((
                    g.id,
                    Measured {
                        cpus: l.cpus,
                        load: l.load1,
                        memory_available_mb: l.memory_available_bytes / (1024 * 1024),
                    },
                ))
            })
            .collect();
        Ok(Observed {
            load,
            ..Observed::default()
        })
    })
}

pub fn run(
    function: &str,
    model: &Path,
    server: Option<&crate::remote::Server>,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let mm = crate::load::expanded(model).map_err(|invalid| anyhow::anyhow!("{invalid}"))?;
    let Some(f) = mm
        .subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .chain(mm.components.iter())
        .find(|c| c.id == function)
    else {
        anyhow::bail!("{}: no component `{function}`", model.display());
    };
    if f.as_function().is_none() {
        anyhow::bail!(
            "`{function}` is a {}, not a function: only functions are placed",
            f.kind()
        );
    }
    let observed = match server.map(measured) {
        None => Observed::default(),
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            eprintln!(
                "{} {e:#}\n  scoring by the capacity the model declares",
                style.dim("note:")
            );
            Observed::default()
        }
    };
    let judged = continuum_models::placement::explain(&mm, function, &observed);
    if format == Format::Json {
        super::print_json(&serde_json::json!({
            "function": function,
            "placed": judged.is_some(),
            "gateways": judged.clone().unwrap_or_default(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(judged) = judged else {
        outln!(
            "function `{function}` is not placed: a hosting link or its subsystem puts it where it runs"
        );
        return Ok(ExitCode::SUCCESS);
    };
    let chosen = judged.first().filter(|j| j.score.is_some());
    match chosen {
        Some(j) => outln!(
            "function `{function}` goes to gateway `{}` (subsystem `{}`)",
            style.bold(&j.gateway),
            j.subsystem
        ),
        None => outln!(
            "{}",
            style.red(&format!(
                "no gateway can run function `{function}`: an apply is refused"
            ))
        ),
    }
    outln!(
        "  {:<20} {:<20} {:>8} {:>9} {:>16}  {}",
        "GATEWAY",
        "SUBSYSTEM",
        "SCORE",
        "WORKLOADS",
        "MEASURED",
        "WHY"
    );
    for (i, j) in judged.iter().enumerate() {
        let (score, why) = match j.score {
            Some(s) if i == 0 => (format!("{s:.2}"), style.green("chosen: the highest score")),
            Some(s) => (format!("{s:.2}"), "a candidate, scored lower".to_owned()),
            None => (
                "-".to_owned(),
                style.dim(&format!("excluded: {}", j.excluded.join("; "))),
            ),
        };
        let measured = j.measured.map_or_else(
            || "declared".to_owned(),
            |m| {
                format!(
                    "{:.1} CPU {:.1} GiB",
                    m.free_cpus(),
                    m.memory_available_mb as f64 / 1024.0
                )
            },
        );
        outln!(
            "  {:<20} {:<20} {:>8} {:>9} {:>16}  {}",
            j.gateway,
            j.subsystem,
            score,
            j.workloads,
            measured,
            why
        );
    }
    Ok(if chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
