//! Build contexts made of parts: the template's directory with the function's
//! source put inside it, for example. Docker receives them as one archive;
//! the process driver lays them out in a directory its processes run in.

use std::path::Path;

use super::ContextPart;

/// The parts as one tar archive, each under its place. Symbolic links are
/// kept as links, never followed out of the context.
pub fn pack(parts: &[ContextPart]) -> std::io::Result<Vec<u8>> {
    pack_into(parts, Vec::new())
}

/// Writes the archive of the parts into `out` as it reads them (a context
/// of any size costs a buffer, not its size in memory). A sparse file is
/// archived whole: Docker's builder refuses GNU sparse entries.
pub fn pack_into<W: std::io::Write>(parts: &[ContextPart], out: W) -> std::io::Result<W> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.sparse(false);
    for part in parts {
        let at = if part.at.is_empty() { "." } else { &part.at };
        tar.append_dir_all(at, &part.dir)?;
    }
    tar.into_inner()
}

/// A writer that hands what is written to an async reader in chunks: the
/// archive built on a blocking thread streams to the engine.
#[derive(Debug)]
pub struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

/// Chunks of at most this size go to the engine.
const CHUNK: usize = 256 * 1024;

impl ChunkWriter {
    /// A writer and the stream of what it writes.
    pub fn new() -> (
        ChunkWriter,
        tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        (
            ChunkWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            },
            rx,
        )
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the engine stopped reading the context",
            )
        })
    }

    /// Ends the stream with `error` (the reader sees it instead of an end).
    pub fn fail(self, error: std::io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
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
