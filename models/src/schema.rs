//! Which fields are known where in a model document, for "did you mean" hints.
//!
//! Field lists are read from the serde derives themselves, so they cannot drift
//! from the types.

use serde::de::{self, Deserialize, Visitor};

use crate::diagnostic::{JsonPath, Segment};
use crate::resources::*;
use crate::wire::{RawComponent, RawLink};

/// A position in the document grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Megamodel,
    Subsystem,
    Template,
    Component,
    Link,
    Resources,
    Container,
    Build,
    Port,
    DeviceMapping,
    Mount,
    Commands,
    Flash,
    Capabilities,
    Access,
    AccessDocker,
    AccessSsh,
}

const MEGAMODEL_FIELDS: &[&str] = &[
    "name",
    "description",
    "on_failure",
    "placement",
    "subsystems",
    "components",
    "links",
];
const SUBSYSTEM_FIELDS: &[&str] = &["id", "on_failure", "components", "links"];
const TEMPLATE_FIELDS: &[&str] = &["template", "description", "components", "links"];

impl Schema {
    fn child(self, key: &str) -> Option<Schema> {
        use Schema::*;
        Some(match (self, key) {
            (Megamodel, "subsystems") => Subsystem,
            (Megamodel | Subsystem | Template, "components") => Component,
            (Megamodel | Subsystem | Template, "links") => Link,
            (Component, "resources") => Resources,
            (Component, "capabilities") => Capabilities,
            (Component, "access") => Access,
            (Access, "docker") => AccessDocker,
            (Access, "ssh") => AccessSsh,
            (Resources, "container") => Container,
            (Resources, "commands") => Commands,
            (Resources, "flash") => Flash,
            (Container, "build") => Build,
            (Container, "ports") => Port,
            (Container, "devices") => DeviceMapping,
            (Container, "mounts") => Mount,
            _ => return None,
        })
    }

    /// The fields known at `path` (an object's path), if the grammar defines them.
    pub fn fields_at(self, path: &JsonPath) -> Option<&'static [&'static str]> {
        let mut node = self;
        for seg in &path.0 {
            if let Segment::Key(k) = seg {
                node = node.child(k)?;
            }
        }
        Some(node.fields())
    }

    pub fn fields(self) -> &'static [&'static str] {
        use Schema::*;
        match self {
            Megamodel => MEGAMODEL_FIELDS,
            Subsystem => SUBSYSTEM_FIELDS,
            Template => TEMPLATE_FIELDS,
            Component => serde_fields::<RawComponent>(),
            Link => serde_fields::<RawLink>(),
            Resources => serde_fields::<crate::resources::Resources>(),
            Container => serde_fields::<ContainerSpec>(),
            Build => serde_fields::<BuildSpec>(),
            Port => serde_fields::<PortBinding>(),
            DeviceMapping => serde_fields::<crate::resources::DeviceMapping>(),
            Mount => serde_fields::<crate::resources::Mount>(),
            Commands => serde_fields::<crate::resources::Commands>(),
            Flash => serde_fields::<FlashSpec>(),
            Capabilities => serde_fields::<crate::component::Capabilities>(),
            Access => serde_fields::<crate::component::Access>(),
            AccessDocker => &["endpoint"],
            AccessSsh => &["address", "port", "user"],
        }
    }
}

/// The closest known name to `word`, when it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, counting an adjacent transposition as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// The field (or variant) names a serde derive expects, captured by asking the type
/// to deserialize itself from a deserializer that only records what it is asked for.
fn serde_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut seen = None;
    let _ = T::deserialize(Probe(&mut seen));
    seen.unwrap_or(&[])
}

struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("probe"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(variants);
        Err(de::Error::custom("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_derives() {
        assert!(Schema::Container.fields().contains(&"image"));
        assert!(Schema::Component.fields().contains(&"triggers"));
        assert_eq!(Schema::Access.fields(), &["local", "docker", "ssh"]);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("imgae", &["image", "build"]), Some("image"));
        assert_eq!(
            suggest("trigers", &["triggers", "inputs"]),
            Some("triggers")
        );
        assert_eq!(suggest("zzzzzz", &["image", "build"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
