//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod certs;
pub mod diff;
pub mod explain;
pub mod get;
pub mod import;
pub mod plan;
pub mod rollout;
pub mod serve;
pub mod status;
pub mod token;
pub mod up;
pub mod validate;
pub mod watch;

use std::path::Path;

use continuum_models::Invalid;

use crate::load::{self, Comparable};
use crate::style::Style;

/// Loads the two models a comparison needs; reports the problems of both and
/// returns `None` when either is invalid.
pub fn load_pair(old: &Path, new: &Path, style: &Style) -> Option<(Comparable, Comparable)> {
    match load::comparable_pair(old, new) {
        Ok(pair) => Some(pair),
        Err(errors) => {
            for e in &errors {
                report(e, style);
            }
            None
        }
    }
}

/// Prints every diagnostic on stderr.
pub fn report(invalid: &Invalid, style: &Style) {
    for d in &invalid.diagnostics {
        let location = if d.line > 0 {
            format!("{}:{}:{}", d.file, d.line, d.column)
        } else {
            d.file.clone()
        };
        let at = if d.path.is_empty() {
            String::new()
        } else {
            format!("at {}: ", style.cyan(&d.path))
        };
        eprintln!(
            "{} {}: {at}{}",
            style.red("error:"),
            style.bold(&location),
            d.message
        );
        if let Some(e) = &d.expected {
            eprintln!("    {} {e}", style.dim("expected:"));
        }
    }
    let n = invalid.diagnostics.len();
    eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
}

/// Pretty JSON on stdout.
/// Replaces `path` whole: written beside it (owner-only when `private`),
/// synced, then renamed over it, so a reader never sees half a file.
pub fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or("file".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
