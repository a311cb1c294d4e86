//! Blobs: the artefacts models name, stored by their SHA-256 beside the
//! revisions (`<data>/blobs/sha256/<hex>`), and the `BlobService` that clients
//! upload them with and gateways fetch them from.
//!
//! An upload is written to a file of its own under `blobs/uploads/` and
//! becomes a blob only once every byte arrived, its hash matched the digest it
//! named and it is on disk (a rename after an fsync): a cut upload leaves
//! nothing a gateway could fetch. A blob stays while a kept revision names it;
//! one that no revision names is removed once it is older than a grace period
//! (long enough for the apply that follows its upload).
//!
//! When orchestrators share an etcd store, an upload is also kept there
//! before it is acknowledged, and an orchestrator that lacks a blob (it was
//! uploaded to the leader before this one took over) copies it from there.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use continuum_models::artefact::is_hex_digest;
use continuum_proto::v1::blob_service_server::BlobService;
use continuum_proto::v1::{
    BlobChunk, BlobUpload, BlobUploaded, FetchBlobRequest, MissingBlobsRequest,
    MissingBlobsResponse,
};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::access::{Role, SharedAccess};

/// Bytes per chunk a fetch streams.
pub const CHUNK: usize = 256 * 1024;

/// The blobs on disk.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    /// The largest blob accepted, in bytes.
    pub max_size: u64,
    /// Where blobs are shared with the other orchestrators of the store.
    shared: Option<std::sync::Arc<crate::store::Store>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl BlobStore {
    /// The store under `data_dir/blobs`; uploads a crash cut short are removed.
    pub fn open(data_dir: &Path) -> std::io::Result<BlobStore> {
        let root = data_dir.join("blobs");
        std::fs::create_dir_all(root.join("sha256"))?;
        let _ = std::fs::remove_dir_all(root.join("uploads"));
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(BlobStore {
            root,
            max_size: 1 << 30,
            shared: None,
        })
    }

    /// Shares every blob through `store` (a no-op unless its backend is
    /// shared by several orchestrators).
    pub fn shared_through(mut self, store: std::sync::Arc<crate::store::Store>) -> BlobStore {
        self.shared = Some(store);
        self
    }

    /// Where blob `hex` is (whether or not it exists).
    pub fn path(&self, hex: &str) -> PathBuf {
        self.root.join("sha256").join(hex)
    }

    /// Whether the store holds blob `hex` (copied here first if only the
    /// shared store has it). Blocks.
    pub fn has(&self, hex: &str) -> bool {
        is_hex_digest(hex) && (self.path(hex).is_file() || self.restore(hex))
    }

    /// Copies blob `hex` from the shared store; whether it is here now.
    fn restore(&self, hex: &str) -> bool {
        let Some(shared) = &self.shared else {
            return false;
        };
        let restored = (|| -> Result<bool, String> {
            let mut up = self.begin().map_err(|e| e.to_string())?;
            if !shared
                .backend()
                .shared_blob(hex, &mut up)
                .map_err(|e| e.to_string())?
            {
                return Ok(false);
            }
            let size = up.written;
            up.finish(self, hex, size).map_err(|e| e.to_string())?;
            Ok(true)
        })();
        match restored {
            Ok(found) => {
                if found {
                    tracing::info!(digest = hex, "blob copied from the shared store");
                }
                found
            }
            Err(e) => {
                tracing::warn!(digest = hex, error = %e, "cannot copy a blob from the shared store");
                false
            }
        }
    }

    /// Stores `bytes` (for tests and tools; the service streams).
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let mut up = self.begin()?;
        up.write(bytes)?;
        let digest = hex(&Sha256::digest(bytes));
        up.finish(self, &digest, bytes.len() as u64)
            .map_err(std::io::Error::other)?;
        Ok(digest)
    }

    fn begin(&self) -> std::io::Result<Upload> {
        let name = format!(
            "{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let tmp = self.root.join("uploads").join(name);
        Ok(Upload {
            file: std::fs::File::create(&tmp)?,
            tmp,
            hash: Sha256::new(),
            written: 0,
        })
    }

    /// Removes the blobs no name in `keep` refers to and older than `grace`;
    /// returns how many went.
    pub fn collect(&self, keep: &HashSet<String>, grace: Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        if let Some(shared) = &self.shared {
            removed += shared
                .backend()
                .collect_shared_blobs(keep, grace)
                .map_err(std::io::Error::other)?;
        }
        for entry in std::fs::read_dir(self.root.join("sha256"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age > grace);
            if old {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// An upload in progress; removed unless it is finished.
#[derive(Debug)]
struct Upload {
    file: std::fs::File,
    tmp: PathBuf,
    hash: Sha256,
    written: u64,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes do not hash to the digest named.
    #[error("the upload's bytes hash to {actual}, not to the digest {named} it named")]
    Mismatch {
        /// The digest named.
        named: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// Fewer or more bytes than announced.
    #[error("the upload announced {announced} bytes and sent {sent}")]
    Size {
        /// Announced.
        announced: u64,
        /// Sent.
        sent: u64,
    },
    /// The disk refused.
    #[error("cannot store the blob: {0}")]
    Io(#[from] std::io::Error),
    /// The shared store refused.
    #[error("cannot share the blob with the other orchestrators: {0}")]
    Shared(#[from] crate::store::StoreError),
}

impl Upload {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.hash.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks the whole and makes it blob `digest`; whether it existed already.
    fn finish(mut self, store: &BlobStore, digest: &str, size: u64) -> Result<bool, UploadError> {
        if self.written != size {
            return Err(UploadError::Size {
                announced: size,
                sent: self.written,
            });
        }
        let actual = hex(&std::mem::take(&mut self.hash).finalize());
        if actual != digest {
            return Err(UploadError::Mismatch {
                named: digest.to_owned(),
                actual,
            });
        }
        let dest = store.path(digest);
        let existed = dest.is_file();
        if !existed {
            self.file.sync_all()?;
            std::fs::rename(&self.tmp, &dest)?;
            if let Some(dir) = dest.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        if let Some(shared) = &store.shared {
            shared.backend().share_blob(digest, &dest)?;
        }
        Ok(existed)
    }
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        Upload::write(self, data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The `BlobService` over a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: std::sync::Arc<BlobStore>,
    api: SharedAccess,
    /// Gateways present certificates: one that did may fetch without a token.
    certified_gateways: bool,
}

impl Blobs {
    /// Serves `store` to anyone.
    pub fn new(store: std::sync::Arc<BlobStore>) -> Blobs {
        Blobs {
            store,
            api: SharedAccess::default(),
            certified_gateways: false,
        }
    }

    /// Uploads need a token that may apply; reading needs one that may read,
    /// or — for gateways — a certificate from the client CA (when gateways
    /// are certified) or nothing (when they are not: their link is open too).
    pub fn with_access(mut self, api: SharedAccess, certified_gateways: bool) -> Blobs {
        self.api = api;
        self.certified_gateways = certified_gateways;
        self
    }

    fn reader<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        let gateway = if self.certified_gateways {
            request.peer_certs().is_some_and(|c| !c.is_empty())
        } else {
            true
        };
        if gateway {
            return Ok(());
        }
        self.api
            .allow(request.metadata(), Role::Read, what)
            .map(drop)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

fn digest_arg(hex: &str) -> Result<(), Status> {
    if is_hex_digest(hex) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "`{hex}` is not a SHA-256 digest in lowercase hex"
        )))
    }
}

#[tonic::async_trait]
impl BlobService for Blobs {
    async fn missing(
        &self,
        request: Request<MissingBlobsRequest>,
    ) -> Result<Response<MissingBlobsResponse>, Status> {
        self.reader(&request, "asking for missing blobs")?;
        let req = request.into_inner();
        for d in &req.digests {
            digest_arg(d)?;
        }
        let store = std::sync::Arc::clone(&self.store);
        let missing = tokio::task::spawn_blocking(move || {
            req.digests.into_iter().filter(|d| !store.has(d)).collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(MissingBlobsResponse { missing }))
    }

    async fn upload(
        &self,
        request: Request<Streaming<BlobUpload>>,
    ) -> Result<Response<BlobUploaded>, Status> {
        self.api
            .allow(request.metadata(), Role::Apply, "uploading artefacts")?;
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("an empty upload"))??;
        digest_arg(&first.digest)?;
        if first.size > self.store.max_size {
            return Err(Status::invalid_argument(format!(
                "blob {} is {} bytes, more than the orchestrator's limit of {}",
                first.digest, first.size, self.store.max_size
            )));
        }
        let store = std::sync::Arc::clone(&self.store);
        let internal = |e: std::io::Error| Status::internal(format!("cannot store the blob: {e}"));
        let mut up = store.begin().map_err(internal)?;
        up.write(&first.data).map_err(internal)?;
        while let Some(chunk) = stream.next().await {
            // A cut stream drops `up`, which removes what arrived.
            let chunk = chunk?;
            if up.written + chunk.data.len() as u64 > first.size {
                return Err(Status::invalid_argument(format!(
                    "the upload sends more than the {} bytes it announced",
                    first.size
                )));
            }
            up.write(&chunk.data).map_err(internal)?;
        }
        let (digest, size) = (first.digest.clone(), first.size);
        let existed = tokio::task::spawn_blocking(move || up.finish(&store, &digest, size))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                UploadError::Io(e) => internal(e),
                UploadError::Shared(e) => Status::unavailable(e.to_string()),
                other => Status::invalid_argument(other.to_string()),
            })?;
        if !existed {
            tracing::info!(digest = %first.digest, size = first.size, "blob stored");
        }
        Ok(Response::new(BlobUploaded {
            digest: first.digest,
            size: first.size,
            existed,
        }))
    }

    type FetchStream = ChunkStream;

    async fn fetch(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        self.reader(&request, "fetching a blob")?;
        let req = request.into_inner();
        digest_arg(&req.digest)?;
        let store = std::sync::Arc::clone(&self.store);
        let digest = req.digest.clone();
        // Copied from the shared store first if only it has the blob.
        tokio::task::spawn_blocking(move || store.has(&digest))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let path = self.store.path(&req.digest);
        let mut file = std::fs::File::open(&path)
            .map_err(|_| Status::not_found(format!("no blob {}", req.digest)))?;
        let size = file
            .metadata()
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        if req.offset > size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of blob {} ({size} bytes)",
                req.offset, req.digest
            )));
        }
        file.seek(SeekFrom::Start(req.offset))
            .map_err(|e| Status::internal(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = BlobChunk {
                            size,
                            data: buf[..n].to_vec(),
                        };
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_kept_only_whole_and_true() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"hello").unwrap();
        assert!(store.has(&d));
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello");
        // Wrong bytes for the digest named: refused, nothing left behind.
        let mut up = store.begin().unwrap();
        up.write(b"hellO").unwrap();
        let other = "0".repeat(64);
        assert!(matches!(
            up.finish(&store, &other, 5),
            Err(UploadError::Mismatch { .. })
        ));
        assert!(!store.has(&other));
        // Cut short: dropped, nothing left behind.
        let mut up = store.begin().unwrap();
        up.write(b"hel").unwrap();
        drop(up);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/uploads"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn blobs_no_revision_names_go_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let keep = store.put(b"kept").unwrap();
        let drop_me = store.put(b"dropped").unwrap();
        let named = HashSet::from([keep.clone()]);
        assert_eq!(store.collect(&named, Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(store.collect(&named, Duration::ZERO).unwrap(), 1);
        assert!(store.has(&keep));
        assert!(!store.has(&drop_me));
    }
}
