//! `continuum explain FUNCTION -f MODEL`: where placement puts a function and
//! why — every gateway, its score, and why the others are excluded.

use std::path::Path;
use std::process::ExitCode;

use crate::style::Style;
use crate::Format;

pub fn run(
    function: &str,
    model: &Path,
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
    let judged = continuum_models::placement::explain(&mm, function);
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
        "  {:<20} {:<20} {:>8} {:>9}  {}",
        "GATEWAY",
        "SUBSYSTEM",
        "SCORE",
        "WORKLOADS",
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
        outln!(
            "  {:<20} {:<20} {:>8} {:>9}  {}",
            j.gateway,
            j.subsystem,
            score,
            j.workloads,
            why
        );
    }
    Ok(if chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
