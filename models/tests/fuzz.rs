//! Bounded fuzzing of everything that reads a model a user or another tool
//! wrote: the megamodel and deployment-model readers with their validation,
//! template reading, and the GeneSIS importer. Inputs are random bytes and,
//! more to the point, real models with random mutations at random places
//! (a value replaced by another type, a key dropped, an array emptied or
//! doubled). Any input may be refused; none may panic.
//!
//! The number of cases is `CONTINUUM_FUZZ_CASES` (default 256 per target),
//! so CI runs them in seconds and a longer hunt is one variable away. A
//! failing input is printed by proptest and kept as a regression case.

use continuum_models::genesis;
use continuum_models::load::{load_deployment_model, load_megamodel, load_template};
use proptest::prelude::*;
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("CONTINUUM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn read(rel: &str) -> Value {
    let path = format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The real models the mutations start from.
fn seeds() -> Vec<Value> {
    vec![
        read("examples/smart-building/v1.json"),
        read("examples/smart-building/v2.json"),
        read("examples/smart-building/up.json"),
        read("examples/edge-hello/v1.json"),
    ]
}

fn genesis_seeds() -> Vec<Value> {
    [
        "every-type",
        "both-ways",
        "device-host",
        "bad-references",
        "undeployed",
        "unreached-device",
    ]
    .iter()
    .map(|n| read(&format!("models/tests/fixtures/genesis/{n}.json")))
    .collect()
}

/// A random JSON value, small.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_/.#+$:@-]{0,12}".prop_map(Value::String),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One mutation: at the node reached by walking `path` (indices taken
/// modulo the children there), do `op` with `value`.
#[derive(Debug, Clone)]
struct Mutation {
    path: Vec<usize>,
    op: u8,
    value: Value,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec(any::<usize>(), 0..8),
        0u8..5,
        any_value(),
    )
        .prop_map(|(path, op, value)| Mutation { path, op, value })
}

fn apply(doc: &mut Value, m: &Mutation) {
    // Walk down read-only to a JSON pointer, then take the node mutably.
    let mut pointer = String::new();
    let mut at: &Value = doc;
    for step in &m.path {
        let (key, next) = match at {
            Value::Array(a) if !a.is_empty() => {
                let i = step % a.len();
                (i.to_string(), &a[i])
            }
            Value::Object(o) if !o.is_empty() => {
                let (k, v) = o.iter().nth(step % o.len()).expect("in range");
                (k.replace('~', "~0").replace('/', "~1"), v)
            }
            _ => break,
        };
        pointer.push('/');
        pointer.push_str(&key);
        at = next;
    }
    let node = doc.pointer_mut(&pointer).expect("the path just walked");
    match (m.op, node) {
        // Replace the node.
        (0, n) => *n = m.value.clone(),
        // Drop a key or an element.
        (1, Value::Object(o)) if !o.is_empty() => {
            let key = o.keys().next().cloned().expect("not empty");
            o.remove(&key);
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            a.pop();
        }
        // Add a key or an element.
        (2, Value::Object(o)) => {
            o.insert(format!("k{}", o.len()), m.value.clone());
        }
        (2, Value::Array(a)) => a.push(m.value.clone()),
        // Double an array (duplicate ids, links, components).
        (3, Value::Array(a)) => {
            let copy = a.clone();
            a.extend(copy);
        }
        // Empty it.
        (4, Value::Array(a)) => a.clear(),
        (4, Value::Object(o)) => o.clear(),
        (_, n) => *n = m.value.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_text_is_refused_never_a_panic(text in "\\PC{0,200}") {
        let _ = load_megamodel("fuzz.json", &text);
        let _ = load_deployment_model("fuzz.json", &text);
        let _ = load_template("fuzz.json", &text);
        let _ = genesis::import("fuzz.json", &text);
    }

    #[test]
    fn mutated_megamodels_are_read_or_refused_never_a_panic(
        seed in 0usize..4,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut doc = seeds()[seed].clone();
        for m in &mutations {
            apply(&mut doc, m);
        }
        let text = serde_json::to_string_pretty(&doc).unwrap();
        if let Err(invalid) = load_megamodel("fuzz.json", &text) {
            // Refused: every problem is located in the file.
            for d in invalid.diagnostics {
                prop_assert!(!d.message.is_empty());
            }
        }
        // Each subsystem alone, as a gateway reads it.
        if let Some(subs) = doc.get("subsystems").and_then(Value::as_array) {
            for s in subs {
                let _ = load_deployment_model("sub.json", &s.to_string());
            }
        }
    }

    #[test]
    fn mutated_genesis_models_are_imported_or_refused_never_a_panic(
        seed in 0usize..6,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut doc = genesis_seeds()[seed].clone();
        for m in &mutations {
            apply(&mut doc, m);
        }
        let _ = genesis::import("fuzz.json", &doc.to_string());
    }
}
