//! `continuum-agent flash` against the simulated Arduino Uno (an ATmega328P
//! under simavr with the Arduino bootloader, on a pty), with the real avrdude
//! as the reference: what the agent writes avrdude verifies, a firmware
//! already there is skipped, one that never says it runs is rolled back, and
//! every bad input or fault fails at its stage with the device unchanged.

use std::path::Path;
use std::process::Command;

use continuum_deploy_agent::sim::{from_env as sim_board, SimBoard};

const AGENT: &str = env!("CARGO_BIN_EXE_continuum-agent");
const FIRMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/smart-building/firmware"
);
/// The example firmware's health line (its readings).
const HEALTH: &str = r#"^\{"pir":"#;
/// A firmware that runs and never prints: `rjmp .-2` at address 0.
const QUIET: &str = ":02000000FFCF30\n:00000001FF\n";

/// A simulated board on `dir/<name>`.
fn start_board(sim: &Path, dir: &Path, name: &str, extra: &[&str]) -> SimBoard {
    SimBoard::start(sim, &dir.join(name), extra).expect("starts the simulated board")
}

/// Runs the agent; its exit code and its last JSON line.
fn agent(state: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(AGENT)
        .arg("flash")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("runs continuum-agent");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(
            || serde_json::json!({"stderr": String::from_utf8_lossy(&out.stderr).to_string()}),
        );
    (out.status.code().unwrap_or(-1), last)
}

fn firmware(name: &str) -> String {
    format!("{FIRMWARE}/{name}")
}

/// avrdude's verdict on the board's flash against `hex`.
fn avrdude_verifies(port: &str, hex: &str) -> bool {
    let out = Command::new("avrdude")
        .args(["-c", "arduino", "-p", "m328p", "-b", "115200", "-P", port])
        .arg(format!("-Uflash:v:{hex}:i"))
        .output()
        .expect("runs avrdude");
    out.status.success()
}

fn flash_with_health(state: &Path, board: &SimBoard, image: &str) -> (i32, serde_json::Value) {
    agent(
        state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            image,
            "--health",
            HEALTH,
            "--confirm-within",
            "5s",
        ],
    )
}

#[test]
fn flashes_verifies_confirms_skips_and_avrdude_reads_back_the_same() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let state = dir.path().join("state");
    let v1 = firmware("arduino-flow-v1.hex");
    let (code, r) = flash_with_health(&state, &board, &v1);
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
    assert!(
        r["health"].as_str().unwrap().starts_with(r#"{"pir":"#),
        "{r}"
    );
    assert!(
        avrdude_verifies(board.port_str(), &v1),
        "avrdude reads back what the agent wrote"
    );

    // The same firmware again: nothing is written.
    let (code, r) = flash_with_health(&state, &board, &v1);
    assert_eq!((code, r["result"].as_str()), (0, Some("unchanged")), "{r}");

    // A new firmware is written, runs, and avrdude agrees.
    let v2 = firmware("arduino-flow-v2.hex");
    let (code, r) = flash_with_health(&state, &board, &v2);
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
    assert!(avrdude_verifies(board.port_str(), &v2));
    assert!(!avrdude_verifies(board.port_str(), &v1));

    // --force writes even an unchanged one.
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            &v2,
            "--force",
        ],
    );
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");

    // And what avrdude writes, the agent's verification accepts.
    let out = Command::new("avrdude")
        .args([
            "-c",
            "arduino",
            "-p",
            "m328p",
            "-b",
            "115200",
            "-P",
            board.port_str(),
        ])
        .arg(format!("-Uflash:w:{v1}:i"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, r) = flash_with_health(&state, &board, &v1);
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
}

