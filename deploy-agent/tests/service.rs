//! `continuum-agent serve` on an embedded MQTT broker with the simulated Uno:
//! a flash order is carried out with its progress and result as the device's
//! retained state, the device's proxy lets go of the port while it is
//! flashed and then publishes its readings, and it survives the device going
//! away and coming back.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use continuum_bus::testing::{eventually, free_port, within, Probe};
use continuum_bus::{BrokerConfig, BrokerUrl, EmbeddedBroker};
use continuum_deploy_agent::sim::{from_env as sim_board, SimBoard};

const AGENT: &str = env!("CARGO_BIN_EXE_continuum-agent");
const V1: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/smart-building/firmware/arduino-flow-v1.hex"
);

/// A child process, stopped with SIGTERM (then waited for) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// The simulated board on `port`, its flash kept in `flash`.
fn board(sim: &Path, port: &Path, flash: &Path) -> SimBoard {
    SimBoard::start(sim, port, &["--flash", flash.to_str().unwrap()])
        .expect("starts the simulated board")
}

fn broker() -> BrokerUrl {
    let mut last = None;
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        match EmbeddedBroker::start(BrokerConfig::new(None, Some(addr))) {
            Ok(_) => return format!("mqtt://{addr}").parse().unwrap(),
            Err(e) => last = Some(e),
        }
    }
    panic!("no embedded broker: {last:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn state_of(probe: &Probe, topic: &str) -> Option<serde_json::Value> {
    probe
        .received_on(topic)
        .last()
        .and_then(|r| serde_json::from_slice(&r.payload).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_orders_and_the_proxy_share_the_device_over_mqtt() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = broker();
    let port = dir.path().join("uno");
    let flash_file = dir.path().join("uno.flash");
    let mut uno = Some(board(&sim, &port, &flash_file));
    let _agent = Proc(
        Command::new(AGENT)
            .args(["serve", "--id", "a1", "--broker", &url.to_string()])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starts the agent"),
    );
    let watch = Probe::connect(&url, "watch", false);
    watch.connected(within(Duration::from_secs(10))).await;
    // (Not the orders: they carry whole firmware images.)
    watch.subscribe("continuum/agents/a1/status").await;
    watch.subscribe("continuum/agents/a1/devices/#").await;
    watch.subscribe("sensors/uno").await;
    eventually("the agent online", within(Duration::from_secs(20)), || {
        state_of(&watch, "continuum/agents/a1/status").filter(|s| s["state"] == "online")
    })
    .await;

    // The proxy first: it holds the port until a flash wants it.
    let gateway = Probe::connect(&url, "gateway", false);
    gateway.connected(within(Duration::from_secs(10))).await;
    let proxies = serde_json::json!([{"device": "uno", "port": port, "topic": "sensors/uno"}]);
    gateway
        .client
        .publish(
            "continuum/agents/a1/proxies",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            proxies.to_string(),
        )
        .await
        .unwrap();
    let device = "continuum/agents/a1/devices/uno";
    eventually(
        "the proxy on the port",
        within(Duration::from_secs(20)),
        || state_of(&watch, &format!("{device}/port")).filter(|s| s["open"] == true),
    )
    .await;

    let order = serde_json::json!({
        "request": "r1", "device": "uno", "port": port, "board": "uno",
        "artefact": hex(&std::fs::read(V1).unwrap()), "health": r#"^\{"pir":"#,
        "confirm_within_ms": 5000,
    });
    gateway
        .publish_with("continuum/agents/a1/flash", &order.to_string(), &[])
        .await;
    let done = eventually("the flash done", within(Duration::from_secs(60)), || {
        state_of(&watch, device).filter(|s| s["state"] != "flashing")
    })
    .await;
    assert_eq!(done["state"], "running", "{done}");
    assert_eq!(done["request"], "r1");
    assert_eq!(done["firmware"].as_str().unwrap().len(), 64);
    // Progress was published on the way.
    let stages: Vec<String> = watch
        .received_on(device)
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
        .filter_map(|v| v["stage"].as_str().map(str::to_owned))
        .collect();
    for s in ["syncing", "writing", "verifying", "confirming"] {
        assert!(stages.iter().any(|x| x == s), "{s} in {stages:?}");
    }

    // The proxy has the port again: the firmware's readings are published.
    eventually(
        "readings through the proxy",
        within(Duration::from_secs(20)),
        || {
            watch
                .received_on("sensors/uno")
                .iter()
                .any(|r| r.payload.starts_with(br#"{"pir":"#))
                .then_some(())
        },
    )
    .await;

    // The board goes away (its flash kept) and comes back.
    drop(uno.take());
    eventually("the port gone", within(Duration::from_secs(20)), || {
        state_of(&watch, &format!("{device}/port")).filter(|s| s["open"] == false)
    })
    .await;
    watch.clear();
    uno = Some(board(&sim, &port, &flash_file));
    eventually("readings again", within(Duration::from_secs(30)), || {
        watch
            .received_on("sensors/uno")
            .iter()
            .any(|r| r.payload.starts_with(br#"{"pir":"#))
            .then_some(())
    })
    .await;

    // The same order again: nothing to write.
    let again = order.to_string().replace("\"r1\"", "\"r2\"");
    gateway
        .publish_with("continuum/agents/a1/flash", &again, &[])
        .await;
    let r = eventually("the second order", within(Duration::from_secs(30)), || {
        state_of(&watch, device).filter(|s| s["request"] == "r2" && s["state"] != "flashing")
    })
    .await;
    assert_eq!(r["state"], "unchanged", "{r}");
    drop(uno);
}
