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
