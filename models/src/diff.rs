//! Structural diff of deployment models, keyed by component id, and applying it.

use std::collections::{HashMap, HashSet};

use crate::index::{FastMap, FastSet, ModelIndex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::component::{Component, Kind};
use crate::link::Link;
use crate::model::DeploymentModel;

/// What differs between two deployment models.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelDiff {
    /// Model-level fields (`id`, `on_failure`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model: Vec<FieldChange>,
    /// Components in the target only.
    pub added: Vec<Component>,
    /// Components in the current model only.
    pub removed: Vec<Component>,
    /// Components in both that differ.
    pub changed: Vec<ComponentChange>,
    /// Links in the target only.
    pub links_added: Vec<Link>,
    /// Links in the current model only.
    pub links_removed: Vec<Link>,
}

/// A component present on both sides that must be updated or redeployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentChange {
    /// The component.
    pub id: String,
    /// Its kind in the target.
    pub kind: Kind,
    /// The kind in the current model, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kind: Option<Kind>,
    /// Field-level changes; empty when the component only follows its host.
    pub fields: Vec<FieldChange>,
    /// What is done about it.
    pub action: ChangeAction,
}

/// How a changed component is brought to its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum ChangeAction {
    /// Only metadata changed: updated in place, nothing restarted.
    Update,
    /// Removed and added again, for the cause given.
    Replace {
        /// Why.
        cause: ReplaceCause,
    },
}

/// Why a component is replaced rather than updated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ReplaceCause {
    /// Its own specification changed.
    Spec,
    /// It moved to another host (or was placed, or unplaced).
    Moved {
        /// The host before.
        from: Option<String>,
        /// The host after.
        to: Option<String>,
    },
    /// Its host is replaced, so it is redeployed with it.
    Host {
        /// The host replaced.
        host: String,
    },
}

/// One changed field, addressed by a JSON pointer into the component's JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The JSON path of the field (`resources.container.image`).
    pub path: String,
    /// The value before (absent: not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after (absent: not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl FieldChange {
    /// The component field the change is in (`resources` for `/resources/container/env/X`).
    pub fn top_field(&self) -> &str {
        self.path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
    }
}

impl ModelDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.model.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.links_added.is_empty()
            && self.links_removed.is_empty()
    }

    /// Ids of components that go down and come back up (replaced).
    pub fn replaced(&self) -> impl Iterator<Item = &ComponentChange> {
        self.changed
            .iter()
            .filter(|c| matches!(c.action, ChangeAction::Replace { .. }))
    }
}

impl ComponentChange {
    /// Whether the change redeploys the component.
    pub fn is_replace(&self) -> bool {
        matches!(self.action, ChangeAction::Replace { .. })
    }
}

/// Computes the diff that turns `current` into `target`.
///
/// Models in canonical order ([`DeploymentModel::canonicalize`], which is how the
/// engines keep them) are compared by a linear merge; others through hash indexes.
pub fn diff(current: &DeploymentModel, target: &DeploymentModel) -> ModelDiff {
    merge_diff(current, target)
        .unwrap_or_else(|| diff_indexed(&ModelIndex::new(current), &ModelIndex::new(target)))
}

/// Components strictly sorted by id (so no duplicates) and links strictly sorted.
pub fn is_canonical(m: &DeploymentModel) -> bool {
    m.components.windows(2).all(|w| w[0].id < w[1].id) && m.links.windows(2).all(|w| w[0] < w[1])
}

/// One step of a merge of two sorted lists.
enum Merged<'a, T> {
    Both(&'a T, &'a T),
    Left(&'a T),
    Right(&'a T),
}

/// Walks two lists sorted by `key` in step. Returns `false`, having stopped early,
/// when either list turns out not to be strictly sorted.
fn merge<'a, T, K: Ord + ?Sized>(
    a: &'a [T],
    b: &'a [T],
    key: impl Fn(&T) -> &K,
    mut each: impl FnMut(Merged<'a, T>),
) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut after_both = false;
    loop {
        let step = match (a.get(i), b.get(j)) {
            (None, None) => return true,
            (Some(x), Some(y)) => match key(x).cmp(key(y)) {
                std::cmp::Ordering::Equal => Merged::Both(x, y),
                std::cmp::Ordering::Less => Merged::Left(x),
                std::cmp::Ordering::Greater => Merged::Right(y),
            },
            (Some(x), None) => Merged::Left(x),
            (None, Some(y)) => Merged::Right(y),
        };
        let (advance_a, advance_b) = match step {
            Merged::Both(..) => (true, true),
            Merged::Left(_) => (true, false),
            Merged::Right(_) => (false, true),
        };
        // The element just taken must be above the one before it. After two
        // matches in a row both sides hold the same keys: one check covers both.
        if advance_a && i > 0 && key(&a[i - 1]) >= key(&a[i]) {
            return false;
        }
        let same_keys = after_both && advance_a;
        if advance_b && j > 0 && !same_keys && key(&b[j - 1]) >= key(&b[j]) {
            return false;
        }
        after_both = advance_a && advance_b;
        each(step);
        i += usize::from(advance_a);
        j += usize::from(advance_b);
    }
}

