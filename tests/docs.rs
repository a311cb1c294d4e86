//! The documentation's complete example is the example the project ships.

use std::path::Path;

#[test]
fn model_format_example_is_the_shipped_v1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/model-format.md")).unwrap();
    let section = doc
        .split("## A complete example")
        .nth(1)
        .expect("section exists");
    let block = section
        .split("```json")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a json block");
    let documented: serde_json::Value = serde_json::from_str(block).expect("the example is JSON");
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/smart-building/v1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        documented, shipped,
        "docs/model-format.md and examples/smart-building/v1.json differ"
    );
}

/// Every series the example Grafana dashboard queries is one the code exports:
/// names registered under the `continuum` prefix, or spelled out in full.
#[test]
fn the_grafana_dashboard_queries_only_exported_series() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut exported = std::collections::BTreeSet::new();
    for dir in ["orchestrator/src", "gateway-agent/src", "function-host/src"] {
        for entry in walkdir::WalkDir::new(root.join(dir)) {
            let entry = entry.unwrap();
            if entry.path().extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let prefixed = text.contains("with_prefix(\"continuum\")");
            // `register(\n "name"` under a prefix; `"continuum_..."` literally.
            for (i, _) in text.match_indices('"') {
                let rest = &text[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let word = &rest[..end];
                if !word.chars().all(|c| c.is_ascii_lowercase() || c == '_') || word.is_empty() {
                    continue;
                }
                let before = text[..i].trim_end();
                if word.starts_with("continuum_") {
                    exported.insert(word.to_owned());
                } else if prefixed
                    && (before.ends_with("register(") || before.ends_with("register(\n"))
                {
                    exported.insert(format!("continuum_{word}"));
                }
            }
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/grafana/continuum.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("continuum_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let base = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(base),
                    "panel `{}` queries `{name}`, which nothing exports (exported: {exported:?})",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried > 10, "{queried}");
}
