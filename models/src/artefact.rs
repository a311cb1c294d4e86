//! Artefacts: the directories and files a model names — build contexts and the
//! directories included in them, function sources, firmware images — and their
//! pinning to the digest of their content.
//!
//! A model names an artefact by a path relative to the model file. When the
//! model is applied, the client packs each artefact (a directory as a
//! deterministic archive, a file as it is), uploads it as a blob named by its
//! SHA-256, and the orchestrator *pins* every reference: `path` becomes
//! `path@sha256:<hex>`. The digest is then part of the component, so a changed
//! source is a changed component (and only that one is redeployed), and a
//! gateway knows which blob to fetch without any file of the model's machine.

use std::collections::BTreeMap;

use crate::component::{Component, ComponentSpec};
use crate::model::Megamodel;

/// What separates a path from its digest in a pinned reference.
pub const PIN: &str = "@sha256:";

/// Whether an artefact is a directory or a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A directory, shipped as an archive.
    Directory,
    /// A file, shipped as it is.
    File,
}

/// One reference to an artefact in a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The component that names it.
    pub component: String,
    /// Which field names it, for messages (`build context`, `src`, …).
    pub field: String,
    /// Directory or file.
    pub kind: Kind,
    /// The path as written (without a pin).
    pub path: String,
    /// Its digest, when pinned.
    pub digest: Option<String>,
}

/// Splits a reference into its path and, when pinned, its digest (hex).
pub fn split(reference: &str) -> (&str, Option<&str>) {
    match reference.rsplit_once(PIN) {
        Some((path, hex)) if is_hex_digest(hex) => (path, Some(hex)),
        _ => (reference, None),
    }
}

/// `path` pinned to the SHA-256 `hex`.
pub fn pin(path: &str, hex: &str) -> String {
    format!("{path}{PIN}{hex}")
}

/// Whether `s` is a SHA-256 digest in lowercase hex.
pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `path` without `.` levels and with each `x/..` folded, lexically (leading
/// `..` stay): the key under which an artefact is uploaded.
pub fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for level in path.split('/') {
        match level {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// The directory holding `path`, lexically (`.` for a bare name).
pub fn parent(path: &str) -> String {
    let n = normalize(path);
    match n.rsplit_once('/') {
        Some(("", _)) => "/".to_owned(),
        Some((dir, _)) => dir.to_owned(),
        None if n == ".." => "../..".to_owned(),
        None => ".".to_owned(),
    }
}

/// Calls `f` on every artefact reference of `c`: its kind, the field's name,
/// and the reference itself (which `f` may rewrite).
pub fn visit_mut(c: &mut Component, mut f: impl FnMut(Kind, String, &mut String)) {
    if let ComponentSpec::Function(func) = &mut c.spec {
        if let Some(src) = func.src.as_mut() {
            f(Kind::Directory, "src".to_owned(), src);
        }
    }
    let Some(r) = c.spec.resources_mut() else {
        return;
    };
    if let Some(build) = r.container.as_mut().and_then(|c| c.build.as_mut()) {
        f(
            Kind::Directory,
            "build context".to_owned(),
            &mut build.context,
        );
        for (at, dir) in &mut build.include {
            f(Kind::Directory, format!("build include `{at}`"), dir);
        }
    }
    if let Some(flash) = r.flash.as_mut() {
        f(
            Kind::File,
            "firmware artefact".to_owned(),
            &mut flash.artefact,
        );
    }
}

/// Every artefact reference of `c`.
pub fn of_component(c: &Component) -> Vec<Reference> {
    let mut out = Vec::new();
    let mut copy = c.clone();
    let id = c.id.clone();
    visit_mut(&mut copy, |kind, field, reference| {
        let (path, digest) = split(reference);
        out.push(Reference {
            component: id.clone(),
            field,
            kind,
            path: path.to_owned(),
            digest: digest.map(str::to_owned),
        });
    });
    out
}

/// Every artefact reference of the megamodel (templates expanded), in model order.
pub fn of_megamodel(mm: &Megamodel) -> Vec<Reference> {
    mm.subsystems
        .iter()
        .flat_map(|s| s.components.iter())
        .chain(mm.components.iter())
        .flat_map(of_component)
        .collect()
}

/// Pins every reference of `mm` whose normalized path `digests` knows (path →
/// hex); returns the references left unpinned.
pub fn pin_all(mm: &mut Megamodel, digests: &BTreeMap<String, String>) -> Vec<Reference> {
    let mut left = Vec::new();
    let components = mm
        .subsystems
        .iter_mut()
        .flat_map(|s| s.components.iter_mut())
        .chain(mm.components.iter_mut());
    for c in components {
        let id = c.id.clone();
        visit_mut(c, |kind, field, reference| {
            let (path, digest) = split(reference);
            if digest.is_some() {
                return;
            }
            match digests.get(&normalize(path)) {
                Some(hex) => *reference = pin(path, hex),
                None => left.push(Reference {
                    component: id.clone(),
                    field,
                    kind,
                    path: path.to_owned(),
                    digest: None,
                }),
            }
        });
    }
    left
}

/// The digests component `c` needs, by the path they were pinned for.
pub fn digests_of(c: &Component) -> BTreeMap<String, String> {
    of_component(c)
        .into_iter()
        .filter_map(|r| r.digest.map(|d| (r.path, d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_lexically() {
        assert_eq!(normalize("./a/b/../c/"), "a/c");
        assert_eq!(normalize("../templates/./x"), "../templates/x");
        assert_eq!(normalize("a/../../b"), "../b");
        assert_eq!(normalize("/a/../../b"), "/b");
        assert_eq!(normalize("."), ".");
        assert_eq!(normalize("a/.."), ".");
        assert_eq!(parent("../templates/shell-function.json"), "../templates");
        assert_eq!(parent("t.json"), ".");
        assert_eq!(parent("/t.json"), "/");
    }

    #[test]
    fn pins_split_back_and_only_real_digests_count() {
        let hex = "a".repeat(64);
        let p = pin("./src", &hex);
        assert_eq!(split(&p), ("./src", Some(hex.as_str())));
        assert_eq!(split("./src"), ("./src", None));
        assert_eq!(split("x@sha256:nothex"), ("x@sha256:nothex", None));
    }
}
