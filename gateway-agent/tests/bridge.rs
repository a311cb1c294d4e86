//! The bridge with real brokers: a Mosquitto global bus, and the embedded
//! (rumqttd) or a Mosquitto local broker. Routes from the model carry
//! numbered messages both ways, with ids; the gateway announces itself with a
//! retained status and a last will; bad messages are dead-lettered without
//! stalling anything; a full outbox counts what it drops; wrong credentials
//! are a clear error.

use std::time::Duration;

use continuum_bus::testing::{free_port, require, Mosquitto, Probe, Tally};
use continuum_bus::{Attach, BrokerConfig, BrokerUrl, EmbeddedBroker, ID_PROPERTY};
use continuum_gateway::bridge::stats::LinkState;
use continuum_gateway::bridge::{Bridge, BridgeConfig};
use continuum_models::component::{Component, ComponentSpec, FunctionSpec, GatewaySpec};
use continuum_models::route::{routes_of, Direction, StaticRoute};

const WITHIN: Duration = Duration::from_secs(30);

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), free_port())
}

fn function(id: &str, triggers: &[&str], outputs: &[&str]) -> Component {
    Component::new(
        id.to_owned(),
        ComponentSpec::Function(FunctionSpec {
            triggers: triggers.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..FunctionSpec::default()
        }),
    )
}

fn embedded_local() -> BrokerUrl {
    embedded().0
}

/// An embedded broker: its MQTT 5 address, and the way to attach to it in-process.
fn embedded() -> (BrokerUrl, Attach) {
    let (v4, v5) = (free_port(), free_port());
    let config = BrokerConfig::new(
        Some(format!("127.0.0.1:{v4}").parse().unwrap()),
        Some(format!("127.0.0.1:{v5}").parse().unwrap()),
    );
    let broker = EmbeddedBroker::start(config).expect("the embedded broker starts");
    (
        format!("mqtt://127.0.0.1:{v5}").parse().unwrap(),
        broker.attach(),
    )
}

fn config(gw: &str, global: BrokerUrl, local: BrokerUrl, dir: &std::path::Path) -> BridgeConfig {
    let mut c = BridgeConfig::new(gw, global, local);
    c.data_dir = Some(dir.to_owned());
    c.keep_alive = Duration::from_secs(5);
    c
}

async fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    continuum_bus::testing::eventually(what, WITHIN, f).await
}

