//! `GET /metrics` over plain HTTP/1.1: the bridge's counters for Prometheus.
//! One request per connection; anything else is a 404.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::bridge::Bridge;

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    gateway: String,
    bridge: Arc<Bridge>,
    shutdown: CancellationToken,
) {
    loop {
        let (mut conn, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let body = crate::bridge::metrics::render(&gateway, &bridge.status());
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let wanted = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
            let response = if wanted {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
