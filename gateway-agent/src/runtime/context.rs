//! Build contexts made of parts: the template's directory with the function's
//! source put inside it, for example. Docker receives them as one archive;
//! the process driver lays them out in a directory its processes run in.

use std::path::Path;

use super::ContextPart;

/// The parts as one tar archive, each under its place. Symbolic links are
/// kept as links, never followed out of the context.
pub fn pack(parts: &[ContextPart]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for part in parts {
        let at = if part.at.is_empty() { "." } else { &part.at };
        tar.append_dir_all(at, &part.dir)?;
    }
    tar.into_inner()
}

/// Lays the parts out in `dest` (created; replaced if it exists), atomically:
/// a crash leaves the old directory or the new one, never half of one.
pub fn materialize(parts: &[ContextPart], dest: &Path) -> std::io::Result<()> {
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for part in parts {
        copy_dir(&part.dir, &tmp.join(&part.at))?;
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tmp, dest)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry.path().strip_prefix(from).unwrap_or(entry.path());
        let target = to.join(rel);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            // Copies the permissions too: a handler stays executable.
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn parts(root: &Path) -> Vec<ContextPart> {
        std::fs::create_dir_all(root.join("t")).unwrap();
        std::fs::create_dir_all(root.join("f/lib")).unwrap();
        std::fs::write(root.join("t/Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(root.join("f/handler"), "#!/bin/sh\ncat\n").unwrap();
        std::fs::set_permissions(
            root.join("f/handler"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("f/lib/x"), "x").unwrap();
        vec![
            ContextPart {
                at: String::new(),
                dir: root.join("t"),
            },
            ContextPart {
                at: "function".into(),
                dir: root.join("f"),
            },
        ]
    }

    #[test]
    fn parts_are_packed_under_their_places() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = pack(&parts(dir.path())).unwrap();
        let mut names: Vec<String> = tar::Archive::new(bytes.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"Dockerfile".to_owned()), "{names:?}");
        assert!(names.contains(&"function/handler".to_owned()), "{names:?}");
        assert!(names.contains(&"function/lib/x".to_owned()), "{names:?}");
    }

    #[test]
    fn parts_are_laid_out_with_their_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        materialize(&parts(dir.path()), &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("Dockerfile")).unwrap(),
            "FROM scratch\n"
        );
        let mode = std::fs::metadata(dest.join("function/handler"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            std::fs::read_to_string(dest.join("function/lib/x")).unwrap(),
            "x"
        );
    }
}
