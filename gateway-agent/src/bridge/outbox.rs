//! A durable, bounded FIFO of messages waiting to cross the bridge (one per
//! direction), in the agent's redb database. A message is in the outbox from
//! the moment `push` returns until it is acknowledged by the far side; a crash
//! in between loses nothing. When the outbox is full the oldest messages are
//! dropped — and every one is counted, so the loss is never silent.

use std::sync::Arc;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// A message as the bridge carries it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub qos: u32,
    #[prost(bool, tag = "4")]
    pub retain: bool,
    /// Who first published it on this side of the bridge, and its number in
    /// that publisher's sequence: the id duplicates are recognised by.
    #[prost(string, tag = "5")]
    pub publisher: String,
    #[prost(uint64, tag = "6")]
    pub seq: u64,
    /// The message's other MQTT 5 user properties, passed on.
    #[prost(message, repeated, tag = "7")]
    pub properties: Vec<Property>,
    /// The route it travels on (its owner), for dead letters.
    #[prost(string, tag = "8")]
    pub owner: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
#[error("outbox `{name}`: {cause}")]
pub struct OutboxError {
    name: String,
    cause: String,
}

/// One outbox, in a shared database.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Arc<Database>,
    name: String,
    capacity: u64,
    /// Commit with fsync (the default); off only to measure what it costs.
    durable: bool,
}

fn queue(name: &str) -> String {
    format!("outbox.{name}.queue")
}

fn meta(name: &str) -> String {
    format!("outbox.{name}.meta")
}

fn seen(name: &str) -> String {
    format!("outbox.{name}.seen")
}

/// What a push did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    pub appended: u64,
    /// Messages already seen (a publisher's number not above its last one).
    pub duplicates: u64,
    /// Old messages dropped to make room.
    pub dropped: u64,
}

const NEXT: &str = "next";
const DROPPED: &str = "dropped";

impl Outbox {
    /// Opens (or creates) the outbox `name` holding at most `capacity` messages.
    pub fn open(db: Arc<Database>, name: &str, capacity: u64) -> Result<Outbox, OutboxError> {
        let outbox = Outbox {
            db,
            name: name.to_owned(),
            capacity: capacity.max(1),
            durable: true,
        };
        let q = queue(name);
        let m = meta(name);
        let txn = outbox.db.begin_write().map_err(|e| outbox.error(e))?;
        txn.open_table(TableDefinition::<u64, &[u8]>::new(&q))
            .map_err(|e| outbox.error(e))?;
        txn.open_table(TableDefinition::<&str, u64>::new(&m))
            .map_err(|e| outbox.error(e))?;
        txn.open_table(TableDefinition::<&str, u64>::new(&seen(name)))
            .map_err(|e| outbox.error(e))?;
        txn.commit().map_err(|e| outbox.error(e))?;
        Ok(outbox)
    }

