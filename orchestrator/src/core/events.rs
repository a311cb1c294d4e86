//! The event log as the core sees it: numbering the events of one operation
//! after the last committed one, and trimming the log to its retention.

use continuum_proto::v1::{event, Event};

use crate::store::Changes;

/// The writes of one operation, with the events it emits.
#[derive(Debug)]
pub struct Batch {
    /// The writes and events gathered so far.
    pub changes: Changes,
    next_seq: u64,
    /// The time of the operation (milliseconds since the Unix epoch).
    pub now: i64,
}

impl Batch {
    /// A batch whose first event follows `last_seq`.
    pub fn new(last_seq: u64, now: i64) -> Batch {
        Batch {
            changes: Changes::default(),
            next_seq: last_seq + 1,
            now,
        }
    }

    /// Adds an event; returns its sequence number.
    pub fn event(&mut self, kind: event::Kind) -> u64 {
        let seq = self.next_seq;
        self.changes.events.push(Event {
            seq,
            unix_ms: self.now,
            kind: Some(kind),
        });
        self.next_seq += 1;
        seq
    }

    /// The sequence number the next event would get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// The bounds of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    /// The newest event (0: none yet).
    pub last: u64,
    /// The oldest event kept (0: none yet).
    pub oldest: u64,
    /// Events kept for `Watch` resume.
    pub retention: u64,
}

impl Log {
    /// The log once `batch` is committed. When the log has grown a tenth
    /// beyond its retention, the batch also forgets the oldest events (in
    /// chunks, not on every event).
    pub fn after(&self, batch: &mut Batch) -> Log {
        let last = batch.next_seq - 1;
        let retention = self.retention.max(1);
        let mut next = *self;
        if self.oldest == 0 {
            if let Some(first) = batch.changes.events.first() {
                next.oldest = first.seq;
            }
        } else if last.saturating_sub(self.oldest) >= retention + retention / 10 {
            let keep_from = last + 1 - retention;
            batch.changes.forget_events_before = Some(keep_from);
            next.oldest = keep_from;
        }
        next.last = last;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use continuum_proto::v1::Revision;

    fn revision() -> event::Kind {
        event::Kind::Revision(Revision::default())
    }

    #[test]
    fn events_are_numbered_after_the_last_and_the_log_trims_in_chunks() {
        let mut log = Log {
            last: 0,
            oldest: 0,
            retention: 10,
        };
        for expected_last in 1..=11 {
            let mut b = Batch::new(log.last, 7);
            assert_eq!(b.event(revision()), expected_last);
            log = log.after(&mut b);
            assert_eq!(b.changes.forget_events_before, None);
            assert_eq!(b.changes.events[0].unix_ms, 7);
        }
        assert_eq!((log.oldest, log.last), (1, 11));
        // Trimmed only once the log holds a tenth more than it keeps.
        let mut b = Batch::new(log.last, 0);
        b.event(revision());
        log = log.after(&mut b);
        assert_eq!(b.changes.forget_events_before, Some(3));
        assert_eq!((log.oldest, log.last), (3, 12));
    }

    #[test]
    fn a_batch_without_events_leaves_the_log_alone() {
        let log = Log {
            last: 5,
            oldest: 1,
            retention: 100,
        };
        let mut b = Batch::new(5, 0);
        assert_eq!(log.after(&mut b), log);
    }
}
