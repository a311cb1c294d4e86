//! Functions end to end on the real Docker engine: an orchestrator with its
//! embedded global bus, a gateway agent with its local broker and bridge, both
//! as processes; a function built from the shell template into an image FROM
//! scratch, driven by messages on the global bus. Each test has its own
//! subsystem, gateway and function names, and removes its containers and
//! images even when it fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::browser::http_get;
use common::{
    docker_ready, function_gateway as agent, function_host, metric, ok, orchestrator, unique,
    Guard, Serve,
};
use continuum_bus::testing::{eventually, within, Probe, Received};
use continuum_bus::BrokerUrl;

const CONVERGE: Duration = Duration::from_secs(120);

/// One test's world: processes, names, files, and the Docker objects to
/// remove at the end.
struct World {
    dir: tempfile::TempDir,
    subsystem: String,
    gateway: String,
    serve: Option<Serve>,
    agent: Option<Guard>,
    global: BrokerUrl,
    local: BrokerUrl,
    /// The agent's `--metrics-listen` address.
    metrics: String,
    functions: Vec<String>,
}

impl World {
    fn start(host: &Path) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (serve, global) = orchestrator(dir.path());
        let gateway = unique("gw");
        let (agent, local, metrics) = agent(dir.path(), &serve, &gateway, "docker", host);
        World {
            dir,
            subsystem: unique("s"),
            gateway,
            serve: Some(serve),
            agent: Some(agent),
            global,
            local,
            metrics,
            functions: Vec::new(),
        }
    }

    /// Writes a function's source: a shell handler that prefixes what it
    /// reads with `tag`, fails on messages starting with `fail` and hangs on
    /// those starting with `hang`.
    fn source(&self, name: &str, tag: &str) -> PathBuf {
        let src = self.dir.path().join(name);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("handler"),
            format!(
                "m=$(cat)\ncase \"$m\" in fail*) echo \"refused: $m\" >&2; exit 2;; hang*) sleep 300;; esac\nprintf '%s:%s' '{tag}' \"$m\"\n"
            ),
        )
        .unwrap();
        src
    }

    /// A megamodel of one subsystem: the gateway and the `functions` (id,
    /// trigger, source) on it, run by the shell template.
    fn model(&mut self, name: &str, functions: &[(&str, &str, &Path)]) -> String {
        self.model_with(name, "shell-function", functions)
    }

    /// The same with the runtime template `template` of examples/templates.
    fn model_with(
        &mut self,
        name: &str,
        template: &str,
        functions: &[(&str, &str, &Path)],
    ) -> String {
        let template = format!(
            "{}/examples/templates/{template}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut components = vec![serde_json::json!({
            "id": self.gateway, "kind": "gateway", "equipped_with_bridge": true
        })];
        let mut links = Vec::new();
        for (id, trigger, src) in functions {
            if !self.functions.iter().any(|f| f == id) {
                self.functions.push((*id).to_owned());
            }
            components.push(serde_json::json!({
                "id": id, "kind": "function",
                "triggers": [trigger], "outputs": ["result"],
                "runtime": template, "src": src.display().to_string(),
                "invocation": {"timeout": "2s", "retries": 1, "retry_backoff": "100ms"}
            }));
            links.push(
                serde_json::json!({"kind": "hosting", "component": id, "host": self.gateway}),
            );
        }
        let mm = serde_json::json!({
            "name": "functions",
            "subsystems": [{"id": self.subsystem, "components": components, "links": links}]
        });
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&mm).unwrap()).unwrap();
        path.display().to_string()
    }

    /// Waits until the agent's metrics count `want` for function `function`:
    /// (series, value) pairs, the series without its labels.
    async fn function_counts(&self, function: &str, want: &[(&str, &str, f64)]) {
        let addr = self.metrics.clone();
        let want: Vec<(String, f64)> = want
            .iter()
            .map(|(series, outcome, n)| {
                let outcome = if outcome.is_empty() {
                    String::new()
                } else {
                    format!(",outcome=\"{outcome}\"")
                };
                (format!("{series}{{function=\"{function}\"{outcome}}}"), *n)
            })
            .collect();
        let mut last = String::new();
        let counted = tokio::time::timeout(CONVERGE, async {
            loop {
                let (code, text) = tokio::task::spawn_blocking({
                    let addr = addr.clone();
                    move || http_get(&addr, "/metrics", &[])
                })
                .await
                .unwrap();
                if code == 200 && want.iter().all(|(s, n)| metric(&text, s) == Some(*n)) {
                    return;
                }
                last = text;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(
            counted.is_ok(),
            "the agent's metrics never counted {want:?}:\n{}",
            last.lines()
                .filter(|l| l.starts_with("continuum_function_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn serve(&self) -> &Serve {
        self.serve.as_ref().expect("the orchestrator")
    }

    /// `continuum apply --wait`, which must converge.
    fn apply(&self, model: &str) {
        let out = ok(self.serve().cli(&["apply", "-f", model, "--wait", "120s"]));
        assert!(out.contains("converged"), "{out}\n{}", self.agent_log());
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.gateway)))
            .unwrap_or_default()
    }

    /// The container of `function`: its id, or none.
    fn container(&self, function: &str) -> Option<String> {
        let o = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=continuum.subsystem={}", self.subsystem))
            .arg("--filter")
            .arg(format!("label=continuum.component={function}"))
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        (!id.is_empty()).then_some(id)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The agent first, or it would recreate what is removed.
        drop(self.agent.take());
        drop(self.serve.take());
        common::remove_docker_objects(&self.subsystem, &self.functions);
    }
}

async fn publish(p: &Probe, topic: &str, payload: &str, corr: &str) {
    p.publish_with(topic, payload, &[("corr", corr)]).await;
}

/// Publishes `payload` on `trigger` (with correlation `corr`) until a reply
/// carrying `corr` reaches `topic` on `watch`: the bridge's subscription may
/// be a moment behind the convergence report.
async fn reply(
    client: &Probe,
    watch: &Probe,
    trigger: &str,
    topic: &str,
    payload: &str,
    corr: &str,
) -> Received {
    let mut sent = 0;
    eventually(
        &format!("a reply on {topic} to `{payload}`"),
        within(CONVERGE),
        || {
            if sent % 20 == 0 {
                let (c, t, p, k) = (
                    client.clone(),
                    trigger.to_owned(),
                    payload.to_owned(),
                    corr.to_owned(),
                );
                tokio::spawn(async move { publish(&c, &t, &p, &k).await });
            }
            sent += 1;
            watch
                .received_on(topic)
                .into_iter()
                .find(|r| r.property("corr") == Some(corr))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_runs_in_its_container_between_global_topics_and_a_change_redeploys_it_alone() {
    let (Some(host), true) = (function_host(), docker_ready()) else {
        return;
    };
    let mut w = World::start(&host);
    let (a, b) = (unique("fa"), unique("fb"));
    let (ta, tb) = (format!("/sensors/{a}/x"), format!("/sensors/{b}/x"));
    let (src_a, src_b) = (w.source("a1", "a1"), w.source("b1", "b1"));
    let v1 = w.model("v1.json", &[(&a, &ta, &src_a), (&b, &tb, &src_b)]);
    w.apply(&v1);
    // The sources and the template's context travelled as blobs: the target
    // is pinned to them, and the agent (in a directory of its own, without
    // --context-root) fetched them.
    let target = ok(w.serve().cli(&["get"]));
    assert!(target.contains("@sha256:"), "{target}");
    assert!(w.agent_log().contains("blob fetched"), "{}", w.agent_log());
    // Its lifecycle shows in the status: the source it runs and its triggers.
    let status = ok(w.serve().cli(&["status", "-o", "json"]));
    assert!(
        status.contains(&format!("triggers {ta} → /{a}/in/x")) && status.contains("source sha256:"),
        "{status}"
    );

    let watch = Probe::connect(&w.global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/#").await;
    let local = Probe::connect(&w.local, &unique("local"), false);
    local.connected(within(Duration::from_secs(10))).await;
    local.subscribe("/+/dlq").await;
    let client = Probe::connect(&w.global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;

    // A message on the trigger runs the function in its container; the reply
    // reaches the global bus with the message's properties and an id.
    let r = reply(
        &client,
        &watch,
        &ta,
        &format!("/{a}/out/result"),
        "hello",
        "c1",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "a1:hello");
    assert!(r.id.is_some(), "the reply carries an id: {r:?}");
    assert!(r.property("continuum-cause").is_some(), "{r:?}");

    // A handler that fails is retried, then its message is dead-lettered.
    publish(&client, &ta, "fail now", "c2").await;
    let letter = eventually("a dead letter", within(CONVERGE), || {
        local
            .received_on(&format!("/{a}/dlq"))
            .into_iter()
            .find(|r| r.property("corr") == Some("c2"))
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&letter.payload), "fail now");
    // The model's invocation settings: one retry.
    assert_eq!(letter.property("continuum-dlq-attempts"), Some("2"));
    let reason = letter.property("continuum-dlq-reason").unwrap();
    assert!(reason.contains("refused: fail now"), "{reason}");

    // A handler that hangs is killed at the function's timeout (2 s), tried
    // once more, then dead-lettered; the function goes on answering.
    publish(&client, &ta, "hang on", "c2h").await;
    let letter = eventually(
        "a dead letter for the hanging run",
        within(CONVERGE),
        || {
            local
                .received_on(&format!("/{a}/dlq"))
                .into_iter()
                .find(|r| r.property("corr") == Some("c2h"))
        },
    )
    .await;
    let reason = letter.property("continuum-dlq-reason").unwrap();
    assert!(reason.contains("longer than its timeout of 2s"), "{reason}");
    assert_eq!(letter.property("continuum-dlq-attempts"), Some("2"));

    // The gateway agent counts what the function's host counted: one run
    // answered, two failed and two timed out (each message tried twice).
    let runs = "continuum_function_invocations_total";
    w.function_counts(
        &a,
        &[
            (runs, "ok", 1.0),
            (runs, "error", 2.0),
            (runs, "timeout", 2.0),
            ("continuum_function_retries_total", "", 2.0),
            ("continuum_function_dead_letters_total", "", 2.0),
        ],
    )
    .await;
    w.function_counts(&b, &[(runs, "ok", 0.0)]).await;

    // A new source for `a` only: `a` is rebuilt and recreated, `b` untouched.
    let (before_a, before_b) = (w.container(&a).unwrap(), w.container(&b).unwrap());
    let src_a2 = w.source("a2", "a2");
    let v2 = w.model("v2.json", &[(&a, &ta, &src_a2), (&b, &tb, &src_b)]);
    w.apply(&v2);
    assert_ne!(
        w.container(&a).unwrap(),
        before_a,
        "a changed source redeploys"
    );
    assert_eq!(
        w.container(&b).unwrap(),
        before_b,
        "the other function is left alone"
    );
    let r = reply(
        &client,
        &watch,
        &ta,
        &format!("/{a}/out/result"),
        "again",
        "c3",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "a2:again");
    // The new container's host counts from zero; the agent's counter goes on.
    w.function_counts(&a, &[(runs, "ok", 2.0), (runs, "error", 2.0)])
        .await;

    // Removing `b` removes its container and its subscription.
    let v3 = w.model("v3.json", &[(&a, &ta, &src_a2)]);
    w.apply(&v3);
    assert_eq!(
        w.container(&b),
        None,
        "no container left for a removed function"
    );
    let status = ok(w.serve().cli(&["get", "--current"]));
    assert!(
        !status.contains(&tb),
        "the removed function's trigger is still routed: {status}"
    );
    publish(&client, &tb, "anyone?", "c4").await;
    // The other function still answers, so the bridge is alive; `b` did not.
    reply(
        &client,
        &watch,
        &ta,
        &format!("/{a}/out/result"),
        "still",
        "c5",
    )
    .await;
    assert!(watch
        .received_on(&format!("/{b}/out/result"))
        .iter()
        .all(|r| r.property("corr") != Some("c4")));
}

/// A handler in C, built static: upper-cases what it reads.
const UPPER_C: &str = r#"
#include <ctype.h>
#include <stdio.h>
int main(void) {
    int c;
    while ((c = getchar()) != EOF) putchar(toupper(c));
    return 0;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_executable_runs_as_a_function_in_an_image_from_scratch() {
    let (Some(host), true) = (function_host(), docker_ready()) else {
        return;
    };
    let mut w = World::start(&host);
    let src = w.dir.path().join("upper");
    std::fs::create_dir_all(&src).unwrap();
    let c = w.dir.path().join("upper.c");
    std::fs::write(&c, UPPER_C).unwrap();
    // The machine's C compiler (Rust links with it) and its static libc.
    let built = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(src.join("handler"))
        .arg(&c)
        .output()
        .expect("runs cc");
    assert!(
        built.status.success(),
        "cc -static: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let f = unique("fbin");
    let trigger = format!("/sensors/{f}/x");
    let model = w.model_with("bin.json", "binary-function", &[(&f, &trigger, &src)]);
    w.apply(&model);
    let watch = Probe::connect(&w.global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/#").await;
    let client = Probe::connect(&w.global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;
    let r = reply(
        &client,
        &watch,
        &trigger,
        &format!("/{f}/out/result"),
        "quiet please",
        "b1",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "QUIET PLEASE");
    // Nothing but the host and the function's src is in its image: no shell.
    let container = w.container(&f).expect("its container");
    let shell = Command::new("docker")
        .args(["exec", &container, "/bin/sh", "-c", "true"])
        .output()
        .unwrap();
    assert!(!shell.status.success(), "the image has a shell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_puts_a_function_on_the_only_matching_gateway_of_three() {
    let Some(host) = function_host() else {
        return;
    };
    let tag = unique("p");
    let gw = |n: &str| format!("{tag}-{n}");
    let w = ProcessWorld::start(&host, &[gw("a"), gw("b"), gw("c")]);
    let (dir, serve) = (&w.dir, &w.serve);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), "printf 'lab:%s' \"$(cat)\"\n").unwrap();
    let f = unique("fp");
    let trigger = format!("/{f}/trigger");
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/templates/shell-function.json"
    );
    let gateway = |n: &str, location: &str, bridge: bool| {
        serde_json::json!({"id": gw(n), "components": [{"id": gw(n), "kind": "gateway",
            "equipped_with_bridge": bridge, "capabilities": {"cpus": 4, "labels": {"location": location}}}]})
    };
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "placed",
            "subsystems": [gateway("a", "hall", true), gateway("b", "lab", true), gateway("c", "lab", false)],
            "components": [{"id": f, "kind": "function", "triggers": [trigger], "outputs": ["r"],
                "runtime": template, "src": src.display().to_string(), "context": {"location": "lab"}}]})
        .to_string(),
    )
    .unwrap();
    let explained = ok(serve.cli(&["explain", &f, "-f", model.to_str().unwrap()]));
    assert!(
        explained.contains(&format!("goes to gateway `{}`", gw("b"))),
        "{explained}"
    );
    let out = ok(serve.cli(&["apply", "-f", model.to_str().unwrap(), "--wait", "120s"]));
    assert!(out.contains("converged"), "{out}");
    // It runs where it was placed, and answers there.
    let target = ok(serve.cli(&["get", "--subsystem", &gw("b")]));
    assert!(target.contains(&format!("\"{f}\"")), "{target}");
    let watch = Probe::connect(&w.global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/#").await;
    let client = Probe::connect(&w.global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;
    let r = reply(
        &client,
        &watch,
        &trigger,
        &format!("/{f}/out/r"),
        "hi",
        "c1",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "lab:hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_placed_by_load_split_one_workload_through_a_shared_trigger() {
    let Some(host) = function_host() else {
        return;
    };
    let tag = unique("sh");
    let gw = |n: usize| format!("{tag}-g{n}");
    let w = ProcessWorld::start(&host, &[gw(1), gw(2), gw(3)]);
    let (dir, serve) = (&w.dir, &w.serve);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("handler"),
        "printf '%s:%s' \"$CONTINUUM_FUNCTION\" \"$(cat)\"\n",
    )
    .unwrap();
    let template = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/templates/shell-function.json"
    );
    let jobs = format!("{tag}/jobs");
    let trigger = format!("$share/{tag}/{jobs}/+");
    let f = |n: usize| format!("{tag}-w{n}");
    let functions: Vec<serde_json::Value> = (1..=3)
        .map(|n| {
            serde_json::json!({"id": f(n), "kind": "function", "triggers": [trigger], "inputs": ["job"],
                "outputs": ["done"], "runtime": template, "src": src.display().to_string()})
        })
        .collect();
    let gateways: Vec<serde_json::Value> = (1..=3)
        .map(|n| {
            serde_json::json!({"id": gw(n), "components": [{"id": gw(n), "kind": "gateway",
                "equipped_with_bridge": true, "capabilities": {"cpus": 2}}]})
        })
        .collect();
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "shared", "subsystems": gateways, "components": functions})
            .to_string(),
    )
    .unwrap();
    let out = ok(serve.cli(&["apply", "-f", model.to_str().unwrap(), "--wait", "120s"]));
    assert!(out.contains("converged"), "{out}");
    // The orchestrator knows every gateway's measured load once each has
    // heartbeated, and explain scores by it.
    let f1 = f(1);
    eventually("measured loads", within(CONVERGE), || {
        let out = ok(serve.cli(&["explain", &f1, "-f", model.to_str().unwrap()]));
        out.contains(" CPU ").then_some(())
    })
    .await;
    // Placement by load: one function on each gateway.
    for n in 1..=3 {
        let target = ok(serve.cli(&["get", "--subsystem", &gw(n)]));
        let here: Vec<usize> = (1..=3)
            .filter(|k| target.contains(&format!("\"{}\"", f(*k))))
            .collect();
        assert_eq!(here.len(), 1, "gateway {n} holds {here:?}: {target}");
    }
    let watch = Probe::connect(&w.global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/done").await;
    let client = Probe::connect(&w.global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;
    // Until every replica answers, a bridge may not have subscribed yet.
    let replied = |w: &Probe| -> BTreeSet<String> {
        w.received()
            .iter()
            .map(|r| r.topic.clone())
            .collect::<BTreeSet<_>>()
    };
    let mut k = 0;
    eventually("every replica answering", within(CONVERGE), || {
        k += 1;
        let c = client.clone();
        let topic = format!("{jobs}/warm");
        tokio::spawn(async move { c.publish_with(&topic, "warm", &[]).await });
        (replied(&watch).len() == 3).then_some(())
    })
    .await;
    watch.clear();
    // Then a workload: every job is handled once in all, by all three.
    const JOBS: usize = 60;
    for n in 0..JOBS {
        client
            .publish_with(&format!("{jobs}/{n}"), &format!("job{n}"), &[])
            .await;
    }
    // (A warm-up message may still be answered now: they are left out.)
    let answers = || -> Vec<(String, String)> {
        watch
            .received()
            .iter()
            .filter_map(|r| {
                let text = String::from_utf8_lossy(&r.payload).into_owned();
                let (who, job) = text.split_once(':')?;
                job.starts_with("job")
                    .then(|| (who.to_owned(), job.to_owned()))
            })
            .collect()
    };
    let got = eventually("every job answered", within(CONVERGE), || {
        let got = answers();
        (got.len() >= JOBS).then_some(got)
    })
    .await;
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (who, job) in got {
        by_job.entry(job).or_default().push(who);
    }
    assert_eq!(by_job.len(), JOBS, "{by_job:?}");
    assert!(
        by_job.values().all(|who| who.len() == 1),
        "a job was handled twice: {by_job:?}"
    );
    let workers: BTreeSet<&String> = by_job.values().flatten().collect();
    assert_eq!(workers.len(), 3, "not every replica worked: {by_job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_function_moves_off_a_gateway_gone_past_the_grace_period() {
    let Some(host) = function_host() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _reap = common::Reap(dir.path().display().to_string());
    let (serve, global) = common::orchestrator_with(dir.path(), &["--placement-grace", "2s"]);
    let tag = unique("mv");
    let (a, b) = (format!("{tag}-a"), format!("{tag}-b"));
    // Only `a` runs at first.
    let mut gw_a = Some(agent(dir.path(), &serve, &a, "process", &host).0);
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("handler"), "printf 'moved:%s' \"$(cat)\"\n").unwrap();
    let f = format!("{tag}-f");
    let trigger = format!("/{f}/go");
    let gateway = |id: &str, cpus: u32| {
        serde_json::json!({"id": id, "components": [{"id": id, "kind": "gateway",
            "equipped_with_bridge": true, "capabilities": {"cpus": cpus, "memory_mb": 512}}]})
    };
    let model = dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "moving", "subsystems": [gateway(&a, 2), gateway(&b, 2)],
            "components": [{"id": f, "kind": "function", "triggers": [trigger], "outputs": ["r"],
                "runtime": concat!(env!("CARGO_MANIFEST_DIR"), "/examples/templates/shell-function.json"),
                "src": src.display().to_string()}]})
        .to_string(),
    )
    .unwrap();
    // `b` has no measured load yet: both are scored by what they declare,
    // equally, and the first in the model wins.
    let explained = ok(serve.cli(&["explain", &f, "-f", model.to_str().unwrap()]));
    assert!(
        explained.contains(&format!("goes to gateway `{a}`")) && explained.contains("declared"),
        "{explained}"
    );
    // (`b` is not there yet: no waiting for every subsystem to converge.)
    let out = ok(serve.cli(&["apply", "-f", model.to_str().unwrap()]));
    assert!(out.contains("applied revision"), "{out}");
    let on = |g: &str| ok(serve.cli(&["get", "--subsystem", g])).contains(&format!("\"{f}\""));
    assert!(on(&a) && !on(&b), "placed on {a} first");
    let _gw_b = agent(dir.path(), &serve, &b, "process", &host).0;

    // `a` goes away: past the grace period its function is moved to `b`, in a
    // revision by continuum that says so, and answers there.
    drop(gw_a.take());
    eventually("the function moved to b", within(CONVERGE), || {
        on(&b).then_some(())
    })
    .await;
    assert!(!on(&a), "still placed on the gateway that went away");
    let history = ok(serve.cli(&["history"]));
    assert!(
        history.contains("continuum")
            && history.contains(&format!(
                "{a} away for more than 2s; moved function {f} to {b}"
            )),
        "{history}"
    );
    let watch = Probe::connect(&global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/#").await;
    let client = Probe::connect(&global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;
    let r = reply(
        &client,
        &watch,
        &trigger,
        &format!("/{f}/out/r"),
        "hi",
        "m1",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "moved:hi");
}

/// The orchestrator with its global bus and one process-driver gateway per
/// id, each with its own data directory.
struct ProcessWorld {
    dir: tempfile::TempDir,
    serve: Serve,
    global: BrokerUrl,
    _agents: Vec<Guard>,
    _reap: common::Reap,
}

impl ProcessWorld {
    fn start(host: &Path, gateways: &[String]) -> ProcessWorld {
        let dir = tempfile::tempdir().unwrap();
        let (serve, global) = orchestrator(dir.path());
        let agents = gateways
            .iter()
            .map(|id| agent(dir.path(), &serve, id, "process", host).0)
            .collect();
        let reap = common::Reap(dir.path().display().to_string());
        ProcessWorld {
            global,
            serve,
            _agents: agents,
            _reap: reap,
            dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_runs_under_the_process_driver_with_the_hosts_python() {
    let Some(host) = function_host() else {
        return;
    };
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3 on this host");
        return;
    }
    let gw = unique("py");
    let w = ProcessWorld::start(&host, std::slice::from_ref(&gw));
    let src = w.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("handler.py"),
        "import os, sys\nprint(os.environ['CONTINUUM_STREAM'] + ':' + sys.stdin.read().upper(), end='')\n",
    )
    .unwrap();
    let f = unique("fy");
    let trigger = format!("/{f}/readings");
    let model = w.dir.path().join("m.json");
    std::fs::write(
        &model,
        serde_json::json!({"name": "py", "subsystems": [{"id": gw, "components": [
            {"id": gw, "kind": "gateway", "equipped_with_bridge": true},
            {"id": f, "kind": "function", "triggers": [trigger], "outputs": ["r"],
             "runtime": concat!(env!("CARGO_MANIFEST_DIR"), "/examples/templates/python-function.json"),
             "src": src.display().to_string()}
        ], "links": [{"kind": "hosting", "component": f, "host": gw}]}]})
        .to_string(),
    )
    .unwrap();
    let out = ok(w
        .serve
        .cli(&["apply", "-f", model.to_str().unwrap(), "--wait", "120s"]));
    assert!(out.contains("converged"), "{out}");
    let watch = Probe::connect(&w.global, &unique("watch"), false);
    watch.connected(within(Duration::from_secs(10))).await;
    watch.subscribe("/+/out/#").await;
    let client = Probe::connect(&w.global, &unique("client"), false);
    client.connected(within(Duration::from_secs(10))).await;
    let r = reply(
        &client,
        &watch,
        &trigger,
        &format!("/{f}/out/r"),
        "hello",
        "c1",
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&r.payload), "readings:HELLO");
}

#[test]
fn the_python_template_builds_on_docker_where_a_python_image_is_present() {
    // Its form is checked everywhere: the context beside the template, a
    // Dockerfile built FROM the function host's image and the Python image.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/templates");
    let dockerfile = std::fs::read_to_string(format!("{root}/python-function/Dockerfile")).unwrap();
    for needed in [
        "ARG FUNCTION_HOST_IMAGE",
        "ARG PYTHON_IMAGE",
        "COPY --from=host",
        "COPY function/",
    ] {
        assert!(
            dockerfile.contains(needed),
            "the Dockerfile lacks `{needed}`"
        );
    }
    let t: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/python-function.json")).unwrap(),
    )
    .unwrap();
    let image = t["components"][0]["resources"]["container"]["build"]["args"]["PYTHON_IMAGE"]
        .as_str()
        .unwrap()
        .to_owned();
    // Run only where the engine has that image (nothing can be pulled here).
    let present = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("skipped: the Docker engine has no `{image}` image to build the Python form on");
        return;
    }
    let Some(host) = function_host() else {
        return;
    };
    let tag = unique("continuum/pytest:t");
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("function")).unwrap();
    std::fs::copy(
        format!("{root}/python-function/Dockerfile"),
        ctx.join("Dockerfile"),
    )
    .unwrap();
    std::fs::write(ctx.join("function/handler.py"), "print(input())\n").unwrap();
    let base = unique("continuum/pybase:t");
    std::fs::create_dir_all(dir.path().join("base/bin")).unwrap();
    std::fs::copy(&host, dir.path().join("base/bin/continuum-function-host")).unwrap();
    let imported = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | docker import - {base}",
            dir.path().join("base").display()
        ))
        .status()
        .unwrap();
    assert!(imported.success());
    let built = Command::new("docker")
        .args([
            "build",
            "-q",
            "-t",
            &tag,
            "--build-arg",
            &format!("FUNCTION_HOST_IMAGE={base}"),
        ])
        .arg(&ctx)
        .output()
        .unwrap();
    let _ = Command::new("docker")
        .args(["rmi", "-f", &tag, &base])
        .output();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}
