//! The dashboard in a real browser (headless Chromium over DevTools), against
//! a served orchestrator and a gateway agent running real processes; and the
//! HTTP endpoints beside it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::browser::{http, http_get, Browser};
use common::{free_port, process_gateway, unique, Guard, Reap, Serve, WITHIN};

/// Where a test's screenshots go (kept after the run).
fn output(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("dashboard")
        .join(name)
}

/// A megamodel of one subsystem with its gateway and `services` (id, name,
/// shell script), each hosted on the gateway; the scripts carry `marker` so
/// a failed test's processes can be found and ended.
fn model(
    dir: &Path,
    file: &str,
    subsystem: &str,
    gateway: &str,
    marker: &str,
    services: &[(&str, &str, &str)],
) -> String {
    let mut components = vec![serde_json::json!({"id": gateway, "kind": "gateway"})];
    let mut links = Vec::new();
    for (id, name, script) in services {
        components.push(serde_json::json!({
            "id": id, "name": name, "kind": "service",
            "resources": {"container": {"image": "none",
                "command": ["sh", "-c", format!("{script} # {marker}")]}}
        }));
        links.push(serde_json::json!({"kind": "hosting", "component": id, "host": gateway}));
    }
    let mm = serde_json::json!({"name": "dashboard-test", "subsystems": [{
        "id": subsystem, "components": components, "links": links}]});
    let path = dir.join(file);
    std::fs::write(&path, mm.to_string()).unwrap();
    path.display().to_string()
}

const LONG: &str = "trap 'exit 0' TERM; sleep 3600 & wait";
const EVIL: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

/// The class of the graph node of `component`, as a JavaScript expression.
fn node_class(component: &str) -> String {
    format!(
        "(document.querySelector('#graph [data-component=\"{component}\"]') || {{getAttribute: () => ''}}).getAttribute('class')"
    )
}

