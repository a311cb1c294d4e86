//! Helpers shared by the end-to-end tests: the `continuum` binary, a served
//! orchestrator and other child processes, each killed when dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use continuum_bus::BrokerUrl;

pub const WITHIN: Duration = Duration::from_secs(20);

pub fn example(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(p)
        .display()
        .to_string()
}

/// A `continuum serve` child process, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: String,
    /// What the server printed before it said it listens.
    pub startup: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Serve {
    pub fn start(data: &Path) -> Serve {
        Serve::start_on(data, "127.0.0.1:0")
    }

    pub fn start_on(data: &Path, listen: &str) -> Serve {
        Serve::start_with(data, &["--no-mqtt", "--listen", listen])
    }

    /// `continuum serve --data-dir DATA` with these flags.
    pub fn start_with(data: &Path, flags: &[&str]) -> Serve {
        Serve::try_start_with(data, flags)
            .unwrap_or_else(|(code, said)| panic!("serve exited with {code}:\n{said}"))
    }

    /// Like [`Serve::start_with`], but a server that exits instead of
    /// listening is its exit code and what it printed.
    pub fn try_start_with(data: &Path, flags: &[&str]) -> Result<Serve, (i32, String)> {
        let mut serve = Serve::launch(data, flags);
        serve.wait_listening(WITHIN)?;
        Ok(serve)
    }

    /// `continuum serve --data-dir DATA` with these flags, not waited for
    /// (its `addr` is empty until [`Serve::wait_listening`]).
    pub fn launch(data: &Path, flags: &[&str]) -> Serve {
        let policy = single_machine_policy();
        let default_policy: &[&str] = if flags.contains(&"--policy") {
            &[]
        } else {
            &["--policy", &policy]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_continuum"))
            .arg("serve")
            .args(flags)
            .args(default_policy)
            .arg("--data-dir")
            .arg(data)
            .env("RUST_BACKTRACE", "0")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starts continuum serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Serve {
            child,
            addr: String::new(),
            startup: Vec::new(),
            lines,
        }
    }

    /// Waits until the server says it listens (and learns where), or exits
    /// (its exit code and what it printed).
    pub fn wait_listening(&mut self, within: Duration) -> Result<(), (i32, String)> {
        let within = continuum_bus::testing::within(within);
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => {
                    self.addr = line
                        .split("listening on ")
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .expect("an address")
                        .to_owned();
                    return Ok(());
                }
                Ok(line) => self.startup.push(line),
                // Its stderr closed: it exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let code = self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                    return Err((code, self.startup.join("\n")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "serve neither listened nor exited within {within:?}:\n{}",
                        self.startup.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for a line of the server's stderr that contains `needle`.
    pub fn line_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + continuum_bus::testing::within(WITHIN);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the server printed no line with `{needle}` within {WITHIN:?}"),
            }
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(args)
            .env("CONTINUUM_SERVER", &self.addr)
            .env("USER", "tester")
            .output()
            .expect("runs continuum")
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        continuum_bus::testing::signal(self.child.id(), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM sent");
        let deadline = std::time::Instant::now() + continuum_bus::testing::within(WITHIN);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Any other child process, killed when dropped (even when a test fails).
pub struct Guard(pub Child);

/// `continuum gateway sim`: `count` simulated gateways (`sim-1`…) dialling
/// `orchestrator` (one address, or several separated by commas), each step
/// taking a time drawn from `step_time`, reconciling every 300 ms and
/// dialling again within 500 ms; stopped when dropped.
pub fn sim_fleet(orchestrator: &str, count: usize, step_time: &str, data_dir: &Path) -> Guard {
    Guard(
        Command::new(env!("CARGO_BIN_EXE_continuum"))
            .args(["gateway", "sim", "--orchestrator", orchestrator])
            .args(["--count", &count.to_string()])
            .args(["--step-time", step_time, "--interval", "300ms"])
            .args(["--max-backoff", "500ms", "--summary-every", "0"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts continuum gateway sim"),
    )
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    out(&o)
}

pub fn json(o: Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).expect("JSON output")
}

/// The workload policy of one machine the tests control (host paths,
/// devices and the host network; never the engine's socket, system paths or
/// namespaces): what the test servers and gateways run with unless a test
/// gives its own.
pub fn single_machine_policy() -> String {
    example("policies/single-machine.json")
}

/// A name no other test (or run) uses: for subsystems, gateways, containers.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{}x{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// A free port on loopback, as `127.0.0.1:PORT`.
pub fn free_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Ends every process whose command line holds `marker`, with its whole
/// process group (what a test's process-driver workloads leave, children of
/// their shells included, if the test fails).
pub struct Reap(pub String);

impl Drop for Reap {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::{getpgid, Pid};
        let own = getpgid(None).ok();
        // A process the driver detached (a function host, in its own session)
        // names no marker on its command line: it is found by its working
        // directory, inside the test's.
        let mut all = pids(&self.0);
        all.extend(working_in(&self.0));
        for pid in all {
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let group = getpgid(Some(Pid::from_raw(pid)))
                .ok()
                .filter(|g| g.as_raw() > 1 && Some(*g) != own);
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.0])
            .output();
    }
}

/// The processes whose working directory's path holds `marker`.
pub fn working_in(marker: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (pid != std::process::id() && cwd.to_string_lossy().contains(marker))
                .then(|| pid.to_string())
        })
        .collect()
}

