//! The orchestrator's durable state in one embedded redb database: every revision
//! (immutable), the subsystem targets, gateway registrations, the gateways' last
//! reports and the event log.
//!
//! Writes are batched into [`Changes`] and committed in one transaction, so a
//! crash leaves either all of an operation or none of it.

use std::path::{Path, PathBuf};

use continuum_proto::v1::{AgentOffer, Diverged, Event, Gateway, Revision, Rollout};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::records::{StoredChange, StoredCurrent, StoredRevision, StoredTarget};

const REVISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revisions");
const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("targets");
const GATEWAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("gateways");
const CURRENT: TableDefinition<&str, &[u8]> = TableDefinition::new("current");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Divergences reported by gateways, keyed by the sequence number of their event.
const DIVERGENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("divergences");
/// Staged rollouts, keyed by the revision they roll out.
const ROLLOUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("rollouts");
/// What the newest rollout changes, by subsystem (emptied when it ends).
const ROLLOUT_CHANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("rollout_changes");
/// The agent build on offer to the gateways (one key).
const AGENT: TableDefinition<&str, &[u8]> = TableDefinition::new("agent");
const OFFER_KEY: &str = "offer";

const FORMAT_KEY: &str = "format";
const HEAD_KEY: &str = "head";
/// Bumped when the layout changes incompatibly.
const FORMAT: u64 = 1;

/// The database file inside a data directory.
pub const FILE_NAME: &str = "orchestrator.redb";

/// What can go wrong with the store; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store: {0}")]
    /// The file cannot be opened as a store (empty, damaged, locked).
    Open(#[from] continuum_durable::OpenError),
    #[error("cannot create the data directory {path}: {cause}")]
    /// The data directory cannot be created.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    #[error("the store {path} has format {found}, this version reads format {FORMAT}")]
    /// The store was written by an incompatible version.
    Format {
        /// The file.
        path: PathBuf,
        /// The format it has.
        found: u64,
    },
    #[error("the store {path} is corrupt: {what}")]
    /// A record does not read back.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record, and why.
        what: String,
    },
    #[error("store {path}: {cause}")]
    /// A read or write failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: redb::Error,
    },
}

/// Everything the orchestrator needs in memory at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The head revision, if any.
    pub head: Option<StoredRevision>,
    /// Every subsystem's target.
    pub targets: Vec<(String, StoredTarget)>,
    /// Every gateway that registered.
    pub gateways: Vec<Gateway>,
    /// What each subsystem's gateway last reported.
    pub currents: Vec<(String, StoredCurrent)>,
    /// The newest event's sequence number (0: none yet).
    pub last_seq: u64,
    /// The newest staged rollout, if any.
    pub rollout: Option<Rollout>,
    /// What it changes, while it has not ended.
    pub rollout_changes: Vec<(String, StoredChange)>,
    /// The agent build on offer, if any.
    pub agent_offer: Option<AgentOffer>,
}

/// One atomic batch of writes.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// New revisions, oldest first (the last becomes the head).
    pub revisions: Vec<StoredRevision>,
    /// Subsystem targets to write.
    pub targets: Vec<(String, StoredTarget)>,
    /// Gateway records to write.
    pub gateways: Vec<Gateway>,
    /// Gateway records to remove.
    pub forget_gateways: Vec<String>,
    /// Gateways' reports to write.
    pub currents: Vec<(String, StoredCurrent)>,
    /// Events with their sequence numbers already assigned.
    pub events: Vec<Event>,
    /// Divergences, keyed by their event's sequence number.
    pub divergences: Vec<(u64, Diverged)>,
    /// Drop the events older than this sequence number (retention).
    pub forget_events_before: Option<u64>,
    /// Rollout records to write (keyed by their revision).
    pub rollouts: Vec<Rollout>,
    /// Forget what the last rollout changed, before writing `rollout_changes`.
    pub clear_rollout_changes: bool,
    /// What a new rollout changes.
    pub rollout_changes: Vec<(String, StoredChange)>,
    /// A new agent build on offer.
    pub agent_offer: Option<AgentOffer>,
}