#[test]
fn the_dashboard_follows_a_rollout_live_in_a_real_browser() {
    let Some(mut browser) = Browser::launch() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subsystem = unique("dash");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("dashmark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&dir.path().join("orchestrator"), &listen);
    let mut agent = Guard(
        process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let v1 = model(
        dir.path(),
        "v1.json",
        &subsystem,
        &gateway,
        &marker,
        &[("worker", EVIL, LONG), ("ticker", "ticker", LONG)],
    );
    common::ok(s.cli(&["apply", "-f", &v1, "-m", "first", "--wait", "60s"]));

    browser.open(&format!("http://{listen}/"));
    browser.wait_for(
        "the worker running",
        &format!("{}.includes('s-running')", node_class("worker")),
        WITHIN,
    );
    browser.wait_for(
        "the gateway online",
        &format!("document.querySelector('#gateways [data-gateway=\"{gateway}\"]').textContent.includes('online')"),
        WITHIN,
    );
    // The hostile name is text on the page: no element, script or dialog came of it.
    let shown = browser.eval(
        "document.querySelector('#graph [data-component=\"worker\"] title').textContent + '|' + document.querySelector('#graph [data-component=\"worker\"] text').textContent"
    );
    assert!(
        shown.as_str().unwrap().contains("<script>alert(1)"),
        "{shown}"
    );
    assert_eq!(browser.eval("document.scripts.length"), 1);
    assert_eq!(browser.eval("document.querySelectorAll('img').length"), 0);

    // A change: the worker's command changes, a broken service is added.
    let v2 = model(
        dir.path(),
        "v2.json",
        &subsystem,
        &gateway,
        &marker,
        &[
            ("worker", EVIL, "trap 'exit 0' TERM; sleep 3601 & wait"),
            ("ticker", "ticker", LONG),
            ("broken", "broken", "echo no-such-config >&2; exit 3"),
        ],
    );
    common::ok(s.cli(&["apply", "-f", &v2, "-m", "second"]));
    browser.wait_for(
        "revision 2 as the head",
        "document.getElementById('head').textContent === 'revision 2'",
        WITHIN,
    );
    let title = browser.wait_for(
        "the broken service failed with its reason",
        "(() => { const n = document.querySelector('#graph [data-component=\"broken\"]'); return n && n.getAttribute('class').includes('s-failed') && n.querySelector('title').textContent; })()",
        WITHIN,
    );
    assert!(
        title.as_str().unwrap().contains("no-such-config"),
        "{title}"
    );
    browser.wait_for(
        "the live diff naming the service that does not run",
        "document.getElementById('live-diff').textContent.includes('+ broken')",
        WITHIN,
    );
    browser.wait_for(
        "the subsystem failed, with the reason in red",
        &format!("(() => {{ const c = document.querySelector('#subsystems [data-subsystem=\"{subsystem}\"]'); return c && c.querySelector('.p-failed') && c.querySelector('.failures').textContent.includes('no-such-config'); }})()"),
        WITHIN,
    );
    browser.wait_for(
        "the rollout's steps",
        &format!("document.querySelector('#subsystems [data-subsystem=\"{subsystem}\"] .steps').textContent.includes('broken')"),
        WITHIN,
    );
    // Clicking a node says why it failed.
    browser.eval("document.querySelector('#graph [data-component=\"broken\"]').dispatchEvent(new MouseEvent('click', {bubbles: true}))");
    browser.wait_for(
        "the failure's reason in the details",
        "!document.getElementById('details').hidden && document.getElementById('details').textContent.includes('no-such-config')",
        WITHIN,
    );
    browser.screenshot(&output("rollout.png"));

    // The history's diff between revisions 1 and 2, field by field.
    browser.wait_for(
        "revision 2 in the history",
        "!!document.querySelector('#history [data-revision=\"2\"]')",
        WITHIN,
    );
    browser.click("#history [data-revision=\"2\"] button:last-of-type");
    browser.wait_for(
        "the revisions' diff with the changed command",
        "(() => { const t = document.getElementById('revision-diff').textContent; return t.includes('~ worker') && t.includes('3601') && t.includes('+ broken'); })()",
        WITHIN,
    );

    // Rolling back to a revision that does not exist: the page says why.
    browser.eval("document.getElementById('rollback-to').value = '99'");
    browser.click("#rollback-typed");
    browser.click("#confirm-ok");
    let refused = browser.wait_for(
        "the refusal",
        "!document.getElementById('confirm-error').hidden && document.getElementById('confirm-error').textContent",
        WITHIN,
    );
    assert!(refused.as_str().unwrap().contains("99"), "{refused}");
    browser.click("#confirm-cancel");
    // Rolling back to revision 1, confirmed: revision 3 restores it.
    browser.click("#history [data-revision=\"1\"] button");
    assert!(browser
        .eval("document.getElementById('confirm-text').textContent")
        .as_str()
        .unwrap()
        .contains("revision 1"));
    browser.click("#confirm-ok");
    browser.wait_for(
        "revision 3 as the head",
        "document.getElementById('head').textContent === 'revision 3'",
        WITHIN,
    );
    browser.wait_for(
        "the broken service gone and the live diff empty",
        "!document.querySelector('#graph [data-component=\"broken\"]') && document.getElementById('live-diff').textContent.includes('Nothing to do')",
        WITHIN,
    );
    let history = common::json(s.cli(&["history", "-o", "json"]));
    assert_eq!(history["revisions"][0]["restores"], 1, "{history}");

    // The gateway dies: the page shows it offline.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    browser.wait_for(
        "the gateway offline",
        &format!("document.querySelector('#gateways [data-gateway=\"{gateway}\"]').textContent.includes('offline')"),
        WITHIN,
    );
    browser.wait_for(
        "the worker offline",
        &format!("{}.includes('s-offline')", node_class("worker")),
        WITHIN,
    );
    browser.screenshot(&output("offline.png"));
    assert!(browser.dialogs.is_empty(), "dialogs: {:?}", browser.dialogs);
    assert!(
        browser.errors.is_empty(),
        "page errors: {:?}",
        browser.errors
    );
}

#[test]
fn http_endpoints_answer_and_a_resume_from_forgotten_events_is_told() {
    let Some(mut browser) = Browser::launch() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("orchestrator");
    let listen = free_port();
    let flags = ["--no-mqtt", "--listen", &listen, "--event-retention", "4"];
    let s = Serve::start_with(&data, &flags);

    assert_eq!(http_get(&listen, "/healthz", &[]).0, 200);
    let (code, body) = http_get(&listen, "/readyz", &[]);
    assert_eq!((code, body.trim()), (200, "ready: store open"));
    let (code, body) = http_get(&listen, "/no/such/page", &[]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = http_get(&listen, "/api/nothing", &[]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no API /api/nothing"), "{body}");
    let (code, body) = http(
        &listen,
        "POST",
        "/api/rollback",
        &[("Content-Type", "text/plain")],
        "to=1",
    );
    assert_eq!(code, 415, "{body}");
    let (code, body) = http(
        &listen,
        "POST",
        "/api/rollback",
        &[("Content-Type", "application/json")],
        r#"{"to": 5}"#,
    );
    assert_eq!(code, 404, "{body}");

    // Enough revisions that the first events are no longer kept.
    for n in 0..8 {
        let path = dir.path().join(format!("m{n}.json"));
        let mm = serde_json::json!({"name": "events", "subsystems": [{"id": "plain", "components": [
            {"id": "plain-gw", "kind": "gateway"},
            {"id": format!("svc-{n}"), "kind": "service", "resources": {"container": {"image": "x"}}}],
            "links": [{"kind": "hosting", "component": format!("svc-{n}"), "host": "plain-gw"}]}]});
        std::fs::write(&path, mm.to_string()).unwrap();
        common::ok(s.cli(&["apply", "-f", path.to_str().unwrap()]));
    }
    let (code, body) = http_get(&listen, "/metrics", &[]);
    assert_eq!(code, 200);
    for line in [
        "continuum_applies_total{outcome=\"accepted\"} 8",
        "continuum_head_revision 8",
        "continuum_apply_duration_seconds_count 8",
        "continuum_rollbacks_total{outcome=\"refused\"} 1",
        // Its embedded global bus skipped nothing for a lagging subscriber.
        "continuum_bus_skipped_total 0",
    ] {
        assert!(body.contains(line), "no `{line}` in\n{body}");
    }
    let (code, body) = http_get(&listen, "/api/events?after=1", &[]);
    assert_eq!(code, 410, "{body}");
    assert!(body.contains("no longer kept"), "{body}");

    // A page that last saw event 1 reconnects after the server restarts: it
    // is told events were missed and shows the full state again.
    browser.open(&format!("http://{listen}/"));
    browser.wait_for(
        "the head revision",
        "document.getElementById('head').textContent === 'revision 8'",
        WITHIN,
    );
    browser.wait_for(
        "the live stream",
        "document.getElementById('live').textContent === 'live'",
        WITHIN,
    );
    browser.eval("window.continuum.lastSeq = 1");
    let _ = s.terminate();
    let _s = Serve::start_with(&data, &flags);
    browser.wait_for(
        "the gap said",
        "!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('missed')",
        WITHIN,
    );
    browser.wait_for(
        "the live stream again",
        "document.getElementById('live').textContent === 'live'",
        WITHIN,
    );
    assert!(
        browser.errors.is_empty(),
        "page errors: {:?}",
        browser.errors
    );
}

#[test]
fn the_http_api_takes_the_same_tokens_and_roles_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    let token = |subject: &str, role: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["token", subject, "--role", role, "--tokens"])
            .arg(&tokens)
            .output()
            .unwrap();
        common::ok(o).trim().to_owned()
    };
    let reader = token("watcher", "read");
    let applier = token("operator", "apply");
    let listen = free_port();
    let _s = Serve::start_with(
        &dir.path().join("orchestrator"),
        &[
            "--no-mqtt",
            "--listen",
            &listen,
            "--tokens",
            tokens.to_str().unwrap(),
        ],
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let (code, body) = http_get(&listen, "/api/status", &[]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs a token"), "{body}");
    assert_eq!(http_get(&listen, "/metrics", &[]).0, 401);
    let (code, body) = http_get(
        &listen,
        "/api/status",
        &[("Authorization", "Bearer nonsense")],
    );
    assert_eq!(code, 401, "{body}");
    let read = bearer(&reader);
    assert_eq!(
        http_get(&listen, "/api/status", &[("Authorization", &read)]).0,
        200
    );
    assert_eq!(
        http_get(&listen, "/metrics", &[("Authorization", &read)]).0,
        200
    );
    // The page and health checks need none.
    assert_eq!(http_get(&listen, "/", &[]).0, 200);
    assert_eq!(http_get(&listen, "/healthz", &[]).0, 200);
    let json = [("Content-Type", "application/json")];
    let (code, body) = http(
        &listen,
        "POST",
        "/api/rollback",
        &[json[0], ("Authorization", &read)],
        r#"{"to": 1}"#,
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("needs the role apply"), "{body}");
    // An apply token may: the refusal is now about the revision.
    let apply = bearer(&applier);
    let (code, body) = http(
        &listen,
        "POST",
        "/api/rollback",
        &[json[0], ("Authorization", &apply)],
        r#"{"to": 1}"#,
    );
    assert_eq!(code, 404, "{body}");
    // Another site's page cannot roll back, whatever it holds.
    let (code, body) = http(
        &listen,
        "POST",
        "/api/rollback",
        &[
            json[0],
            ("Authorization", &apply),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        r#"{"to": 1}"#,
    );
    assert_eq!(code, 403, "{body}");
}

#[test]
fn a_failure_the_gateway_rolled_back_is_shown_apart() {
    let Some(mut browser) = Browser::launch() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let subsystem = unique("dashrb");
    let gateway = format!("{subsystem}-gw");
    let marker = unique("dashrbmark");
    let _reap = Reap(marker.clone());
    let listen = free_port();
    let s = Serve::start_on(&dir.path().join("orchestrator"), &listen);
    let _agent = Guard(
        process_gateway(&gateway, &listen, &dir.path().join("agent"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The subsystem rolls a failed generation back.
    let with_rollback = |path: String| {
        let mut mm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        mm["subsystems"][0]["on_failure"] = "rollback".into();
        std::fs::write(&path, mm.to_string()).unwrap();
        path
    };
    let v1 = with_rollback(model(
        dir.path(),
        "v1.json",
        &subsystem,
        &gateway,
        &marker,
        &[("worker", "worker", LONG)],
    ));
    common::ok(s.cli(&["apply", "-f", &v1, "--wait", "60s"]));
    let v2 = with_rollback(model(
        dir.path(),
        "v2.json",
        &subsystem,
        &gateway,
        &marker,
        &[("worker", "worker", LONG), ("broken", "broken", "exit 3")],
    ));
    common::ok(s.cli(&["apply", "-f", &v2]));
    browser.open(&format!("http://{listen}/"));
    let title = browser.wait_for(
        "the broken service shown rolled back",
        "(() => { const n = document.querySelector('#graph [data-component=\"broken\"]'); return n && n.getAttribute('class').includes('s-rolled-back') && n.querySelector('title').textContent; })()",
        WITHIN,
    );
    assert!(
        title
            .as_str()
            .unwrap()
            .contains("rolled back to generation 1"),
        "{title}"
    );
    browser.wait_for(
        "the worker still running",
        &format!("{}.includes('s-running')", node_class("worker")),
        WITHIN,
    );
    assert!(
        browser.errors.is_empty(),
        "page errors: {:?}",
        browser.errors
    );
}
