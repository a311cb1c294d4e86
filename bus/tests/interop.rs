//! The embedded broker against real Mosquitto clients (`mosquitto_pub`,
//! `mosquitto_sub`, from Debian's `mosquitto-clients`): QoS 0, 1 and 2, MQTT
//! 3.1.1 and 5, retained messages, last wills, and authentication.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use continuum_bus::{BrokerConfig, EmbeddedBroker};

const WITHIN: Duration = Duration::from_secs(15);

/// Whether the Mosquitto clients are installed; in CI their absence fails.
fn clients() -> bool {
    let ok = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but mosquitto_pub is not installed (Debian's mosquitto-clients)");
        }
        eprintln!("skipped: mosquitto_pub is not installed");
    }
    ok
}

fn free() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A broker serving MQTT 3.1.1 and 5 on ports of its own.
fn broker(users: &[(&str, &str)]) -> (SocketAddr, SocketAddr) {
    let (v4, v5) = (free(), free());
    let mut config = BrokerConfig::new(Some(v4), Some(v5));
    config.users = users
        .iter()
        .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
        .collect();
    EmbeddedBroker::start(config).expect("the broker starts");
    (v4, v5)
}

/// A `mosquitto_sub` whose output lines arrive on a channel; killed on drop.
struct Sub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Sub {
    fn start(addr: SocketAddr, version: &str, args: &[&str]) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-V",
                version,
                "-v",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Sub { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(WITHIN)
            .expect("a message within the deadline")
    }

    /// Publishes on `topic` until this subscriber sees it: the subscription is
    /// then in place (mosquitto_sub does not say when it is).
    fn ready(&self, addr: SocketAddr, version: &str, topic: &str) {
        let deadline = Instant::now() + WITHIN;
        loop {
            publish(addr, version, &["-t", topic, "-m", "ping"]);
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                assert_eq!(line, format!("{topic} ping"));
                // Drain the other pings already on their way.
                while self.lines.recv_timeout(Duration::from_millis(100)).is_ok() {}
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the subscription never took effect"
            );
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(addr: SocketAddr, version: &str, args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            version,
        ])
        .args(args)
        .output()
        .expect("mosquitto_pub runs")
}

#[test]
fn every_qos_arrives_in_order_over_mqtt_3_1_1_and_5() {
    if !clients() {
        return;
    }
    let (v4, v5) = broker(&[]);
    for (addr, version) in [(v4, "mqttv311"), (v5, "mqttv5")] {
        for qos in ["0", "1", "2"] {
            let sub = Sub::start(addr, version, &["-q", qos, "-t", "t/#"]);
            sub.ready(addr, version, "t/ping");
            for i in 0..5 {
                let o = publish(
                    addr,
                    version,
                    &["-q", qos, "-t", "t/data", "-m", &format!("m{i}")],
                );
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            }
            let got: Vec<String> = (0..5).map(|_| sub.next()).collect();
            let want: Vec<String> = (0..5).map(|i| format!("t/data m{i}")).collect();
            assert_eq!(got, want, "{version} QoS {qos}");
        }
    }
}

#[test]
fn retained_messages_reach_later_subscribers() {
    if !clients() {
        return;
    }
    let (v4, v5) = broker(&[]);
    let o = publish(
        v4,
        "mqttv311",
        &["-q", "1", "-r", "-t", "status/gw", "-m", "online"],
    );
    assert!(o.status.success());
    for (addr, version) in [(v4, "mqttv311"), (v5, "mqttv5")] {
        let sub = Sub::start(addr, version, &["-q", "1", "-t", "status/gw"]);
        assert_eq!(sub.next(), "status/gw online", "{version}");
    }
}

#[test]
fn a_client_that_dies_has_its_last_will_published() {
    if !clients() {
        return;
    }
    let (v4, _) = broker(&[]);
    let watcher = Sub::start(v4, "mqttv311", &["-q", "1", "-t", "will/#"]);
    watcher.ready(v4, "mqttv311", "will/ping");
    // A client with a will; it subscribes to its own topic so we know it is in.
    let mut dying = Sub::start(
        v4,
        "mqttv311",
        &[
            "-q",
            "1",
            "-t",
            "alive/#",
            "--will-topic",
            "will/gw",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
            "-k",
            "5",
        ],
    );
    dying.ready(v4, "mqttv311", "alive/ping");
    let _ = dying.child.kill(); // SIGKILL: no DISCONNECT is sent
    assert_eq!(watcher.next(), "will/gw offline");
}

#[test]
fn clients_must_authenticate_when_users_are_set() {
    if !clients() {
        return;
    }
    let (v4, v5) = broker(&[("gateway", "s3cret")]);
    for (addr, version) in [(v4, "mqttv311"), (v5, "mqttv5")] {
        let refused = publish(
            addr,
            version,
            &["-u", "gateway", "-P", "wrong", "-t", "x", "-m", "1"],
        );
        assert!(
            !refused.status.success(),
            "{version}: a wrong password is refused"
        );
        let anonymous = publish(addr, version, &["-t", "x", "-m", "1"]);
        assert!(
            !anonymous.status.success(),
            "{version}: anonymous is refused"
        );
        let ok = publish(
            addr,
            version,
            &["-u", "gateway", "-P", "s3cret", "-t", "x", "-m", "1"],
        );
        assert!(
            ok.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
}

/// Sends `bytes` on a fresh connection to `addr` and waits for the broker to
/// close it.
fn hostile(addr: SocketAddr, bytes: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WITHIN)).unwrap();
    s.write_all(bytes).unwrap();
    let mut sink = [0u8; 64];
    // The broker answers (a CONNACK) or not; the connection ends either way.
    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

#[test]
fn packets_only_a_server_sends_drop_that_connection_and_nothing_else() {
    if !clients() {
        return;
    }
    let (v4, v5) = broker(&[]);
    let sub = Sub::start(v5, "mqttv5", &["-q", "1", "-t", "t/#"]);
    sub.ready(v5, "mqttv5", "t/ping");
    let before = continuum_bus::broker::contained_panics();
    // CONNACK as the first packet (rumqttd 0.20 reaches `unreachable!`).
    for _ in 0..20 {
        hostile(v5, &[0x20, 0x02, 0x00, 0x00]);
    }
    // A well-formed MQTT 5 CONNECT, then an UNSUBACK (also `unreachable!`).
    let connect: &[u8] = &[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x03,
        b'b', b'a', b'd',
    ];
    let mut packet = connect.to_vec();
    packet.extend_from_slice(&[0xb0, 0x04, 0x00, 0x01, 0x00, 0x00]);
    hostile(v5, &packet);
    let contained = continuum_bus::broker::contained_panics() - before;
    assert!(contained >= 21, "{contained} panics contained");
    // The subscriber it already had and new clients are served as before.
    for (addr, version) in [(v5, "mqttv5"), (v4, "mqttv311")] {
        let o = publish(addr, version, &["-q", "1", "-t", "t/after", "-m", version]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(sub.next(), format!("t/after {version}"));
    }
}