impl Changes {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
            && self.targets.is_empty()
            && self.gateways.is_empty()
            && self.forget_gateways.is_empty()
            && self.currents.is_empty()
            && self.events.is_empty()
            && self.divergences.is_empty()
            && self.forget_events_before.is_none()
            && self.rollouts.is_empty()
            && !self.clear_rollout_changes
            && self.rollout_changes.is_empty()
            && self.agent_offer.is_none()
    }

    /// Adds the writes of a later batch, so one transaction commits both as
    /// committing them in turn would: the later write of a key wins, and a
    /// gateway record written after it was forgotten (or the reverse) ends as
    /// the later batch left it.
    pub fn absorb(&mut self, later: Changes) {
        self.revisions.extend(later.revisions);
        self.targets.extend(later.targets);
        self.forget_gateways
            .retain(|id| !later.gateways.iter().any(|g| &g.id == id));
        self.gateways
            .retain(|g| !later.forget_gateways.contains(&g.id));
        self.gateways.extend(later.gateways);
        self.forget_gateways.extend(later.forget_gateways);
        self.currents.extend(later.currents);
        self.events.extend(later.events);
        self.divergences.extend(later.divergences);
        self.forget_events_before = self.forget_events_before.max(later.forget_events_before);
        self.rollouts.extend(later.rollouts);
        if later.clear_rollout_changes {
            self.clear_rollout_changes = true;
            self.rollout_changes.clear();
        }
        self.rollout_changes.extend(later.rollout_changes);
        if later.agent_offer.is_some() {
            self.agent_offer = later.agent_offer;
        }
    }
}