    /// Commits without fsync: a crash of the machine (not of the process)
    /// may lose what the last commits held. For measuring durability's cost.
    pub fn without_fsync(mut self) -> Outbox {
        self.durable = false;
        self
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, OutboxError> {
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        if !self.durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| self.error(e))?;
        }
        Ok(txn)
    }

    fn error(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError {
            name: self.name.clone(),
            cause: e.to_string(),
        }
    }

    /// Appends messages in order, durably, in one transaction; returns how
    /// many old messages were dropped to make room.
    pub fn push(&self, messages: &[Message]) -> Result<u64, OutboxError> {
        Ok(self.append(messages, false)?.dropped)
    }

    /// Appends the messages not seen before (by publisher and number), and
    /// records them as seen, in the same transaction: a message acknowledged
    /// upstream after this returns is never appended twice, even across a crash.
    pub fn push_new(&self, messages: &[Message]) -> Result<Pushed, OutboxError> {
        self.append(messages, true)
    }

    fn append(&self, messages: &[Message], dedup: bool) -> Result<Pushed, OutboxError> {
        let (q, m, sn) = (queue(&self.name), meta(&self.name), seen(&self.name));
        let txn = self.begin_write()?;
        let mut report = Pushed::default();
        {
            let mut seen = txn
                .open_table(TableDefinition::<&str, u64>::new(&sn))
                .map_err(|e| self.error(e))?;
            let mut fresh: Vec<&Message> = Vec::with_capacity(messages.len());
            for msg in messages {
                if dedup && !msg.publisher.is_empty() {
                    let last = seen
                        .get(msg.publisher.as_str())
                        .map_err(|e| self.error(e))?
                        .map_or(0, |v| v.value());
                    if msg.seq <= last {
                        report.duplicates += 1;
                        continue;
                    }
                    seen.insert(msg.publisher.as_str(), msg.seq)
                        .map_err(|e| self.error(e))?;
                }
                fresh.push(msg);
            }
            report.appended = fresh.len() as u64;
            let messages = fresh;
            let mut queue = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(&q))
                .map_err(|e| self.error(e))?;
            let mut meta = txn
                .open_table(TableDefinition::<&str, u64>::new(&m))
                .map_err(|e| self.error(e))?;
            let mut next = meta
                .get(NEXT)
                .map_err(|e| self.error(e))?
                .map_or(1, |v| v.value());
            for msg in &messages {
                queue
                    .insert(next, msg.encode_to_vec().as_slice())
                    .map_err(|e| self.error(e))?;
                next += 1;
            }
            meta.insert(NEXT, next).map_err(|e| self.error(e))?;
            let len = queue.len().map_err(|e| self.error(e))?;
            let over = len.saturating_sub(self.capacity);
            for _ in 0..over {
                queue.pop_first().map_err(|e| self.error(e))?;
            }
            report.dropped = over;
            if over > 0 {
                let dropped = meta
                    .get(DROPPED)
                    .map_err(|e| self.error(e))?
                    .map_or(0, |v| v.value());
                meta.insert(DROPPED, dropped + over)
                    .map_err(|e| self.error(e))?;
            }
        }
        txn.commit().map_err(|e| self.error(e))?;
        if report.dropped > 0 {
            tracing::warn!(outbox = %self.name, dropped = report.dropped, "outbox full: oldest messages dropped");
        }
        Ok(report)
    }

    /// Up to `max` of the oldest messages, with their positions, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, Message)>, OutboxError> {
        self.peek_after(0, max)
    }

    /// Up to `max` messages after position `after`, oldest first.
    pub fn peek_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Message)>, OutboxError> {
        let q = queue(&self.name);
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let queue = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(&q))
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        let from = after.saturating_add(1);
        for entry in queue.range(from..).map_err(|e| self.error(e))?.take(max) {
            let (k, v) = entry.map_err(|e| self.error(e))?;
            let msg = Message::decode(v.value()).map_err(|e| self.error(e))?;
            out.push((k.value(), msg));
        }
        Ok(out)
    }

    /// Forgets every message up to and including position `upto` (the far side
    /// has them). Not synced to disk by itself: a crash may bring the last
    /// acknowledged messages back, and they are sent again with the same ids,
    /// which the far side recognises. (The next append makes it durable.)
    pub fn ack(&self, upto: u64) -> Result<(), OutboxError> {
        let q = queue(&self.name);
        let mut txn = self.db.begin_write().map_err(|e| self.error(e))?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| self.error(e))?;
        {
            let mut queue = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(&q))
                .map_err(|e| self.error(e))?;
            queue
                .retain_in(..=upto, |_, _| false)
                .map_err(|e| self.error(e))?;
        }
        txn.commit().map_err(|e| self.error(e))
    }

    pub fn len(&self) -> Result<u64, OutboxError> {
        let q = queue(&self.name);
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let queue = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(&q))
            .map_err(|e| self.error(e))?;
        queue.len().map_err(|e| self.error(e))
    }

    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }

    /// Messages dropped because the outbox was full, ever.
    pub fn dropped(&self) -> Result<u64, OutboxError> {
        let m = meta(&self.name);
        let txn = self.db.begin_read().map_err(|e| self.error(e))?;
        let meta = txn
            .open_table(TableDefinition::<&str, u64>::new(&m))
            .map_err(|e| self.error(e))?;
        Ok(meta
            .get(DROPPED)
            .map_err(|e| self.error(e))?
            .map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(n: u64) -> Message {
        Message {
            topic: format!("/f/in/s{}", n % 3),
            payload: n.to_be_bytes().to_vec(),
            qos: 1,
            retain: false,
            publisher: "p".into(),
            seq: n,
            ..Message::default()
        }
    }

    fn db(dir: &std::path::Path) -> Arc<Database> {
        Arc::new(Database::create(dir.join("bridge.redb")).unwrap())
    }

    #[test]
    fn messages_survive_reopening_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(db(dir.path()), "up", 100).unwrap();
            o.push(&(1..=5).map(msg).collect::<Vec<_>>()).unwrap();
            let first = o.peek(2).unwrap();
            o.ack(first[1].0).unwrap();
        }
        let o = Outbox::open(db(dir.path()), "up", 100).unwrap();
        let left: Vec<u64> = o.peek(10).unwrap().iter().map(|(_, m)| m.seq).collect();
        assert_eq!(left, [3, 4, 5]);
        assert_eq!(o.dropped().unwrap(), 0);
    }

    #[test]
    fn redelivered_messages_are_appended_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(db(dir.path()), "down", 100).unwrap();
            let r = o.push_new(&(1..=3).map(msg).collect::<Vec<_>>()).unwrap();
            assert_eq!((r.appended, r.duplicates), (3, 0));
        }
        // The upstream broker redelivers 2 and 3 (not acknowledged before a crash), then 4.
        let o = Outbox::open(db(dir.path()), "down", 100).unwrap();
        let r = o.push_new(&[msg(2), msg(3), msg(4)]).unwrap();
        assert_eq!((r.appended, r.duplicates), (1, 2));
        let seqs: Vec<u64> = o.peek(10).unwrap().iter().map(|(_, m)| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        // Another publisher has its own numbers.
        let mut other = msg(1);
        other.publisher = "q".into();
        assert_eq!(o.push_new(&[other]).unwrap().appended, 1);
    }

    #[test]
    fn two_outboxes_in_one_database_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let d = db(dir.path());
        let up = Outbox::open(Arc::clone(&d), "up", 10).unwrap();
        let down = Outbox::open(d, "down", 10).unwrap();
        up.push(&[msg(1)]).unwrap();
        assert_eq!(up.len().unwrap(), 1);
        assert!(down.is_empty().unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the pushes and acks, what remains is the newest messages
        /// not acknowledged, in order, at most `capacity` of them, and every
        /// message is either delivered (acked), still queued, or counted as
        /// dropped.
        #[test]
        fn fifo_bounded_and_every_message_accounted_for(
            capacity in 1u64..20,
            ops in proptest::collection::vec((1usize..8, 0usize..6), 1..30),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let o = Outbox::open(db(dir.path()), "t", capacity).unwrap();
            let mut next = 1u64;
            let mut delivered: Vec<u64> = Vec::new();
            for (push, take) in ops {
                let batch: Vec<Message> = (next..next + push as u64).map(msg).collect();
                next += push as u64;
                o.push(&batch).unwrap();
                let head = o.peek(take).unwrap();
                if let Some((pos, _)) = head.last() {
                    delivered.extend(head.iter().map(|(_, m)| m.seq));
                    o.ack(*pos).unwrap();
                }
                prop_assert!(o.len().unwrap() <= capacity);
            }
            let queued: Vec<u64> = o.peek(usize::MAX).unwrap().iter().map(|(_, m)| m.seq).collect();
            // Order is kept end to end.
            let mut all = delivered.clone();
            all.extend(&queued);
            prop_assert!(all.windows(2).all(|w| w[0] < w[1]));
            // Nothing vanishes uncounted.
            let total = next - 1;
            prop_assert_eq!(delivered.len() as u64 + queued.len() as u64 + o.dropped().unwrap(), total);
        }
    }
}
