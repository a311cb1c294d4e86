//! Flashing figures on the simulated Arduino Uno (an ATmega328P under simavr,
//! paced to real time, with the Arduino bootloader at 115200 baud):
//!
//! * write + verify of a near-full image (30 KiB, all the flash this
//!   bootloader leaves) by `continuum-agent`, and by avrdude on the same board
//!   in the same run, alternating, several times each: the ratio of medians;
//! * 8 boards flashed at once by 8 agents against one board alone.
//!
//! `cargo bench -p continuum-deploy-agent --bench flash` (needs avrdude and
//! libsimavr; the board is built by scripts/build-sim-board.sh).
//! `FLASH_BENCH_RUNS` changes the number of runs (default 3). Under
//! `cargo test --benches` (smoke): one run of a 4 KiB image, 2 boards at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use continuum_deploy_agent::image::Image;
use continuum_deploy_agent::sim::SimBoard;

#[path = "../../benches/support/report.rs"]
mod report;

use report::{pick, Report, Summary};

fn board(sim: &Path, port: &Path) -> SimBoard {
    SimBoard::start(sim, port, &[]).expect("starts the simulated board")
}

const AGENT: &str = env!("CARGO_BIN_EXE_continuum-agent");

fn sim_board() -> PathBuf {
    if let Some(p) = std::env::var_os("CONTINUUM_SIM_BOARD").map(PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-sim-board.sh"
    ))
    .output()
    .expect("runs scripts/build-sim-board.sh");
    assert!(out.status.success(), "the simulated board did not build");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn agent(port: &Path, image: &Path, state: &Path) -> Duration {
    let t = Instant::now();
    let out = Command::new(AGENT)
        .args(["flash", "--board", "uno", "--force"])
        .arg("--port")
        .arg(port)
        .arg("--image")
        .arg(image)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("runs continuum-agent");
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(r#""result":"done""#),
        "{text}"
    );
    took
}

fn avrdude(port: &Path, image: &Path) -> Duration {
    let t = Instant::now();
    let out = Command::new("avrdude")
        .args(["-c", "arduino", "-p", "m328p", "-b", "115200", "-P"])
        .arg(port)
        .arg(format!("-Uflash:w:{}:i", image.display()))
        .output()
        .expect("runs avrdude");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let bench = "flash";
    let mut report = Report::new(bench);
    if !report::require(
        "avrdude (Debian's avrdude)",
        report::installed("avrdude", "-?"),
        bench,
    ) {
        return;
    }
    let sim = sim_board();
    let runs: usize = std::env::var("FLASH_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(pick(3, 1));
    let kib: u32 = pick(30, 4);
    let dir = tempfile::tempdir().unwrap();
    // Code-like bytes (no page left erased).
    let image = Image {
        data: (0..kib * 1024)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    };
    let hex = dir.path().join("image.hex");
    std::fs::write(&hex, image.to_hex()).unwrap();

    let port = dir.path().join("uno");
    let _board = board(&sim, &port);
    let state = dir.path().join("state");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ours.push(agent(&port, &hex, &state));
        theirs.push(avrdude(&port, &hex));
    }
    println!(
        "write + verify of a {kib} KiB image on the simulated Uno ({runs} runs each, alternating)"
    );
    println!("  continuum-agent runs: {}", list(&ours));
    println!("  avrdude runs:         {}", list(&theirs));
    let base = format!("avrdude: write + verify {kib} KiB (baseline)");
    let (a, b) = (Summary::of(&ours), Summary::of(&theirs));
    report.add(&base, "median", b.p50.as_secs_f64(), "s", b.n);
    report.vs(
        &format!("continuum-agent: write + verify {kib} KiB"),
        "median",
        a.p50.as_secs_f64(),
        "s",
        a.n,
        &base,
    );

    // Several boards at once.
    let count = pick(8, 2);
    let boards: Vec<(PathBuf, SimBoard)> = (0..count)
        .map(|i| {
            let p = dir.path().join(format!("uno{i}"));
            let b = board(&sim, &p);
            (p, b)
        })
        .collect();
    let one = agent(&boards[0].0, &hex, &dir.path().join("s-one"));
    let t = Instant::now();
    let handles: Vec<_> = boards
        .iter()
        .enumerate()
        .map(|(i, (p, _))| {
            let (p, hex, st) = (p.clone(), hex.clone(), dir.path().join(format!("s{i}")));
            std::thread::spawn(move || agent(&p, &hex, &st))
        })
        .collect();
    let each: Vec<Duration> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let all = t.elapsed();
    let base = format!("one board alone, {kib} KiB (baseline)");
    report.add(&base, "all done", one.as_secs_f64(), "s", 1);
    report.vs(
        &format!("{count} boards at once, {kib} KiB each"),
        "all done",
        all.as_secs_f64(),
        "s",
        1,
        &base,
    );
    println!(
        "  slowest of the {count}: {:.2} s",
        each.iter().max().unwrap().as_secs_f64()
    );
}

fn list(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}
