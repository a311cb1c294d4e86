//! Template expansion: a function plus its runtime template gives the components
//! that run it.
//!
//! The template's placeholder is refined with the function: the function takes the
//! placeholder's resources (with `{{...}}` variables filled in) and its triggers,
//! datastreams and context are handed to the runtime through the environment. Other
//! template components are added next to the function, renamed `<function>-<id>`.

use std::collections::{BTreeMap, HashMap};

use crate::component::{Component, ComponentSpec};
use crate::diagnostic::{JsonPath, Problem};
use crate::link::{Communication, Link};
use crate::model::{Megamodel, Template};
use crate::resources::Resources;

/// Environment variables every function runtime receives.
pub const ENV_FUNCTION: &str = "CONTINUUM_FUNCTION";
/// Environment variable naming a function's trigger topics.
pub const ENV_TRIGGERS: &str = "CONTINUUM_TRIGGERS";
/// Environment variable naming a function's inputs.
pub const ENV_INPUTS: &str = "CONTINUUM_INPUTS";
/// Environment variable naming a function's outputs.
pub const ENV_OUTPUTS: &str = "CONTINUUM_OUTPUTS";
/// Environment variable holding a function's context (JSON).
pub const ENV_CONTEXT: &str = "CONTINUUM_CONTEXT";

