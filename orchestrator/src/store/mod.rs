//! The orchestrator's durable state: every revision (immutable), the
//! subsystem targets, gateway registrations, the gateways' last reports, the
//! event log, rollouts and the agent build on offer.
//!
//! Writes are batched into [`Changes`] and committed in one transaction, so a
//! crash leaves either all of an operation or none of it. Where they are kept
//! is a [`Backend`]: an embedded redb file (the default, [`redb`]) or an etcd
//! cluster shared by several orchestrators, one of which leads ([`etcd`]).

use std::path::{Path, PathBuf};

use continuum_proto::v1::{AgentOffer, Diverged, Event, Gateway, Revision, Rollout};

use crate::records::{StoredChange, StoredCurrent, StoredRevision, StoredTarget};

pub mod etcd;
mod etcd_ops;
pub mod redb;

pub use redb::FILE_NAME;

/// Bumped when the layout of either backend changes incompatibly.
pub(crate) const FORMAT: u64 = 1;

/// What can go wrong with the store; every variant names where it is (the
/// file, or the etcd endpoints).
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
    #[error("the store {at} has format {found}, this version reads format {FORMAT}")]
    /// The store was written by an incompatible version.
    Format {
        /// The file, or the etcd endpoints and prefix.
        at: String,
        /// The format it has.
        found: u64,
    },
    #[error("the store {at} is corrupt: {what}")]
    /// A record does not read back.
    Corrupt {
        /// The file, or the etcd endpoints and prefix.
        at: String,
        /// Which record, and why.
        what: String,
    },
    #[error("store {path}: {cause}")]
    /// A read or write of the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: ::redb::Error,
    },
    #[error("etcd {at}: {cause}")]
    /// etcd did not answer, or refused.
    Etcd {
        /// The endpoints and prefix.
        at: String,
        /// Why.
        cause: String,
    },
    #[error("etcd {at}: this orchestrator no longer leads (its lease ended; another may lead now), so it writes nothing more")]
    /// A write was fenced off: another orchestrator may lead.
    Deposed {
        /// The endpoints and prefix.
        at: String,
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

/// Where the state is kept: each call is one transaction of its own. Calls
/// block (the orchestrator makes them on its blocking pool).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages (a file, or etcd endpoints).
    fn location(&self) -> String;
    /// Reads the state the orchestrator keeps in memory.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Commits a batch atomically; it is durable when this returns.
    fn commit(&self, changes: &Changes) -> Result<(), StoreError>;
    /// One revision, with its model.
    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, StoreError>;
    /// Revision metadata, newest first; `limit` 0 means all.
    fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError>;
    /// The rollouts of these revisions (those that were staged), in the order asked.
    fn rollouts_of(&self, revisions: &[u64]) -> Result<Vec<Rollout>, StoreError>;
    /// Every divergence reported, newest first.
    fn divergences(&self) -> Result<Vec<Diverged>, StoreError>;
    /// Up to `max` events with a sequence number above `after`, oldest first.
    fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError>;
    /// The oldest event kept (0: none).
    fn first_seq(&self) -> Result<u64, StoreError>;
    /// How many events are kept.
    fn event_count(&self) -> Result<u64, StoreError>;

    /// Keeps a copy of blob `digest` (its bytes are the file `path`) where
    /// the other orchestrators of this store find it, and returns once it
    /// is durable. Without other orchestrators (redb): nothing to do.
    fn share_blob(&self, _digest: &str, _path: &Path) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes blob `digest`, if it was shared, to `out`; false if it was not.
    fn shared_blob(
        &self,
        _digest: &str,
        _out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Forgets the shared blobs not in `keep` shared longer than `grace`
    /// ago; how many went.
    fn collect_shared_blobs(
        &self,
        _keep: &std::collections::HashSet<String>,
        _grace: std::time::Duration,
    ) -> Result<usize, StoreError> {
        Ok(0)
    }
}

/// The orchestrator's store: a [`Backend`], and a signal for whoever waits
/// until it is closed.
#[derive(Debug)]
pub struct Store {
    /// Dropped first: the file is closed (or the lease given up) before
    /// `closed` tells anyone.
    backend: Box<dyn Backend>,
    /// Tests: the next commit fails as a full disk would make it.
    #[cfg(test)]
    pub(crate) fail_next_commit: std::sync::atomic::AtomicBool,
    /// Dropped with the store: tells whoever waits that it is closed.
    closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Store {
    /// Opens (or creates) the redb store of a data directory; commits wait
    /// for the disk.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_redb(dir, true)
    }

    /// Opens (or creates) the redb store of a data directory; `fsync` false
    /// only to measure what waiting for the disk costs.
    pub fn open_redb(dir: &Path, fsync: bool) -> Result<Store, StoreError> {
        Ok(Store::with_backend(redb::RedbStore::open(dir, fsync)?))
    }

    /// A store over any backend.
    pub fn with_backend(backend: impl Backend + 'static) -> Store {
        Store {
            backend: Box::new(backend),
            #[cfg(test)]
            fail_next_commit: Default::default(),
            closed: None,
        }
    }

    /// Resolves once the store is dropped and its backend closed (another
    /// store may then open the file).
    pub fn on_close(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.closed = Some(tx);
        rx
    }

    /// Where it is, for messages.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Reads the state the orchestrator keeps in memory (a damaged record is
    /// an error, never a panic).
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        self.backend.load()
    }

    /// Commits a batch atomically; it is durable when this returns. (Every
    /// batch is durable: an event sequence number, once seen by a client, is
    /// never reused after a crash.)
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
                path: self.location().into(),
                cause: ::redb::Error::Io(std::io::Error::from_raw_os_error(28)),
            });
        }
        self.backend.commit(changes)
    }

    /// One revision, with its model.
    pub fn revision(&self, number: u64) -> Result<Option<StoredRevision>, StoreError> {
        self.backend.revision(number)
    }

    /// Revision metadata, newest first; `limit` 0 means all.
    pub fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
        self.backend.history(limit)
    }

    /// The rollouts of these revisions (those that were staged), in the
    /// order asked.
    pub fn rollouts_of(&self, revisions: &[u64]) -> Result<Vec<Rollout>, StoreError> {
        self.backend.rollouts_of(revisions)
    }

    /// Every divergence reported, newest first.
    pub fn divergences(&self) -> Result<Vec<Diverged>, StoreError> {
        self.backend.divergences()
    }

    /// Up to `max` events with a sequence number above `after`, oldest first.
    pub fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        self.backend.events_after(after, max)
    }

    /// The oldest event kept (0: none).
    pub fn first_seq(&self) -> Result<u64, StoreError> {
        self.backend.first_seq()
    }

    /// How many events are kept.
    pub fn event_count(&self) -> Result<u64, StoreError> {
        self.backend.event_count()
    }

    /// The backend, for what only some backends do (shared blobs).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
}

