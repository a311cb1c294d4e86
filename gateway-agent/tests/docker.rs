//! The reconcile engine on the real Docker engine. Images are built FROM
//! scratch with Debian's static busybox (nothing is pulled). Every test uses its
//! own subsystem and component names and removes what it created, even when it
//! fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use continuum_gateway::engine::{reconcile, EngineConfig, PassReport, State};
use continuum_gateway::runtime::docker::DockerRuntime;
use continuum_gateway::runtime::{ContainerRuntime, RunState, Workload};
use continuum_gateway::spec::{LABEL_COMPONENT, LABEL_SPEC_HASH, LABEL_SUBSYSTEM};
use continuum_models::DeploymentModel;
use tokio::sync::mpsc;

/// The engine, or `None` (with the reason printed) outside CI when there is none.
async fn docker() -> Option<Arc<DockerRuntime>> {
    match DockerRuntime::connect().await {
        Ok(d) => Some(Arc::new(d)),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but the Docker engine is not usable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: the Docker engine is not usable: {e}");
            None
        }
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// Removes the subsystem's containers and the images built for it.
struct Cleanup {
    subsystem: String,
    image_prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={LABEL_SUBSYSTEM}={}", self.subsystem))
            .output();
        if let Ok(o) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
        if let Ok(o) = std::process::Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        {
            let mine: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with(&self.image_prefix))
                .map(str::to_owned)
                .collect();
            if !mine.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&mine)
                    .output();
            }
        }
    }
}

/// A build context: busybox in an image FROM scratch.
fn busybox_context(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("Debian's busybox-static");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .unwrap();
}

struct Setup {
    rt: Arc<DockerRuntime>,
    config: Arc<EngineConfig>,
    subsystem: String,
    /// Component ids are prefixed with this (image tags are per component).
    p: String,
    _dir: tempfile::TempDir,
    _cleanup: Cleanup,
}

async fn setup(name: &str) -> Option<Setup> {
    setup_as(unique(name), unique("t")).await
}

/// A setup for `subsystem`, its component ids prefixed with `p`.
async fn setup_as(subsystem: String, p: String) -> Option<Setup> {
    let rt = docker().await?;
    let dir = tempfile::tempdir().unwrap();
    busybox_context(&dir.path().join("bb"));
    Some(Setup {
        rt,
        config: Arc::new(EngineConfig {
            metrics: Default::default(),
            context_root: dir.path().to_owned(),
            build_args: Default::default(),
            blobs: None,
            workload_env: Default::default(),
            secrets_dir: Default::default(),
            step_timeout: Duration::from_secs(60),
            settle: Duration::from_millis(500),
            routing: Arc::new(continuum_gateway::routing::NoBridge),
            deployers: None,
            device_ports: Default::default(),
        }),
        subsystem: subsystem.clone(),
        _cleanup: Cleanup {
            subsystem,
            image_prefix: format!("continuum/{p}-"),
        },
        p,
        _dir: dir,
    })
}

impl Setup {
    /// A service built from the busybox context running `script`.
    fn service(&self, id: &str, script: &str, extra: &str) -> String {
        format!(
            r#"{{"id":"{p}-{id}","kind":"service","resources":{{"container":{{
                "build":{{"context":"bb"}},"command":["sh","-c","{script}"]{extra}}}}}}}"#,
            p = self.p
        )
    }

    fn model(&self, services: &[String]) -> DeploymentModel {
        let mut components = vec![r#"{"id":"gw","kind":"gateway"}"#.to_owned()];
        components.extend(services.iter().cloned());
        let links: Vec<String> = services
            .iter()
            .map(|s| {
                let v: serde_json::Value = serde_json::from_str(s).unwrap();
                format!(
                    r#"{{"kind":"hosting","component":"{}","host":"gw"}}"#,
                    v["id"].as_str().unwrap()
                )
            })
            .collect();
        let json = format!(
            r#"{{"id":"{}","components":[{}],"links":[{}]}}"#,
            self.subsystem,
            components.join(","),
            links.join(",")
        );
        let (m, problems) =
            continuum_models::parse::parse_deployment_model("test.json", &json).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        m.canonical()
    }

    async fn pass(&self, generation: u64, target: &DeploymentModel) -> PassReport {
        let (tx, _rx) = mpsc::unbounded_channel();
        reconcile(
            &self.rt,
            &self.config,
            &self.subsystem,
            generation,
            target,
            &tx,
        )
        .await
        .expect("the engine is reachable")
    }

    async fn workloads(&self) -> BTreeMap<String, Workload> {
        self.rt
            .list(LABEL_SUBSYSTEM, &self.subsystem)
            .await
            .unwrap()
            .into_iter()
            .map(|w| (w.labels[LABEL_COMPONENT].clone(), w))
            .collect()
    }

    fn id(&self, short: &str) -> String {
        format!("{}-{short}", self.p)
    }
}

