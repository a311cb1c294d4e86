//! The bridge between the gateway's local broker and the global bus.
//!
//! Each direction (`in`: global → local, `out`: local → global) is a session
//! on its source broker, a durable outbox, and a forwarder to its destination:
//!
//! ```text
//! source ──QoS 1──▶ session ──commit──▶ outbox ──▶ forwarder ──QoS 1──▶ destination
//!          (ack after the commit)                 (forget after the broker's ack)
//! ```
//!
//! Nothing is acknowledged upstream before it is on disk, and nothing leaves
//! the outbox before the destination has it: broker restarts, cut links and a
//! killed agent lose nothing. Re-sent messages keep their id, so consumers —
//! the next bridge's outbox among them — take each once. Which messages cross
//! is the model's business ([`continuum_models::route`]): the routes are set
//! by plan steps and persisted here.

pub(crate) mod attached;
pub(crate) mod deadletter;
pub(crate) mod fault;
pub(crate) mod forward;
pub(crate) mod inbound;
pub(crate) mod metrics;
pub(crate) mod mqtt;
pub(crate) mod outbox;
pub mod stats;
pub(crate) mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::BrokerUrl;
use continuum_models::route::{Direction, Route};
use redb::{Database, TableDefinition};
use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::deadletter::DeadLetters;
use self::inbound::{Announce, Session};
use self::mqtt::ClientSpec;
use self::outbox::Outbox;
use self::stats::{get, LinkState, Stats};

/// The bridge's settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The gateway's id (it names the bridge's sessions and message ids).
    pub gateway: String,
    /// The global bus.
    pub global: BrokerUrl,
    /// The global bus was named by the operator (`--bus-url`): what the
    /// orchestrator says is ignored. Otherwise the last address learned from
    /// it is kept, and used until it says another.
    pub global_pinned: bool,
    /// The local broker.
    pub local: BrokerUrl,
    /// Where `bridge.redb` lives; `None`: outboxes in memory (benchmarks only:
    /// a crash loses what they hold).
    pub data_dir: Option<PathBuf>,
    /// Commit the outboxes with fsync (the default; off only to measure its cost).
    pub durable: bool,
    /// Messages each outbox holds at most; beyond, the oldest are dropped and counted.
    pub capacity: u64,
    /// The largest payload carried; larger ones are dead-lettered.
    pub max_payload: usize,
    /// MQTT keep-alive of every connection.
    pub keep_alive: Duration,
    /// Messages in flight to a destination at most.
    pub window: usize,
    /// The agent's fence: the global side stays off the bus while it holds.
    pub fencing: Option<Arc<crate::fence::Fencing>>,
    /// The CA (PEM) of an `mqtts://` global bus (none: the system's roots).
    pub global_ca: Option<Arc<Vec<u8>>>,
    /// The local broker is the embedded one, in this process: the bridge
    /// attaches to it directly rather than through `local`'s socket.
    pub local_attach: Option<continuum_bus::Attach>,
}

impl BridgeConfig {
    /// A bridge between these brokers, with the default limits, in memory until given a data directory.
    pub fn new(gateway: &str, global: BrokerUrl, local: BrokerUrl) -> BridgeConfig {
        BridgeConfig {
            gateway: gateway.to_owned(),
            global,
            global_pinned: true,
            local,
            data_dir: None,
            durable: true,
            capacity: 1_000_000,
            max_payload: 256 * 1024,
            keep_alive: Duration::from_secs(10),
            window: 256,
            fencing: None,
            global_ca: None,
            local_attach: None,
        }
    }
}

/// Why the bridge did not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge store {path}: {cause}")]
    /// Its store cannot be opened or read.
    Store {
        /// The file (or "in memory").
        path: String,
        /// Why.
        cause: String,
    },
}

/// What the bridge says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    /// The connection to the global bus.
    pub global: LinkState,
    /// The connection to the local broker.
    pub local: LinkState,
    /// Per direction (in, out): taken, forwarded, duplicates recognised,
    /// dead-lettered, waiting in the outbox, dropped because it was full.
    pub inbound: DirectionStatus,
    /// Local broker to global bus.
    pub outbound: DirectionStatus,
    /// Dead letters that could not be published either.
    pub dead_letters_lost: u64,
}

