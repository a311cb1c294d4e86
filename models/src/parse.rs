//! Reading model documents from JSON text, reporting every problem at once.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::chunked::Chunked;
use crate::component::Kind;
use crate::diagnostic::{Diagnostic, Invalid, JsonPath, Problem, Segment};
use crate::locate::position_of;
use crate::model::{DeploymentModel, FailurePolicy, Megamodel, Template};
use crate::schema::{suggest, Schema};
use crate::wire::{RawComponent, RawLink};

#[derive(Debug, Deserialize)]
struct RawMegamodel {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    on_failure: FailurePolicy,
    #[serde(default)]
    placement: crate::placement::Weights,
    #[serde(default)]
    subsystems: Vec<RawDeploymentModel>,
    #[serde(default)]
    components: Chunked<RawComponent>,
    #[serde(default)]
    links: Chunked<RawLink>,
}

#[derive(Debug, Deserialize)]
struct RawDeploymentModel {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    on_failure: Option<FailurePolicy>,
    #[serde(default)]
    components: Chunked<RawComponent>,
    #[serde(default)]
    links: Chunked<RawLink>,
}

#[derive(Debug, Deserialize)]
struct RawTemplate {
    template: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    components: Chunked<RawComponent>,
    #[serde(default)]
    links: Chunked<RawLink>,
}

/// Reads a megamodel (nested or single-file form). Does not validate it: see
/// [`crate::load_megamodel`] for parse + validate.
pub fn parse_megamodel(file: &str, text: &str) -> Result<(Megamodel, Vec<Problem>), Invalid> {
    let (raw, unknown): (RawMegamodel, _) = read(file, text)?;
    let root = JsonPath::root();
    // Only an unknown field needs the kinds (for its suggestions).
    let mut kinds = HashMap::new();
    if !unknown.is_empty() {
        for (i, s) in raw.subsystems.iter().enumerate() {
            component_kinds(&root.key("subsystems").index(i), &s.components, &mut kinds);
        }
        component_kinds(&root, &raw.components, &mut kinds);
    }
    let mut problems = unknown_fields(Schema::Megamodel, unknown, &kinds);
    let subsystems = raw
        .subsystems
        .into_iter()
        .enumerate()
        .map(|(i, s)| convert_model(s, &root.key("subsystems").index(i), &mut problems))
        .collect();
    let components = convert_components(raw.components, &root, &mut problems);
    let links = convert_links(raw.links, &root, &mut problems);
    Ok((
        Megamodel {
            name: raw.name,
            description: raw.description,
            on_failure: raw.on_failure,
            placement: raw.placement,
            subsystems,
            components,
            links,
        },
        problems,
    ))
}

/// Reads one subsystem's deployment model.
pub fn parse_deployment_model(
    file: &str,
    text: &str,
) -> Result<(DeploymentModel, Vec<Problem>), Invalid> {
    let (raw, unknown): (RawDeploymentModel, _) = read(file, text)?;
    let mut kinds = HashMap::new();
    if !unknown.is_empty() {
        component_kinds(&JsonPath::root(), &raw.components, &mut kinds);
    }
    let mut problems = unknown_fields(Schema::Subsystem, unknown, &kinds);
    let model = convert_model(raw, &JsonPath::root(), &mut problems);
    Ok((model, problems))
}

/// Reads a function runtime template.
pub fn parse_template(file: &str, text: &str) -> Result<(Template, Vec<Problem>), Invalid> {
    let (raw, unknown): (RawTemplate, _) = read(file, text)?;
    let root = JsonPath::root();
    let mut kinds = HashMap::new();
    if !unknown.is_empty() {
        component_kinds(&root, &raw.components, &mut kinds);
    }
    let mut problems = unknown_fields(Schema::Template, unknown, &kinds);
    let components = convert_components(raw.components, &root, &mut problems);
    let links = convert_links(raw.links, &root, &mut problems);
    Ok((
        Template {
            template: raw.template,
            description: raw.description,
            components,
            links,
        },
        problems,
    ))
}

fn convert_model(
    raw: RawDeploymentModel,
    path: &JsonPath,
    problems: &mut Vec<Problem>,
) -> DeploymentModel {
    DeploymentModel {
        id: raw.id,
        on_failure: raw.on_failure,
        components: convert_components(raw.components, path, problems),
        links: convert_links(raw.links, path, problems),
    }
}

