//! The `continuum` binary: commands, outputs and exit codes (0 ok, 1 invalid or
//! failed, 2 usage).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example(p: &str) -> String {
    root().join("examples").join(p).display().to_string()
}

fn genesis(p: &str) -> String {
    root()
        .join("models/tests/fixtures/genesis")
        .join(p)
        .display()
        .to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("runs continuum")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally, not by a signal")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn validate_the_examples() {
    let o = run(&[
        "validate",
        &example("smart-building/v1.json"),
        &example("smart-building/v2.json"),
        &example("templates/shell-function.json"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("megamodel `smart-building`: 2 subsystems"),
        "{out}"
    );
    assert!(out.contains("template `shell-function`"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when not on a terminal");
}

#[test]
fn validate_reports_every_problem_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        r#"{
  "name": "bad",
  "subsystems": [{"id": "a", "components": [
    {"id": "gw", "kind": "gateway"},
    {"id": "f", "kind": "function", "triggers": ["x/#/y"], "resources": {"container": {"image": "i"}}, "colour": 1},
    {"id": "s", "kind": "service", "resources": {"container": {"image": "i"}}}
  ]}]
}"#,
    );
    let o = run(&["validate", &bad]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{bad}:5:50: at subsystems[0].components[1].triggers[0]: invalid MQTT topic filter"
        )),
        "{err}"
    );
    assert!(
        err.contains("at subsystems[0].components[1].colour: unknown field `colour`"),
        "{err}"
    );
    assert!(
        err.contains("at subsystems[0].components[2]: service `s` is hosted nowhere"),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");
    assert!(stdout(&o).contains("invalid"));

    let o = run(&[
        "validate",
        "-o",
        "json",
        &bad,
        &example("smart-building/v1.json"),
    ]);
    assert_eq!(code(&o), 1);
    let reports: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(reports[0]["valid"], false);
    assert_eq!(reports[0]["diagnostics"].as_array().unwrap().len(), 3);
    assert_eq!(
        reports[0]["diagnostics"][0]["path"],
        "subsystems[0].components[1].triggers[0]"
    );
    assert_eq!(reports[0]["diagnostics"][0]["line"], 5);
    assert_eq!(reports[1]["valid"], true);
    assert_eq!(reports[1]["kind"], "megamodel");
}

