//! Test support with real parts (feature `testing`): a Mosquitto broker per
//! test on a port of its own, stopped on drop; and a probe client that
//! publishes numbered messages with ids and records what it receives. Used by
//! the bridge's interop, loss and benchmark code.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::id::{Dedup, MessageId, ID_PROPERTY};
use crate::url::BrokerUrl;

/// Whether `program` is installed; in CI (`CI=true`) its absence fails the test.
pub fn require(program: &str, package: &str) -> bool {
    let ok = Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but `{program}` is not installed (Debian's {package})");
        }
        eprintln!("skipped: `{program}` is not installed (Debian's {package})");
    }
    ok
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends `signal` to process `pid` (tests stop their children the way an
/// operator would).
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// How much longer than usual tests wait before they give up: the factor in
/// `CONTINUUM_TEST_PATIENCE` (default 1; say 3 on a slow or loaded machine).
pub fn patience() -> f64 {
    std::env::var("CONTINUUM_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f > 0.0)
        .unwrap_or(1.0)
}

/// A test deadline, stretched by [`patience`].
pub fn within(d: Duration) -> Duration {
    d.mul_f64(patience())
}

/// Waits for `cond` to give a value, or panics naming `what` (and, from
/// `explain`, what the test knows that helps: a log, say). Every way a test
/// waits goes through here or through [`eventually`].
pub fn wait_for_explained<T>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let within = self::within(within);
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}{}", explain());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `cond` to give a value, or panics naming `what`.
pub fn wait_for<T>(what: &str, within: Duration, cond: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(what, within, cond, String::new)
}

/// Waits (from a Tokio runtime) for `check` to give a value, or panics naming `what`.
pub async fn eventually_async<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let within = self::within(within);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (from a Tokio runtime) for `cond` to give a value, or panics naming `what`.
pub async fn eventually<T>(what: &str, within: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    eventually_async(what, within, || std::future::ready(cond())).await
}

/// A Mosquitto broker: persistent (sessions and queued messages survive a
/// stop and start), unbounded queues (its defaults drop QoS 1 messages under
/// a burst), on its own port. Stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    config: PathBuf,
    /// Run through `ip netns exec <ns>` when set.
    netns: Option<String>,
}

impl Mosquitto {
    /// Starts one on 127.0.0.1; `extra` is appended to its configuration.
    pub fn start(dir: &Path, name: &str, extra: &str) -> Mosquitto {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|_| unreachable!());
        Mosquitto::start_at(dir, name, addr, None, extra)
    }

    /// Starts one on `addr`, inside network namespace `netns` if given.
    pub fn start_at(
        dir: &Path,
        name: &str,
        addr: SocketAddr,
        netns: Option<&str>,
        extra: &str,
    ) -> Mosquitto {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).expect("mosquitto's directory");
        let config = data.join("mosquitto.conf");
        let text = format!(
            "user root\nlistener {port} {ip}\nallow_anonymous true\npersistence true\npersistence_location {data}/\n\
             max_queued_messages 0\nmax_inflight_messages 0\nlog_dest file {data}/mosquitto.log\n{extra}\n",
            port = addr.port(),
            ip = addr.ip(),
            data = data.display()
        );
        std::fs::write(&config, text).expect("mosquitto's configuration");
        let mut m = Mosquitto {
            child: None,
            addr,
            config,
            netns: netns.map(str::to_owned),
        };
        m.resume();
        m
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its URL, anonymous.
    pub fn url(&self) -> BrokerUrl {
        format!("mqtt://{}", self.addr)
            .parse()
            .unwrap_or_else(|_| unreachable!())
    }

    /// Stops it the way an operator would (SIGTERM: it saves its state).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Kills it (SIGKILL): no chance to save anything. Give it
    /// `autosave_on_changes true` and `autosave_interval 1` for a broker
    /// whose every change is on disk first.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = signal(c.id(), nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the state it saved. The port
    /// was free for a moment: another program (a test looking for a free
    /// port) may hold it briefly, so a Mosquitto that could not bind is
    /// started again until it listens.
    pub fn resume(&mut self) {
        let deadline = Instant::now() + within(Duration::from_secs(10));
        loop {
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "mosquitto"]);
                    c
                }
                None => Command::new("mosquitto"),
            };
            let mut child = cmd
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto starts");
            if self.netns.is_some() {
                self.child = Some(child);
                return;
            }
            let addr = self.addr;
            let up = loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break false;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    // Ours listens, unless it exits now for want of the port.
                    std::thread::sleep(Duration::from_millis(50));
                    break !matches!(child.try_wait(), Ok(Some(_)));
                }
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {addr} again"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto could not take {addr} back"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Nanoseconds since the Unix epoch (unique names, timings).
pub fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A message a probe received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The topic it arrived on.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its `continuum-id`, if it carried one.
    pub id: Option<MessageId>,
    /// Its other user properties.
    pub properties: Vec<(String, String)>,
    /// Whether the broker flagged it retained.
    pub retain: bool,
    /// When it arrived (nanoseconds since the Unix epoch).
    pub at_unix_nanos: u128,
}