/// The processes whose command line holds `marker`.
pub fn pids(marker: &str) -> Vec<String> {
    let o = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `continuum gateway` with the process driver, no broker and no bridge,
/// dialling `orchestrator` and reconciling every 500 ms (not yet spawned, so a
/// test can adjust its environment).
pub fn process_gateway(id: &str, orchestrator: &str, data_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_continuum"));
    c.args(["gateway", "--no-mqtt", "--no-bridge", "--driver", "process"])
        .args(["--policy", &single_machine_policy()])
        .args(["--id", id, "--orchestrator", orchestrator])
        .args(["--interval", "500ms", "--max-backoff", "500ms"])
        .arg("--data-dir")
        .arg(data_dir);
    c
}

/// Whether Docker can be used; in CI (`CI=true`) its absence is a failure.
pub fn docker_ready() -> bool {
    let usable = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the Docker engine is not usable");
        }
        eprintln!("skipped: the Docker engine is not usable");
    }
    usable
}

/// The static function host, from `CONTINUUM_FUNCTION_HOST` (scripts/test.sh
/// builds it); in CI its absence is a failure.
pub fn function_host() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("CONTINUUM_FUNCTION_HOST")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but CONTINUUM_FUNCTION_HOST names no file (scripts/build-function-host.sh)");
        }
        eprintln!("skipped: CONTINUUM_FUNCTION_HOST is not set (scripts/build-function-host.sh builds it)");
    }
    found
}

/// The static function host: `CONTINUUM_FUNCTION_HOST`'s, or built now by
/// scripts/build-function-host.sh (the benches, which run it whatever).
pub fn built_function_host() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CONTINUUM_FUNCTION_HOST").map(std::path::PathBuf::from) {
        if p.is_file() {
            return p;
        }
    }
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-function-host.sh"
    ))
    .stderr(Stdio::inherit())
    .output()
    .expect("runs scripts/build-function-host.sh");
    assert!(out.status.success(), "the function host did not build");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn broker_url(addr: &str) -> BrokerUrl {
    format!("mqtt://{addr}").parse().unwrap()
}

/// `continuum serve` with its embedded global bus; the bus's MQTT 5 address.
pub fn orchestrator(dir: &Path) -> (Serve, BrokerUrl) {
    orchestrator_with(dir, &[])
}

/// The same with more flags.
pub fn orchestrator_with(dir: &Path, flags: &[&str]) -> (Serve, BrokerUrl) {
    let (v4, v5) = (free_port(), free_port());
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        &v4,
        "--mqtt5-listen",
        &v5,
    ];
    all.extend_from_slice(flags);
    let serve = Serve::start_with(&dir.join("orchestrator"), &all);
    (serve, broker_url(&v5))
}

/// A `continuum gateway` process `id` with `driver`, its own data directory
/// and working directory under `dir`, its log in `dir/<id>.log`, and no
/// --context-root (build contexts and sources come as blobs); its local
/// broker's MQTT 5 address and the address of its metrics.
pub fn function_gateway(
    dir: &Path,
    serve: &Serve,
    id: &str,
    driver: &str,
    host: &Path,
) -> (Guard, BrokerUrl, String) {
    let (v4, v5, metrics) = (free_port(), free_port(), free_port());
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    let cwd = dir.join(format!("{id}-cwd"));
    std::fs::create_dir_all(&cwd).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args([
            "gateway",
            "--id",
            id,
            "--orchestrator",
            &serve.addr,
            "--driver",
            driver,
        ])
        .args(["--mqtt-listen", &v4, "--mqtt5-listen", &v5])
        .args(["--metrics-listen", &metrics])
        .arg("--data-dir")
        .arg(dir.join(id))
        .current_dir(&cwd)
        .arg("--function-host")
        .arg(host)
        .args(["--interval", "1s", "--max-backoff", "2s"])
        .args(["--policy", &single_machine_policy()])
        .env("CONTINUUM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starts continuum gateway");
    (Guard(child), broker_url(&v5), metrics)
}

/// The value of `series` (name and labels, as written) in a Prometheus text
/// exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Removes the containers of `subsystem` and the images of `functions` (and
/// the function host image once nothing is built from it): what a function
/// test leaves on the Docker engine, even when it fails.
pub fn remove_docker_objects(subsystem: &str, functions: &[String]) {
    let o = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=continuum.subsystem={}", subsystem))
        .output();
    if let Ok(o) = o {
        let ids = String::from_utf8_lossy(&o.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
    for f in functions {
        let o = Command::new("docker")
            .args(["images", "-q", &format!("continuum/{f}")])
            .output();
        if let Ok(o) = o {
            let ids = String::from_utf8_lossy(&o.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .arg("rmi")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
        }
    }
    remove_function_host_image();
}

/// Removes the function host image a gateway agent imports at start, once
/// nothing is built from it any more (the tests running now share it).
pub fn remove_function_host_image() {
    let _ = Command::new("sh")
        .args([
            "-c",
            "docker images -q continuum/function-host | xargs -r docker rmi >/dev/null 2>&1",
        ])
        .output();
}
/// Records a fault scenario's outcome and time to recover, for
/// `scripts/reliability.sh` (one file per scenario under the target's tmp).
pub fn record(scenario: &str, fault: &str, outcome: &str, recovered_in: Duration) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let line = format!("{fault}\t{outcome}\t{:.1}\n", recovered_in.as_secs_f64());
    std::fs::write(dir.join(format!("{scenario}.tsv")), line).unwrap();
    eprintln!("{scenario}: {fault} | {outcome} | recovered in {recovered_in:?}");
}

pub mod browser;
pub mod devices;
pub mod hosts;

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: &str) {
    continuum_bus::testing::wait_for("a listener on the port", WITHIN, || {
        std::net::TcpStream::connect(addr).ok().map(|_| ())
    });
}
