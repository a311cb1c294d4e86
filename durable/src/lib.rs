//! Opening a redb store file the way every Continuum store does.
//!
//! A store that exists is opened, never re-created: a file of zero bytes is
//! a store that lost its contents (a truncation, a copy that failed), not a
//! fresh one, and starting empty on it would silently forget every accepted
//! revision. A damaged file is an error naming the file and saying how to
//! recover, never a panic: redb's own consistency checks can panic on pages
//! that were overwritten, so opening and the first reads run with the panic
//! contained, and the file's checksums are verified once at open.

#![warn(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use redb::{Builder, Database};

/// The memory a store may keep as its page cache. redb's default is 1 GiB,
/// which a store that keeps being written (the bridge's outboxes under
/// steady traffic) fills over hours: a gateway's memory would grow with its
/// uptime. The working sets are small (targets, reports, the outboxes'
/// unacknowledged tail); what is not cached is read back from the file.
pub const CACHE_BYTES: usize = 8 << 20;

/// Why a store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file exists and is empty.
    #[error("{path} is empty (0 bytes): it is not a store any more (truncated?). Restore it from a backup, or move it away to start with an empty store")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged beyond what redb repairs.
    #[error("{path} is damaged: {why}. Restore it from a backup, or move it away to start with an empty store")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What was found.
        why: String,
    },
    /// The file cannot be used (permissions, I/O, locked by another process).
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: redb::DatabaseError,
    },
}

/// Opens the store at `path`, creating it only when there is no file, and
/// verifies an existing file's checksums (redb repairs what its last good
/// commit allows; the rest is [`OpenError::Damaged`]).
pub fn open(path: &Path) -> Result<Database, OpenError> {
    let damaged = |why: String| OpenError::Damaged {
        path: path.to_owned(),
        why,
    };
    let io = |cause: redb::DatabaseError| match cause {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => damaged(why),
        cause => OpenError::Io {
            path: path.to_owned(),
            cause,
        },
    };
    let exists = match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => {
            return Err(OpenError::Empty {
                path: path.to_owned(),
            })
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let mut db = contain(|| {
        let mut builder = Builder::new();
        builder.set_cache_size(CACHE_BYTES);
        if exists {
            builder.open(path)
        } else {
            builder.create(path)
        }
    })
    .map_err(damaged)?
    .map_err(io)?;
    if exists {
        let clean = contain(|| db.check_integrity())
            .map_err(damaged)?
            .map_err(io)?;
        if !clean {
            tracing::warn!(
                path = %path.display(),
                "the store was damaged and redb repaired it from its last good commit"
            );
        }
    }
    Ok(db)
}

/// Runs `f` (the first reads of a store just opened) with a panic from a
/// damaged page turned into [`OpenError::Damaged`] of `path`.
pub fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, OpenError> {
    contain(f).map_err(|why| OpenError::Damaged {
        path: path.to_owned(),
        why,
    })
}

/// A store's database that recovers from I/O errors without a restart.
///
/// After a failed write (a full disk, most often) redb refuses every later
/// transaction until the database is closed and opened again. The store
/// says which errors it met ([`Reopening::failed`]); the next
/// [`Reopening::db`] then reopens the file (verifying it as [`open`] does),
/// so once space is freed the next write succeeds.
#[derive(Debug)]
pub struct Reopening {
    path: PathBuf,
    db: std::sync::Mutex<Option<std::sync::Arc<Database>>>,
    broken: std::sync::atomic::AtomicBool,
}

impl Reopening {
    /// Opens the store at `path` (see [`open`]).
    pub fn open(path: &Path) -> Result<Reopening, OpenError> {
        let db = open(path)?;
        Ok(Reopening {
            path: path.to_owned(),
            db: std::sync::Mutex::new(Some(std::sync::Arc::new(db))),
            broken: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The database, reopened first if an I/O error broke it.
    pub fn db(&self) -> Result<std::sync::Arc<Database>, OpenError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) || slot.is_none() {
            // redb holds the file locked until the old handle is gone: close
            // it (transactions in flight keep theirs alive and make this wait
            // for the next call), then open the file again.
            if let Some(old) = slot.take() {
                match std::sync::Arc::try_unwrap(old) {
                    Ok(db) => drop(db),
                    Err(shared) => {
                        *slot = Some(std::sync::Arc::clone(&shared));
                        return Ok(shared);
                    }
                }
            }
            let db = open(&self.path)?;
            tracing::info!(path = %self.path.display(), "store reopened after an I/O error");
            *slot = Some(std::sync::Arc::new(db));
            self.broken
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(std::sync::Arc::clone(slot.as_ref().expect("just set")))
    }

    /// Notes an error a transaction met: an I/O error makes the next
    /// [`Reopening::db`] reopen the file.
    pub fn failed(&self, e: &redb::Error) {
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs `f`, turning a panic into its message.
fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let said = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "an inconsistency".to_owned());
        format!("redb found {said}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn fill(path: &Path) {
        let db = open(path).unwrap();
        for i in 0..200u64 {
            let w = db.begin_write().unwrap();
            w.open_table(T)
                .unwrap()
                .insert(i, &[i as u8; 300][..])
                .unwrap();
            w.commit().unwrap();
        }
    }

    fn read_all(db: &Database) -> Result<usize, redb::Error> {
        let r = db.begin_read()?;
        let t = r.open_table(T)?;
        let mut n = 0;
        for row in t.range(0..)? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn an_empty_file_is_not_a_fresh_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        std::fs::write(&path, b"").unwrap();
        let e = open(&path).unwrap_err();
        assert!(matches!(e, OpenError::Empty { .. }), "{e}");
        assert!(e.to_string().contains("s.redb is empty"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");
    }

    #[test]
    fn random_bytes_anywhere_are_an_error_naming_the_file_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let clean = dir.path().join("clean.redb");
        fill(&clean);
        let len = std::fs::metadata(&clean).unwrap().len() as usize;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut outcomes = (0, 0);
        for k in 0..16 {
            let path = dir.path().join(format!("damaged-{k}.redb"));
            let mut bytes = std::fs::read(&clean).unwrap();
            let at = (len / 16) * k;
            for b in bytes.iter_mut().skip(at).take(4096) {
                *b = next() as u8;
            }
            std::fs::write(&path, &bytes).unwrap();
            let read = open(&path).and_then(|db| guard(&path, || read_all(&db)));
            match read {
                Err(e) => {
                    assert!(e.to_string().contains(&format!("damaged-{k}.redb")), "{e}");
                    outcomes.0 += 1;
                }
                // Repaired from the last good commit, or the damage fell
                // where nothing live was: the rows read.
                Ok(Ok(n)) => {
                    assert!(n <= 200);
                    outcomes.1 += 1;
                }
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    outcomes.0 += 1;
                }
            }
        }
        eprintln!("refused {}, opened {}", outcomes.0, outcomes.1);
        assert_eq!(outcomes.0 + outcomes.1, 16);
        assert!(outcomes.0 > 0, "the damage was never noticed");
    }
}
