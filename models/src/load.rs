//! Parse + validate in one call, and the pipeline from a user's megamodel to the
//! partitioned, expanded model the orchestrator distributes.

use std::collections::HashMap;

use crate::diagnostic::{Invalid, Problem};
use crate::model::{DeploymentModel, Megamodel, Template};
use crate::parse::{parse_deployment_model, parse_megamodel, parse_template};
use crate::validate::{validate_deployment_model, validate_megamodel, validate_template};

fn finish<T>(file: &str, text: &str, value: T, problems: Vec<Problem>) -> Result<T, Invalid> {
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(Invalid::from_problems(file, text, problems))
    }
}

/// Reads and validates a megamodel; every problem is reported at once.
pub fn load_megamodel(file: &str, text: &str) -> Result<Megamodel, Invalid> {
    let (mm, mut problems) = parse_megamodel(file, text)?;
    problems.extend(validate_megamodel(&mm));
    finish(file, text, mm, problems)
}

/// Reads and validates one subsystem's deployment model.
pub fn load_deployment_model(file: &str, text: &str) -> Result<DeploymentModel, Invalid> {
    let (m, mut problems) = parse_deployment_model(file, text)?;
    problems.extend(validate_deployment_model(&m));
    finish(file, text, m, problems)
}

/// Reads and validates a function runtime template.
pub fn load_template(file: &str, text: &str) -> Result<Template, Invalid> {
    let (t, mut problems) = parse_template(file, text)?;
    problems.extend(validate_template(&t));
    finish(file, text, t, problems)
}

/// From a valid megamodel to what is deployed: templates expanded, the result
/// validated again (a template can bring its own mistakes), then partitioned into
/// one deployment model per subsystem.
pub fn prepare(
    mm: &Megamodel,
    templates: &HashMap<String, Template>,
) -> Result<Megamodel, Vec<Problem>> {
    let expanded = crate::template::expand(mm, templates)?;
    let problems = validate_megamodel(&expanded);
    if !problems.is_empty() {
        return Err(problems);
    }
    crate::subsystem::partition(&expanded)
}
