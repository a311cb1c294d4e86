//! Parse + validate in one call, and the pipeline from a user's megamodel to the
//! partitioned, expanded model the orchestrator distributes.

use std::collections::HashMap;

use crate::component::Component;
use crate::diagnostic::{Invalid, JsonPath, Problem};
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
    observed: &crate::placement::Observed,
) -> Result<Megamodel, Vec<Problem>> {
    let mut expanded = expand_valid(mm, templates)?;
    crate::placement::place(&mut expanded, observed)?;
    crate::subsystem::partition(&expanded)
}

/// Expands the templates and validates the result: the megamodel as
/// placement sees it.
pub fn expand_valid(
    mm: &Megamodel,
    templates: &HashMap<String, Template>,
) -> Result<Megamodel, Vec<Problem>> {
    let expanded = crate::template::expand(mm, templates)?;
    let problems = validate_megamodel(&expanded);
    if problems.is_empty() {
        Ok(expanded)
    } else {
        Err(problems)
    }
}

/// A template's text, found by whoever reads the megamodel: from disk next to the
/// file for the CLI, from the request for the orchestrator.
#[derive(Debug, Clone)]
pub struct TemplateText {
    /// The name to report problems under (a file name).
    pub name: String,
    /// The template's text.
    pub text: String,
}

/// A valid megamodel as it will be deployed, with the templates it used.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Templates expanded, partitioned into subsystems.
    pub megamodel: Megamodel,
    /// The templates read, keyed by the `runtime` string that named them.
    pub templates: Vec<(String, TemplateText)>,
}

/// Reads, validates, expands and partitions a megamodel. `resolve` gives the text
/// of the template a function's `runtime` names (or why it cannot); each one is
/// asked for once. Every problem, in the megamodel and in its templates, is
/// reported at once.
pub fn load_prepared(
    file: &str,
    text: &str,
    resolve: impl FnMut(&str) -> Result<TemplateText, String>,
) -> Result<Prepared, Invalid> {
    load_prepared_with(file, text, resolve, &crate::placement::Observed::default())
}

/// As [`load_prepared`], placing functions with what is `observed` of the
/// gateways (the orchestrator's view).
pub fn load_prepared_with(
    file: &str,
    text: &str,
    resolve: impl FnMut(&str) -> Result<TemplateText, String>,
    observed: &crate::placement::Observed,
) -> Result<Prepared, Invalid> {
    load_with(file, text, resolve, |mm, templates| {
        prepare(mm, templates, observed)
    })
}

/// Reads, validates and expands a megamodel, without placing or partitioning
/// it (what `continuum explain` judges placement on).
pub fn load_expanded(
    file: &str,
    text: &str,
    resolve: impl FnMut(&str) -> Result<TemplateText, String>,
) -> Result<Prepared, Invalid> {
    load_with(file, text, resolve, expand_valid)
}

fn load_with(
    file: &str,
    text: &str,
    mut resolve: impl FnMut(&str) -> Result<TemplateText, String>,
    then: impl FnOnce(&Megamodel, &HashMap<String, Template>) -> Result<Megamodel, Vec<Problem>>,
) -> Result<Prepared, Invalid> {
    let (mm, mut problems) = parse_megamodel(file, text)?;
    problems.extend(validate_megamodel(&mm));
    let mut templates: HashMap<String, Template> = HashMap::new();
    let mut texts: Vec<(String, TemplateText)> = Vec::new();
    let mut template_errors: Vec<Invalid> = Vec::new();
    for (fpath, runtime) in runtimes(&mm) {
        if templates.contains_key(&runtime) || texts.iter().any(|(r, _)| *r == runtime) {
            continue;
        }
        match resolve(&runtime) {
            Err(e) => problems.push(
                Problem::new(
                    fpath.key("runtime"),
                    format!("cannot read runtime template `{runtime}`: {e}"),
                )
                .expected("the path of a template file, relative to the model file"),
            ),
            Ok(t) => {
                match load_template(&t.name, &t.text) {
                    Ok(loaded) => {
                        templates.insert(runtime.clone(), loaded);
                    }
                    Err(invalid) => {
                        problems.push(Problem::new(
                            fpath.key("runtime"),
                            format!("runtime template `{}` is invalid (see below)", t.name),
                        ));
                        template_errors.push(invalid);
                    }
                }
                texts.push((runtime, t));
            }
        }
    }
    let fail = |problems: Vec<Problem>, template_errors: Vec<Invalid>| {
        let mut invalid = Invalid::from_problems(file, text, problems);
        for t in template_errors {
            invalid.diagnostics.extend(t.diagnostics);
        }
        invalid
    };
    if !problems.is_empty() {
        return Err(fail(problems, template_errors));
    }
    let megamodel = then(&mm, &templates).map_err(|p| fail(p, Vec::new()))?;
    Ok(Prepared {
        megamodel,
        templates: texts,
    })
}

/// The template files a megamodel's functions name (each function's `runtime`,
/// when it brings no resources of its own), each once, in order — read from
/// the JSON alone, without validating it. A client sends these along with the
/// model and lets the orchestrator validate; text that is not JSON names none
/// (the orchestrator then says where it is broken).
pub fn template_runtimes(text: &str) -> Vec<String> {
    let Ok(root) = serde_json::from_str::<serde_json::Value>(text) else {
        return Vec::new();
    };
    let components = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v.get("components")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut all = components(&root);
    for s in root
        .get("subsystems")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        all.extend(components(s));
    }
    let mut out: Vec<String> = Vec::new();
    for c in &all {
        let function = c.get("kind").and_then(serde_json::Value::as_str) == Some("function");
        let own = c
            .get("resources")
            .and_then(serde_json::Value::as_object)
            .is_some_and(|r| !r.is_empty());
        if let (true, false, Some(r)) = (
            function,
            own,
            c.get("runtime").and_then(serde_json::Value::as_str),
        ) {
            if !out.iter().any(|x| x == r) {
                out.push(r.to_owned());
            }
        }
    }
    out
}

/// Every function that needs a template: its JSON path and its `runtime`.
fn runtimes(mm: &Megamodel) -> Vec<(JsonPath, String)> {
    let mut out = Vec::new();
    let root = JsonPath::root();
    let mut scan = |base: JsonPath, components: &[Component]| {
        for (i, c) in components.iter().enumerate() {
            if let Some(f) = c.as_function() {
                if let (Some(r), true) = (&f.runtime, f.resources.is_empty()) {
                    out.push((base.key("components").index(i), r.clone()));
                }
            }
        }
    };
    for (i, s) in mm.subsystems.iter().enumerate() {
        scan(root.key("subsystems").index(i), &s.components);
    }
    scan(root.clone(), &mm.components);
    out
}
