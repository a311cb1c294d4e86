//! An embedded rumqttd broker.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{v4::V4, v5::V5};
use rumqttd::{Config, ConnectionSettings, LinkType, Router, RouterConfig, Server, ServerSettings};

/// Settings of an embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where MQTT 3.1.1 clients connect (none: not served).
    pub v4: Option<SocketAddr>,
    /// Where MQTT 5 clients connect (none: not served).
    pub v5: Option<SocketAddr>,
    /// Username → password. Empty: anonymous clients are accepted.
    pub users: HashMap<String, String>,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// Messages kept per connection while it cannot keep up.
    pub max_inflight: usize,
    /// MQTT 5 over TLS, on an address of its own (none: not served).
    pub tls: Option<BrokerTls>,
    /// Bytes of messages (topic and payload, as rumqttd counts them) kept per
    /// subscription filter for subscribers that are offline or lag behind
    /// (about: the broker keeps it in eight segments and drops the oldest
    /// segment whole). This bounds the broker's memory.
    pub backlog: usize,
}

/// The broker's TLS listener: where, and its certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTls {
    /// Where MQTT 5 over TLS is served.
    pub listen: SocketAddr,
    /// The certificate (chain first).
    pub cert: std::path::PathBuf,
    /// Its private key.
    pub key: std::path::PathBuf,
}

impl BrokerConfig {
    /// A broker on these addresses (MQTT 3.1.1, MQTT 5), anonymous, with
    /// 1 MiB payloads, 1,000 messages in flight per connection and a backlog
    /// of 1 MiB per subscription.
    pub fn new(v4: Option<SocketAddr>, v5: Option<SocketAddr>) -> BrokerConfig {
        BrokerConfig {
            v4,
            v5,
            users: HashMap::new(),
            max_payload: 1 << 20,
            max_inflight: 1_000,
            tls: None,
            backlog: 1 << 20,
        }
    }
}

/// Why an embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Neither an MQTT 3.1.1 nor an MQTT 5 address was given.
    #[error("the broker serves nothing: give it an MQTT 3.1.1 or 5 address")]
    NoListener,
    /// The broker's listener did not come up in time.
    #[error("the broker did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
    /// The address is taken or not ours.
    #[error("the broker cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The TLS certificate or key is unusable.
    #[error("the broker's TLS: {0}")]
    Tls(String),
    /// The broker's thread could not be spawned.
    #[error("cannot start the broker's thread: {0}")]
    Thread(std::io::Error),
}

/// A running embedded broker. Its threads run for the rest of the process
/// (rumqttd has no shutdown); dropping the handle does not stop it.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// What it was started with.
    pub config: BrokerConfig,
    attach: Attach,
}

type Linker = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx), String> + Send + Sync;

/// Connects clients in the broker's own process straight to its router: no
/// socket, no MQTT encoding, the same sessions and acknowledgements as a
/// network client gets (the bridge attaches this way, as Mosquitto's bridge
/// lives inside its broker).
#[derive(Clone)]
pub struct Attach(std::sync::Arc<Linker>);

impl std::fmt::Debug for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attach(embedded broker)")
    }
}

impl Attach {
    /// A new connection as `client_id`; `persistent`: its session (its
    /// subscriptions, the messages it has not acknowledged) outlives the
    /// connection, as a network client's with clean start off. Blocks until
    /// the broker welcomes it.
    pub fn connect(&self, client_id: &str, persistent: bool) -> Result<(LinkTx, LinkRx), String> {
        (self.0)(client_id, persistent)
    }
}

fn server(name: &str, listen: SocketAddr, config: &BrokerConfig) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: config.max_payload,
            max_inflight_count: config.max_inflight,
            auth: (!config.users.is_empty()).then(|| config.users.clone()),
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Connections the broker dropped on a panic of its own (see [`contain_panics`]).
static CONTAINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many connections the broker dropped on a panic of its own.
pub fn contained_panics() -> u64 {
    CONTAINED.load(std::sync::atomic::Ordering::Relaxed)
}

/// rumqttd 0.20 panics (`unreachable!`) on a packet only a server sends —
/// CONNACK, SUBACK, UNSUBACK, PINGRESP — arriving from a client: 4 bytes
/// (`20 02 00 00`) from anyone who reaches the port. The panic ends only
/// that connection's task, but the default hook prints a backtrace each
/// time (megabytes of symbolisation per connection). Panics raised in
/// rumqttd's code become one warning line instead, and are counted; any
/// other panic goes to the hook that was there.
fn contain_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_broker = info
                .location()
                .is_some_and(|l| l.file().contains("/rumqttd-"));
            if !in_broker {
                return previous(info);
            }
            let n = CONTAINED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info.location().map(|l| {
                format!(
                    "{}:{}",
                    l.file().rsplit("/src/").next().unwrap_or(""),
                    l.line()
                )
            });
            tracing::warn!(
                dropped = n,
                at = at.as_deref().unwrap_or(""),
                "the embedded broker dropped a connection that sent what it cannot handle ({what})"
            );
        }));
    });
}