fn convert_components(
    raw: Chunked<RawComponent>,
    parent: &JsonPath,
    problems: &mut Vec<Problem>,
) -> Vec<crate::Component> {
    let base = parent.key("components");
    raw.into_vec_with(|i, c| c.into_component(|| base.index(i), problems))
}

fn convert_links(
    raw: Chunked<RawLink>,
    parent: &JsonPath,
    problems: &mut Vec<Problem>,
) -> Vec<crate::Link> {
    let base = parent.key("links");
    raw.into_vec_with(|i, l| l.into_link(|| base.index(i), problems))
}

/// Deserializes `text`, collecting unknown fields as problems (with suggestions).
/// A syntax or type error stops the read: it is returned as the only diagnostic.
fn read<T: DeserializeOwned>(file: &str, text: &str) -> Result<(T, Vec<JsonPath>), Invalid> {
    // serde accepts a struct written as an array; a model never is one.
    let first = text.trim_start().chars().next();
    if first.is_some_and(|c| c != '{') {
        let offset = text.len() - text.trim_start().len();
        let pos = position_of(text, offset);
        return Err(Invalid {
            diagnostics: vec![Diagnostic {
                file: file.to_owned(),
                line: pos.line,
                column: pos.column,
                path: String::new(),
                message: "the document is not a JSON object".to_owned(),
                expected: Some(
                    "a model: a JSON object such as {\"name\": ..., \"subsystems\": [...]}"
                        .to_owned(),
                ),
            }],
        });
    }
    let mut unknown: Vec<JsonPath> = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let result: Result<T, _> = {
        let mut on_ignored = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
        T::deserialize(serde_ignored::Deserializer::new(&mut de, &mut on_ignored))
    };
    let value = match result {
        Ok(v) => v,
        // Tracking the path costs a third of the read, so only a document
        // that fails is read again to say where.
        Err(e) => return Err(located_error::<T>(file, text, e)),
    };
    if let Err(e) = de.end() {
        return Err(json_error(file, text, JsonPath::root(), e));
    }
    Ok((value, unknown))
}

/// Reads a document that failed with `first` again, this time tracking the JSON path.
fn located_error<T: DeserializeOwned>(file: &str, text: &str, first: serde_json::Error) -> Invalid {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut ignore = |_: serde_ignored::Path<'_>| {};
    let ignoring = serde_ignored::Deserializer::new(&mut de, &mut ignore);
    match serde_path_to_error::deserialize::<_, T>(ignoring) {
        Err(e) => {
            let path = path_of(e.path());
            json_error(file, text, path, e.into_inner())
        }
        // The same bytes read the same way fail the same way; should they not,
        // the first error still stands, at the top.
        Ok(_) => json_error(file, text, JsonPath::root(), first),
    }
}

/// Turns unknown-field paths into problems; a component's suggestions are the
/// fields of its own kind.
fn unknown_fields(
    schema: Schema,
    unknown: Vec<JsonPath>,
    kinds: &HashMap<JsonPath, Kind>,
) -> Vec<Problem> {
    unknown
        .into_iter()
        .map(|path| {
            let parent = path.parent();
            match kinds.get(&parent) {
                Some(kind) => unknown_field(&crate::wire::component_fields(*kind), path),
                None => unknown_field(schema.fields_at(&parent).unwrap_or(&[]), path),
            }
        })
        .collect()
}

fn component_kinds(
    parent: &JsonPath,
    raw: &Chunked<RawComponent>,
    kinds: &mut HashMap<JsonPath, Kind>,
) {
    let base = parent.key("components");
    for (i, c) in raw.iter().enumerate() {
        kinds.insert(base.index(i), c.kind);
    }
}

