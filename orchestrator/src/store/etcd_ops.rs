//! How the store's state is laid out in etcd, and how a batch of [`Changes`]
//! becomes etcd operations that fit etcd's limits. Pure: no I/O, so the
//! layout is tested without a cluster.
//!
//! * Every key lives under a prefix (`/continuum/` by default), one "table"
//!   per kind of record; numbers are zero-padded so that keys sort as numbers.
//! * etcd refuses a request over 1.5 MiB and a transaction over 128
//!   operations (its defaults). A value larger than [`INLINE_MAX`] is split
//!   into parts under `parts/<its key>/<i>`; its own key then holds a header.
//! * A batch that does not fit one transaction is first written whole as a
//!   journal entry (the commit point), then applied in several transactions,
//!   then its journal entry is removed. Whoever loads the store replays the
//!   journal first, so a batch is either all there or not at all.

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use super::Changes;

/// The largest value stored under one key; larger ones are split.
pub(crate) const INLINE_MAX: usize = 512 << 10;
/// The most operations in one transaction (etcd's default limit is 128; one
/// more is the fencing comparison's companion, and some headroom is kept).
pub(crate) const TXN_MAX_OPS: usize = 100;
/// The most bytes of keys and values in one transaction (etcd's default
/// request limit is 1.5 MiB).
pub(crate) const TXN_MAX_BYTES: usize = 1 << 20;

const INLINE: u8 = 0;
const CHUNKED: u8 = 1;

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Set a key.
    Put { key: String, value: Vec<u8> },
    /// Remove a key.
    Delete { key: String },
    /// Remove every key in `[from, to)`.
    DeleteRange { from: String, to: String },
}

impl Op {
    fn size(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 16,
            Op::DeleteRange { from, to } => from.len() + to.len() + 16,
        }
    }
}

/// The keys of one store in etcd.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

/// The tables whose values may hold models, and so may need splitting.
const SPLITTABLE: [&str; 4] = ["rev/", "target/", "current/", "rchange/"];

impl Layout {
    pub(crate) fn new(prefix: &str) -> Layout {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Layout { prefix }
    }

    /// `table` ends with `/`.
    pub(crate) fn key(&self, table: &str, id: &str) -> String {
        format!("{}{table}{id}", self.prefix)
    }

    pub(crate) fn seq_key(&self, table: &str, n: u64) -> String {
        self.key(table, &format!("{n:020}"))
    }

    /// The first key after every key of `table`.
    pub(crate) fn table_end(&self, table: &str) -> String {
        let mut end = self.key(table, "");
        end.pop();
        end.push('0'); // '/' + 1
        end
    }

    /// The id part of a key of `table`.
    pub(crate) fn id<'a>(&self, table: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(table)
    }

    /// Where the election is held.
    pub(crate) fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }

    fn part_key(&self, key: &str, i: u32) -> String {
        format!("{}parts/{key}/{i:06}", self.prefix)
    }

    /// The key a part key belongs to, and its index.
    pub(crate) fn part_of<'a>(&self, part_key: &'a str) -> Option<(&'a str, u32)> {
        let rest = part_key
            .strip_prefix(&self.prefix)?
            .strip_prefix("parts/")?;
        let (key, i) = rest.rsplit_once('/')?;
        Some((key, i.parse().ok()?))
    }

    /// The parts of a split value, in order: `[from, to)`.
    pub(crate) fn parts_range(&self, key: &str) -> (String, String) {
        (
            format!("{}parts/{key}/", self.prefix),
            format!("{}parts/{key}0", self.prefix),
        )
    }

    fn splittable(&self, key: &str) -> bool {
        key.strip_prefix(&self.prefix)
            .is_some_and(|k| SPLITTABLE.iter().any(|t| k.starts_with(t)))
    }

    /// The journal entry `id` (its header), and where its parts are.
    pub(crate) fn journal_key(&self, id: u64) -> String {
        self.seq_key("journal/", id)
    }

    pub(crate) fn journal_part(&self, id: u64, i: u32) -> String {
        format!("{}jparts/{id:020}/{i:06}", self.prefix)
    }

    pub(crate) fn journal_parts_range(&self, id: u64) -> (String, String) {
        (
            format!("{}jparts/{id:020}/", self.prefix),
            format!("{}jparts/{id:020}0", self.prefix),
        )
    }
}

/// How many parts each split value has now (keys absent: not split).
pub(crate) type Parts = HashMap<String, u32>;

/// A stored value as read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framed<'a> {
    /// The value itself.
    Inline(&'a [u8]),
    /// Split into this many parts.
    Split(u32),
}

