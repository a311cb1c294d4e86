//! What the agent keeps across restarts, in one redb file in its data
//! directory: the target it accepted last (persisted before it is
//! acknowledged) and the last generation that fully ran (for rollback).

use std::path::{Path, PathBuf};

use continuum_models::DeploymentModel;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const TARGETS: TableDefinition<&str, &[u8]> = TableDefinition::new("targets");

/// The database file inside a data directory.
pub const FILE_NAME: &str = "gateway.redb";

/// Which of the kept targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The newest accepted target: what the agent enforces.
    Accepted,
    /// The newest target that fully ran.
    Good,
}

impl Slot {
    fn key(self) -> &'static str {
        match self {
            Slot::Accepted => "accepted",
            Slot::Good => "good",
        }
    }
}

/// A target as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The orchestrator's generation (for a local model: the one it replaced).
    pub generation: u64,
    /// The subsystem it is the model of.
    pub subsystem: String,
    /// The model.
    pub model: DeploymentModel,
    /// Set when the model was applied locally, while the orchestrator was cut off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalNote>,
}

/// Who applied a local model, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNote {
    /// When it was applied (Unix milliseconds, the gateway's clock).
    pub since_unix_ms: i64,
    /// Who applied it.
    pub author: String,
    /// Why.
    pub message: String,
}

/// What can go wrong with the agent's store; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {cause}")]
    /// The data directory cannot be created.
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    #[error("cannot open the agent's store: {0}")]
    /// The file cannot be opened as a store (empty, damaged, locked).
    Open(#[from] continuum_durable::OpenError),
    #[error("the agent's store {path} is corrupt: {what}")]
    /// A record does not read back.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which record, and why.
        what: String,
    },
    #[error("the agent's store {path}: {cause}")]
    /// A read or write failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: redb::Error,
    },
}

/// The agent's redb database: the accepted and last good targets.
#[derive(Debug)]
pub struct Store {
    /// Reopened after an I/O error (a full disk): targets are accepted again
    /// once space is freed, without a restart.
    db: continuum_durable::Reopening,
    path: PathBuf,
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
        let store = Store { db, path };
        continuum_durable::guard(&store.path, || {
            let txn = store.db()?.begin_write().map_err(|e| store.io(e))?;
            txn.open_table(TARGETS).map_err(|e| store.io(e))?;
            txn.commit().map_err(|e| store.io(e))?;
            // Read both slots now: a corrupt record is an error at start, not later.
            store.get(Slot::Accepted)?;
            store.get(Slot::Good)
        })??;
        Ok(store)
    }

    fn io(&self, e: impl Into<redb::Error>) -> StoreError {
        let cause = e.into();
        self.db.failed(&cause);
        StoreError::Io {
            path: self.path.clone(),
            cause,
        }
    }

    /// The database (reopened first if an I/O error broke it).
    fn db(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        Ok(self.db.db()?)
    }

    /// The target kept in `slot`.
    pub fn get(&self, slot: Slot) -> Result<Option<Kept>, StoreError> {
        let txn = self.db()?.begin_read().map_err(|e| self.io(e))?;
        let t = txn.open_table(TARGETS).map_err(|e| self.io(e))?;
        let Some(v) = t.get(slot.key()).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("the {} target: {e}", slot.key()),
            })
    }

    /// Durable when this returns.
    pub fn put(&self, slot: Slot, kept: &Kept) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(kept).expect("targets serialize");
        let txn = self.db()?.begin_write().map_err(|e| self.io(e))?;
        {
            let mut t = txn.open_table(TARGETS).map_err(|e| self.io(e))?;
            t.insert(slot.key(), bytes.as_slice())
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_survive_reopening_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Kept {
            generation: 3,
            subsystem: "s".into(),
            model: DeploymentModel::default(),
            local: None,
        };
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.get(Slot::Accepted).unwrap(), None);
            s.put(Slot::Accepted, &kept).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get(Slot::Accepted).unwrap(), Some(kept));
        assert_eq!(s.get(Slot::Good).unwrap(), None);
        drop(s);
        std::fs::write(dir.path().join(FILE_NAME), b"garbage garbage garbage").unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(FILE_NAME), "{e}");
    }
}
