//! `continuum plan OLD NEW`

use std::path::Path;
use std::process::ExitCode;

use crate::style::Style;
use crate::Format;

pub fn run(old: &Path, new: &Path, format: Format, style: &Style) -> anyhow::Result<ExitCode> {
    let Some((a, b)) = super::load_pair(old, new, style) else {
        return Ok(ExitCode::from(1));
    };
    let plan = continuum_models::plan(&a.flat(), &b.flat());
    match format {
        Format::Json => super::print_json(&plan)?,
        Format::Human => {
            outln!(
                "{} {} {} {}",
                style.bold("plan"),
                old.display(),
                style.dim("->"),
                new.display()
            );
            if plan.is_empty() {
                outln!("nothing to do: the models are the same");
            } else {
                outln!(
                    "{} (each step waits for the steps in parentheses)",
                    plural(plan.len())
                );
                let mut phase = None;
                for s in &plan.steps {
                    if phase != Some(s.phase) {
                        outln!("{}", style.bold(&format!("{}:", s.phase.as_str())));
                        phase = Some(s.phase);
                    }
                    let mut line = format!("  #{:<4} {}", s.id + 1, s.action);
                    if !s.after.is_empty() {
                        let deps: Vec<String> =
                            s.after.iter().map(|d| format!("#{}", d + 1)).collect();
                        line.push_str(&style.dim(&format!("   (after {})", deps.join(", "))));
                    }
                    outln!("{line}");
                }
                for group in &plan.start_together {
                    outln!(
                        "{} {}",
                        style.dim("start together, in no order (communication links between them form a cycle):"),
                        group.join(", ")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}