impl Received {
    /// The value of user property `key`, if it has one (`continuum-id` aside).
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The number a numbered message carries (its payload's first 8 bytes).
    pub fn number(&self) -> Option<u64> {
        self.payload
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// How long a numbered message took from its publisher, in nanoseconds.
    pub fn latency_nanos(&self) -> Option<u64> {
        let sent = u64::from_be_bytes(self.payload.get(8..16)?.try_into().ok()?);
        Some((self.at_unix_nanos as u64).saturating_sub(sent))
    }
}

/// An MQTT 5 client for tests: a persistent session that reconnects on its
/// own (and re-sends what was not acknowledged, as MQTT requires), recording
/// what arrives and counting the acknowledgements of what it publishes.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The MQTT client, for what the helpers do not cover.
    pub client: AsyncClient,
    received: Arc<Mutex<Vec<Received>>>,
    acked: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Probe {
    /// Connects (from a Tokio runtime); `persistent`: the broker keeps the
    /// session while the probe is away.
    pub fn connect(url: &BrokerUrl, client_id: &str, persistent: bool) -> Probe {
        let mut o = MqttOptions::new(client_id, &url.host, url.port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_start(!persistent)
            .set_connection_timeout(5);
        if persistent {
            o.set_session_expiry_interval(Some(u32::MAX));
        }
        if let Some((u, p)) = &url.credentials {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let probe = Probe {
            client,
            received: Arc::default(),
            acked: Arc::default(),
            connections: Arc::default(),
        };
        let (received, acked, connections) = (
            Arc::clone(&probe.received),
            Arc::clone(&probe.acked),
            Arc::clone(&probe.connections),
        );
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p
                            .properties
                            .map(|pr| pr.user_properties)
                            .unwrap_or_default();
                        let r = Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            id: MessageId::from_properties(&props).ok().flatten(),
                            properties: props,
                            retain: p.retain,
                            at_unix_nanos: unix_nanos(),
                        };
                        received.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connections.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    // The broker is away: try again (a real client's backoff, short).
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        probe
    }

    /// Waits (from a Tokio runtime) until the probe is connected.
    pub async fn connected(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.connections.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe did not connect within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Subscribes (QoS 1) and waits for the broker's acknowledgement.
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
    }

    /// Publishes messages numbered `numbers` on `topic` at QoS 1, `size`
    /// bytes each (the number, then the time it was sent), with ids `<origin>:<number>` if an
    /// origin is given.
    pub async fn publish_numbered(
        &self,
        topic: &str,
        numbers: std::ops::RangeInclusive<u64>,
        size: usize,
        origin: Option<&str>,
    ) {
        for n in numbers {
            let mut payload = n.to_be_bytes().to_vec();
            // Then when it was sent, for latency measurements.
            payload.extend_from_slice(&(unix_nanos() as u64).to_be_bytes());
            payload.resize(size.max(16), b'.');
            let props = PublishProperties {
                user_properties: origin
                    .map(|o| vec![(ID_PROPERTY.to_owned(), format!("{o}:{n}"))])
                    .unwrap_or_default(),
                ..PublishProperties::default()
            };
            self.client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                .await
                .expect("publish request");
        }
    }

    /// Publishes `payload` on `topic` at QoS 1 with these user properties.
    pub async fn publish_with(&self, topic: &str, payload: &str, properties: &[(&str, &str)]) {
        let props = PublishProperties {
            user_properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.to_owned(), props)
            .await
            .expect("publish request");
    }

    /// Publications the broker has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// How many messages arrived (without copying them).
    pub fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Received messages on topics matching `pred`.
    pub fn received_on(&self, topic: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.topic == topic)
            .collect()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// What a numbered stream looked like to an idempotent consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Numbers taken after de-duplication by id, in arrival order.
    pub taken: Vec<u64>,
    /// Redeliveries recognised by their id.
    pub redelivered: u64,
    /// Redeliveries whose id was recognised but whose content differed from
    /// the original (there must be none: an id names one message).
    pub mismatched: u64,
}

impl Tally {
    /// Counts numbered messages: each number once, in order, duplicates.
    pub fn of(received: &[Received]) -> Tally {
        let mut dedup = Dedup::new();
        let mut by_id = std::collections::HashMap::new();
        let mut taken = Vec::new();
        let mut mismatched = 0;
        for r in received {
            if dedup.accept(&r.topic, r.id.as_ref()) {
                if let Some(id) = &r.id {
                    by_id.insert(id.clone(), r.payload.clone());
                }
                taken.push(r.number().unwrap_or(0));
            } else if r.id.as_ref().and_then(|i| by_id.get(i)) != Some(&r.payload) {
                mismatched += 1;
            }
        }
        Tally {
            taken,
            redelivered: dedup.duplicates(),
            mismatched,
        }
    }

    /// Panics unless 1..=n were each taken exactly once, in order.
    pub fn assert_exactly_once_in_order(&self, n: u64, what: &str) {
        assert_eq!(
            self.mismatched, 0,
            "{what}: an id named two different messages"
        );
        let expected: Vec<u64> = (1..=n).collect();
        if self.taken != expected {
            let missing = (1..=n).filter(|k| !self.taken.contains(k)).count();
            let mut seen = std::collections::HashSet::new();
            let dup = self.taken.iter().filter(|k| !seen.insert(**k)).count();
            let out_of_order = self.taken.windows(2).filter(|w| w[0] >= w[1]).count();
            panic!(
                "{what}: {} taken, {missing} missing, {dup} taken twice, {out_of_order} out of order (first numbers: {:?})",
                self.taken.len(),
                &self.taken[..self.taken.len().min(20)]
            );
        }
    }
}
