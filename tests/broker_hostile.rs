//! The gateway's embedded broker under packets only a server sends: rumqttd
//! 0.20 panics on them (`unreachable!`). Each such connection is dropped with
//! one warning line — no backtrace, no memory growth — and the broker serves
//! everyone else as before.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, Guard};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_server_only_packets_costs_one_line_each_and_no_memory() {
    let dir = tempfile::tempdir().unwrap();
    let v5 = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["gateway", "--no-bridge", "--driver", "process"])
        .args(["--id", "hostile", "--orchestrator", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--mqtt-listen", &free_port(), "--mqtt5-listen", &v5])
        .env("CONTINUUM_LOG", "warn")
        .env("RUST_BACKTRACE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _gateway = Guard(child);
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    common::wait_for_port(&v5);
    let hostile = || {
        let mut s = std::net::TcpStream::connect(&v5).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
        let mut sink = [0u8; 16];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    };
    // Warm up (the first connections allocate what the broker keeps).
    for _ in 0..20 {
        hostile();
    }
    let before = rss_kib(pid);
    for _ in 0..300 {
        hostile();
    }
    let after = rss_kib(pid);
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving: a real client publishes and gets its acknowledgement.
    let port = v5.rsplit(':').next().unwrap();
    let o = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1"])
        .args(["-t", "t/after", "-m", "fine"])
        .output()
        .expect("mosquitto_pub (Debian's mosquitto-clients)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said: Vec<String> = lines.try_iter().collect();
    let dropped = said
        .iter()
        .filter(|l| l.contains("the embedded broker dropped a connection"))
        .count();
    assert!(dropped >= 300, "{dropped} warnings in {said:?}");
    assert!(
        !said
            .iter()
            .any(|l| l.contains("panicked at") || l.contains("stack backtrace")),
        "{said:?}"
    );
    eprintln!("RSS {before} KiB before 300 hostile connections, {after} KiB after");
}
