//! Message ids, and the de-duplication every Continuum consumer does.
//!
//! MQTT's QoS 1 delivers at least once: a message whose acknowledgement was
//! lost (a cut link, a broker restart, a crash) is sent again. Every message
//! a Continuum bridge forwards carries an id in the MQTT 5 user property
//! [`ID_PROPERTY`]: `<origin>:<seq>`, where the origin names one sender's
//! durable sequence (a bridge's outbox) and `seq` grows with every message it
//! sends on a topic. A consumer keeps the highest `seq` seen per origin and
//! topic and drops anything at or below it: what was redelivered, never
//! something new, since a sender re-sends only a suffix of what it sent, in
//! the same order.

use std::collections::HashMap;

/// The MQTT 5 user property carrying a message's id.
pub const ID_PROPERTY: &str = "continuum-id";

/// A message's id: who numbered it, and its number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// Who numbered it (`<gateway>/<direction>/<epoch>` for a bridge).
    pub origin: String,
    /// Its number at that origin.
    pub seq: u64,
}

/// A `continuum-id` property that does not read as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message id `{0}` (expected <origin>:<number>)")]
pub struct MalformedId(pub String);

impl MessageId {
    /// Reads `<origin>:<number>`.
    pub fn parse(s: &str) -> Result<MessageId, MalformedId> {
        let (origin, seq) = s.rsplit_once(':').ok_or_else(|| MalformedId(s.into()))?;
        let seq = seq.parse().map_err(|_| MalformedId(s.into()))?;
        if origin.is_empty() {
            return Err(MalformedId(s.into()));
        }
        Ok(MessageId {
            origin: origin.to_owned(),
            seq,
        })
    }

    /// The id in a message's user properties: none when it has none, an
    /// error when it has one that does not parse.
    pub fn from_properties(props: &[(String, String)]) -> Result<Option<MessageId>, MalformedId> {
        props
            .iter()
            .find(|(k, _)| k == ID_PROPERTY)
            .map(|(_, v)| MessageId::parse(v))
            .transpose()
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

/// An idempotent consumer's memory: the highest number seen per origin and topic.
#[derive(Debug, Default, Clone)]
pub struct Dedup {
    last: HashMap<(String, String), u64>,
    duplicates: u64,
}

impl Dedup {
    /// A consumer that has seen nothing yet.
    pub fn new() -> Dedup {
        Dedup::default()
    }

    /// Whether a message on `topic` with `id` is new (and remembers it).
    /// Messages without an id cannot be recognised and are always new.
    pub fn accept(&mut self, topic: &str, id: Option<&MessageId>) -> bool {
        let Some(id) = id else { return true };
        let last = self
            .last
            .entry((id.origin.clone(), topic.to_owned()))
            .or_insert(0);
        if id.seq <= *last {
            self.duplicates += 1;
            return false;
        }
        *last = id.seq;
        true
    }

    /// Redelivered messages dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        // Whatever a publisher puts in the property: an id or an error,
        // never a panic; and an id reads back as itself.
        #[test]
        fn any_property_reads_as_an_id_or_an_error(s in "\\PC{0,40}") {
            if let Ok(id) = MessageId::parse(&s) {
                prop_assert_eq!(MessageId::parse(&id.to_string()), Ok(id));
            }
        }

        #[test]
        fn ids_read_back_as_themselves(origin in "[a-z0-9/:-]{1,30}", seq in any::<u64>()) {
            let id = MessageId { origin, seq };
            prop_assert_eq!(MessageId::parse(&id.to_string()), Ok(id));
        }
    }

    use super::*;

    fn id(o: &str, s: u64) -> MessageId {
        MessageId {
            origin: o.into(),
            seq: s,
        }
    }

    #[test]
    fn ids_round_trip_and_bad_ones_are_errors() {
        let i = MessageId::parse("gw-a/in/7f3a:42").unwrap();
        assert_eq!(i, id("gw-a/in/7f3a", 42));
        assert_eq!(MessageId::parse(&i.to_string()).unwrap(), i);
        assert!(MessageId::parse("x").is_err());
        assert!(MessageId::parse(":1").is_err());
        assert!(MessageId::parse("a:-1").is_err());
        let props = vec![("continuum-id".to_owned(), "nope".to_owned())];
        assert!(MessageId::from_properties(&props).is_err());
        assert_eq!(MessageId::from_properties(&[]).unwrap(), None);
    }

    #[test]
    fn a_resent_suffix_is_dropped_and_topics_and_origins_are_apart() {
        let mut d = Dedup::new();
        // 1..=5 sent, the link drops, 3..=7 re-sent.
        let seen: Vec<u64> = (1..=5)
            .chain(3..=7)
            .filter(|&s| d.accept("t", Some(&id("o", s))))
            .collect();
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(d.duplicates(), 3);
        assert!(d.accept("u", Some(&id("o", 1))));
        assert!(d.accept("t", Some(&id("p", 1))));
        assert!(d.accept("t", None));
        assert!(d.accept("t", None));
    }
}
