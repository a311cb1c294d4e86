//! `continuum import genesis FILE [--out OUT]`

use std::path::Path;
use std::process::ExitCode;

use continuum_models::genesis;

use crate::style::Style;

pub fn genesis(
    file: &Path,
    out: Option<&Path>,
    force: bool,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            super::report(
                &continuum_models::Invalid::file(&name, format!("cannot read the file: {e}")),
                style,
            );
            return Ok(ExitCode::from(1));
        }
    };
    let import = match genesis::import(&name, &text) {
        Ok(i) => i,
        Err(invalid) => {
            super::report(&invalid, style);
            return Ok(ExitCode::from(1));
        }
    };
    let s = &import.summary;
    let kinds: Vec<String> = s.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    eprintln!(
        "{} {}: {}; {} communication link(s), {} containment(s)",
        style.bold("imported"),
        name,
        if kinds.is_empty() {
            "no components".to_owned()
        } else {
            kinds.join(", ")
        },
        s.links,
        s.containments
    );
    let notes = s.warnings.iter().map(|n| (style.yellow("warning:"), n));
    let notes = notes.chain(s.unmapped.iter().map(|n| (style.dim("not mapped:"), n)));
    for (label, n) in notes {
        eprintln!("{label} at {}: {}", style.cyan(&n.path), n.message);
    }
    let mut json = serde_json::to_string_pretty(&import.megamodel)?;
    json.push('\n');
    // The imported model must stand on its own: validate it as Continuum would.
    let out_name = out.map_or_else(
        || "(imported model)".to_owned(),
        |p| p.display().to_string(),
    );
    let check = continuum_models::load_megamodel(&out_name, &json);
    match out {
        Some(path) => {
            if path.exists() && !force {
                anyhow::bail!("{} exists; pass --force to overwrite it", path.display());
            }
            // Never a half-written model.
            super::write_atomically(path, json.as_bytes(), false)?;
            eprintln!("wrote {}", path.display());
        }
        None => outln!("{}", json.trim_end()),
    }
    match check {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(invalid) => {
            eprintln!(
                "{} the imported model needs changes before Continuum can deploy it:",
                style.yellow("note:")
            );
            super::report(&invalid, style);
            Ok(ExitCode::from(1))
        }
    }
}