fn unknown_field(fields: &[&str], path: JsonPath) -> Problem {
    let field = path.last_key().unwrap_or("?").to_owned();
    let mut problem = Problem::new(path, format!("unknown field `{field}`"));
    if !fields.is_empty() {
        let hint = match suggest(&field, fields) {
            Some(s) => format!(
                "did you mean `{s}`? known fields here: {}",
                fields.join(", ")
            ),
            None => format!("one of: {}", fields.join(", ")),
        };
        problem = problem.expected(hint);
    }
    problem
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> JsonPath {
    use serde_ignored::Path as P;
    fn walk(p: &P<'_>, out: &mut Vec<Segment>) {
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(Segment::Index(*index));
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(Segment::Key(key.clone().into()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    let mut segs = Vec::new();
    walk(p, &mut segs);
    JsonPath(segs)
}

fn path_of(p: &serde_path_to_error::Path) -> JsonPath {
    use serde_path_to_error::Segment as S;
    JsonPath(
        p.iter()
            .filter_map(|s| match s {
                S::Seq { index } => Some(Segment::Index(*index)),
                S::Map { key } => Some(Segment::Key(key.clone().into())),
                S::Enum { .. } | S::Unknown => None,
            })
            .collect(),
    )
}

pub(crate) fn json_error(
    file: &str,
    text: &str,
    path: JsonPath,
    inner: serde_json::Error,
) -> Invalid {
    let full = inner.to_string();
    // serde_json appends " at line L column C"; the position is reported separately.
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    };
    let (message, expected) = match inner.classify() {
        serde_json::error::Category::Syntax => (format!("malformed JSON: {message}"), None),
        serde_json::error::Category::Eof => (
            format!("malformed JSON: {message}"),
            Some("the rest of the document (is the file truncated?)".to_owned()),
        ),
        serde_json::error::Category::Io => (message, None),
        serde_json::error::Category::Data => split_expected(&message),
    };
    let (line, column) = if inner.line() > 0 {
        (inner.line(), inner.column())
    } else {
        let p = position_of(text, 0);
        (p.line, p.column)
    };
    Invalid {
        diagnostics: vec![Diagnostic {
            file: file.to_owned(),
            line,
            column,
            path: path.to_string(),
            message,
            expected,
        }],
    }
}

/// serde's data errors read "invalid type: integer `5`, expected a string"; split the
/// expectation out so it is shown like every other one.
fn split_expected(message: &str) -> (String, Option<String>) {
    match message.split_once(", expected ") {
        Some((what, expected)) => (what.to_owned(), Some(expected.to_owned())),
        None => (message.to_owned(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_all_reported_with_suggestions() {
        let text = r#"{"name": "m", "componets": [], "subsystems": [{"id": "a",
            "components": [{"id": "x", "kind": "service", "resorces": {},
              "resources": {"container": {"imgae": "busybox"}}}]}]}"#;
        let (_, problems) = parse_megamodel("m.json", text).expect("parses");
        let paths: Vec<String> = problems.iter().map(|p| p.path.to_string()).collect();
        assert_eq!(
            paths,
            vec![
                "componets",
                "subsystems[0].components[0].resorces",
                "subsystems[0].components[0].resources.container.imgae",
            ]
        );
        assert!(problems[0]
            .expected
            .as_deref()
            .unwrap()
            .contains("did you mean `components`"));
        assert!(problems[2]
            .expected
            .as_deref()
            .unwrap()
            .contains("did you mean `image`"));
    }

    #[test]
    fn wrong_type_names_path_and_expectation() {
        let text = "{\"name\": \"m\",\n \"components\": [{\"id\": \"x\", \"kind\": \"device\", \"board\": 5}]}";
        let err = parse_megamodel("m.json", text).unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!(d.path, "components[0].board");
        assert_eq!(d.line, 2);
        assert!(
            d.message.contains("invalid type: integer `5`"),
            "{}",
            d.message
        );
        assert_eq!(d.expected.as_deref(), Some("a string"));
    }

    #[test]
    fn malformed_json_is_a_syntax_error_with_position() {
        let err =
            parse_megamodel("m.json", "{\"name\": \"m\",\n  \"components\": [,]}").unwrap_err();
        let d = &err.diagnostics[0];
        assert!(d.message.starts_with("malformed JSON"), "{}", d.message);
        assert_eq!((d.line, d.column), (2, 18));
        let err = parse_megamodel("m.json", "{\"name\": \"m\"").unwrap_err();
        assert!(err.diagnostics[0]
            .expected
            .as_deref()
            .unwrap()
            .contains("truncated"));
        let err = parse_megamodel("m.json", "{\"name\": \"m\"} trailing").unwrap_err();
        assert!(err.diagnostics[0].message.contains("trailing characters"));
    }

    #[test]
    fn missing_required_field() {
        let err =
            parse_megamodel("m.json", r#"{"name": "m", "components": [{"id": "x"}]}"#).unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!(d.path, "components[0]");
        assert!(d.message.contains("missing field `kind`"), "{}", d.message);
    }

    #[test]
    fn fields_of_another_kind_are_reported() {
        let text = r#"{"name": "m", "components": [{"id": "x", "kind": "service", "triggers": ["a"], "board": "uno"}]}"#;
        let (_, problems) = parse_megamodel("m.json", text).unwrap();
        let msgs: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            msgs,
            vec![
                "field `board` does not apply to a service",
                "field `triggers` does not apply to a service"
            ]
        );
    }
}