/// Reads a stored value's framing.
pub(crate) fn unframe(value: &[u8]) -> Result<Framed<'_>, String> {
    match value.split_first() {
        Some((&INLINE, rest)) => Ok(Framed::Inline(rest)),
        Some((&CHUNKED, rest)) if rest.len() == 4 => Ok(Framed::Split(u32::from_be_bytes([
            rest[0], rest[1], rest[2], rest[3],
        ]))),
        _ => Err("a value with an unknown framing".into()),
    }
}

/// The operations of a batch, each key written once (the last write wins, a
/// removal after writes of the same key), and how many parts each split
/// value has once they are applied. `rchanges` are the `rchange/` keys there
/// now (a batch may clear them).
pub(crate) fn plan(
    layout: &Layout,
    changes: &Changes,
    parts: &Parts,
    rchanges: &[String],
) -> (Vec<Op>, Vec<(String, u32)>) {
    let mut puts: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut deletes: Vec<String> = Vec::new();
    let mut ranges = Vec::new();
    if let Some(last) = changes.revisions.last() {
        for r in &changes.revisions {
            let n = r.meta.as_ref().map_or(0, |m| m.number);
            puts.insert(layout.seq_key("rev/", n), r.encode_to_vec());
        }
        let head = last.meta.as_ref().map_or(0, |m| m.number);
        puts.insert(layout.key("meta/", "head"), head.to_string().into_bytes());
    }
    for (id, t) in &changes.targets {
        puts.insert(layout.key("target/", id), t.encode_to_vec());
    }
    for g in &changes.gateways {
        puts.insert(layout.key("gateway/", &g.id), g.encode_to_vec());
    }
    for id in &changes.forget_gateways {
        let key = layout.key("gateway/", id);
        puts.remove(&key);
        deletes.push(key);
    }
    for (id, c) in &changes.currents {
        puts.insert(layout.key("current/", id), c.encode_to_vec());
    }
    for e in &changes.events {
        puts.insert(layout.seq_key("event/", e.seq), e.encode_to_vec());
    }
    for (seq, d) in &changes.divergences {
        puts.insert(layout.seq_key("div/", *seq), d.encode_to_vec());
    }
    if let Some(before) = changes.forget_events_before {
        let (from, to) = (layout.key("event/", ""), layout.seq_key("event/", before));
        // A removal may not overlap a write of the same transaction.
        puts.retain(|k, _| !(k.as_str() >= from.as_str() && k.as_str() < to.as_str()));
        ranges.push(Op::DeleteRange { from, to });
    }
    for r in &changes.rollouts {
        puts.insert(layout.seq_key("rollout/", r.revision), r.encode_to_vec());
    }
    let mut fresh = Vec::new();
    for (id, c) in &changes.rollout_changes {
        let key = layout.key("rchange/", id);
        fresh.push(key.clone());
        puts.insert(key, c.encode_to_vec());
    }
    if changes.clear_rollout_changes {
        deletes.extend(rchanges.iter().filter(|k| !fresh.contains(k)).cloned());
    }
    if let Some(o) = &changes.agent_offer {
        puts.insert(layout.key("agent/", "offer"), o.encode_to_vec());
    }

    let mut ops = ranges;
    let mut after = Vec::new();
    for (key, value) in puts {
        let had = parts.get(&key).copied().unwrap_or(0);
        let now = if layout.splittable(&key) && value.len() > INLINE_MAX {
            let chunks: Vec<&[u8]> = value.chunks(INLINE_MAX).collect();
            let n = u32::try_from(chunks.len()).expect("fewer than 4 G parts");
            for (i, chunk) in (0..).zip(chunks) {
                ops.push(Op::Put {
                    key: layout.part_key(&key, i),
                    value: chunk.to_vec(),
                });
            }
            let mut header = vec![CHUNKED];
            header.extend(n.to_be_bytes());
            ops.push(Op::Put {
                key: key.clone(),
                value: header,
            });
            n
        } else {
            let mut framed = Vec::with_capacity(value.len() + 1);
            framed.push(INLINE);
            framed.extend(value);
            ops.push(Op::Put {
                key: key.clone(),
                value: framed,
            });
            0
        };
        for i in now..had {
            ops.push(Op::Delete {
                key: layout.part_key(&key, i),
            });
        }
        if now != had {
            after.push((key, now));
        }
    }
    deletes.sort();
    deletes.dedup();
    for key in deletes {
        let had = parts.get(&key).copied().unwrap_or(0);
        for i in 0..had {
            ops.push(Op::Delete {
                key: layout.part_key(&key, i),
            });
        }
        if had > 0 {
            after.push((key.clone(), 0));
        }
        ops.push(Op::Delete { key });
    }
    (ops, after)
}

