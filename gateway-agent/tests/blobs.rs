//! Blobs between a real orchestrator and a gateway's cache: a transfer cut
//! halfway by the network resumes where it stopped, a blob whose bytes are
//! not its digest's is refused and thrown away, and a directory blob is
//! unpacked for builds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use continuum_gateway::blobs::{BlobCache, BlobError};
use continuum_models::artefact::{pin, Kind};
use continuum_orchestrator::blobs::BlobStore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn orchestrator(dir: &std::path::Path) -> continuum_orchestrator::Running {
    let config =
        continuum_orchestrator::Config::new("127.0.0.1:0".parse().unwrap(), dir.to_owned());
    continuum_orchestrator::start(config)
        .await
        .expect("the orchestrator starts")
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A TCP proxy to `upstream` whose first connection is cut after `cut`
/// bytes from the server; later connections pass everything.
async fn cutting_proxy(
    upstream: std::net::SocketAddr,
    cut: usize,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let limit = if n == 0 { Some(cut) } else { None };
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = match limit {
                        Some(l) if sent + n >= l => {
                            let _ = cw.write_all(&buf[..l - sent]).await;
                            break; // the link is cut here
                        }
                        _ => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_halfway_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(&dir.path().join("orchestrator")).await;
    // 3 MiB of bytes that do not compress away.
    let blob: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = BlobStore::open(&dir.path().join("orchestrator"))
        .unwrap()
        .put(&blob)
        .unwrap();
    let (proxy, connections) = cutting_proxy(orch.local_addr(), 1 << 20).await;
    let cache = BlobCache::new(dir.path().join("gateway"), format!("http://{proxy}"));
    let first = cache.fetch(&digest).await;
    assert!(matches!(first, Err(BlobError::Fetch { .. })), "{first:?}");
    let partial = std::fs::metadata(dir.path().join("gateway/partial").join(&digest))
        .expect("what arrived before the cut is kept")
        .len();
    assert!(
        partial > 0 && partial < blob.len() as u64,
        "{partial} bytes kept"
    );
    cache
        .fetch(&digest)
        .await
        .expect("the second try completes");
    assert_eq!(std::fs::read(cache.file(&digest)).unwrap(), blob);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    orch.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_bytes_are_not_its_digests_is_refused_and_thrown_away() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(&dir.path().join("orchestrator")).await;
    let store = BlobStore::open(&dir.path().join("orchestrator")).unwrap();
    let digest = store.put(b"the real content").unwrap();
    // The orchestrator's copy is damaged on its disk.
    std::fs::write(store.path(&digest), b"the real c0ntent").unwrap();
    let cache = BlobCache::new(
        dir.path().join("gateway"),
        format!("http://{}", orch.local_addr()),
    );
    let e = cache.fetch(&digest).await.unwrap_err();
    assert!(matches!(e, BlobError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(!cache.file(&digest).exists());
    assert!(!dir.path().join("gateway/partial").join(&digest).exists());
    // Through `resolve`, a pass says why the artefact is missing.
    let reference = pin("./src", &digest);
    let e = cache.resolve(&reference, Kind::File).unwrap_err();
    assert!(e.to_string().contains("not fetched yet"), "{e}");
    orch.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_blob_is_unpacked_for_builds() {
    let dir = tempfile::tempdir().unwrap();
    let orch = orchestrator(&dir.path().join("orchestrator")).await;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o755);
    tar.append_data(&mut h, "handler", &b"hello"[..]).unwrap();
    let archive = tar.into_inner().unwrap();
    let digest = BlobStore::open(&dir.path().join("orchestrator"))
        .unwrap()
        .put(&archive)
        .unwrap();
    assert_eq!(digest, hex(&archive));
    let cache = BlobCache::new(
        dir.path().join("gateway"),
        format!("http://{}", orch.local_addr()),
    );
    let model: continuum_models::DeploymentModel = serde_json::from_value(serde_json::json!({
        "components": [{"id": "f", "kind": "service", "resources": {"container": {
            "build": {"context": pin("./ctx", &digest)}}}}]
    }))
    .unwrap();
    cache.ensure(&model).await;
    let tree = cache
        .resolve(&pin("./ctx", &digest), Kind::Directory)
        .expect("unpacked");
    assert_eq!(std::fs::read(tree.join("handler")).unwrap(), b"hello");
    orch.stop().await.unwrap();
}
