//! A highly available orchestrator end to end: a 3-member etcd cluster on
//! loopback, two `continuum serve --store etcd://…` (one leads, one stands
//! by), a fleet of simulated gateways given both addresses, and the CLI.
//! The leader is killed (SIGKILL) in the middle of a staged rollout; the
//! standby leads within seconds, no accepted revision is lost, the rollout
//! goes on and every gateway converges. Then an etcd member is killed, and
//! nothing changes for users.

mod common;

use std::time::{Duration, Instant};

use common::{err, ok, out, Serve};
use continuum_orchestrator::etcd_cluster::{etcd_available, EtcdCluster};
use serde_json::Value;

const GATEWAYS: usize = 6;

fn json(serve: &Serve, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(serve.cli(&all))).unwrap()
}

/// Every subsystem's target is `generation` and its gateway runs it.
fn converged(serve: &Serve, generation: u64) -> bool {
    let o = serve.cli(&["status", "-o", "json"]);
    if !o.status.success() {
        return false;
    }
    let s: Value = serde_json::from_str(&out(&o)).unwrap();
    let subsystems = s["subsystems"].as_array().unwrap();
    subsystems.len() == GATEWAYS
        && subsystems
            .iter()
            .all(|s| s["target_generation"].as_u64() == Some(generation) && s["converged"] == true)
}

#[test]
fn the_leader_dies_mid_rollout_and_a_standby_carries_it_through() {
    if !etcd_available() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let store = cluster.url(&common::unique("ha"));
    let (a_addr, b_addr) = (common::free_port(), common::free_port());
    let flags = |listen: &str| -> Vec<String> {
        ["--no-mqtt", "--listen", listen, "--store", &store]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--lease-ttl".into(), "2s".into()])
            .collect()
    };
    let a_flags = flags(&a_addr);
    let a_flags: Vec<&str> = a_flags.iter().map(String::as_str).collect();
    let a = Serve::start_with(&dir.path().join("a"), &a_flags);
    assert!(
        a.startup.iter().all(|l| !l.contains("standing by")),
        "the first orchestrator leads at once"
    );
    let b_flags = flags(&b_addr);
    let b_flags: Vec<&str> = b_flags.iter().map(String::as_str).collect();
    let mut b = Serve::launch(&dir.path().join("b"), &b_flags);
    let said = b.line_with("standing by");
    assert!(
        said.contains(&a_addr),
        "the standby names the leader: {said}"
    );
    assert!(
        std::net::TcpStream::connect(&b_addr).is_err(),
        "a standby does not listen"
    );

    let both = format!("{a_addr},{b_addr}");
    let _fleet = common::sim_fleet(&both, GATEWAYS, "50ms..150ms", &dir.path().join("fleet"));
    let write = |v: u32| {
        let path = dir.path().join(format!("v{v}.json"));
        std::fs::write(
            &path,
            continuum_models::generate::fleet_megamodel(GATEWAYS, 2, v),
        )
        .unwrap();
        path.display().to_string()
    };
    ok(a.cli(&["apply", "-f", &write(1), "--wait", "120s"]));

    // Revision 2, one gateway per wave; the leader dies once two waves ran.
    let o = a.cli(&["apply", "-f", &write(2), "--wave", "1"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    continuum_bus::testing::wait_for("the rollout's second wave", Duration::from_secs(60), || {
        let r = json(&a, &["rollout", "status"]);
        (r["waves"].as_array().map_or(0, Vec::len) >= 2).then_some(())
    });
    let r = json(&a, &["rollout", "status"]);
    assert_eq!(r["state"], "running", "killed mid-rollout: {r}");
    let killed = Instant::now();
    drop(a); // SIGKILL
    b.wait_listening(Duration::from_secs(30))
        .unwrap_or_else(|(code, said)| panic!("the standby exited with {code}:\n{said}"));
    let took_over = killed.elapsed();
    eprintln!(
        "the standby leads and listens {took_over:?} after the leader was killed (lease TTL 2 s)"
    );
    assert!(
        took_over < continuum_bus::testing::within(Duration::from_secs(15)),
        "{took_over:?}"
    );
    // From here the CLI is given both addresses, as a user would be: the
    // one that answers leads.
    b.addr = both.clone();

    // No accepted revision is lost; the rollout goes on; all converge.
    let numbers: Vec<u64> = json(&b, &["history"])["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1], "every accepted revision");
    continuum_bus::testing::wait_for(
        "the rollout to complete under the new leader",
        Duration::from_secs(90),
        || {
            let r = json(&b, &["rollout", "status"]);
            (r["state"] == "completed").then_some(())
        },
    );
    continuum_bus::testing::wait_for(
        "every gateway to converge on revision 2",
        Duration::from_secs(60),
        || converged(&b, 2).then_some(()),
    );

    // An etcd member dies: users see no difference.
    cluster.kill(0);
    let o = b.cli(&["apply", "-f", &write(3), "--wait", "120s"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(converged(&b, 3));
    let numbers = json(&b, &["history"])["revisions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(numbers, 3);

    // The old leader, started again, stands by; the leader stopped (SIGTERM)
    // gives its lease up, so the standby leads at once, not a TTL later.
    let mut a = Serve::launch(&dir.path().join("a"), &a_flags);
    let said = a.line_with("standing by");
    assert!(said.contains(&b_addr), "{said}");
    let stopped = Instant::now();
    let status = b.terminate();
    assert!(
        status.success(),
        "a leader stops cleanly on SIGTERM: {status}"
    );
    a.wait_listening(Duration::from_secs(30))
        .unwrap_or_else(|(code, said)| panic!("the standby exited with {code}:\n{said}"));
    let handed_over = stopped.elapsed();
    eprintln!("a stopped leader handed over in {handed_over:?}");
    a.addr = both;
    assert_eq!(
        json(&a, &["history"])["revisions"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    continuum_bus::testing::wait_for(
        "the fleet to be back with the new leader",
        Duration::from_secs(60),
        || converged(&a, 3).then_some(()),
    );
}