#[test]
fn a_firmware_that_never_says_it_runs_is_rolled_back_to_the_confirmed_one() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let state = dir.path().join("state");
    let v1 = firmware("arduino-flow-v1.hex");
    let (code, r) = flash_with_health(&state, &board, &v1);
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
    let quiet = dir.path().join("quiet.hex");
    std::fs::write(&quiet, QUIET).unwrap();
    let (code, r) = flash_with_health(&state, &board, quiet.to_str().unwrap());
    assert_eq!(
        (code, r["result"].as_str()),
        (2, Some("rolled_back")),
        "{r}"
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("did not confirm within 5s"),
        "{r}"
    );
    assert!(avrdude_verifies(board.port_str(), &v1), "v1 is back");
    // The rejected firmware is not written again (flash wears out)...
    let (code, r) = flash_with_health(&state, &board, quiet.to_str().unwrap());
    assert_eq!(
        (code, r["result"].as_str()),
        (2, Some("rolled_back")),
        "{r}"
    );
    assert!(
        r["reason"].as_str().unwrap().contains("not written again"),
        "{r}"
    );
    // ...and the confirmed firmware is still v1: flashing it again is a no-op.
    let (code, r) = flash_with_health(&state, &board, &v1);
    assert_eq!((code, r["result"].as_str()), (0, Some("unchanged")), "{r}");
}

#[test]
fn bad_input_is_refused_before_the_device_is_touched() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let state = dir.path().join("state");
    let v1 = firmware("arduino-flow-v1.hex");
    assert_eq!(flash_with_health(&state, &board, &v1).0, 0);

    // A record whose checksum does not add up.
    let text = std::fs::read_to_string(&v1).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let third = lines[2].clone();
    let last = &third[third.len() - 2..];
    let flipped = format!("{:02X}", u8::from_str_radix(last, 16).unwrap() ^ 1);
    lines[2] = format!("{}{flipped}", &third[..third.len() - 2]);
    let corrupt = dir.path().join("corrupt.hex");
    std::fs::write(&corrupt, lines.join("\n")).unwrap();
    let out = Command::new(AGENT)
        .args(["flash", "--board", "uno", "--port", board.port_str()])
        .arg("--state-dir")
        .arg(&state)
        .arg("--image")
        .arg(&corrupt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("corrupt.hex") && err.contains("line 3: bad checksum"),
        "{err}"
    );

    // An image larger than the board's flash.
    let big = dir.path().join("big.hex");
    let image = continuum_deploy_agent::image::Image {
        data: vec![0x11; 33_000],
    };
    std::fs::write(&big, image.to_hex()).unwrap();
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            big.to_str().unwrap(),
        ],
    );
    assert_eq!((code, r["stage"].as_str()), (1, Some("connecting")), "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("beyond the 32256 bytes"),
        "{r}"
    );

    // No such port; a board without a native protocol.
    let (code, r) = agent(
        &state,
        &[
            "--port",
            "/dev/no-such-port",
            "--board",
            "uno",
            "--image",
            &v1,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        r["reason"].as_str().unwrap().contains("does not exist"),
        "{r}"
    );
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "mega",
            "--image",
            &v1,
        ],
    );
    assert_eq!(code, 1);
    assert!(
        r["reason"].as_str().unwrap().contains("no native protocol"),
        "{r}"
    );

    // A port someone else holds.
    {
        let _held = continuum_deploy_agent::serial::Port::open(board.port(), 115_200).unwrap();
        let (code, r) = agent(
            &state,
            &[
                "--port",
                board.port_str(),
                "--board",
                "uno",
                "--image",
                &v1,
                "--force",
            ],
        );
        assert_eq!(code, 1);
        assert!(r["reason"].as_str().unwrap().contains("busy"), "{r}");
    }
    assert!(
        avrdude_verifies(board.port_str(), &v1),
        "the device kept its firmware"
    );
}

