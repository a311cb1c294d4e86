//! The gateway's cache of blobs: the artefacts its targets are pinned to
//! (`path@sha256:<hex>`), fetched from the orchestrator over the link's
//! endpoint before a pass plans, so a gateway needs no file of the machine the
//! model was applied from.
//!
//! A transfer is written to `partial/<hex>` and resumed from its end after a
//! cut; the whole is hashed before it becomes `sha256/<hex>`, and a blob whose
//! bytes do not match its digest is thrown away and refused. A directory's
//! archive is unpacked once into `trees/<hex>/` (entries that would land
//! outside it are refused), which build steps use as a context part.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use continuum_models::artefact::{split, visit_mut, Kind};
use continuum_models::DeploymentModel;
use continuum_proto::v1::blob_service_client::BlobServiceClient;
use continuum_proto::v1::FetchBlobRequest;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use crate::spec::hex;

/// Why a blob is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The orchestrator cannot be reached or refused.
    #[error("cannot fetch blob {digest} from {endpoint}: {why}")]
    Fetch {
        /// The blob.
        digest: String,
        /// Where from.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// Its bytes do not hash to its digest.
    #[error("blob {digest} is corrupt: its bytes hash to {actual}; it was thrown away")]
    Corrupt {
        /// The blob.
        digest: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The disk refused.
    #[error("blob {digest}: {why}")]
    Io {
        /// The blob.
        digest: String,
        /// Why.
        why: String,
    },
}

/// The cache.
#[derive(Debug)]
pub struct BlobCache {
    root: PathBuf,
    orchestrators: crate::orchestrators::Orchestrators,
    tls: Option<continuum_proto::tls::ClientTls>,
    /// Why each blob that could not be had is missing, until it is had.
    failures: Mutex<BTreeMap<String, BlobError>>,
}

impl BlobCache {
    /// A cache under `root`, fetching from the orchestrator that answers
    /// among `orchestrators` (one endpoint, or several of which one leads).
    pub fn new(
        root: PathBuf,
        orchestrators: impl Into<crate::orchestrators::Orchestrators>,
    ) -> BlobCache {
        BlobCache {
            root,
            orchestrators: orchestrators.into(),
            tls: None,
            failures: Mutex::default(),
        }
    }

    /// Fetches over TLS as `tls` says (an `https://` endpoint).
    pub fn with_tls(mut self, tls: continuum_proto::tls::ClientTls) -> BlobCache {
        self.tls = Some(tls);
        self
    }

    /// Where blob `hex` is kept.
    pub fn file(&self, hex: &str) -> PathBuf {
        self.root.join("sha256").join(hex)
    }

    /// Where directory blob `hex` is unpacked.
    pub fn tree(&self, hex: &str) -> PathBuf {
        self.root.join("trees").join(hex)
    }

    /// The local copy of what `reference` is pinned to, of kind `kind`; or
    /// why there is none.
    pub fn resolve(&self, reference: &str, kind: Kind) -> Result<PathBuf, BlobError> {
        let (_, Some(hex)) = split(reference) else {
            return Err(BlobError::Io {
                digest: String::new(),
                why: format!("`{reference}` is not pinned to a blob"),
            });
        };
        let path = match kind {
            Kind::Directory => self.tree(hex),
            Kind::File => self.file(hex),
        };
        if path.exists() {
            return Ok(path);
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Err(failures.get(hex).cloned().unwrap_or_else(|| BlobError::Io {
            digest: hex.to_owned(),
            why: "not fetched yet".into(),
        }))
    }

    /// Fetches (and unpacks) every blob `model` is pinned to that the cache
    /// lacks. What fails is remembered for [`BlobCache::resolve`] to say, and
    /// tried again at the next call.
    pub async fn ensure(&self, model: &DeploymentModel) {
        let mut wanted: BTreeMap<String, Kind> = BTreeMap::new();
        for c in &model.components {
            let mut c = c.clone();
            visit_mut(&mut c, |kind, _, reference| {
                if let (_, Some(hex)) = split(reference) {
                    wanted.insert(hex.to_owned(), kind);
                }
            });
        }
        for (hex, kind) in wanted {
            let result = self.ensure_one(&hex, kind).await;
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    failures.remove(&hex);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "artefact not available");
                    failures.insert(hex, e);
                }
            }
        }
    }

    async fn ensure_one(&self, digest: &str, kind: Kind) -> Result<(), BlobError> {
        if !self.file(digest).is_file() {
            self.fetch(digest).await?;
        }
        if kind == Kind::Directory && !self.tree(digest).is_dir() {
            let (file, tree) = (self.file(digest), self.tree(digest));
            let d = digest.to_owned();
            tokio::task::spawn_blocking(move || unpack(&file, &tree))
                .await
                .map_err(|e| BlobError::Io {
                    digest: d.clone(),
                    why: e.to_string(),
                })?
                .map_err(|e| BlobError::Io {
                    digest: d,
                    why: format!("cannot unpack: {e}"),
                })?;
        }
        Ok(())
    }

    /// A channel to the first orchestrator that answers, starting with the
    /// one the link last reached.
    async fn connect(&self) -> Result<tonic::transport::Channel, String> {
        let mut why = Vec::new();
        for endpoint in self.orchestrators.in_turn() {
            let dial = continuum_proto::tls::endpoint(endpoint, self.tls.as_ref())?;
            match dial.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => why.push(format!("{endpoint}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    /// Fetches blob `digest`, resuming a transfer a cut left partial.
    pub async fn fetch(&self, digest: &str) -> Result<(), BlobError> {
        let fail = |why: String| BlobError::Fetch {
            digest: digest.to_owned(),
            endpoint: self.orchestrators.to_string(),
            why,
        };
        let io = |e: std::io::Error| BlobError::Io {
            digest: digest.to_owned(),
            why: e.to_string(),
        };
        for dir in ["partial", "sha256", "trees"] {
            std::fs::create_dir_all(self.root.join(dir)).map_err(io)?;
        }
        let partial = self.root.join("partial").join(digest);
        let offset = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let channel = self.connect().await.map_err(fail)?;
        let mut client = BlobServiceClient::new(channel);
        let mut stream = client
            .fetch(FetchBlobRequest {
                digest: digest.to_owned(),
                offset,
            })
            .await
            .map_err(|s| fail(s.message().to_owned()))?
            .into_inner();
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(io)?;
        let mut size = None;
        let mut received = offset;
        while let Some(chunk) = stream.next().await {
            // What arrived before a cut stays in `partial` for the next try.
            let chunk = chunk.map_err(|s| fail(s.message().to_owned()))?;
            size = Some(chunk.size);
            out.write_all(&chunk.data).map_err(io)?;
            received += chunk.data.len() as u64;
        }
        out.sync_all().map_err(io)?;
        drop(out);
        if size.is_some_and(|s| received < s) {
            return Err(fail(format!("the transfer ended at {received} bytes")));
        }
        // Hashed as it is read: a large blob is never held in memory.
        let mut hash = Sha256::new();
        std::io::copy(&mut std::fs::File::open(&partial).map_err(io)?, &mut hash).map_err(io)?;
        let actual = hex(&hash.finalize());
        if actual != digest {
            let _ = std::fs::remove_file(&partial);
            return Err(BlobError::Corrupt {
                digest: digest.to_owned(),
                actual,
            });
        }
        std::fs::rename(&partial, self.file(digest)).map_err(io)?;
        tracing::info!(
            digest,
            bytes = received,
            resumed_at = offset,
            "blob fetched"
        );
        Ok(())
    }
}

/// Unpacks archive `file` into `tree` (atomically: a crash leaves none).
fn unpack(file: &Path, tree: &Path) -> std::io::Result<()> {
    let tmp = tree.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let unpacked = unpack_into(file, &tmp);
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    unpacked?;
    std::fs::rename(&tmp, tree)
}

/// Unpacks archive `file` into the directory `tmp`.
fn unpack_into(file: &Path, tmp: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(file)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // The orchestrator packs relative paths only: anything else is not
        // an archive it made.
        if entry.path()?.is_absolute() {
            return Err(std::io::Error::other(format!(
                "the entry `{}` is an absolute path",
                entry.path()?.display()
            )));
        }
        // `unpack_in` refuses entries that would land outside `tmp`.
        if !entry.unpack_in(tmp)? {
            return Err(std::io::Error::other(format!(
                "the entry `{}` leads outside the directory",
                entry.path()?.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive of one file whose path is written as is (no checks).
    fn archive_with(path: &str) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(3);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&header, &b"bad"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn an_archive_that_climbs_out_or_is_absolute_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (path, why) in [
            ("../escape", "leads outside"),
            ("/etc/escape", "absolute path"),
        ] {
            let file = dir.path().join("blob.tar");
            std::fs::write(&file, archive_with(path)).unwrap();
            let tree = dir.path().join("tree");
            let e = unpack(&file, &tree).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(path), "{path}: {e}");
            assert!(!tree.exists(), "nothing unpacked for {path}");
            assert!(
                !tree.with_extension("partial").exists(),
                "nothing left for {path}"
            );
            assert!(!dir.path().join("escape").exists());
        }
        let file = dir.path().join("good.tar");
        std::fs::write(&file, archive_with("ok/file")).unwrap();
        unpack(&file, &dir.path().join("good")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("good/ok/file")).unwrap(),
            b"bad"
        );
    }
}