#[test]
fn validate_malformed_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(
        dir.path(),
        "broken.json",
        "{\"name\": \"x\",\n \"subsystems\": [\n",
    );
    let o = run(&["validate", &broken]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("malformed JSON"), "{}", stderr(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));

    let o = run(&[
        "validate",
        &dir.path().join("nope.json").display().to_string(),
    ]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("cannot read the file"),
        "{}",
        stderr(&o)
    );

    // A template with a problem is reported from the model that uses it.
    let t = write(
        dir.path(),
        "t.json",
        r#"{"template": "t", "components": [{"id": "r", "kind": "service"}]}"#,
    );
    let m = write(
        dir.path(),
        "m.json",
        r#"{"name": "m", "subsystems": [{"id": "a", "components": [
            {"id": "gw", "kind": "gateway"}, {"id": "f", "kind": "function", "runtime": "t.json"}]}]}"#,
    );
    let o = run(&["validate", &m]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("runtime template") && err.contains("is invalid"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{t}:")) && err.contains("the template has no placeholder"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["validate"],
        &["diff", "only-one.json"],
        &["diff", "--output", "xml", "a", "b"],
    ] {
        let o = run(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn diff_summary_json_and_text() {
    let (v1, v2) = (
        example("smart-building/v1.json"),
        example("smart-building/v2.json"),
    );
    let o = run(&["diff", &v1, &v2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("1 added, 0 removed, 4 changed (3 replaced, 1 updated in place)"),
        "{out}"
    );
    assert!(out.contains("+ service   occupancy-log"), "{out}");
    assert!(out.contains("/resources/flash/artefact"), "{out}");
    assert!(out.contains("uno  [sensors]  update in place"), "{out}");

    let o = run(&["diff", "-o", "json", &v1, &v2]);
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["diff"]["added"][0]["id"], "occupancy-log");
    assert_eq!(d["diff"]["changed"].as_array().unwrap().len(), 4);

    let o = run(&["diff", "--text", &v1, &v2]);
    let out = stdout(&o);
    assert!(
        out.contains("--- ") && out.contains("+++ ") && out.contains("@@"),
        "{out}"
    );
    assert!(
        out.contains("+          \"id\": \"occupancy-log\","),
        "{out}"
    );
    let o = run(&["diff", "--text", "--color", "always", &v1, &v2]);
    assert!(stdout(&o).contains("\x1b[32m+"), "coloured when asked");

    let o = run(&["diff", &v1, &v1]);
    assert!(stdout(&o).contains("no changes"));
}

#[test]
fn plan_lists_steps_by_phase() {
    let (v1, v2) = (
        example("smart-building/v1.json"),
        example("smart-building/v2.json"),
    );
    let o = run(&["plan", &v1, &v2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    let pos = |s: &str| out.find(s).unwrap_or_else(|| panic!("{s} in {out}"));
    let phases = [
        "\nstop:",
        "\nunbind:",
        "\nremove:",
        "\nadd:",
        "\nbind:",
        "\nupdate:",
        "\nstart:",
    ];
    for pair in phases.windows(2) {
        assert!(pos(pair[0]) < pos(pair[1]), "{pair:?} in {out}");
    }
    assert!(out.contains("start iot-flow   (after"), "{out}");

    let o = run(&["plan", "-o", "json", &v1, &v2]);
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = p["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 21);
    // v2 adds a trigger to the presence function: its bridge routes change.
    assert!(
        steps
            .iter()
            .any(|s| s["action"] == "route" && s["component"] == "presence"),
        "{p}"
    );
    assert_eq!(steps[0]["phase"], "stop");
    assert_eq!(steps.last().unwrap()["phase"], "start");

    // An invalid side fails the command and says why.
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.json",
        "{\"name\": \"x\", \"subsystems\": 3}",
    );
    let o = run(&["plan", &v1, &bad]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("at subsystems: invalid type"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn import_genesis_writes_a_valid_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("imported.json").display().to_string();
    let o = run(&[
        "import",
        "genesis",
        &genesis("every-type.json"),
        "--out",
        &out,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("imported") && err.contains("1 gateway"),
        "{err}"
    );
    assert!(err.contains("credentials dropped"), "{err}");
    assert!(
        err.contains("not mapped: at dm.components[24]._type"),
        "{err}"
    );
    let o = run(&["validate", &out]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // Never overwrite without --force.
    std::fs::write(&out, "keep me").unwrap();
    let o = run(&[
        "import",
        "genesis",
        &genesis("every-type.json"),
        "--out",
        &out,
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("pass --force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me");
    let o = run(&[
        "import",
        "genesis",
        &genesis("every-type.json"),
        "--out",
        &out,
        "--force",
    ]);
    assert_eq!(code(&o), 0);

    // Standard output when no --out.
    let o = run(&["import", "genesis", &genesis("every-type.json")]);
    let mm: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(mm["name"], "every-type");
}

#[test]
fn import_rejects_what_is_not_a_genesis_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.json");
    let o = run(&[
        "import",
        "genesis",
        &genesis("not-a-model.json"),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("not a GeneSIS deployment model"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "nothing written");
    let o = run(&["import", "genesis", &genesis("bad-references.json")]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("6 problems found"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn diff_and_plan_take_subsystem_models_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.json",
        r#"{"id": "lab", "components": [{"id": "gw", "kind": "gateway"},
            {"id": "s", "kind": "service", "resources": {"container": {"image": "s:1"}}}],
            "links": [{"kind": "hosting", "component": "s", "host": "gw"}]}"#,
    );
    let b = write(
        dir.path(),
        "b.json",
        r#"{"id": "lab", "components": [{"id": "gw", "kind": "gateway"},
            {"id": "s", "kind": "service", "resources": {"container": {"image": "s:2"}}}],
            "links": [{"kind": "hosting", "component": "s", "host": "gw"}]}"#,
    );
    let o = run(&["diff", &a, &b]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("/resources/container/image  \"s:1\" -> \"s:2\""),
        "{}",
        stdout(&o)
    );
    let o = run(&["plan", &a, &b]);
    let out = stdout(&o);
    assert!(out.contains("stop s") && out.contains("start s"), "{out}");
    // Two kinds of document cannot be compared.
    let o = run(&["diff", &a, &example("smart-building/v1.json")]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("compare two of a kind"),
        "{}",
        stderr(&o)
    );
    let o = run(&["plan", &example("templates/shell-function.json"), &a]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("a template cannot be compared"),
        "{}",
        stderr(&o)
    );
}