/// The orchestrator's redb database.
#[derive(Debug)]
pub struct Store {
    /// Reopened after an I/O error (a full disk), so writes resume once
    /// space is freed, without a restart.
    db: continuum_durable::Reopening,
    path: PathBuf,
    /// Commits wait for the disk (the default; see `Config::fsync`).
    fsync: bool,
    /// Tests: the next commit fails as a full disk would make it.
    #[cfg(test)]
    pub(crate) fail_next_commit: std::sync::atomic::AtomicBool,
    /// Dropped with the store: tells whoever waits that the file is closed.
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Store {
    /// Opens (or creates) the store of a data directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|cause| StoreError::Dir {
            path: dir.to_owned(),
            cause,
        })?;
        let path = dir.join(FILE_NAME);
        let db = continuum_durable::Reopening::open(&path)?;
        let store = Store {
            db,
            path,
            fsync: true,
            #[cfg(test)]
            fail_next_commit: Default::default(),
            closed: None,
        };
        continuum_durable::guard(&store.path, || store.init())??;
        Ok(store)
    }

    /// Resolves once the store is dropped, and its file closed (another
    /// store may then open it).
    pub fn on_close(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.closed = Some(tx);
        rx
    }

    /// Whether commits wait for the disk.
    pub fn set_fsync(&mut self, fsync: bool) {
        self.fsync = fsync;
    }

    /// The database (reopened first if an I/O error broke it).
    fn db(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        Ok(self.db.db()?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn decode<M: Message + Default>(&self, bytes: &[u8], what: &str) -> Result<M, StoreError> {
        M::decode(bytes).map_err(|e| self.corrupt(format!("{what}: {e}")))
    }

    /// Creates the tables and checks the format.
    fn init(&self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write().at(self)?;
        {
            let mut meta = txn.open_table(META).at(self)?;
            let found = meta.get(FORMAT_KEY).at(self)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(FORMAT_KEY, FORMAT).at(self)?;
                }
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(StoreError::Format {
                        path: self.path.clone(),
                        found,
                    })
                }
            }
            txn.open_table(REVISIONS).at(self)?;
            txn.open_table(TARGETS).at(self)?;
            txn.open_table(GATEWAYS).at(self)?;
            txn.open_table(CURRENT).at(self)?;
            txn.open_table(EVENTS).at(self)?;
            txn.open_table(DIVERGENCES).at(self)?;
            txn.open_table(ROLLOUTS).at(self)?;
            txn.open_table(ROLLOUT_CHANGES).at(self)?;
            txn.open_table(AGENT).at(self)?;
        }
        txn.commit().at(self)
    }

    /// Reads the state the orchestrator keeps in memory (a damaged page is
    /// an error, never a panic).
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        continuum_durable::guard(&self.path, || self.read_snapshot())?
    }

    fn read_snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let meta = txn.open_table(META).at(self)?;
        let revisions = txn.open_table(REVISIONS).at(self)?;
        let mut snapshot = Snapshot::default();
        if let Some(head) = meta.get(HEAD_KEY).at(self)? {
            let n = head.value();
            let bytes = revisions
                .get(n)
                .at(self)?
                .ok_or_else(|| self.corrupt(format!("the head revision {n} is missing")))?;
            snapshot.head = Some(self.decode(bytes.value(), "head revision")?);
        }
        snapshot.targets = self.read_all(&txn, TARGETS, "target")?;
        snapshot.currents = self.read_all(&txn, CURRENT, "current model")?;
        snapshot.gateways = self
            .read_all::<Gateway>(&txn, GATEWAYS, "gateway")?
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        let events = txn.open_table(EVENTS).at(self)?;
        if let Some((k, _)) = events.last().at(self)? {
            snapshot.last_seq = k.value();
        }
        let rollouts = txn.open_table(ROLLOUTS).at(self)?;
        if let Some((k, v)) = rollouts.last().at(self)? {
            let what = format!("rollout of revision {}", k.value());
            snapshot.rollout = Some(self.decode(v.value(), &what)?);
        }
        snapshot.rollout_changes = self.read_all(&txn, ROLLOUT_CHANGES, "rollout change")?;
        snapshot.agent_offer = self
            .read_all::<AgentOffer>(&txn, AGENT, "agent offer")?
            .into_iter()
            .find(|(k, _)| k == OFFER_KEY)
            .map(|(_, o)| o);
        Ok(snapshot)
    }

    fn read_all<M: Message + Default>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<&str, &[u8]>,
        what: &str,
    ) -> Result<Vec<(String, M)>, StoreError> {
        let t = txn.open_table(table).at(self)?;
        let mut out = Vec::new();
        for entry in t.iter().at(self)? {
            let (k, v) = entry.at(self)?;
            let key = k.value().to_owned();
            let value = self.decode(v.value(), &format!("{what} of `{key}`"))?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Commits a batch atomically; it is on disk when this returns. (Every batch
    /// is durable: an event sequence number, once seen by a client, is never
    /// reused after a crash. A durable commit costs about 0.2 ms here.)
    pub fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if self
            .fail_next_commit
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Io {
                path: self.path.clone(),
                cause: redb::Error::Io(std::io::Error::from_raw_os_error(28)),
            });
        }
        let mut txn = self.db()?.begin_write().at(self)?;
        if !self.fsync {
            txn.set_durability(redb::Durability::None).at(self)?;
        }
        {
            if !changes.revisions.is_empty() {
                let mut t = txn.open_table(REVISIONS).at(self)?;
                let mut head = 0;
                for r in &changes.revisions {
                    head = r.meta.as_ref().map_or(0, |m| m.number);
                    t.insert(head, r.encode_to_vec().as_slice()).at(self)?;
                }
                let mut meta = txn.open_table(META).at(self)?;
                meta.insert(HEAD_KEY, head).at(self)?;
            }
            let mut t = txn.open_table(TARGETS).at(self)?;
            for (k, v) in &changes.targets {
                t.insert(k.as_str(), v.encode_to_vec().as_slice())
                    .at(self)?;
            }
            let mut t = txn.open_table(GATEWAYS).at(self)?;
            for g in &changes.gateways {
                t.insert(g.id.as_str(), g.encode_to_vec().as_slice())
                    .at(self)?;
            }
            for id in &changes.forget_gateways {
                t.remove(id.as_str()).at(self)?;
            }
            let mut t = txn.open_table(CURRENT).at(self)?;
            for (k, v) in &changes.currents {
                t.insert(k.as_str(), v.encode_to_vec().as_slice())
                    .at(self)?;
            }
            let mut t = txn.open_table(EVENTS).at(self)?;
            for e in &changes.events {
                t.insert(e.seq, e.encode_to_vec().as_slice()).at(self)?;
            }
            let mut d = txn.open_table(DIVERGENCES).at(self)?;
            for (seq, x) in &changes.divergences {
                d.insert(*seq, x.encode_to_vec().as_slice()).at(self)?;
            }
            if let Some(before) = changes.forget_events_before {
                t.retain_in(..before, |_, _| false).at(self)?;
            }
            let mut t = txn.open_table(ROLLOUTS).at(self)?;
            for r in &changes.rollouts {
                t.insert(r.revision, r.encode_to_vec().as_slice())
                    .at(self)?;
            }
            let mut t = txn.open_table(ROLLOUT_CHANGES).at(self)?;
            if changes.clear_rollout_changes {
                t.retain(|_, _| false).at(self)?;
            }
            for (k, v) in &changes.rollout_changes {
                t.insert(k.as_str(), v.encode_to_vec().as_slice())
                    .at(self)?;
            }
            if let Some(o) = &changes.agent_offer {
                let mut t = txn.open_table(AGENT).at(self)?;
                t.insert(OFFER_KEY, o.encode_to_vec().as_slice()).at(self)?;
            }
        }
        txn.commit().at(self)
    }

    /// One revision, with its model.
    pub fn revision(&self, number: u64) -> Result<Option<StoredRevision>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(REVISIONS).at(self)?;
        match t.get(number).at(self)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.decode(v.value(), "revision")?)),
        }
    }

    /// Revision metadata, newest first; `limit` 0 means all.
    pub fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(REVISIONS).at(self)?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out = Vec::new();
        for entry in t.iter().at(self)?.rev().take(limit) {
            let (_, v) = entry.at(self)?;
            let r: StoredRevision = self.decode(v.value(), "revision")?;
            out.extend(r.meta);
        }
        Ok(out)
    }

    /// The rollouts of these revisions (those that were staged), in the
    /// order asked.
    pub fn rollouts_of(&self, revisions: &[u64]) -> Result<Vec<Rollout>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(ROLLOUTS).at(self)?;
        let mut out = Vec::new();
        for &n in revisions {
            if let Some(v) = t.get(n).at(self)? {
                out.push(self.decode(v.value(), &format!("rollout of revision {n}"))?);
            }
        }
        Ok(out)
    }

    /// Every divergence reported, newest first.
    pub fn divergences(&self) -> Result<Vec<Diverged>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(DIVERGENCES).at(self)?;
        let mut out = Vec::new();
        for entry in t.iter().at(self)?.rev() {
            let (_, v) = entry.at(self)?;
            out.push(self.decode(v.value(), "divergence")?);
        }
        Ok(out)
    }

    /// Up to `max` events with a sequence number above `after`, oldest first.
    pub fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(EVENTS).at(self)?;
        let mut out = Vec::new();
        for entry in t.range(after.saturating_add(1)..).at(self)?.take(max) {
            let (_, v) = entry.at(self)?;
            out.push(self.decode(v.value(), "event")?);
        }
        Ok(out)
    }

    /// The oldest event kept (0: none).
    pub fn first_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(EVENTS).at(self)?;
        let first = t.first().at(self)?;
        Ok(first.map_or(0, |(k, _)| k.value()))
    }

    /// How many events are kept.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(EVENTS).at(self)?;
        t.len().at(self)
    }
}