#[test]
fn a_wrong_signature_a_verify_mismatch_and_silence_fail_at_their_stage() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let v1 = firmware("arduino-flow-v1.hex");

    // An ATmega328P where the model says an ATmega168 board.
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "diecimila",
            "--baud",
            "115200",
            "--image",
            &v1,
        ],
    );
    assert_eq!((code, r["stage"].as_str()), (1, Some("identifying")), "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("wrong signature: the device answers 1e 95 0f"),
        "{r}"
    );
    drop(board);

    // A flash cell stuck at 0xFF.
    let worn = start_board(&sim, dir.path(), "worn", &["--stuck", "0x10"]);
    let (code, r) = agent(
        &state,
        &["--port", worn.port_str(), "--board", "uno", "--image", &v1],
    );
    assert_eq!((code, r["stage"].as_str()), (1, Some("verifying")), "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("verify mismatch at address 0x0010"),
        "{r}"
    );
    drop(worn);

    // A port with no bootloader behind it.
    use serialport::SerialPort;
    let (_master, slave) = serialport::TTYPort::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    let (code, r) = agent(
        &state,
        &[
            "--port", &name, "--board", "uno", "--image", &v1, "--tries", "2",
        ],
    );
    assert_eq!((code, r["stage"].as_str()), (1, Some("syncing")), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("no answer"), "{r}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn with_a_trusted_key_only_firmware_signed_by_it_is_written() {
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::Digest;
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let state = dir.path().join("state");
    let (v1, v2) = (
        firmware("arduino-flow-v1.hex"),
        firmware("arduino-flow-v2.hex"),
    );
    let signer = SigningKey::from_bytes(&[42u8; 32]);
    let trusted = hex(signer.verifying_key().as_bytes());
    let sign = |path: &str, key: &SigningKey| {
        let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
        hex(&key.sign(&digest).to_bytes())
    };
    let flash = |image: &str, signature: Option<&str>| {
        let mut args = vec![
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            image,
            "--trusted-key",
            &trusted,
        ];
        if let Some(s) = signature {
            args.extend(["--signature", s]);
        }
        agent(&state, &args)
    };
    let (code, r) = flash(&v1, Some(&sign(&v1, &signer)));
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");

    // Unsigned, signed by another key, or the signature of another image:
    // refused before the port is opened; v1 stays.
    let (code, r) = flash(&v2, None);
    assert_eq!(code, 1);
    assert!(r["reason"].as_str().unwrap().contains("unsigned"), "{r}");
    let stranger = SigningKey::from_bytes(&[7u8; 32]);
    for bad in [sign(&v2, &stranger), sign(&v1, &signer)] {
        let (code, r) = flash(&v2, Some(&bad));
        assert_eq!(code, 1);
        assert!(
            r["reason"].as_str().unwrap().contains("does not verify"),
            "{r}"
        );
    }
    assert!(avrdude_verifies(board.port_str(), &v1));
    let (code, r) = flash(&v2, Some(&sign(&v2, &signer)));
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
    assert!(avrdude_verifies(board.port_str(), &v2));
}

#[test]
fn a_tool_template_flashes_and_its_failure_is_reported_with_its_output() {
    let Some(sim) = sim_board() else { return };
    let dir = tempfile::tempdir().unwrap();
    let board = start_board(&sim, dir.path(), "uno", &[]);
    let state = dir.path().join("state");
    let v2 = firmware("arduino-flow-v2.hex");
    // avrdude's own template, then the health line read by the agent.
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            &v2,
            "--tool",
            "avrdude",
            "--health",
            HEALTH,
            "--confirm-within",
            "5s",
        ],
    );
    assert_eq!((code, r["result"].as_str()), (0, Some("done")), "{r}");
    assert!(avrdude_verifies(board.port_str(), &v2));
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            &v2,
            "--force",
            "--tool",
            "sh -c exit{baud}",
        ],
    );
    assert_eq!((code, r["stage"].as_str()), (1, Some("writing")), "{r}");
    assert!(r["reason"].as_str().unwrap().contains("`sh` failed"), "{r}");
    let (code, r) = agent(
        &state,
        &[
            "--port",
            board.port_str(),
            "--board",
            "uno",
            "--image",
            &v2,
            "--force",
            "--tool",
            "flash {device}",
        ],
    );
    assert_eq!(code, 1);
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("unknown placeholder"),
        "{r}"
    );
}