/// Whether `ops` fit one transaction.
pub(crate) fn fits(ops: &[Op]) -> bool {
    ops.len() <= TXN_MAX_OPS && ops.iter().map(Op::size).sum::<usize>() <= TXN_MAX_BYTES
}

/// `ops` cut into transactions that each fit, in order.
pub(crate) fn groups(ops: Vec<Op>) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    let mut group: Vec<Op> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        if !group.is_empty() && (group.len() == TXN_MAX_OPS || bytes + size > TXN_MAX_BYTES) {
            out.push(std::mem::take(&mut group));
            bytes = 0;
        }
        bytes += size;
        group.push(op);
    }
    if !group.is_empty() {
        out.push(group);
    }
    out
}

/// A journal entry: the operations of one batch.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalEntry {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<JournalOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct JournalOp {
    /// 0 put, 1 delete, 2 delete a range.
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(string, tag = "2")]
    key: String,
    #[prost(bytes = "vec", tag = "3")]
    value: Vec<u8>,
    #[prost(string, tag = "4")]
    to: String,
}

/// A batch as journal parts, each small enough for one transaction.
pub(crate) fn journal(ops: &[Op]) -> Vec<Vec<u8>> {
    let entry = JournalEntry {
        ops: ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => JournalOp {
                    kind: 0,
                    key: key.clone(),
                    value: value.clone(),
                    to: String::new(),
                },
                Op::Delete { key } => JournalOp {
                    kind: 1,
                    key: key.clone(),
                    ..JournalOp::default()
                },
                Op::DeleteRange { from, to } => JournalOp {
                    kind: 2,
                    key: from.clone(),
                    to: to.clone(),
                    ..JournalOp::default()
                },
            })
            .collect(),
    };
    entry
        .encode_to_vec()
        .chunks(INLINE_MAX)
        .map(<[u8]>::to_vec)
        .collect()
}

/// The operations of a journal entry read back from its parts.
pub(crate) fn from_journal(parts: &[Vec<u8>]) -> Result<Vec<Op>, String> {
    let bytes = parts.concat();
    let entry = JournalEntry::decode(bytes.as_slice()).map_err(|e| format!("journal: {e}"))?;
    entry
        .ops
        .into_iter()
        .map(|o| match o.kind {
            0 => Ok(Op::Put {
                key: o.key,
                value: o.value,
            }),
            1 => Ok(Op::Delete { key: o.key }),
            2 => Ok(Op::DeleteRange {
                from: o.key,
                to: o.to,
            }),
            k => Err(format!("journal: an operation of unknown kind {k}")),
        })
        .collect()
}

