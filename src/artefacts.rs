//! The artefacts a model names, packed and uploaded by `continuum apply`: each
//! directory as a deterministic tar archive (entries in name order, no times,
//! owners or permissions beyond the executable bit), each file as it is, named
//! by its SHA-256. Only what the orchestrator lacks is sent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use continuum_models::artefact::{normalize, of_megamodel, Kind};
use continuum_proto::v1::{ApplyRequest, BlobUpload, MissingBlobsRequest};
use sha2::{Digest, Sha256};

/// Bytes per upload message.
const CHUNK: usize = 1 << 20;

/// One artefact, packed.
#[derive(Debug)]
pub struct Packed {
    /// Its path, normalized from the model file's directory.
    pub path: String,
    /// SHA-256 of `bytes`, lowercase hex.
    pub digest: String,
    /// The archive (a directory) or the file's content.
    pub bytes: Vec<u8>,
    /// What it is, for messages: `src ./presence-function of presence`.
    pub what: String,
}

/// Why a source cannot be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// It cannot be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A symbolic link that leads outside the source.
    #[error("{path}: a symbolic link to `{target}`, which leads outside the source")]
    LinkOutside {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: String,
    },
    /// Not a regular file, directory or link (a socket, a device, a pipe).
    #[error("{0}: not a regular file or directory")]
    Special(PathBuf),
    /// A name that is not UTF-8.
    #[error("{0}: a name that is not UTF-8")]
    Name(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |cause| PackError::Io {
        path: path.to_owned(),
        cause,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A directory as a deterministic tar archive. Symbolic links are kept when
/// they stay inside the directory, refused otherwise.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PackError::Io {
            path: dir.to_owned(),
            cause: std::io::Error::other("not a directory"),
        });
    }
    let mut tar = tar::Builder::new(Vec::new());
    let walk = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walk {
        let entry = entry.map_err(|e| PackError::Io {
            path: e.path().unwrap_or(dir).to_owned(),
            cause: std::io::Error::other(e.to_string()),
        })?;
        let path = entry.path();
        let rel = path
            .strip_prefix(dir)
            .expect("walked under dir")
            .to_str()
            .ok_or_else(|| PackError::Name(path.to_owned()))?
            .to_owned();
        let kind = entry.file_type();
        let append = |tar: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, data: &[u8]| {
            tar.append_data(&mut h, &rel, data).map_err(io(path))
        };
        if kind.is_dir() {
            append(&mut tar, header(tar::EntryType::Directory, 0o755, 0), &[])?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(path).map_err(io(path))?;
            let target = target
                .to_str()
                .ok_or_else(|| PackError::Name(path.to_owned()))?
                .to_owned();
            let parent = Path::new(&rel).parent().unwrap_or(Path::new(""));
            let resolved = normalize(&parent.join(&target).to_string_lossy());
            if target.starts_with('/') || resolved == ".." || resolved.starts_with("../") {
                return Err(PackError::LinkOutside {
                    path: path.to_owned(),
                    target,
                });
            }
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &rel, &target).map_err(io(path))?;
        } else if kind.is_file() {
            let data = std::fs::read(path).map_err(io(path))?;
            let exec = entry.metadata().map_err(|e| PackError::Io {
                path: path.to_owned(),
                cause: std::io::Error::other(e.to_string()),
            })?;
            let mode = if exec.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            append(
                &mut tar,
                header(tar::EntryType::Regular, mode, data.len() as u64),
                &data,
            )?;
        } else {
            return Err(PackError::Special(path.to_owned()));
        }
    }
    tar.into_inner().map_err(io(dir))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Packs every artefact the request's model names (after template
