//! Reading an `ApplyRequest`: the same on the orchestrator and on a gateway's
//! local API, so a model is judged alike wherever it is applied.

use continuum_models::load::{load_prepared_with, Prepared, TemplateText};
use continuum_models::placement::Observed;
use continuum_models::Invalid;

use crate::v1::ApplyRequest;

/// Why an Apply request cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApplyInputError {
    /// The request holds no megamodel document.
    #[error("the request holds no megamodel")]
    NoMegamodel,
    /// The megamodel (or a template it names) is invalid; every problem is here.
    #[error("the model is invalid: {0}")]
    Invalid(Invalid),
}

/// Reads, validates, expands and partitions the request's megamodel, with the
/// templates sent along it (keyed by the `runtime` that names them), and pins
/// every artefact reference the request has a digest for.
pub fn prepare(req: &ApplyRequest) -> Result<Prepared, ApplyInputError> {
    prepare_with(req, &Observed::default())
}

/// As [`prepare`], placing functions with what is `observed` of the gateways.
pub fn prepare_with(req: &ApplyRequest, observed: &Observed) -> Result<Prepared, ApplyInputError> {
    let mut prepared = prepare_unpinned(req, observed)?;
    let mut digests = std::collections::BTreeMap::new();
    for (path, hex) in &req.artefacts {
        if !continuum_models::artefact::is_hex_digest(hex) {
            return Err(ApplyInputError::Invalid(Invalid::file(
                "artefacts",
                format!("the digest of `{path}` is not a SHA-256 in lowercase hex: `{hex}`"),
            )));
        }
        digests.insert(continuum_models::artefact::normalize(path), hex.clone());
    }
    continuum_models::artefact::pin_all(&mut prepared.megamodel, &digests);
    Ok(prepared)
}

fn prepare_unpinned(req: &ApplyRequest, observed: &Observed) -> Result<Prepared, ApplyInputError> {
    let doc = req.megamodel.as_ref().ok_or(ApplyInputError::NoMegamodel)?;
    let name = if doc.name.is_empty() {
        "megamodel"
    } else {
        doc.name.as_str()
    };
    let text = std::str::from_utf8(&doc.json)
        .map_err(|_| ApplyInputError::Invalid(Invalid::file(name, "is not UTF-8 text")))?;
    load_prepared_with(
        name,
        text,
        |runtime| match req.templates.get(runtime) {
            None => Err("it was not sent with the model".to_owned()),
            Some(t) => String::from_utf8(t.json.clone())
                .map(|text| TemplateText {
                    name: if t.name.is_empty() {
                        runtime.to_owned()
                    } else {
                        t.name.clone()
                    },
                    text,
                })
                .map_err(|_| "it is not UTF-8 text".to_owned()),
        },
        observed,
    )
    .map_err(ApplyInputError::Invalid)
}