/// What changed in a component present on both sides, if anything.
fn compare(
    old: &Component,
    new: &Component,
    host_a: Option<&str>,
    host_b: Option<&str>,
) -> Option<ComponentChange> {
    let moved = host_a != host_b;
    let same = old == new;
    if same && !moved {
        return None;
    }
    let fields = if same {
        Vec::new()
    } else {
        component_fields_diff(old, new)
    };
    let kind = new.kind();
    let in_place = kind == old.kind()
        && fields
            .iter()
            .all(|f| kind.in_place_fields().contains(&f.top_field()));
    let action = if !in_place {
        ChangeAction::Replace {
            cause: ReplaceCause::Spec,
        }
    } else if moved {
        ChangeAction::Replace {
            cause: ReplaceCause::Moved {
                from: host_a.map(str::to_owned),
                to: host_b.map(str::to_owned),
            },
        }
    } else {
        ChangeAction::Update
    };
    Some(ComponentChange {
        id: new.id.clone(),
        kind,
        previous_kind: (old.kind() != kind).then_some(old.kind()),
        fields,
        action,
    })
}

/// Marks everything hosted (transitively, in the target) on a replaced component
/// as replaced too. `changes` must be sorted by id; it stays sorted. `current_kind`
/// gives the kind of a target component that also exists in the current model.
fn cascade<'a>(
    changes: &mut Vec<ComponentChange>,
    target: &'a DeploymentModel,
    current_kind: impl Fn(&str) -> Option<Kind>,
) {
    let mut replaced: FastSet<&str> = changes
        .iter()
        .filter(|c| c.is_replace())
        .map(|c| c.id.as_str())
        .collect();
    if replaced.is_empty() {
        return;
    }
    // What each host hosts, as a list threaded through the hosting links:
    // one table entry per host and no vector per host (most models have
    // one host for every few components).
    let hosting: Vec<(&'a str, &'a str)> = target
        .links
        .iter()
        .filter_map(|l| match l {
            Link::Hosting { component, host } => Some((component.as_str(), host.as_str())),
            Link::Communication(_) => None,
        })
        .collect();
    const END: u32 = u32::MAX;
    let mut first: FastMap<&'a str, u32> = FastMap::default();
    let mut next: Vec<u32> = vec![END; hosting.len()];
    for (i, &(_, host)) in hosting.iter().enumerate() {
        let i = u32::try_from(i).expect("fewer than 2^32 links");
        if let Some(head) = first.insert(host, i) {
            next[i as usize] = head;
        }
    }
    // In any order: each component has one host, so its cause is the same
    // whichever host is walked first, and what is added is sorted below.
    let mut frontier: Vec<&str> = replaced.iter().copied().collect();
    let mut updates: Vec<(&'a str, &'a str, Kind)> = Vec::new();
    // Level by level: what the frontier hosts joins the next frontier.
    while !frontier.is_empty() {
        let mut further = Vec::new();
        for host in frontier {
            let mut at = first.get(host).copied().unwrap_or(END);
            while at != END {
                let (component, host) = hosting[at as usize];
                at = next[at as usize];
                if replaced.contains(component) {
                    continue;
                }
                let Some(kind) = current_kind(component) else {
                    continue;
                };
                replaced.insert(component);
                updates.push((component, host, kind));
                further.push(component);
            }
        }
        frontier = further;
    }
    // `changes` is written from here on: the set borrowed from it goes.
    drop(replaced);
    let mut extra: Vec<ComponentChange> = Vec::new();
    for (component, host, kind) in updates {
        let action = ChangeAction::Replace {
            cause: ReplaceCause::Host {
                host: host.to_owned(),
            },
        };
        match changes.binary_search_by(|c| c.id.as_str().cmp(component)) {
            Ok(i) => changes[i].action = action,
            Err(_) => extra.push(ComponentChange {
                id: component.to_owned(),
                kind,
                previous_kind: None,
                fields: Vec::new(),
                action,
            }),
        }
    }
    if !extra.is_empty() {
        changes.extend(extra);
        changes.sort_by(|x, y| x.id.cmp(&y.id));
    }
}

