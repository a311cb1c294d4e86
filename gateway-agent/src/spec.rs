//! What identifies a deployed component in reality: labels on everything the
//! agent creates, and a hash of the part of a component's specification that a
//! redeploy would change.

use continuum_models::Component;

/// Label keys: everything the agent creates is labelled, so reality alone
/// gives the current model.
pub const LABEL_COMPONENT: &str = "continuum.component";
/// The subsystem a workload belongs to.
pub const LABEL_SUBSYSTEM: &str = "continuum.subsystem";
/// The generation that created it.
pub const LABEL_GENERATION: &str = "continuum.generation";
/// The hash of the specification it runs (see [`spec_hash`]).
pub const LABEL_SPEC_HASH: &str = "continuum.spec-hash";
/// The component's JSON, so a restarted agent rebuilds its current model from
/// reality alone.
pub const LABEL_DEFINITION: &str = "continuum.definition";

/// SHA-256 of `bytes`, in hex: stable across versions and platforms, which
/// labels written by one agent and read by the next require.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A hash of the component's specification without the fields that change in
/// place (name, properties...): equal hashes mean what runs need not change.
pub fn spec_hash(c: &Component) -> String {
    let mut value = serde_json::to_value(c).expect("components serialize to JSON");
    if let Some(o) = value.as_object_mut() {
        for field in c.kind().in_place_fields() {
            o.remove(*field);
        }
        o.remove("subsystem");
    }
    // serde_json's maps are ordered by key: the text is canonical. 128 bits
    // of SHA-256 keep the label short and collisions out of reach.
    let mut h = sha256_hex(value.to_string().as_bytes());
    h.truncate(32);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: &str) -> Component {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn in_place_fields_do_not_change_the_hash_and_the_rest_does() {
        let a = service(
            r#"{"id":"web","kind":"service","name":"A","resources":{"container":{"image":"x:1"}}}"#,
        );
        let renamed = service(
            r#"{"id":"web","kind":"service","name":"B","properties":{"k":"v"},"resources":{"container":{"image":"x:1"}}}"#,
        );
        let changed = service(
            r#"{"id":"web","kind":"service","name":"A","resources":{"container":{"image":"x:2"}}}"#,
        );
        assert_eq!(spec_hash(&a), spec_hash(&renamed));
        assert_ne!(spec_hash(&a), spec_hash(&changed));
        assert_eq!(spec_hash(&a).len(), 32);
    }

    #[test]
    fn sha256_is_the_published_function() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