fn docker_cli(args: &[&str]) {
    let o = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn subsystems_and_components_that_join_alike_get_containers_of_their_own() {
    // `S` + `P-Q-x` and `S-P` + `Q-x` once both made `continuum-S-P-Q-x`.
    let Some(a) = setup("join").await else {
        return;
    };
    let q = unique("q");
    let Some(b) = setup_as(format!("{}-{}", a.subsystem, a.p), q.clone()).await else {
        return;
    };
    let sleep = "trap 'exit 0' TERM; sleep 3600 & wait";
    let ma = a.model(&[a.service(&format!("{q}-x"), sleep, "")]);
    let mb = b.model(&[b.service("x", sleep, "")]);
    let ra = a.pass(1, &ma).await;
    let rb = b.pass(1, &mb).await;
    assert!(ra.converged(), "{ra:?}");
    assert!(rb.converged(), "{rb:?}");
    for s in [&a, &b] {
        let w = s.workloads().await;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w.values().all(|w| w.state == RunState::Running), "{w:?}");
    }
}

#[tokio::test]
async fn deploys_replaces_only_what_changed_and_heals_drift() {
    let Some(s) = setup("deploy").await else {
        return;
    };
    let sleep = "trap 'exit 0' TERM; sleep 3600 & wait";
    let v1 = s.model(&[
        s.service("a", sleep, r#","env":{"V":"1"}"#),
        s.service("b", sleep, r#","env":{"V":"1"}"#),
    ]);
    let r = s.pass(1, &v1).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(r.current, v1);
    let w1 = s.workloads().await;
    assert_eq!(w1.len(), 2);
    for w in w1.values() {
        assert_eq!(w.state, RunState::Running);
        assert_eq!(w.labels[LABEL_SUBSYSTEM], s.subsystem);
        assert!(w.labels.contains_key(LABEL_SPEC_HASH));
    }
    // Nothing to do the second time.
    assert_eq!(s.pass(1, &v1).await.planned, 0);

    // v2 changes b only: a keeps its container.
    let v2 = s.model(&[
        s.service("a", sleep, r#","env":{"V":"1"}"#),
        s.service("b", sleep, r#","env":{"V":"2"}"#),
    ]);
    let r = s.pass(2, &v2).await;
    assert!(r.converged(), "{r:?}");
    let w2 = s.workloads().await;
    assert_eq!(w2[&s.id("a")].id, w1[&s.id("a")].id, "a untouched");
    assert_ne!(w2[&s.id("b")].id, w1[&s.id("b")].id, "b replaced");

    // Drift: a removed by hand, b stopped by hand.
    docker_cli(&["rm", "-f", &w2[&s.id("a")].id]);
    docker_cli(&["stop", "-t", "0", &w2[&s.id("b")].id]);
    let r = s.pass(2, &v2).await;
    assert!(r.converged(), "{r:?}");
    let w3 = s.workloads().await;
    assert_eq!(w3.len(), 2, "no duplicates: {w3:?}");
    assert_ne!(w3[&s.id("a")].id, w2[&s.id("a")].id, "a recreated");
    assert_eq!(
        w3[&s.id("b")].id,
        w2[&s.id("b")].id,
        "b restarted, not recreated"
    );
    assert!(w3.values().all(|w| w.state == RunState::Running));

    // Removing a component from the target removes its container.
    let v3 = s.model(&[s.service("a", sleep, r#","env":{"V":"1"}"#)]);
    assert!(s.pass(3, &v3).await.converged());
    assert_eq!(s.workloads().await.len(), 1);
}

#[tokio::test]
async fn failures_name_the_component_and_the_cause() {
    let Some(mut s) = setup("fail").await else {
        return;
    };
    // A generous settle window: on a loaded machine the crashing container may
    // take a while even to start.
    Arc::make_mut(&mut s.config).settle = Duration::from_secs(3);
    // A build that fails: the Dockerfile copies a file the context lacks.
    let broken = s._dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("Dockerfile"),
        "FROM scratch\nCOPY missing /missing\n",
    )
    .unwrap();
    let bad_build = format!(
        r#"{{"id":"{}","kind":"service","resources":{{"container":{{"build":{{"context":"broken"}}}}}}}}"#,
        s.id("bad")
    );
    let exits = s.service("exits", "echo giving up >&2; exit 3", "");
    // A port free on every address now (Docker binds 0.0.0.0).
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!(r#","ports":[{{"container":80,"host":{port}}}]"#);
    let first = s.service("first", "sleep 3600", &ports);
    let second = s.service("second", "sleep 3600", &ports);
    let target = s.model(&[bad_build, exits, first, second]);
    let r = s.pass(1, &target).await;
    assert!(!r.converged());
    let st = |c: &str| r.statuses[&s.id(c)].clone();
    assert_eq!(st("bad").state, State::Failed);
    assert!(
        st("bad").reason.contains("cannot be built"),
        "{:?}",
        st("bad")
    );
    assert_eq!(st("exits").state, State::Failed);
    assert!(
        st("exits").reason.contains("exited at once with code 3"),
        "{:?}",
        st("exits")
    );
    assert!(
        st("exits").reason.contains("giving up"),
        "{:?}",
        st("exits")
    );
    // Two services on one host port: one runs, the other fails saying why.
    let (a, b) = (st("first"), st("second"));
    let failed = [&a, &b]
        .into_iter()
        .filter(|x| x.state == State::Failed)
        .count();
    assert_eq!(failed, 1, "{a:?} {b:?}");
    let reason = if a.state == State::Failed {
        &a.reason
    } else {
        &b.reason
    };
    assert!(
        reason.contains("allocated") || reason.contains("in use"),
        "{reason}"
    );
}

fn networks(label: &str) -> Vec<String> {
    let o = std::process::Command::new("docker")
        .args(["network", "ls", "--filter"])
        .arg(format!("label={label}"))
        .args(["--format", "{{.Name}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_subsystem_network_is_created_and_removed_with_its_last_user() {
    let Some(s) = setup("net").await else { return };
    let net = format!("{}-net", s.p);
    let label = format!("{LABEL_SUBSYSTEM}={}", s.subsystem);
    struct RemoveNet(String);
    impl Drop for RemoveNet {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm", &self.0])
                .output();
        }
    }
    let _net = RemoveNet(net.clone());
    let sleep = "trap 'exit 0' TERM; sleep 3600 & wait";
    let on_net = format!(r#","network":"{net}""#);
    let v1 = s.model(&[
        s.service("a", sleep, &on_net),
        s.service("b", sleep, &on_net),
    ]);
    let r = s.pass(1, &v1).await;
    assert!(r.converged(), "{r:?}");
    assert_eq!(networks(&label), vec![net.clone()]);
    // b reaches a on the subsystem's network by a's component id, and by its
    // container's name.
    let b = s.workloads().await[&s.id("b")].id.clone();
    for name in [
        s.id("a"),
        continuum_gateway::exec::workload_name(&s.subsystem, &s.id("a")),
    ] {
        let o = std::process::Command::new("docker")
            .args(["exec", &b, "busybox", "ping", "-c", "1", "-W", "5", &name])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // Nobody on it any more: it goes.
    let v2 = s.model(&[s.service("a", sleep, "")]);
    assert!(s.pass(2, &v2).await.converged());
    assert!(networks(&label).is_empty(), "{:?}", networks(&label));
}

/// The process's peak resident memory, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_large_sparse_file_in_a_context_streams_to_the_engine() {
    let Some(s) = setup("sparse").await else {
        return;
    };
    // 256 MiB that take no disk: once a build error ("unhandled tar header
    // type 83", a GNU sparse entry), and the whole context held in memory.
    let blank = s._dir.path().join("bb/blank");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let before = peak_rss_kib();
    let sleep = "trap 'exit 0' TERM; sleep 3600 & wait";
    let m = s.model(&[s.service("a", sleep, "")]);
    let r = s.pass(1, &m).await;
    assert!(r.converged(), "{r:?}");
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "peak memory grew by {grown} KiB for a 256 MiB context"
    );
}

#[tokio::test]
async fn a_build_context_outside_the_context_root_is_refused_with_the_reason() {
    let Some(s) = setup("outside").await else {
        return;
    };
    for (short, context, why) in [
        ("up", "../..", "climbs out"),
        ("abs", "/etc", "an absolute path"),
    ] {
        let svc = s
            .service(short, "true", "")
            .replace(r#""context":"bb""#, &format!(r#""context":"{context}""#));
        let r = s.pass(1, &s.model(&[svc])).await;
        let reason = r
            .outcome
            .failed
            .get(&s.id(short))
            .cloned()
            .unwrap_or_default();
        assert!(
            reason.contains(&format!("`{context}` is refused")) && reason.contains(why),
            "{reason} in {r:?}"
        );
        assert!(s.workloads().await.is_empty(), "nothing was built or run");
    }
}