/// What every backend must do, run against each (the etcd one in
/// `etcd`'s tests, on a real cluster).
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use continuum_proto::v1::RolloutState;

    pub(crate) fn revision(n: u64, bytes: usize) -> StoredRevision {
        StoredRevision {
            meta: Some(Revision {
                number: n,
                ..Revision::default()
            }),
            megamodel: vec![b'x'; bytes],
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            ..Event::default()
        }
    }

    fn target(generation: u64, bytes: usize) -> StoredTarget {
        StoredTarget {
            generation,
            gateway_id: "gw".into(),
            model: vec![b'm'; bytes],
            removed: false,
        }
    }

    /// Writes through `store` as the orchestrator does and reads it back,
    /// small batches and batches and values larger than any one
    /// transaction of a remote store may hold; `reopen` closes the store and
    /// opens it again, as a restart does.
    pub(crate) fn exercise(store: Store, reopen: &dyn Fn(Store) -> Store) {
        let gateway = |id: &str| Gateway {
            id: id.into(),
            ..Gateway::default()
        };
        store
            .commit(&Changes {
                revisions: vec![revision(1, 100)],
                targets: vec![("a".into(), target(1, 10)), ("b".into(), target(1, 10))],
                gateways: vec![gateway("g1"), gateway("g2")],
                events: (1..=10).map(event).collect(),
                ..Changes::default()
            })
            .unwrap();
        // A large revision and target (split), many events and reports (more
        // writes than one transaction), a divergence, a rollout, an offer.
        store
            .commit(&Changes {
                revisions: vec![revision(2, 3 << 20)],
                targets: vec![("a".into(), target(2, 2 << 20))],
                forget_gateways: vec!["g2".into()],
                currents: (0..300)
                    .map(|i| {
                        (
                            format!("s{i}"),
                            StoredCurrent {
                                observed_generation: 2,
                                ..StoredCurrent::default()
                            },
                        )
                    })
                    .collect(),
                events: (11..=400).map(event).collect(),
                divergences: vec![(
                    11,
                    Diverged {
                        subsystem: "a".into(),
                        ..Diverged::default()
                    },
                )],
                rollouts: vec![Rollout {
                    revision: 2,
                    state: RolloutState::Running.into(),
                    ..Rollout::default()
                }],
                rollout_changes: vec![("a".into(), StoredChange::default())],
                agent_offer: Some(AgentOffer {
                    version: "9".into(),
                    ..AgentOffer::default()
                }),
                ..Changes::default()
            })
            .unwrap();
        // The large target shrinks again; retention forgets old events; the
        // rollout's changes are cleared.
        store
            .commit(&Changes {
                targets: vec![("a".into(), target(3, 10))],
                forget_events_before: Some(300),
                clear_rollout_changes: true,
                ..Changes::default()
            })
            .unwrap();
        let check = |store: &Store| {
            let s = store.load().unwrap();
            assert_eq!(s.head.as_ref().unwrap().meta.as_ref().unwrap().number, 2);
            assert_eq!(s.head.unwrap().megamodel.len(), 3 << 20);
            let mut targets = s.targets.clone();
            targets.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(
                targets,
                vec![("a".into(), target(3, 10)), ("b".into(), target(1, 10))]
            );
            let ids: Vec<String> = s.gateways.iter().map(|g| g.id.clone()).collect();
            assert_eq!(ids, ["g1"]);
            assert_eq!(s.currents.len(), 300);
            assert_eq!(s.last_seq, 400);
            assert_eq!(s.rollout.as_ref().unwrap().revision, 2);
            assert!(s.rollout_changes.is_empty());
            assert_eq!(s.agent_offer.as_ref().unwrap().version, "9");
            assert_eq!(store.first_seq().unwrap(), 300);
            assert_eq!(store.event_count().unwrap(), 101);
            let seqs: Vec<u64> = store
                .events_after(349, 3)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(seqs, [350, 351, 352]);
            assert_eq!(store.events_after(0, 1000).unwrap().len(), 101);
            let history: Vec<u64> = store.history(0).unwrap().iter().map(|r| r.number).collect();
            assert_eq!(history, [2, 1]);
            assert_eq!(store.history(1).unwrap().len(), 1);
            assert_eq!(store.revision(2).unwrap().unwrap(), revision(2, 3 << 20));
            assert!(store.revision(9).unwrap().is_none());
            assert_eq!(store.rollouts_of(&[1, 2]).unwrap().len(), 1);
            assert_eq!(store.divergences().unwrap()[0].subsystem, "a");
        };
        check(&store);
        check(&reopen(store));
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
    fn the_redb_store_keeps_what_a_store_must_keep() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        contract::exercise(store, &|store| {
            drop(store);
            Store::open(dir.path()).unwrap()
        });
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