/// Attaches the store's path to redb's errors.
trait At<T> {
    fn at(self, store: &Store) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, store: &Store) -> Result<T, StoreError> {
        self.map_err(|e| {
            let cause = e.into();
            store.db.failed(&cause);
            StoreError::Io {
                path: store.path.clone(),
                cause,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: u64) -> StoredRevision {
        StoredRevision {
            meta: Some(Revision {
                number: n,
                ..Revision::default()
            }),
            megamodel: format!("{{\"name\":\"r{n}\"}}").into_bytes(),
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            ..Event::default()
        }
    }

    #[test]
    fn batches_absorbed_into_one_commit_end_as_if_committed_in_turn() {
        let gateway = |id: &str| Gateway {
            id: id.into(),
            ..Gateway::default()
        };
        let write = |ids: &[&str]| Changes {
            gateways: ids.iter().map(|id| gateway(id)).collect(),
            ..Changes::default()
        };
        let forget = |ids: &[&str]| Changes {
            forget_gateways: ids.iter().map(|id| (*id).to_owned()).collect(),
            ..Changes::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(&write(&["a", "b"])).unwrap();
        // b forgotten then written again, c written then forgotten, two
        // revisions and retention in between.
        let mut all = forget(&["b"]);
        all.absorb(write(&["b", "c"]));
        all.absorb(Changes {
            revisions: vec![revision(1)],
            events: vec![event(1), event(2)],
            ..Changes::default()
        });
        all.absorb(forget(&["c"]));
        all.absorb(Changes {
            revisions: vec![revision(2)],
            events: vec![event(3)],
            forget_events_before: Some(2),
            ..Changes::default()
        });
        store.commit(&all).unwrap();
        let s = store.load().unwrap();
        let mut ids: Vec<String> = s.gateways.into_iter().map(|g| g.id).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.head.unwrap().meta.unwrap().number, 2);
        assert_eq!(store.history(10).unwrap().len(), 2);
        assert_eq!(store.first_seq().unwrap(), 2);
        assert_eq!(s.last_seq, 3);
    }

    #[test]
    fn a_batch_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let changes = Changes {
                revisions: vec![revision(1)],
                targets: vec![(
                    "a".into(),
                    StoredTarget {
                        generation: 1,
                        gateway_id: "gw".into(),
                        model: b"{}".to_vec(),
                        removed: false,
                    },
                )],
                events: (1..=3).map(event).collect(),
                ..Changes::default()
            };
            store.commit(&changes).unwrap();
            store
                .commit(&Changes {
                    revisions: vec![revision(2)],
                    ..Changes::default()
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.head.unwrap().meta.unwrap().number, 2);
        assert_eq!(snap.targets.len(), 1);
        assert_eq!(snap.last_seq, 3);
        let history: Vec<u64> = store.history(0).unwrap().iter().map(|r| r.number).collect();
        assert_eq!(history, vec![2, 1]);
        assert_eq!(store.revision(1).unwrap().unwrap(), revision(1));
        assert!(store.revision(9).unwrap().is_none());
    }

    #[test]
    fn events_are_read_in_order_after_a_sequence_number_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let changes = Changes {
            events: (1..=10).map(event).collect(),
            ..Changes::default()
        };
        store.commit(&changes).unwrap();
        let seqs: Vec<u64> = store
            .events_after(4, 3)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![5, 6, 7]);
        store
            .commit(&Changes {
                forget_events_before: Some(8),
                ..Changes::default()
            })
            .unwrap();
        assert_eq!(store.first_seq().unwrap(), 8);
        assert_eq!(store.event_count().unwrap(), 3);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"not a database, just some bytes",
        )
        .unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(FILE_NAME), "{err}");
    }
}
