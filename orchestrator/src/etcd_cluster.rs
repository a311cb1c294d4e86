//! Test support: a real etcd cluster of a few members on loopback (Debian's
//! `etcd-server`), each a child process with its own data directory, all
//! killed and removed when the cluster is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    clients: Vec<String>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether `etcd` is installed. Under `CI=true` its absence fails the test;
/// elsewhere the test is skipped with a reason.
pub fn etcd_available() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true but `etcd` is not installed (Debian's etcd-server)"
        );
        eprintln!("skipped: `etcd` is not installed (Debian's etcd-server)");
    }
    ok
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster takes a write.
    pub fn start(n: usize) -> EtcdCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("continuum-etcd-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster");
        let peers: Vec<String> = (0..n)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let clients: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let initial = (0..n)
            .map(|i| format!("m{i}={}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("continuum-test-{nanos}");
        let members = (0..n)
            .map(|i| {
                let log = std::fs::File::create(dir.join(format!("m{i}.log"))).expect("a log");
                Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("m{i}")))
                    .args(["--listen-peer-urls", &peers[i]])
                    .args(["--initial-advertise-peer-urls", &peers[i]])
                    .args(["--listen-client-urls", &format!("http://{}", clients[i])])
                    .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-token", &token])
                    .args(["--initial-cluster-state", "new"])
                    // Quick elections: members on one machine.
                    .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map(Some)
                    .expect("starts etcd")
            })
            .collect();
        let cluster = EtcdCluster {
            members,
            clients,
            dir,
        };
        cluster.wait_writable();
        cluster
    }

    /// The client endpoints, `host:port` each.
    pub fn endpoints(&self) -> &[String] {
        &self.clients
    }

    /// `etcd://` and every member, with `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.clients.join(","))
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the members still running take a write.
    pub fn wait_writable(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let endpoints: Vec<String> = self
            .clients
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        rt.block_on(async {
            loop {
                let options = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(1))
                    .with_connect_timeout(Duration::from_secs(1));
                if let Ok(mut c) = etcd_client::Client::connect(&endpoints, Some(options)).await {
                    if c.put("continuum-test-ready", "yes", None).await.is_ok() {
                        return;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "the etcd cluster took no write within 30 s (logs in {})",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