/// The segments a subscription's backlog is kept in.
const BACKLOG_SEGMENTS: usize = 8;
/// rumqttd's smallest segment.
const MIN_SEGMENT: usize = 1024;

impl EmbeddedBroker {
    /// Starts the broker and returns once every listener accepts connections.
    pub fn start(config: BrokerConfig) -> Result<EmbeddedBroker, BrokerError> {
        if config.v4.is_none() && config.v5.is_none() {
            return Err(BrokerError::NoListener);
        }
        if let Some(t) = &config.tls {
            // rumqttd only logs a certificate it cannot read: check here.
            for (what, path, label) in [
                ("certificate", &t.cert, "CERTIFICATE"),
                ("key", &t.key, "PRIVATE KEY"),
            ] {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| BrokerError::Tls(format!("the {what} {}: {e}", path.display())))?;
                if !text.contains(&format!("{label}-----")) {
                    return Err(BrokerError::Tls(format!(
                        "{} holds no PEM {label} block",
                        path.display()
                    )));
                }
            }
        }
        let tls_listen = config.tls.as_ref().map(|t| t.listen);
        contain_panics();
        // rumqttd only logs a listener it cannot open: find out here, so the
        // caller gets the error (and a port held by someone else is not taken
        // for ours).
        for addr in [config.v4, config.v5, tls_listen].into_iter().flatten() {
            std::net::TcpListener::bind(addr).map_err(|e| BrokerError::Listen(addr, e))?;
        }
        let rumqttd_config = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 200,
                // rumqttd keeps one log per subscription filter, in
                // segments, and drops the oldest segment once there are
                // more than the count: the backlog, in eight parts.
                max_segment_size: (config.backlog / BACKLOG_SEGMENTS).max(MIN_SEGMENT),
                max_segment_count: BACKLOG_SEGMENTS,
                ..RouterConfig::default()
            },
            v4: config
                .v4
                .map(|a| HashMap::from([("v4".to_owned(), server("v4", a, &config))])),
            v5: {
                let mut v5 = HashMap::new();
                if let Some(a) = config.v5 {
                    v5.insert("v5".to_owned(), server("v5", a, &config));
                }
                if let Some(t) = &config.tls {
                    let mut tls = server("v5-tls", t.listen, &config);
                    tls.tls = Some(rumqttd::TlsConfig::Rustls {
                        capath: None,
                        certpath: t.cert.display().to_string(),
                        keypath: t.key.display().to_string(),
                    });
                    v5.insert("v5-tls".to_owned(), tls);
                }
                (!v5.is_empty()).then_some(v5)
            },
            ..Config::default()
        };
        // The router and the servers are started here rather than by
        // rumqttd's `Broker`, which keeps its router to itself: in-process
        // clients need it, with persistent sessions.
        let router = Router::new(rumqttd_config.id, rumqttd_config.router.clone()).spawn();
        let tx = router.clone();
        let attach = Attach(std::sync::Arc::new(move |client_id: &str, persistent| {
            LinkBuilder::new(client_id, tx.clone())
                .clean_session(!persistent)
                .build()
                .map(|(tx, rx, _ack)| (tx, rx))
                .map_err(|e| format!("the embedded broker refused {client_id}: {e}"))
        }));
        let servers = rumqttd_config
            .v4
            .iter()
            .flatten()
            .map(|(_, s)| (s.clone(), false))
            .chain(
                rumqttd_config
                    .v5
                    .iter()
                    .flatten()
                    .map(|(_, s)| (s.clone(), true)),
            );
        for (settings, v5) in servers {
            let router = router.clone();
            let name = format!("mqtt-{}", settings.name);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            return tracing::error!(error = %e, "the embedded MQTT broker cannot start a listener")
                        }
                    };
                    let name = settings.name.clone();
                    let result = runtime.block_on(async move {
                        if v5 {
                            Server::new(settings, router, V5).start(LinkType::Remote).await
                        } else {
                            Server::new(settings, router, V4).start(LinkType::Remote).await
                        }
                    });
                    if let Err(e) = result {
                        tracing::error!(listener = name, error = %e, "the embedded MQTT broker stopped listening");
                    }
                })
                .map_err(BrokerError::Thread)?;
        }
        // rumqttd says nothing when its listeners are up: poll them, with a deadline.
        let within = Duration::from_secs(10);
        for addr in [config.v4, config.v5, tls_listen].into_iter().flatten() {
            let deadline = Instant::now() + within;
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return Err(BrokerError::NotListening(addr, within));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        tracing::info!(v4 = ?config.v4, v5 = ?config.v5, tls = ?tls_listen, "embedded MQTT broker listening");
        Ok(EmbeddedBroker { config, attach })
    }

    /// Connects clients of this process to the broker without a socket.
    pub fn attach(&self) -> Attach {
        self.attach.clone()
    }
}
