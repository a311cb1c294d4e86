//! What identifies a deployed component in reality: labels on everything the
//! agent creates, and a hash of the part of a component's specification that a
//! redeploy would change.

use continuum_models::Component;

/// Label keys: everything the agent creates is labelled, so reality alone
/// gives the current model.
pub const LABEL_COMPONENT: &str = "continuum.component";
pub const LABEL_SUBSYSTEM: &str = "continuum.subsystem";
pub const LABEL_GENERATION: &str = "continuum.generation";
pub const LABEL_SPEC_HASH: &str = "continuum.spec-hash";
/// The component's JSON, so a restarted agent rebuilds its current model from
/// reality alone.
pub const LABEL_DEFINITION: &str = "continuum.definition";

/// FNV-1a, 64 bits: stable across Rust versions and platforms (unlike std's
/// hasher), which labels written by one agent and read by the next require. It
/// detects change; it is not a defence against an adversary.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
    // serde_json's maps are ordered by key: the text is canonical.
    format!("{:016x}", fnv64(value.to_string().as_bytes()))
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
        assert_eq!(spec_hash(&a).len(), 16);
    }

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