/// How many parts each split value has, from the keys under `parts/`.
pub(crate) fn parts_index<'a>(layout: &Layout, keys: impl Iterator<Item = &'a str>) -> Parts {
    let mut parts = Parts::new();
    for k in keys {
        if let Some((key, i)) = layout.part_of(k) {
            let n = parts.entry(key.to_owned()).or_default();
            *n = (*n).max(i + 1);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{StoredRevision, StoredTarget};
    use continuum_proto::v1::{Event, Gateway, Revision};

    fn layout() -> Layout {
        Layout::new("/c")
    }

    fn target(model: Vec<u8>) -> StoredTarget {
        StoredTarget {
            generation: 1,
            gateway_id: "gw".into(),
            model,
            removed: false,
        }
    }

    fn keys(ops: &[Op]) -> Vec<&str> {
        ops.iter()
            .map(|o| match o {
                Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
                Op::DeleteRange { from, .. } => from.as_str(),
            })
            .collect()
    }

    #[test]
    fn keys_sort_as_numbers_and_tables_end_where_they_should() {
        let l = layout();
        assert!(l.seq_key("event/", 9) < l.seq_key("event/", 10));
        assert!(l.seq_key("event/", u64::MAX) < l.table_end("event/"));
        assert!(l.key("event0", "") >= l.table_end("event/"));
        assert_eq!(l.id("target/", &l.key("target/", "a/b")), Some("a/b"));
        let (from, to) = l.parts_range("/c/rev/1");
        assert!(from < l.part_key("/c/rev/1", 999_999) && l.part_key("/c/rev/1", 0) < to);
        assert_eq!(l.part_of(&l.part_key("/c/rev/1", 7)), Some(("/c/rev/1", 7)));
    }

    #[test]
    fn a_batch_writes_each_key_once_and_a_removal_wins_over_a_write() {
        let l = layout();
        let mut changes = Changes {
            gateways: vec![Gateway {
                id: "a".into(),
                ..Gateway::default()
            }],
            targets: vec![
                ("s".into(), target(b"1".to_vec())),
                ("s".into(), target(b"2".to_vec())),
            ],
            events: vec![Event {
                seq: 5,
                ..Event::default()
            }],
            forget_events_before: Some(3),
            ..Changes::default()
        };
        changes.forget_gateways.push("a".into());
        let (ops, after) = plan(&l, &changes, &Parts::new(), &[]);
        assert!(after.is_empty());
        let ks = keys(&ops);
        assert_eq!(ks.iter().filter(|k| k.ends_with("target/s")).count(), 1);
        assert!(ops.contains(&Op::Delete {
            key: l.key("gateway/", "a")
        }));
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::Put { key, .. } if key.contains("gateway/"))));
        let put = ops
            .iter()
            .find_map(|o| match o {
                Op::Put { key, value } if key.ends_with("target/s") => Some(value),
                _ => None,
            })
            .unwrap();
        let Framed::Inline(bytes) = unframe(put).unwrap() else {
            panic!("a small value is inline")
        };
        assert_eq!(StoredTarget::decode(bytes).unwrap().model, b"2");
        assert!(fits(&ops));
    }

    #[test]
    fn a_large_value_is_split_and_its_parts_go_when_it_shrinks_or_goes() {
        let l = layout();
        let big = vec![7u8; INLINE_MAX * 2 + 10];
        let changes = Changes {
            targets: vec![("s".into(), target(big.clone()))],
            ..Changes::default()
        };
        let (ops, after) = plan(&l, &changes, &Parts::new(), &[]);
        let key = l.key("target/", "s");
        assert_eq!(after, vec![(key.clone(), 3)]);
        assert_eq!(ops.len(), 4);
        let header = ops
            .iter()
            .find_map(|o| match o {
                Op::Put { key: k, value } if *k == key => Some(value),
                _ => None,
            })
            .unwrap();
        assert_eq!(unframe(header).unwrap(), Framed::Split(3));
        let parts: Vec<u8> = ops
            .iter()
            .filter_map(|o| match o {
                Op::Put { key: k, value } if *k != key => Some(value.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(StoredTarget::decode(parts.as_slice()).unwrap().model, big);
        let index = parts_index(
            &l,
            ops.iter().filter_map(|o| match o {
                Op::Put { key, .. } => Some(key.as_str()),
                _ => None,
            }),
        );
        assert_eq!(index.get(&key), Some(&3));

        let small = Changes {
            targets: vec![("s".into(), target(b"{}".to_vec()))],
            ..Changes::default()
        };
        let (ops, after) = plan(&l, &small, &index, &[]);
        assert_eq!(after, vec![(key.clone(), 0)]);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::Delete { .. }))
                .count(),
            3
        );
    }

    #[test]
    fn a_batch_too_big_for_one_transaction_is_cut_and_survives_the_journal() {
        let l = layout();
        let changes = Changes {
            revisions: vec![StoredRevision {
                meta: Some(Revision {
                    number: 1,
                    ..Revision::default()
                }),
                megamodel: vec![1; 3 << 20],
            }],
            events: (1..=500)
                .map(|seq| Event {
                    seq,
                    ..Event::default()
                })
                .collect(),
            ..Changes::default()
        };
        let (ops, _) = plan(&l, &changes, &Parts::new(), &[]);
        assert!(!fits(&ops));
        let groups = groups(ops.clone());
        assert!(groups.iter().all(|g| fits(g)), "every group fits");
        assert_eq!(groups.concat(), ops);
        let journal = journal(&ops);
        assert!(journal.len() > 1 && journal.iter().all(|p| p.len() <= INLINE_MAX));
        assert_eq!(from_journal(&journal).unwrap(), ops);
    }

    #[test]
    fn clearing_rollout_changes_removes_only_those_not_written_again() {
        let l = layout();
        let existing = vec![l.key("rchange/", "a"), l.key("rchange/", "b")];
        let changes = Changes {
            clear_rollout_changes: true,
            rollout_changes: vec![("b".into(), Default::default())],
            ..Changes::default()
        };
        let (ops, _) = plan(&l, &changes, &Parts::new(), &existing);
        assert!(ops.contains(&Op::Delete {
            key: l.key("rchange/", "a")
        }));
        assert!(!ops.contains(&Op::Delete {
            key: l.key("rchange/", "b")
        }));
    }
}