/// One direction's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionStatus {
    /// Messages taken into the outbox from the source broker.
    pub received: u64,
    /// Messages acknowledged by the destination.
    pub forwarded: u64,
    /// Redeliveries recognised by their id and not taken again.
    pub duplicates: u64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Messages waiting in the outbox.
    pub queued: u64,
    /// Messages dropped because the outbox was full.
    pub dropped: u64,
}

impl BridgeStatus {
    /// Whether every message taken is accounted for with none dropped, and
    /// both brokers are reachable.
    pub fn healthy(&self) -> bool {
        self.global == LinkState::Connected
            && self.local == LinkState::Connected
            && self.inbound.dropped == 0
            && self.outbound.dropped == 0
            && self.dead_letters_lost == 0
    }

    /// Both directions summed, as heartbeats carry it.
    pub fn report(&self) -> continuum_proto::v1::BridgeReport {
        let both = |f: fn(&DirectionStatus) -> u64| f(&self.inbound) + f(&self.outbound);
        continuum_proto::v1::BridgeReport {
            global_connected: self.global == LinkState::Connected,
            local_connected: self.local == LinkState::Connected,
            queued: both(|d| d.queued),
            dropped: both(|d| d.dropped),
            forwarded: both(|d| d.forwarded),
            duplicates: both(|d| d.duplicates),
            dead_lettered: both(|d| d.dead_lettered),
        }
    }

    /// One line for `continuum status`.
    pub fn summary(&self) -> String {
        let link = |name: &str, s: &LinkState| match s {
            LinkState::Connected => format!("{name} connected"),
            LinkState::Connecting => format!("{name} connecting"),
            LinkState::Down(why) | LinkState::Refused(why) => {
                format!("{name} down ({why}; retrying)")
            }
        };
        let dir = |name: &str, d: &DirectionStatus| {
            let mut s = format!("{name}: {} forwarded, {} queued", d.forwarded, d.queued);
            if d.duplicates > 0 {
                s.push_str(&format!(", {} duplicates dropped", d.duplicates));
            }
            if d.dead_lettered > 0 {
                s.push_str(&format!(", {} dead-lettered", d.dead_lettered));
            }
            if d.dropped > 0 {
                s.push_str(&format!(", {} LOST to a full outbox", d.dropped));
            }
            s
        };
        let mut s = format!(
            "bridge: {}, {}; {}; {}",
            link("global bus", &self.global),
            link("local broker", &self.local),
            dir("in", &self.inbound),
            dir("out", &self.outbound)
        );
        if self.dead_letters_lost > 0 {
            s.push_str(&format!("; {} dead letters lost", self.dead_letters_lost));
        }
        s
    }
}

/// What a direction's session and forwarder share: its outbox, the signal
/// that the outbox has news, the counters, and where dead letters go.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Which way it carries messages.
    pub direction: Direction,
    /// Where messages wait for the destination.
    pub outbox: Outbox,
    /// Woken when the outbox has news.
    pub notify: Arc<Notify>,
    /// The counters.
    pub stats: Arc<Stats>,
    /// Where undeliverable messages go.
    pub dead: DeadLetters,
}

/// A running bridge.
pub struct Bridge {
    db: Arc<Database>,
    global: watch::Sender<BrokerUrl>,
    pinned: bool,
    table: table::Table,
    stats: Arc<Stats>,
    inbound: Outbox,
    outbound: Outbox,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("status", &self.status())
            .finish()
    }
}

const META: TableDefinition<&str, &str> = TableDefinition::new("bridge.meta");
/// The global bus last learned from the orchestrator (its address only).
const LEARNED_BUS: &str = "learned_bus";

fn meta_get(db: &Database, key: &str) -> Result<Option<String>, redb::Error> {
    use redb::ReadableDatabase;
    let txn = db.begin_read()?;
    let t = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(t.get(key)?.map(|v| v.value().to_owned()))
}