/// Expands every function that names a `runtime` and has no resources yet.
/// `templates` maps the `runtime` strings to the loaded templates.
pub fn expand(
    mm: &Megamodel,
    templates: &HashMap<String, Template>,
) -> Result<Megamodel, Vec<Problem>> {
    let mut out = mm.clone();
    let mut problems = Vec::new();
    let hosted: HashMap<String, String> = mm
        .all_links()
        .filter_map(|l| match l {
            Link::Hosting { component, host } => Some((component.clone(), host.clone())),
            Link::Communication(_) => None,
        })
        .collect();
    let root = JsonPath::root();
    for (i, s) in out.subsystems.iter_mut().enumerate() {
        let base = root.key("subsystems").index(i);
        expand_list(
            &mut s.components,
            &mut s.links,
            &base,
            s.id.as_deref(),
            templates,
            &hosted,
            &mut problems,
        );
    }
    expand_list(
        &mut out.components,
        &mut out.links,
        &root,
        None,
        templates,
        &hosted,
        &mut problems,
    );
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn expand_list(
    components: &mut Vec<Component>,
    links: &mut Vec<Link>,
    base: &JsonPath,
    nested_in: Option<&str>,
    templates: &HashMap<String, Template>,
    hosted: &HashMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    let mut added_components = Vec::new();
    let mut added_links = Vec::new();
    for (i, c) in components.iter_mut().enumerate() {
        let path = base.key("components").index(i);
        let Some(f) = c.as_function() else { continue };
        let Some(runtime) = f.runtime.clone() else {
            continue;
        };
        if !f.resources.is_empty() {
            continue;
        }
        let Some(t) = templates.get(&runtime) else {
            problems.push(
                Problem::new(
                    path.key("runtime"),
                    format!("runtime template `{runtime}` is not available"),
                )
                .expected("the path of a template file, relative to the model file"),
            );
            continue;
        };
        match refine(c, t, &runtime, nested_in, hosted.get(&c.id).map(String::as_str)) {
            Ok((extra, extra_links)) => {
                added_components.extend(extra);
                added_links.extend(extra_links);
            }
            Err(msgs) => problems.extend(msgs.into_iter().map(|m| {
                Problem::new(path.key("runtime"), format!("expanding template `{}`: {m}", t.template))
                    .expected("a template with one placeholder whose `{{...}}` variables are template.dir, function.id, function.name, function.src, function.subsystem, function.triggers, function.inputs, function.outputs or context.<key>")
            })),
        }
    }
    components.extend(added_components);
    links.extend(added_links);
}

/// Refines `function` in place with template `t`; returns the template's other
/// components and links, renamed for this function.
fn refine(
    function: &mut Component,
    t: &Template,
    runtime: &str,
    nested_in: Option<&str>,
    host: Option<&str>,
) -> Result<(Vec<Component>, Vec<Link>), Vec<String>> {
    let already_hosted = host.is_some();
    let Some(placeholder) = t.components.iter().find(|c| c.placeholder) else {
        return Err(vec!["the template has no placeholder".to_owned()]);
    };
    let fspec = function.as_function().cloned().unwrap_or_default();
    let subsystem = nested_in
        .map(str::to_owned)
        .or_else(|| function.subsystem.clone())
        .unwrap_or_default();
    let mut vars: BTreeMap<String, String> = BTreeMap::from([
        ("template.dir".to_owned(), crate::artefact::parent(runtime)),
        ("function.id".to_owned(), function.id.clone()),
        ("function.name".to_owned(), function.name.clone()),
        (
            "function.src".to_owned(),
            fspec.src.clone().unwrap_or_default(),
        ),
        ("function.subsystem".to_owned(), subsystem),
        ("function.triggers".to_owned(), fspec.triggers.join(",")),
        ("function.inputs".to_owned(), fspec.inputs.join(",")),
        ("function.outputs".to_owned(), fspec.outputs.join(",")),
    ]);
    for (k, v) in &fspec.context {
        vars.insert(format!("context.{k}"), v.clone());
    }
    let mut errors = Vec::new();
    let rename = |id: &str| -> String {
        if id == placeholder.id {
            function.id.clone()
        } else if t.components.iter().any(|c| c.id == id) {
            format!("{}-{id}", function.id)
        } else {
            id.to_owned()
        }
    };

    let mut resources = substitute_resources(
        placeholder.spec.resources().cloned().unwrap_or_default(),
        &vars,
        &mut errors,
    );
    if let Some(container) = resources.container.as_mut() {
        container
            .env
            .insert(ENV_FUNCTION.to_owned(), function.id.clone());
        container
            .env
            .insert(ENV_TRIGGERS.to_owned(), fspec.triggers.join(","));
        container
            .env
            .insert(ENV_INPUTS.to_owned(), fspec.inputs.join(","));
        container
            .env
            .insert(ENV_OUTPUTS.to_owned(), fspec.outputs.join(","));
        container.env.insert(
            ENV_CONTEXT.to_owned(),
            serde_json::to_string(&fspec.context).unwrap_or_default(),
        );
        for (k, v) in fspec.invocation.env() {
            container.env.insert(k.to_owned(), v);
        }
    }

    let mut extra = Vec::new();
    for c in t.components.iter().filter(|c| !c.placeholder) {
        let mut c = c.clone();
        c.id = rename(&c.id);
        c.name = substitute(&c.name, &vars, &mut errors);
        // It follows the function wherever the function is placed.
        c.properties.insert(
            crate::placement::FUNCTION_PROPERTY.to_owned(),
            function.id.clone(),
        );
        if nested_in.is_none() {
            c.subsystem = function.subsystem.clone();
        }
        if let Some(r) = c.spec.resources_mut() {
            *r = substitute_resources(std::mem::take(r), &vars, &mut errors);
        }
        extra.push(c);
    }
    let mut links = Vec::new();
    for l in &t.links {
        let link = match l {
            Link::Hosting { component, host } => {
                if *component == placeholder.id && already_hosted {
                    continue; // the function's own hosting wins
                }
                Link::Hosting {
                    component: rename(component),
                    host: rename(host),
                }
            }
            Link::Communication(c) => Link::Communication(Communication {
                from: rename(&c.from),
                to: rename(&c.to),
                ..c.clone()
            }),
        };
        links.push(link);
    }
    // What the template hosts nowhere runs beside the function: on its host
    // when it has one (else placement puts it there).
    if let Some(host) = host {
        for c in &extra {
            let hosted_in_template = links
                .iter()
                .any(|l| matches!(l, Link::Hosting { component, .. } if *component == c.id));
            if c.kind().needs_host() && !hosted_in_template {
                links.push(Link::Hosting {
                    component: c.id.clone(),
                    host: host.to_owned(),
                });
            }
        }
    }
    if !errors.is_empty() {
        errors.sort();
        errors.dedup();
        return Err(errors);
    }
    for (k, v) in &placeholder.properties {
        function
            .properties
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    function
        .properties
        .insert("continuum.template".to_owned(), t.template.clone());
    if let ComponentSpec::Function(f) = &mut function.spec {
        f.resources = resources;
    }
    Ok((extra, links))
}

fn substitute_resources(
    r: Resources,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
) -> Resources {
    let Ok(mut value) = serde_json::to_value(&r) else {
        return r;
    };
    substitute_value(&mut value, vars, errors);
    serde_json::from_value(value).unwrap_or(r)
}

fn substitute_value(
    v: &mut serde_json::Value,
    vars: &BTreeMap<String, String>,
    errors: &mut Vec<String>,
) {
    match v {
        serde_json::Value::String(s) => *s = substitute(s, vars, errors),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| substitute_value(v, vars, errors)),
        serde_json::Value::Object(o) => o
            .values_mut()
            .for_each(|v| substitute_value(v, vars, errors)),
        _ => {}
    }
}

/// Replaces every `{{ name }}` in `s`; unknown names are reported.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>, errors: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            errors.push(format!("unclosed `{{{{` in \"{s}\""));
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => errors.push(format!("unknown variable `{{{{{name}}}}}`")),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        let vars = BTreeMap::from([("function.id".to_owned(), "presence".to_owned())]);
        let mut errors = Vec::new();
        assert_eq!(
            substitute("fn-{{ function.id }}:1", &vars, &mut errors),
            "fn-presence:1"
        );
        assert!(errors.is_empty());
        substitute("{{nope}}", &vars, &mut errors);
        substitute("{{function.id", &vars, &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }
}
