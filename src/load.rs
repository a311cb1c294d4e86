//! Reading model files from disk: the I/O around the pure models crate.

use std::path::{Path, PathBuf};

use continuum_models::diagnostic::Invalid;
use continuum_models::load::{
    load_deployment_model, load_expanded, load_prepared, load_template, TemplateText,
};
use continuum_models::{DeploymentModel, Megamodel, Template};

/// A model file of any of the three kinds.
#[derive(Debug)]
pub enum Document {
    Megamodel(Loaded),
    Subsystem(DeploymentModel),
    Template(Template),
}

/// A valid megamodel as it will be deployed (templates expanded,
/// partitioned into subsystems).
#[derive(Debug)]
pub struct Loaded {
    pub prepared: Megamodel,
    pub templates: usize,
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn read(path: &Path) -> Result<String, Invalid> {
    std::fs::read_to_string(path)
        .map_err(|e| Invalid::file(&display(path), format!("cannot read the file: {e}")))
}

/// Loads any model file, telling the kinds apart by their top-level members:
/// `template` for a template, `name` for a megamodel, otherwise a subsystem model.
pub fn document(path: &Path) -> Result<Document, Invalid> {
    let text = read(path)?;
    let file = display(path);
    let top: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(&text).ok();
    let has = |k: &str| top.as_ref().is_some_and(|o| o.contains_key(k));
    if has("template") {
        Ok(Document::Template(load_template(&file, &text)?))
    } else if top.is_some()
        && !has("name")
        && (has("id") || has("components"))
        && !has("subsystems")
    {
        Ok(Document::Subsystem(load_deployment_model(&file, &text)?))
    } else {
        megamodel_text(path, &text).map(Document::Megamodel)
    }
}

/// Reads the templates a model names from beside the model file.
fn beside(path: &Path) -> impl FnMut(&str) -> Result<TemplateText, String> + '_ {
    let base = path.parent().unwrap_or(Path::new("."));
    move |runtime| {
        let tpath: PathBuf = base.join(runtime);
        std::fs::read_to_string(&tpath)
            .map(|text| TemplateText {
                name: display(&tpath),
                text,
            })
            .map_err(|e| format!("{}: {e}", tpath.display()))
    }
}

/// A megamodel file with its templates expanded, validated, not yet placed.
pub fn expanded(path: &Path) -> Result<Megamodel, Invalid> {
    let text = read(path)?;
    Ok(load_expanded(&display(path), &text, beside(path))?.megamodel)
}

fn megamodel_text(path: &Path, text: &str) -> Result<Loaded, Invalid> {
    let prepared = load_prepared(&display(path), text, beside(path))?;
    Ok(Loaded {
        templates: prepared.templates.len(),
        prepared: prepared.megamodel,
    })
}

/// A model two versions of which can be compared: a megamodel (as deployed) or one
/// subsystem's model.
#[derive(Debug)]
pub enum Comparable {
    Megamodel(Megamodel),
    Subsystem(DeploymentModel),
}

impl Comparable {
    /// Every component and link, in canonical order.
    pub fn flat(&self) -> DeploymentModel {
        match self {
            Comparable::Megamodel(m) => m.flatten(),
            Comparable::Subsystem(s) => s.clone().canonical(),
        }
    }

    /// The canonical JSON text, for textual diffs.
    pub fn canonical_json(&self) -> serde_json::Result<String> {
        let text = match self {
            Comparable::Megamodel(m) => {
                let mut m = m.clone();
                m.canonicalize();
                serde_json::to_string_pretty(&m)?
            }
            Comparable::Subsystem(s) => serde_json::to_string_pretty(&s.clone().canonical())?,
        };
        Ok(text + "\n")
    }

    fn kind(&self) -> &'static str {
        match self {
            Comparable::Megamodel(_) => "a megamodel",
            Comparable::Subsystem(_) => "a subsystem model",
        }
    }
}

/// Loads two versions of a model for diff and plan: both megamodels or both
/// subsystem models.
pub fn comparable_pair(old: &Path, new: &Path) -> Result<(Comparable, Comparable), Vec<Invalid>> {
    let load = |p: &Path| -> Result<Comparable, Invalid> {
        match document(p)? {
            Document::Megamodel(l) => Ok(Comparable::Megamodel(l.prepared)),
            Document::Subsystem(s) => Ok(Comparable::Subsystem(s)),
            Document::Template(_) => Err(Invalid::file(
                &display(p),
                "a template cannot be compared; diff and plan take megamodels or subsystem models",
            )),
        }
    };
    match (load(old), load(new)) {
        (Ok(a), Ok(b)) => {
            if std::mem::discriminant(&a) != std::mem::discriminant(&b) {
                return Err(vec![Invalid::file(
                    &display(new),
                    format!(
                        "is {} but {} is {}; compare two of a kind",
                        b.kind(),
                        display(old),
                        a.kind()
                    ),
                )]);
            }
            Ok((a, b))
        }
        (a, b) => Err([a.err(), b.err()].into_iter().flatten().collect()),
    }
}