fn meta_put(db: &Database, key: &str, value: &str) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(META)?;
        t.insert(key, value)?;
    }
    Ok(txn.commit()?)
}

/// This database's epoch: outbox positions restart with a new database, so
/// ids name the database they were numbered in.
fn epoch(db: &Database) -> Result<String, redb::Error> {
    let txn = db.begin_write()?;
    let epoch = {
        let mut t = txn.open_table(META)?;
        let existing = redb::ReadableTable::get(&t, "epoch")?.map(|v| v.value().to_owned());
        match existing {
            Some(e) => e,
            None => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos()),
                );
                h.write_u32(std::process::id());
                let e = format!("{:08x}", h.finish() as u32);
                t.insert("epoch", e.as_str())?;
                e
            }
        }
    };
    txn.commit()?;
    Ok(epoch)
}

impl Bridge {
    /// Opens the bridge's store and starts its sessions and forwarders; they
    /// connect (and reconnect, with backoff) on their own.
    pub fn start(config: BridgeConfig) -> Result<Bridge, BridgeError> {
        let path = config.data_dir.as_ref().map_or_else(
            || "(memory)".to_owned(),
            |d| d.join("bridge.redb").display().to_string(),
        );
        let store = |cause: String| BridgeError::Store {
            path: path.clone(),
            cause,
        };
        let db = match &config.data_dir {
            Some(dir) => continuum_durable::open(&dir.join("bridge.redb"))
                .map_err(|e| store(e.to_string()))?,
            None => Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| store(e.to_string()))?,
        };
        let db = Arc::new(db);
        // The first reads of the file: a damaged page is an error, not a panic.
        let (epoch, table, inbound, outbound) = continuum_durable::guard(Path::new(&path), || {
            let epoch = epoch(&db).map_err(|e| store(e.to_string()))?;
            let table = table::Table::open(Arc::clone(&db)).map_err(|e| store(e.to_string()))?;
            let open = |name: &str| {
                Outbox::open(Arc::clone(&db), name, config.capacity)
                    .map(|o| if config.durable { o } else { o.without_fsync() })
                    .map_err(|e| store(e.to_string()))
            };
            Ok::<_, BridgeError>((epoch, table, open("in")?, open("out")?))
        })
        .map_err(|e| store(e.to_string()))??;
        let learned = if config.global_pinned {
            None
        } else {
            meta_get(&db, LEARNED_BUS)
                .map_err(|e| store(e.to_string()))?
                .and_then(|u| u.parse::<BrokerUrl>().ok())
                .map(|mut u| {
                    u.credentials = config.global.credentials.clone();
                    u
                })
        };
        let initial = learned.unwrap_or_else(|| config.global.clone());
        let (global_tx, global_rx) = watch::channel(initial.clone());
        let stats = Arc::new(Stats::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let gw = &config.gateway;
        let spec = |url: &BrokerUrl, role: &str, persistent: bool| ClientSpec {
            url: url.clone(),
            follow: None,
            client_id: format!("continuum-bridge-{gw}-{role}"),
            persistent,
            manual_acks: persistent,
            keep_alive: config.keep_alive,
            will: None,
            max_packet: (config.max_payload as u32).saturating_mul(2).max(1 << 20),
            fence: None,
            ca: None,
            attach: None,
        };
        let dead = deadletter::start(
            ClientSpec {
                attach: config.local_attach.clone(),
                ..spec(&config.local, "dlq", false)
            },
            Arc::clone(&stats),
            config.max_payload,
            cancel.child_token(),
        );
        let status_topic = format!("continuum/gateways/{gw}/status");
        let status = |online: bool| {
            serde_json::json!({"gateway": gw, "online": online})
                .to_string()
                .into_bytes()
        };
        let announce = Announce {
            topic: status_topic.clone(),
            online: status(true),
            offline: status(false),
        };
        let origin = |d: Direction| format!("{gw}/{}/", d.as_str());
        for d in [Direction::In, Direction::Out] {
            let (source, dest, outbox) = match d {
                Direction::In => (&config.global, &config.local, &inbound),
                Direction::Out => (&config.local, &config.global, &outbound),
            };
            let notify = Arc::new(Notify::new());
            let mut session_spec = spec(source, d.as_str(), true);
            let mut forwarder_spec = spec(dest, &format!("{}-fwd", d.as_str()), false);
            let (global_side, local_side) = match d {
                Direction::In => (&mut session_spec, &mut forwarder_spec),
                Direction::Out => (&mut forwarder_spec, &mut session_spec),
            };
            local_side.attach = config.local_attach.clone();
            global_side.follow = Some(global_rx.clone());
            global_side.fence = config.fencing.clone();
            global_side.ca = config.global_ca.clone();
            if d == Direction::In {
                session_spec.will = Some(LastWill::new(
                    status_topic.clone(),
                    announce.offline.clone(),
                    QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            let lane = Lane {
                direction: d,
                outbox: outbox.clone(),
                notify,
                stats: Arc::clone(&stats),
                dead: dead.clone(),
            };
            let session = Session {
                lane: lane.clone(),
                spec: session_spec,
                routes: table.watch(d),
                max_payload: config.max_payload,
                own_origin: origin(match d {
                    Direction::In => Direction::Out,
                    Direction::Out => Direction::In,
                }),
                announce: (d == Direction::In).then(|| announce.clone()),
            };
            let forwarder = forward::Forwarder {
                lane,
                spec: forwarder_spec,
                origin: format!("{}{epoch}", origin(d)),
                window: config.window.max(1),
            };
            let span = tracing::info_span!("bridge", direction = d.as_str());
            tasks.spawn(session.run(cancel.child_token()).instrument(span.clone()));
            tasks.spawn(forwarder.run(cancel.child_token()).instrument(span));
        }
        tasks.close();
        tracing::info!(global = %initial, local = %config.local, "bridge started");
        Ok(Bridge {
            db,
            global: global_tx,
            pinned: config.global_pinned,
            table,
            stats,
            inbound,
            outbound,
            cancel,
            tasks,
        })
    }

    /// The global bus the orchestrator names: used (and remembered for the
    /// next start) unless the operator pinned one. The connections to the old
    /// one end and reconnect to it.
    pub fn learn_global(&self, mut url: BrokerUrl) -> Result<(), redb::Error> {
        // The gateway's own credentials; the address is kept without them.
        url.credentials = self.global.borrow().credentials.clone();
        if self.pinned || *self.global.borrow() == url {
            return Ok(());
        }
        let mut bare = url.clone();
        bare.credentials = None;
        meta_put(&self.db, LEARNED_BUS, &bare.to_string())?;
        tracing::info!(global = %url, "the orchestrator names the global bus");
        self.global.send_replace(url);
        Ok(())
    }

    /// The global bus in use.
    pub fn global(&self) -> BrokerUrl {
        self.global.borrow().clone()
    }

    /// Makes `owner`'s routes exactly `routes` (durably; subscriptions follow).
    pub fn set_routes(&self, owner: &str, routes: Vec<Route>) -> Result<(), table::TableError> {
        self.table.set(owner, routes)
    }

    /// The routes carried, by owner.
    pub fn routes(&self) -> BTreeMap<String, Vec<Route>> {
        self.table.all()
    }

    /// How the bridge is doing: links and counters.
    pub fn status(&self) -> BridgeStatus {
        let dir = |d: Direction, o: &Outbox| {
            let c = self.stats.of(d);
            DirectionStatus {
                received: get(&c.received),
                forwarded: get(&c.forwarded),
                duplicates: get(&c.duplicates),
                dead_lettered: get(&c.dead_lettered),
                queued: o.len().unwrap_or(0),
                dropped: o.dropped().unwrap_or(0),
            }
        };
        BridgeStatus {
            global: self.stats.link(true),
            local: self.stats.link(false),
            inbound: dir(Direction::In, &self.inbound),
            outbound: dir(Direction::Out, &self.outbound),
            dead_letters_lost: get(&self.stats.dead_letter_lost),
        }
    }

    /// Says goodbye on the global bus and stops every task.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