/// Publishes a probe on `topic` until `sub` sees one: the route is live.
async fn until_routed(publisher: &Probe, topic: &str, sub: &Probe) {
    let deadline = tokio::time::Instant::now() + continuum_bus::testing::within(WITHIN);
    loop {
        publisher.publish_numbered(topic, 0..=0, 8, None).await;
        for _ in 0..25 {
            if sub.received().iter().any(|r| r.number() == Some(0)) {
                sub.clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route for {topic} never carried a message"
        );
    }
}

async fn both_ways(local: BrokerUrl, attach: Option<Attach>, global: &Mosquitto) {
    let dir = tempfile::tempdir().unwrap();
    let gw = unique("gw");
    let mut c = config(&gw, global.url(), local.clone(), dir.path());
    c.local_attach = attach;
    let bridge = Bridge::start(c).unwrap();
    let f = function("presence", &["sensors/+/presence"], &["occupancy"]);
    bridge.set_routes("presence", routes_of(&f)).unwrap();
    let g_pub = Probe::connect(&global.url(), &unique("gpub"), false);
    let g_sub = Probe::connect(&global.url(), &unique("gsub"), false);
    let l_pub = Probe::connect(&local, &unique("lpub"), false);
    let l_sub = Probe::connect(&local, &unique("lsub"), false);
    for p in [&g_pub, &g_sub, &l_pub, &l_sub] {
        p.connected(WITHIN).await;
    }
    g_sub.subscribe("/presence/out/#").await;
    l_sub.subscribe("/presence/in/#").await;
    // The routes the model gives the function, live.
    until_routed(&g_pub, "sensors/probe/presence", &l_sub).await;
    until_routed(&l_pub, "/presence/out/occupancy", &g_sub).await;
    g_sub
        .subscribe(&format!("continuum/gateways/{gw}/status"))
        .await;
    let n = 1_000;
    g_pub
        .publish_numbered("sensors/room1/presence", 1..=n, 64, Some("sensor"))
        .await;
    l_pub
        .publish_numbered("/presence/out/occupancy", 1..=n, 64, None)
        .await;
    let down = eventually("1,000 messages down", || {
        let r = l_sub.received_on("/presence/in/presence");
        (r.len() as u64 >= n).then_some(r)
    })
    .await;
    let up = eventually("1,000 messages up", || {
        let r = g_sub.received_on("/presence/out/occupancy");
        (r.len() as u64 >= n).then_some(r)
    })
    .await;
    Tally::of(&down).assert_exactly_once_in_order(n, "global → local");
    Tally::of(&up).assert_exactly_once_in_order(n, "local → global");
    // Every message crossed with the bridge's id; the sensor's own id stays
    // out of the way (the next hop de-duplicates by the bridge's).
    assert!(down.iter().all(|r| r
        .id
        .as_ref()
        .is_some_and(|i| i.origin.starts_with(&format!("{gw}/in/")))));
    assert!(up.iter().all(|r| r
        .id
        .as_ref()
        .is_some_and(|i| i.origin.starts_with(&format!("{gw}/out/")))));
    // The gateway announced itself: retained, online.
    let status = eventually("the gateway's status", || {
        g_sub
            .received_on(&format!("continuum/gateways/{gw}/status"))
            .last()
            .cloned()
    })
    .await;
    assert!(String::from_utf8_lossy(&status.payload).contains("\"online\":true"));
    // The brokers' acknowledgements follow the deliveries.
    let s = eventually("every message acknowledged", || {
        let s = bridge.status();
        (s.inbound.forwarded == n + 1 && s.outbound.forwarded == n + 1).then_some(s)
    })
    .await;
    assert_eq!(
        (s.inbound.dropped, s.outbound.dropped, s.inbound.queued),
        (0, 0, 0)
    );
    assert!(s.healthy(), "{}", s.summary());
    // A clean stop says offline (the will is for unclean ends).
    bridge.stop().await;
    eventually("the offline status", || {
        g_sub
            .received_on(&format!("continuum/gateways/{gw}/status"))
            .iter()
            .any(|r| String::from_utf8_lossy(&r.payload).contains("\"online\":false"))
            .then_some(())
    })
    .await;
}

/// As the agent runs it: the bridge attached to the embedded broker in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_global_bus_and_the_embedded_local_broker_attached() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    let (local, attach) = embedded();
    both_ways(local, Some(attach), &global).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_global_bus_and_the_embedded_local_broker_over_its_socket() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    both_ways(embedded_local(), None, &global).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_global_bus_and_a_mosquitto_local_broker() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    let local = Mosquitto::start(dir.path(), "local", "");
    both_ways(local.url(), None, &global).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_rewrite_prefixes_and_a_broker_restart_shows_in_status() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut global = Mosquitto::start(dir.path(), "global", "");
    let local = embedded_local();
    let gw = unique("gw");
    let bridge = Bridge::start(config(&gw, global.url(), local.clone(), dir.path())).unwrap();
    let mut g = Component::new(
        gw.clone(),
        ComponentSpec::Gateway(GatewaySpec {
            equipped_with_bridge: true,
            routes: vec![StaticRoute {
                topic: "temp/#".into(),
                direction: Direction::In,
                local_prefix: "site/".into(),
                remote_prefix: "building-a/".into(),
            }],
            ..GatewaySpec::default()
        }),
    );
    g.name = gw.clone();
    bridge.set_routes(&gw, routes_of(&g)).unwrap();
    let g_pub = Probe::connect(&global.url(), &unique("gpub"), false);
    let l_sub = Probe::connect(&local, &unique("lsub"), false);
    l_sub.connected(WITHIN).await;
    l_sub.subscribe("site/#").await;
    g_pub.connected(WITHIN).await;
    until_routed(&g_pub, "building-a/temp/probe", &l_sub).await;
    g_pub
        .publish_numbered("building-a/temp/floor1", 1..=10, 8, None)
        .await;
    g_pub
        .publish_numbered("elsewhere/temp/floor1", 1..=10, 8, None)
        .await;
    let got = eventually("10 rewritten messages", || {
        let r = l_sub.received_on("site/temp/floor1");
        (r.len() >= 10).then_some(r)
    })
    .await;
    Tally::of(&got).assert_exactly_once_in_order(10, "rewritten");
    assert!(l_sub
        .received()
        .iter()
        .all(|r| r.topic.starts_with("site/temp/")));
    // Removing the route unsubscribes.
    bridge.set_routes(&gw, Vec::new()).unwrap();
    assert!(bridge.routes().is_empty());
    drop(bridge);
    // The global broker goes away and comes back: the bridge's status says so.
    let dir2 = tempfile::tempdir().unwrap();
    let b = Bridge::start(config(&gw, global.url(), local, dir2.path())).unwrap();
    eventually("connected", || {
        (b.status().global == LinkState::Connected).then_some(())
    })
    .await;
    global.stop();
    eventually("down", || {
        matches!(b.status().global, LinkState::Down(_)).then_some(())
    })
    .await;
    global.resume();
    eventually("connected again", || {
        (b.status().global == LinkState::Connected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dead_lettered_and_the_bridge_goes_on() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    let (local, attach) = embedded();
    let mut c = config(&unique("gw"), global.url(), local.clone(), dir.path());
    c.max_payload = 1024;
    // Dead letters go to the embedded broker the in-process way.
    c.local_attach = Some(attach);
    let bridge = Bridge::start(c).unwrap();
    bridge
        .set_routes("f", routes_of(&function("f", &["in/#"], &[])))
        .unwrap();
    let g_pub = Probe::connect(&global.url(), &unique("gpub"), false);
    let l_sub = Probe::connect(&local, &unique("lsub"), false);
    l_sub.connected(WITHIN).await;
    l_sub.subscribe("/f/#").await;
    g_pub.connected(WITHIN).await;
    until_routed(&g_pub, "in/probe", &l_sub).await;
    // Oversized, then a malformed id, then a good one.
    g_pub.publish_numbered("in/x", 1..=1, 4096, None).await;
    let bad_id = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![(ID_PROPERTY.to_owned(), "no-number".to_owned())],
        ..Default::default()
    };
    g_pub
        .client
        .publish_with_properties(
            "in/x",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            2u64.to_be_bytes().to_vec(),
            bad_id,
        )
        .await
        .unwrap();
    g_pub.publish_numbered("in/x", 3..=3, 8, None).await;
    let dlq = eventually("two dead letters", || {
        let r = l_sub.received_on("/f/dlq");
        (r.len() >= 2).then_some(r)
    })
    .await;
    let reason = |r: &continuum_bus::testing::Received| {
        r.properties
            .iter()
            .find(|(k, _)| k == "continuum-dlq-reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(&dlq[0]).contains("oversized: 4096 bytes"),
        "{}",
        reason(&dlq[0])
    );
    assert_eq!(dlq[0].payload.len(), 1024, "cut to the limit");
    assert!(reason(&dlq[1]).contains("malformed"), "{}", reason(&dlq[1]));
    assert!(dlq.iter().all(|r| r
        .properties
        .iter()
        .any(|(k, v)| k == "continuum-dlq-topic" && v == "in/x")));
    let good = eventually("the good message after them", || {
        let r = l_sub.received_on("/f/in/in");
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(good[0].number(), Some(3));
    assert_eq!(bridge.status().inbound.dead_lettered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_and_counts_them() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    let mut local = Mosquitto::start(dir.path(), "local", "");
    let mut c = config(&unique("gw"), global.url(), local.url(), dir.path());
    c.capacity = 10;
    let bridge = Bridge::start(c).unwrap();
    bridge
        .set_routes("f", routes_of(&function("f", &["in/#"], &[])))
        .unwrap();
    let g_pub = Probe::connect(&global.url(), &unique("gpub"), false);
    g_pub.connected(WITHIN).await;
    let l_sub = Probe::connect(&local.url(), &unique("lsub"), true);
    l_sub.connected(WITHIN).await;
    l_sub.subscribe("/f/in/#").await;
    until_routed(&g_pub, "in/probe", &l_sub).await;
    // The local broker is down: messages wait in the outbox, 10 at most.
    local.stop();
    eventually("the local broker seen down", || {
        matches!(bridge.status().local, LinkState::Down(_)).then_some(())
    })
    .await;
    g_pub.publish_numbered("in/x", 1..=50, 8, None).await;
    eventually("50 taken", || {
        (bridge.status().inbound.received >= 51).then_some(())
    })
    .await;
    let s = bridge.status();
    assert_eq!((s.inbound.queued, s.inbound.dropped), (10, 40), "{s:?}");
    assert!(
        s.summary().contains("40 LOST to a full outbox"),
        "{}",
        s.summary()
    );
    local.resume();
    let got = eventually("the newest 10", || {
        let r = l_sub.received_on("/f/in/in");
        (r.len() >= 10).then_some(r)
    })
    .await;
    let numbers: Vec<u64> = Tally::of(&got).taken;
    assert_eq!(numbers, (41..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    std::fs::write(&pw, "").unwrap();
    let ok = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&pw)
        .args(["bridge", "right"])
        .status()
        .unwrap();
    assert!(ok.success());
    let global = Mosquitto::start(
        dir.path(),
        "global",
        &format!("allow_anonymous false\npassword_file {}", pw.display()),
    );
    let wrong: BrokerUrl = format!("mqtt://bridge:wrong@{}", global.addr)
        .parse()
        .unwrap();
    let bridge = Bridge::start(config(&unique("gw"), wrong, embedded_local(), dir.path())).unwrap();
    let why = eventually("a refusal", || match bridge.status().global {
        LinkState::Refused(why) => Some(why),
        _ => None,
    })
    .await;
    assert!(why.contains("refused the bridge's credentials"), "{why}");
    assert!(!why.contains("wrong"), "the password is not shown: {why}");
    // `continuum status` shows the gateway failing, with the reason.
    let health = continuum_gateway::routing::Routing::health(&bridge).unwrap();
    assert_eq!(health.state, continuum_gateway::engine::State::Failed);
    assert!(
        health.reason.contains("refused the bridge's credentials"),
        "{}",
        health.reason
    );
    drop(bridge);
    let right: BrokerUrl = format!("mqtt://bridge:right@{}", global.addr)
        .parse()
        .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let bridge =
        Bridge::start(config(&unique("gw"), right, embedded_local(), dir2.path())).unwrap();
    eventually("connected", || {
        (bridge.status().global == LinkState::Connected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_local_broker_refuses_is_dead_lettered() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let global = Mosquitto::start(dir.path(), "global", "");
    // The local broker refuses `secret/...` to everyone.
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic deny secret/#\ntopic readwrite #\n").unwrap();
    let local = Mosquitto::start(dir.path(), "local", &format!("acl_file {}", acl.display()));
    let gw = unique("gw");
    let bridge = Bridge::start(config(&gw, global.url(), local.url(), dir.path())).unwrap();
    let mut g = Component::new(
        gw.clone(),
        ComponentSpec::Gateway(GatewaySpec {
            equipped_with_bridge: true,
            routes: ["open/#", "secret/#"]
                .iter()
                .map(|t| StaticRoute {
                    topic: (*t).into(),
                    direction: Direction::In,
                    local_prefix: String::new(),
                    remote_prefix: String::new(),
                })
                .collect(),
            ..GatewaySpec::default()
        }),
    );
    g.name = gw.clone();
    bridge.set_routes(&gw, routes_of(&g)).unwrap();
    let g_pub = Probe::connect(&global.url(), &unique("gpub"), false);
    let l_sub = Probe::connect(&local.url(), &unique("lsub"), false);
    l_sub.connected(WITHIN).await;
    l_sub.subscribe("open/#").await;
    l_sub.subscribe(&format!("/{gw}/dlq")).await;
    g_pub.connected(WITHIN).await;
    until_routed(&g_pub, "open/probe", &l_sub).await;
    g_pub
        .publish_numbered("secret/plans", 1..=3, 16, None)
        .await;
    g_pub.publish_numbered("open/news", 1..=3, 16, None).await;
    let dlq = eventually("three dead letters", || {
        let r = l_sub.received_on(&format!("/{gw}/dlq"));
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert!(
        dlq.iter().all(|r| r
            .properties
            .iter()
            .any(|(k, v)| k == "continuum-dlq-reason" && v.contains("refused"))),
        "{dlq:?}"
    );
    assert_eq!(
        Tally::of(&dlq).taken,
        [1, 2, 3],
        "in order, the payloads kept"
    );
    // What follows is not held up.
    let open = eventually("the open messages", || {
        let r = l_sub.received_on("open/news");
        (r.len() >= 3).then_some(r)
    })
    .await;
    Tally::of(&open).assert_exactly_once_in_order(3, "after the refusals");
    let s = bridge.status();
    assert_eq!(
        (s.inbound.dead_lettered, s.inbound.dropped),
        (3, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_bus_learned_from_the_orchestrator_is_used_and_remembered() {
    if !require("mosquitto", "mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = Mosquitto::start(dir.path(), "first", "");
    let second = Mosquitto::start(dir.path(), "second", "");
    let gw = unique("gw");
    let local = embedded_local();
    let mut c = config(&gw, first.url(), local.clone(), dir.path());
    c.global_pinned = false;
    let watcher = Probe::connect(&second.url(), &unique("w"), false);
    watcher.connected(WITHIN).await;
    watcher
        .subscribe(&format!("continuum/gateways/{gw}/status"))
        .await;
    let bridge = Bridge::start(c.clone()).unwrap();
    eventually("connected to the first", || {
        (bridge.status().global == LinkState::Connected).then_some(())
    })
    .await;
    bridge.learn_global(second.url()).unwrap();
    eventually("announced on the second", || {
        (!watcher.received().is_empty()).then_some(())
    })
    .await;
    assert_eq!(bridge.global(), second.url());
    bridge.stop().await;
    drop(bridge);
    // Restarted with the same default, it goes where it was told last.
    let bridge = Bridge::start(c.clone()).unwrap();
    assert_eq!(bridge.global(), second.url());
    bridge.stop().await;
    drop(bridge);
    // A bus the operator names is never overridden.
    c.global_pinned = true;
    let bridge = Bridge::start(c).unwrap();
    bridge.learn_global(second.url()).unwrap();
    assert_eq!(bridge.global(), first.url());
}
