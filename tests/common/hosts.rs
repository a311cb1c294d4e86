//! Hosts of their own on one machine: a network namespace per host, each
//! joined by a veth pair to a bridge in a switch namespace, on a /24 no other
//! cluster uses. A link is cut by taking the host's port on the switch down;
//! loss is iptables' random drop inside the host. Everything is removed on
//! drop (deleting a namespace deletes its veth ends).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// One host: its namespace, address and port on the switch.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    port: String,
}

/// Hosts joined by one switch.
pub struct Cluster {
    switch: String,
    pub hosts: Vec<Host>,
}

/// Makes network namespace `name`; `None` where namespaces cannot be made
/// (not root): skipped with a message, or a failure in CI.
pub fn add_namespace(name: &str) -> Option<()> {
    let made = Command::new("ip").args(["netns", "add", name]).output();
    if made.is_ok_and(|o| o.status.success()) {
        return Some(());
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI=true but network namespaces cannot be created"
    );
    eprintln!("skipped: network namespaces cannot be created here (root needed)");
    None
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns];
    all.extend(args);
    ip(&all);
}

impl Cluster {
    /// A host per name; `None` where namespaces cannot be made (not root):
    /// skipped with a message, or a failure in CI.
    pub fn new(names: &[&str]) -> Option<Cluster> {
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xffff);
        let switch = format!("csw{tag}");
        add_namespace(&switch)?;
        let mut cluster = Cluster {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        in_ns(&switch, &["ip", "link", "add", "br0", "type", "bridge"]);
        in_ns(&switch, &["ip", "link", "set", "br0", "up"]);
        // 10.150-249.x.0/24: the process and the cluster's number pick it.
        let subnet = format!("10.{}.{}", 150 + (pid % 100), (pid / 100 + n * 37) % 250);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("ch{tag}-{i}");
            let port = format!("cp{tag}-{i}");
            let inner = format!("ci{tag}-{i}");
            ip(&["netns", "add", &ns]);
            let host = Host {
                name: (*name).to_owned(),
                ns: ns.clone(),
                ip: format!("{subnet}.{}", i + 1),
                port: port.clone(),
            };
            cluster.hosts.push(host);
            ip(&["link", "add", &port, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &port, "netns", &switch]);
            ip(&["link", "set", &inner, "netns", &ns]);
            in_ns(&switch, &["ip", "link", "set", &port, "master", "br0"]);
            in_ns(&switch, &["ip", "link", "set", &port, "up"]);
            let addr = format!("{subnet}.{}/24", i + 1);
            in_ns(&ns, &["ip", "addr", "add", &addr, "dev", &inner]);
            in_ns(&ns, &["ip", "link", "set", &inner, "up"]);
            in_ns(&ns, &["ip", "link", "set", "lo", "up"]);
        }
        Some(cluster)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host `{name}`"))
    }

    /// `program` to run on `host`.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(host).ns, program]);
        c
    }

    /// Cuts `host` off the switch: nothing in or out.
    pub fn cut(&self, host: &str) {
        let port = self.host(host).port.clone();
        in_ns(&self.switch, &["ip", "link", "set", &port, "down"]);
    }

    /// Joins `host` to the switch again.
    pub fn heal(&self, host: &str) {
        let port = self.host(host).port.clone();
        in_ns(&self.switch, &["ip", "link", "set", &port, "up"]);
    }

    /// Drops each packet into and out of `host`'s link with probability
    /// `percent`/100 (0: none).
    pub fn loss(&self, host: &str, percent: u32) {
        let ns = self.host(host).ns.clone();
        let ipt = |args: &[&str]| {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns, "iptables"])
                .args(args)
                .output()
                .expect("iptables runs");
            assert!(
                o.status.success(),
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        for chain in ["INPUT", "OUTPUT"] {
            ipt(&["-F", chain]);
        }
        if percent == 0 {
            return;
        }
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            ipt(&["-A", chain, dir, "lo", "-j", "ACCEPT"]);
            ipt(&[
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]);
        }
    }
}

impl Cluster {
    /// A TCP proxy inside `host` on 127.0.0.1:`listen` to `to`, holding each
    /// chunk `delay` in either direction: latency on that one path (no
    /// `tc netem` here). It runs for the rest of the test process.
    pub fn delaying_proxy(
        &self,
        host: &str,
        listen: u16,
        to: std::net::SocketAddr,
        delay: std::time::Duration,
    ) {
        let ns = format!("/var/run/netns/{}", self.host(host).ns);
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // This thread, and the threads it starts, join the host's network.
            let file = std::fs::File::open(&ns).expect("the host's namespace");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener =
                std::net::TcpListener::bind(("127.0.0.1", listen)).expect("proxy listens");
            ready_tx.send(()).unwrap();
            for conn in listener.incoming().map_while(Result::ok) {
                let Ok(upstream) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for (from, into) in [
                    (conn.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, conn),
                ] {
                    std::thread::spawn(move || pump(from, into, delay));
                }
            }
        });
        ready.recv().expect("the proxy started");
    }
}

/// Copies `from` into `into`, each chunk `delay` after it arrived (a
/// latency, not a rate: chunks in flight overlap).
fn pump(mut from: std::net::TcpStream, mut into: std::net::TcpStream, delay: std::time::Duration) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            // The fault itself: each chunk is held until it is due.
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if into.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = into.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}