/// The diff of two canonical models: one pass over each list. `None` when either
/// model is not in canonical order.
fn merge_diff(current: &DeploymentModel, target: &DeploymentModel) -> Option<ModelDiff> {
    let mut d = ModelDiff {
        model: model_fields_diff(current, target),
        ..ModelDiff::default()
    };
    // Hosting links sort first (by component), so they are a prefix of the links.
    let hosting = |m: &'_ DeploymentModel| {
        m.links
            .partition_point(|l| matches!(l, Link::Hosting { .. }))
    };
    let mut ha = HostCursor::new(&current.links[..hosting(current)]);
    let mut hb = HostCursor::new(&target.links[..hosting(target)]);
    let (a, b) = (&current.components, &target.components);
    let sorted = merge(
        a,
        b,
        |c| c.id.as_str(),
        |step| match step {
            Merged::Both(x, y) => {
                let (host_a, host_b) = (ha.host_of(&x.id), hb.host_of(&y.id));
                d.changed.extend(compare(x, y, host_a, host_b));
            }
            Merged::Left(x) => d.removed.push(x.clone()),
            Merged::Right(y) => d.added.push(y.clone()),
        },
    );
    let sorted = sorted
        && merge(
            &current.links,
            &target.links,
            |l| l,
            |step| match step {
                Merged::Both(..) => {}
                Merged::Left(x) => d.links_removed.push(x.clone()),
                Merged::Right(y) => d.links_added.push(y.clone()),
            },
        );
    if !sorted {
        return None;
    }
    let current_kind = |id: &str| {
        a.binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
            .map(|i| a[i].kind())
    };
    cascade(&mut d.changed, target, current_kind);
    Some(d)
}

/// Walks a sorted list of hosting links alongside components sorted by id.
struct HostCursor<'a> {
    links: &'a [Link],
    at: usize,
}

impl<'a> HostCursor<'a> {
    fn new(links: &'a [Link]) -> Self {
        HostCursor { links, at: 0 }
    }

