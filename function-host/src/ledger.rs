//! The ledger of handled messages: what makes a message id invoke its handler
//! once, across restarts of the host.
//!
//! The host finishes messages (output published and acknowledged by the
//! broker, or dead-lettered) strictly in the order they arrived, and a broker
//! delivers one publisher's messages on one topic in order, so per origin and
//! topic the handled ids are exactly those up to the highest one handled: the
//! ledger keeps that number. It is a journal of JSON lines, one per handled
//! message, flushed to disk before the message is acknowledged; on start it is
//! read back and rewritten with one line per origin and topic.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use continuum_bus::MessageId;
use serde::{Deserialize, Serialize};

/// Lines appended before the journal is compacted.
const COMPACT_AFTER: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    origin: String,
    topic: String,
    seq: u64,
}

/// A ledger that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file system refused.
    #[error("ledger {path}: {source}")]
    Io {
        /// The journal's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line that is not a ledger entry (the journal was damaged).
    #[error("ledger {path}, line {line}: {why}")]
    Damaged {
        /// The journal's path.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why it does not read.
        why: String,
    },
}

/// The handled messages, on disk.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    last: HashMap<(String, String), u64>,
    appended: usize,
    compact_after: usize,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Ledger, LedgerError> {
        let path = dir.join("handled.jsonl");
        let io = |source| LedgerError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut last = HashMap::new();
        match File::open(&path) {
            Ok(f) => {
                let lines: Vec<String> = BufReader::new(f)
                    .lines()
                    .collect::<Result<_, _>>()
                    .map_err(io)?;
                let count = lines.len();
                for (i, text) in lines.into_iter().enumerate() {
                    let line: Line = match serde_json::from_str(&text) {
                        Ok(l) => l,
                        // A crash in the middle of an append leaves a torn
                        // last line: that message was not acknowledged, so
                        // it comes again.
                        Err(_) if i + 1 == count => break,
                        Err(e) => {
                            return Err(LedgerError::Damaged {
                                path,
                                line: i + 1,
                                why: e.to_string(),
                            })
                        }
                    };
                    let seq = last.entry((line.origin, line.topic)).or_insert(0);
                    *seq = line.seq.max(*seq);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = rewrite(&path, &last).map_err(io)?;
        Ok(Ledger {
            path,
            file,
            last,
            appended: 0,
            compact_after: COMPACT_AFTER,
        })
    }

    /// Whether the message with `id` on `topic` was handled already.
    pub fn handled(&self, topic: &str, id: &MessageId) -> bool {
        self.last
            .get(&(id.origin.clone(), topic.to_owned()))
            .is_some_and(|&seq| id.seq <= seq)
    }

    /// Records the messages `handled` (topic, id) as handled, durably, with
    /// one flush.
    pub fn record(&mut self, handled: &[(&str, &MessageId)]) -> Result<(), LedgerError> {
        if handled.is_empty() {
            return Ok(());
        }
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = String::new();
        for (topic, id) in handled {
            text.push_str(
                &serde_json::to_string(&Line {
                    origin: id.origin.clone(),
                    topic: (*topic).to_owned(),
                    seq: id.seq,
                })
                .expect("ledger lines serialize"),
            );
            text.push('\n');
        }
        self.file.write_all(text.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        for (topic, id) in handled {
            let seq = self
                .last
                .entry((id.origin.clone(), (*topic).to_owned()))
                .or_insert(0);
            *seq = id.seq.max(*seq);
        }
        self.appended += handled.len();
        if self.appended >= self.compact_after {
            self.file = rewrite(&self.path, &self.last).map_err(io)?;
            self.appended = 0;
        }
        Ok(())
    }
}

/// Writes the ledger anew (one line per origin and topic) and returns it open
/// for appending. Atomic: a crash leaves the old journal or the new one.
fn rewrite(path: &Path, last: &HashMap<(String, String), u64>) -> std::io::Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = String::new();
    for ((origin, topic), seq) in last {
        out.push_str(
            &serde_json::to_string(&Line {
                origin: origin.clone(),
                topic: topic.clone(),
                seq: *seq,
            })
            .expect("ledger lines serialize"),
        );
        out.push('\n');
    }
    {
        let mut f = File::create(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(o: &str, seq: u64) -> MessageId {
        MessageId {
            origin: o.into(),
            seq,
        }
    }

    #[test]
    fn what_was_handled_stays_handled_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        assert!(!l.handled("/f/in/a", &id("o", 1)));
        l.record(&[("/f/in/a", &id("o", 1))]).unwrap();
        l.record(&[("/f/in/a", &id("o", 3))]).unwrap();
        assert!(l.handled("/f/in/a", &id("o", 2)));
        assert!(!l.handled("/f/in/b", &id("o", 2)));
        assert!(!l.handled("/f/in/a", &id("p", 2)));
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert!(l.handled("/f/in/a", &id("o", 3)));
        assert!(!l.handled("/f/in/a", &id("o", 4)));
    }

    #[test]
    fn a_torn_last_line_is_a_message_not_yet_handled_and_damage_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handled.jsonl");
        std::fs::write(
            &path,
            "{\"origin\":\"o\",\"topic\":\"t\",\"seq\":4}\n{\"origin\":\"o\",\"to",
        )
        .unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        assert!(l.handled("t", &id("o", 4)));
        assert!(!l.handled("t", &id("o", 5)));
        drop(l);
        std::fs::write(
            &path,
            "garbage\n{\"origin\":\"o\",\"topic\":\"t\",\"seq\":4}\n",
        )
        .unwrap();
        let e = Ledger::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn compaction_keeps_the_highest_per_origin_and_topic() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        l.compact_after = 50;
        for s in 1..=55 {
            l.record(&[("t", &id("o", s))]).unwrap();
        }
        let lines = std::fs::read_to_string(dir.path().join("handled.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 6, "{lines} lines after compaction");
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert!(l.handled("t", &id("o", 55)));
        assert!(!l.handled("t", &id("o", 56)));
    }
}