/// expansion), found from `dir`, the model file's directory. A model that
/// does not read gives none: the orchestrator's answer says what is wrong.
pub fn pack_all(model_file: &Path, req: &ApplyRequest) -> anyhow::Result<Vec<Packed>> {
    let Ok(prepared) = continuum_proto::apply::prepare(req) else {
        return Ok(Vec::new());
    };
    let dir = model_file.parent().unwrap_or(Path::new("."));
    let mut out: Vec<Packed> = Vec::new();
    for r in of_megamodel(&prepared.megamodel) {
        if r.digest.is_some() {
            continue;
        }
        let key = normalize(&r.path);
        if out.iter().any(|p| p.path == key) {
            continue;
        }
        let on_disk = dir.join(&key);
        let packed = match r.kind {
            Kind::Directory => pack_dir(&on_disk),
            Kind::File => std::fs::read(&on_disk).map_err(io(&on_disk)),
        };
        let bytes = packed.map_err(|e| {
            anyhow::anyhow!(
                "{}: component `{}` names {} `{}`, which cannot be sent: {e}",
                model_file.display(),
                r.component,
                r.field,
                r.path
            )
        })?;
        out.push(Packed {
            path: key,
            digest: sha256_hex(&bytes),
            bytes,
            what: format!("{} `{}` of `{}`", r.field, r.path, r.component),
        });
    }
    Ok(out)
}

/// Uploads what the orchestrator at `server` lacks; returns path → digest for
/// the request, and how many blobs and bytes were sent.
pub async fn upload(
    server: &crate::remote::Server,
    packed: &[Packed],
) -> anyhow::Result<(BTreeMap<String, String>, usize, u64)> {
    let map: BTreeMap<String, String> = packed
        .iter()
        .map(|p| (p.path.clone(), p.digest.clone()))
        .collect();
    if packed.is_empty() {
        return Ok((map, 0, 0));
    }
    let mut client = crate::remote::blobs(server).await?;
    let missing = client
        .missing(MissingBlobsRequest {
            digests: packed.iter().map(|p| p.digest.clone()).collect(),
        })
        .await
        .map_err(crate::remote::explain)?
        .into_inner()
        .missing;
    let (mut blobs, mut bytes) = (0, 0);
    for p in packed.iter().filter(|p| missing.contains(&p.digest)) {
        let size = p.bytes.len() as u64;
        let mut chunks: Vec<BlobUpload> = p
            .bytes
            .chunks(CHUNK)
            .map(|c| BlobUpload {
                digest: String::new(),
                size: 0,
                data: c.to_vec(),
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(BlobUpload::default());
        }
        chunks[0].digest = p.digest.clone();
        chunks[0].size = size;
        client
            .upload(tokio_stream::iter(chunks))
            .await
            .map_err(|s| anyhow::anyhow!("uploading `{}`: {}", p.path, s.message()))?;
        blobs += 1;
        bytes += size;
    }
    Ok((map, blobs, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("handler"), "#!/bin/sh\ncat\n").unwrap();
        std::fs::write(root.join("sub/data"), "x").unwrap();
    }

    #[test]
    fn the_same_content_packs_to_the_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        // Written in the other order, at another time.
        std::fs::create_dir_all(b.path().join("sub")).unwrap();
        std::fs::write(b.path().join("sub/data"), "x").unwrap();
        std::fs::write(b.path().join("handler"), "#!/bin/sh\ncat\n").unwrap();
        // Another modification time: archives carry none.
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(b.path().join("handler"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(pack_dir(a.path()).unwrap(), pack_dir(b.path()).unwrap());
        std::fs::write(b.path().join("sub/data"), "y").unwrap();
        assert_ne!(pack_dir(a.path()).unwrap(), pack_dir(b.path()).unwrap());
    }

    #[test]
    fn links_out_of_the_source_are_refused_with_their_path() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        std::os::unix::fs::symlink("sub/data", d.path().join("inside")).unwrap();
        pack_dir(d.path()).expect("a link inside the source is kept");
        std::os::unix::fs::symlink("../../etc/passwd", d.path().join("sub/escape")).unwrap();
        let e = pack_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("sub/escape") && e.contains("outside"), "{e}");
        std::fs::remove_file(d.path().join("sub/escape")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("abs")).unwrap();
        let e = pack_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("abs") && e.contains("outside"), "{e}");
    }
}