    /// The host of `id`; ids must be asked in increasing order.
    fn host_of(&mut self, id: &str) -> Option<&'a str> {
        while let Some(Link::Hosting { component, host }) = self.links.get(self.at) {
            match component.as_str().cmp(id) {
                std::cmp::Ordering::Less => self.at += 1,
                std::cmp::Ordering::Equal => return Some(host),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}

/// [`diff`] through hash indexes: for models in any order.
pub fn diff_indexed(a: &ModelIndex<'_>, b: &ModelIndex<'_>) -> ModelDiff {
    let (current, target) = (a.model, b.model);
    let mut d = ModelDiff {
        model: model_fields_diff(current, target),
        ..ModelDiff::default()
    };
    for c in &target.components {
        let id = c.id.as_str();
        if !b
            .components
            .get(id)
            .is_some_and(|first| std::ptr::eq(*first, c))
        {
            continue; // a duplicate id: validation reports it
        }
        match a.components.get(id) {
            None => d.added.push(c.clone()),
            Some(old) => {
                let (host_a, host_b) = (a.hosts.get(id).copied(), b.hosts.get(id).copied());
                d.changed.extend(compare(old, c, host_a, host_b));
            }
        }
    }
    for c in &current.components {
        let id = c.id.as_str();
        if !b.components.contains_key(id)
            && a.components.get(id).is_some_and(|f| std::ptr::eq(*f, c))
        {
            d.removed.push(c.clone());
        }
    }
    d.changed.sort_by(|x, y| x.id.cmp(&y.id));
    d.added.sort_by(|x, y| x.id.cmp(&y.id));
    d.removed.sort_by(|x, y| x.id.cmp(&y.id));
    cascade(&mut d.changed, target, |id| {
        a.components.get(id).map(|c| c.kind())
    });

    d.links_added = target
        .links
        .iter()
        .filter(|l| !a.links.contains(l))
        .cloned()
        .collect();
    d.links_removed = current
        .links
        .iter()
        .filter(|l| !b.links.contains(l))
        .cloned()
        .collect();
    d.links_added.sort();
    d.links_added.dedup();
    d.links_removed.sort();
    d.links_removed.dedup();
    d
}

fn model_fields_diff(a: &DeploymentModel, b: &DeploymentModel) -> Vec<FieldChange> {
    let mut out = Vec::new();
    if a.id != b.id || a.on_failure != b.on_failure {
        let va = model_fields(a);
        let vb = model_fields(b);
        value_diff(&va, &vb, &mut String::new(), &mut out);
    }
    out
}

fn model_fields(m: &DeploymentModel) -> Value {
    let mut o = Map::new();
    if let Some(id) = &m.id {
        o.insert("id".into(), Value::String(id.clone()));
    }
    if let Some(p) = m.on_failure {
        o.insert(
            "on_failure".into(),
            serde_json::to_value(p).unwrap_or(Value::Null),
        );
    }
    Value::Object(o)
}

/// Field-level changes between two versions of a component, as JSON pointers.
pub fn component_fields_diff(a: &Component, b: &Component) -> Vec<FieldChange> {
    if let Some(changes) = crate::fields::component_diff(a, b) {
        return changes;
    }
    // The kind changed: compare the JSON forms.
    let va = serde_json::to_value(a).unwrap_or(Value::Null);
    let vb = serde_json::to_value(b).unwrap_or(Value::Null);
    let mut out = Vec::new();
    value_diff(&va, &vb, &mut String::new(), &mut out);
    out
}

/// Objects are compared member by member; anything else (arrays included) is
/// replaced as a whole when it differs.
fn value_diff(a: &Value, b: &Value, path: &mut String, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x
                .keys()
                .chain(y.keys().filter(|k| !x.contains_key(*k)))
                .collect();
            keys.sort();
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&escape_pointer(k));
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) if va != vb => value_diff(va, vb, path, out),
                    (Some(_), Some(_)) => {}
                    (old, new) => out.push(FieldChange {
                        path: path.clone(),
                        old: old.cloned(),
                        new: new.cloned(),
                    }),
                }
                path.truncate(len);
            }
        }
        _ if a != b => out.push(FieldChange {
            path: path.clone(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        _ => {}
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn unescape_pointer(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// Why a diff does not apply to a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A component to remove or change is missing.
    #[error("component `{0}` to remove or change is not in the model")]
    MissingComponent(String),
    /// A component to add is there already.
    #[error("component `{0}` to add is already in the model")]
    AlreadyPresent(String),
    /// A link to remove is missing.
    #[error("link ({0}) to remove is not in the model")]
    MissingLink(String),
    /// A field change does not apply.
    #[error("component `{id}`: cannot apply change at `{path}`: {reason}")]
    Patch {
        /// The component.
        id: String,
        /// The field.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ModelDiff {
    /// Applies this diff to `model`: the result is the target the diff was computed
    /// against (in canonical order).
    pub fn apply(&self, model: &DeploymentModel) -> Result<DeploymentModel, ApplyError> {
        let mut components: HashMap<String, Component> = model
            .components
            .iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        for c in &self.removed {
            components
                .remove(&c.id)
                .ok_or_else(|| ApplyError::MissingComponent(c.id.clone()))?;
        }
        for change in self.changed.iter().filter(|c| !c.fields.is_empty()) {
            let c = components
                .get_mut(&change.id)
                .ok_or_else(|| ApplyError::MissingComponent(change.id.clone()))?;
            let patch_err = |path: &str, reason: String| ApplyError::Patch {
                id: change.id.clone(),
                path: path.to_owned(),
                reason,
            };
            let mut value = serde_json::to_value(&*c).map_err(|e| patch_err("", e.to_string()))?;
            for f in &change.fields {
                patch(&mut value, &f.path, f.new.clone()).map_err(|r| patch_err(&f.path, r))?;
            }
            *c = serde_json::from_value(value).map_err(|e| patch_err("", e.to_string()))?;
        }
        for c in &self.added {
            if components.insert(c.id.clone(), c.clone()).is_some() {
                return Err(ApplyError::AlreadyPresent(c.id.clone()));
            }
        }
        let mut links: HashSet<Link> = model.links.iter().cloned().collect();
        for l in &self.links_removed {
            if !links.remove(l) {
                return Err(ApplyError::MissingLink(l.to_string()));
            }
        }
        links.extend(self.links_added.iter().cloned());

        let mut header = model_fields(model);
        for f in &self.model {
            patch(&mut header, &f.path, f.new.clone()).map_err(|reason| ApplyError::Patch {
                id: "(model)".to_owned(),
                path: f.path.clone(),
                reason,
            })?;
        }
        let mut out = DeploymentModel {
            id: header.get("id").and_then(Value::as_str).map(str::to_owned),
            on_failure: header
                .get("on_failure")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            components: components.into_values().collect(),
            links: links.into_iter().collect(),
        };
        out.canonicalize();
        Ok(out)
    }
}

/// Sets (or, with `None`, removes) the value at a JSON pointer, creating objects
/// on the way.
fn patch(root: &mut Value, pointer: &str, new: Option<Value>) -> Result<(), String> {
    if pointer.is_empty() {
        *root = new.ok_or("cannot remove the whole document")?;
        return Ok(());
    }
    let segs: Vec<String> = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("`{pointer}` is not a JSON pointer"))?
        .split('/')
        .map(unescape_pointer)
        .collect();
    let (last, parents) = segs.split_last().ok_or("empty pointer")?;
    let mut node = root;
    for s in parents {
        let obj = node
            .as_object_mut()
            .ok_or_else(|| format!("`{s}` is not inside an object"))?;
        node = obj
            .entry(s.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let obj = node
        .as_object_mut()
        .ok_or_else(|| format!("the parent of `{last}` is not an object"))?;
    match new {
        Some(v) => {
            obj.insert(last.clone(), v);
        }
        None => {
            obj.remove(last);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, mutate};
    use proptest::prelude::*;

    proptest! {
        /// The merge finds every list that is not strictly sorted (it skips a
        /// check only where the other side's check covers it) and, on sorted
        /// lists, visits each element once, matching equal keys.
        #[test]
        fn merge_checks_order_and_pairs_equal_keys(
            a in proptest::collection::vec(0u8..40, 0..30),
            b in proptest::collection::vec(0u8..40, 0..30),
            sort_a in any::<bool>(),
            sort_b in any::<bool>(),
        ) {
            let prepare = |mut v: Vec<u8>, sort: bool| {
                if sort {
                    v.sort_unstable();
                    v.dedup();
                }
                v
            };
            let (a, b) = (prepare(a, sort_a), prepare(b, sort_b));
            let strictly = |v: &[u8]| v.windows(2).all(|w| w[0] < w[1]);
            let mut seen = Vec::new();
            let sorted = merge(&a, &b, |x| x, |step| seen.push(match step {
                Merged::Both(x, y) => (Some(*x), Some(*y)),
                Merged::Left(x) => (Some(*x), None),
                Merged::Right(y) => (None, Some(*y)),
            }));
            prop_assert_eq!(sorted, strictly(&a) && strictly(&b));
            if sorted {
                let left: Vec<u8> = seen.iter().filter_map(|s| s.0).collect();
                let right: Vec<u8> = seen.iter().filter_map(|s| s.1).collect();
                prop_assert_eq!(left, a.clone());
                prop_assert_eq!(right, b.clone());
                for (x, y) in &seen {
                    if let (Some(x), None) | (None, Some(x)) = (x, y) {
                        prop_assert!(!(a.contains(x) && b.contains(x)));
                    }
                }
            }
        }
    }

    /// A model sorted but for one pair is caught by the merge, which then leaves the
    /// work to the indexed path: the result is the same either way.
    #[test]
    fn partly_sorted_models_take_the_indexed_path() {
        let generated = generate(7, 200);
        let a = generated.clone().canonical();
        let b = mutate(&generated, 8, 0.2).canonical();
        assert_eq!(crate::validate_deployment_model(&b), vec![]);
        let expected = diff_indexed(&ModelIndex::new(&a), &ModelIndex::new(&b));
        assert_eq!(merge_diff(&a, &b).as_ref(), Some(&expected));
        let mut links_swapped = b.clone();
        let n = links_swapped.links.len();
        links_swapped.links.swap(n - 1, n - 2);
        assert!(merge_diff(&a, &links_swapped).is_none());
        assert_eq!(diff(&a, &links_swapped), expected);
        let mut components_swapped = a.clone();
        components_swapped.components.swap(0, 1);
        assert!(merge_diff(&components_swapped, &b).is_none());
        assert_eq!(diff(&components_swapped, &b), expected);
    }
}
