//! The default backend: one embedded redb file in the data directory.

use std::path::{Path, PathBuf};

use continuum_proto::v1::{AgentOffer, Diverged, Event, Gateway, Revision, Rollout};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Backend, Changes, Snapshot, StoreError, FORMAT};
use crate::records::StoredRevision;

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

/// The database file inside a data directory.
pub const FILE_NAME: &str = "orchestrator.redb";

/// The orchestrator's redb database.
#[derive(Debug)]
pub struct RedbStore {
    /// Reopened after an I/O error (a full disk), so writes resume once
    /// space is freed, without a restart.
    db: continuum_durable::Reopening,
    path: PathBuf,
    /// Commits wait for the disk (the default; see `Config::fsync`).
    fsync: bool,
}

impl RedbStore {
    /// Opens (or creates) the store of a data directory; `fsync` false only
    /// to measure what waiting for the disk costs.
    pub fn open(dir: &Path, fsync: bool) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|cause| StoreError::Dir {
            path: dir.to_owned(),
            cause,
        })?;
        let path = dir.join(FILE_NAME);
        let db = continuum_durable::Reopening::open(&path)?;
        let store = RedbStore { db, path, fsync };
        continuum_durable::guard(&store.path, || store.init())??;
        Ok(store)
    }

    /// The database (reopened first if an I/O error broke it).
    fn db(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        Ok(self.db.db()?)
    }

    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            at: self.path.display().to_string(),
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
                        at: self.path.display().to_string(),
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
}

impl Backend for RedbStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// Reads the state the orchestrator keeps in memory (a damaged page is
    /// an error, never a panic).
    fn load(&self) -> Result<Snapshot, StoreError> {
        continuum_durable::guard(&self.path, || self.read_snapshot())?
    }

    /// Commits a batch atomically; it is on disk when this returns. (Every batch
    /// is durable: an event sequence number, once seen by a client, is never
    /// reused after a crash. A durable commit costs about 0.2 ms here.)
    fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
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
    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(REVISIONS).at(self)?;
        match t.get(number).at(self)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.decode(v.value(), "revision")?)),
        }
    }

    /// Revision metadata, newest first; `limit` 0 means all.
    fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
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
    fn rollouts_of(&self, revisions: &[u64]) -> Result<Vec<Rollout>, StoreError> {
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
    fn divergences(&self) -> Result<Vec<Diverged>, StoreError> {
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
    fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
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
    fn first_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(EVENTS).at(self)?;
        let first = t.first().at(self)?;
        Ok(first.map_or(0, |(k, _)| k.value()))
    }

    /// How many events are kept.
    fn event_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read().at(self)?;
        let t = txn.open_table(EVENTS).at(self)?;
        t.len().at(self)
    }
}

/// Attaches the store's path to redb's errors.
trait At<T> {
    fn at(self, store: &RedbStore) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, store: &RedbStore) -> Result<T, StoreError> {
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
