//! Safe self-upgrades: the orchestrator offers an agent build (a blob, its
//! SHA-256, signed when the gateway trusts a key) and an agent of another
//! version upgrades to it without stopping what runs.
//!
//! 1. The running agent fetches the build, checks its hash (and signature),
//!    keeps it under `<data-dir>/agent/`, records that it is trying it, and
//!    stops as it stops on SIGTERM — workloads keep running — then replaces
//!    itself (`exec`, the same process id, so a service manager sees one
//!    process throughout) with the *trial*: the old program in a mode that
//!    starts the new one beside it with the same arguments.
//! 2. The new agent registers, re-adopts what runs and, once it has done a
//!    first pass on a live link, says so through a file the trial watches.
//! 3. Ready within the deadline: the trial stops it (SIGTERM: workloads keep
//!    running) and replaces itself with it for good. Not ready — it exited or
//!    the time ran out: the trial kills it and replaces itself with the old
//!    agent again, which records the failure and never tries that build again.
//!
//! The outcome travels with the agent's next registration (`agent_upgrade` on
//! its gateway record). A build with a wrong hash or signature is refused
//! before anything stops.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use continuum_proto::v1::AgentOffer;
use sha2::{Digest, Sha256};

/// Set on the trial: the new executable to try.
const TO_ENV: &str = "CONTINUUM_UPGRADE_TO";
/// Set on the trial: `VERSION SHA256` of the build tried.
const OFFER_ENV: &str = "CONTINUUM_UPGRADE_OFFER";
/// Set on the trial: how long the new agent has to come up, in milliseconds.
const DEADLINE_ENV: &str = "CONTINUUM_UPGRADE_DEADLINE_MS";
/// Set on the new agent while it is tried: the file it creates once ready.
pub const READY_ENV: &str = "CONTINUUM_UPGRADE_READY";
/// Set on an agent the trial started for good: what it replaced.
const FROM_ENV: &str = "CONTINUUM_UPGRADE_FROM";
/// Set on the old agent the trial fell back to: why.
const FAILED_ENV: &str = "CONTINUUM_UPGRADE_FAILED";

const MARK: &[u8] = b"continuum-agent-version:";
const MARKED: usize = 96;

const fn marked() -> [u8; MARKED] {
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    let mut out = [0u8; MARKED];
    let mut i = 0;
    while i < MARK.len() {
        out[i] = MARK[i];
        i += 1;
    }
    let mut j = 0;
    while j < version.len() && i + j < MARKED - 1 {
        out[i + j] = version[j];
        j += 1;
    }
    out
}

/// The build's version, kept in the executable as `continuum-agent-version:`
/// and the version, NUL-padded: a build can be told apart (and a test can
/// make a second build) by that string alone.
#[used]
static BUILD: [u8; MARKED] = marked();

/// The version this build reports.
pub fn version() -> String {
    let bytes: &[u8; MARKED] = std::hint::black_box(&BUILD);
    let rest = &bytes[MARK.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// Why an offered build is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another machine's build.
    #[error("the build is for {0}, this gateway is {1}")]
    Arch(String, String),
    /// The bytes are not the build offered.
    #[error("its SHA-256 is {actual}, the offer says {offered}: refused")]
    Hash {
        /// What the offer says.
        offered: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The signature does not hold (or is missing) under the trusted key.
    #[error("{0}")]
    Signature(String),
}

/// Checks an offered build's bytes (by their SHA-256, `actual`) against the
/// offer and, when one is trusted, the key (ed25519, hex).
pub fn verify(offer: &AgentOffer, actual: &str, key: Option<&str>) -> Result<(), Refused> {
    if offer.arch != std::env::consts::ARCH {
        return Err(Refused::Arch(
            offer.arch.clone(),
            std::env::consts::ARCH.to_owned(),
        ));
    }
    if actual != offer.sha256 {
        return Err(Refused::Hash {
            offered: offer.sha256.clone(),
            actual: actual.to_owned(),
        });
    }
    let Some(key) = key else { return Ok(()) };
    let key = continuum_deploy_agent::sign::key(key)
        .map_err(|e| Refused::Signature(e.to_string().replace("firmware", "agent build")))?;
    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(&actual[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    let signature = Some(offer.signature.as_str()).filter(|s| !s.is_empty());
    continuum_deploy_agent::sign::check(&digest, signature, &key)
        .map_err(|e| Refused::Signature(e.to_string().replace("firmware", "agent build")))
}

/// The SHA-256 of a file, in hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hash)?;
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What the agent keeps about its upgrades (`<data-dir>/upgrade.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// How the last attempt went, as told to the orchestrator.
    #[serde(default)]
    pub note: String,
    /// Builds (SHA-256) that failed or were refused: never tried again.
    #[serde(default)]
    pub refused: Vec<String>,
    /// A build being tried (set before the agent hands over): an agent that
    /// starts and finds it still set, without being told how the trial went,
    /// knows the trial ended without an answer (the process was killed).
    #[serde(default)]
    pub trying: Option<String>,
}

impl Record {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("upgrade.json")
    }

    /// The record of a data directory (empty when there is none).
    pub fn load(data_dir: &Path) -> Record {
        std::fs::read(Record::path(data_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes it atomically and durably.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Record::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).expect("a record serializes"))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Notes a build refused or failed, and why.
    pub fn refuse(&mut self, sha256: &str, note: String) {
        if !self.refused.iter().any(|r| r == sha256) {
            self.refused.push(sha256.to_owned());
        }
        self.trying = None;
        self.note = note;
    }
}

/// Settles the record as this agent starts: how the trial that started it
/// (or fell back to it) went. Returns the note to report.
pub fn on_start(data_dir: &Path) -> String {
    let mut record = Record::load(data_dir);
    if std::env::var_os(READY_ENV).is_some() {
        // On trial: the trial settles the record, through the agent it
        // starts for good or falls back to.
        return format!("on trial as {}", version());
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let from = std::env::var(FROM_ENV).ok();
    let failed = std::env::var(FAILED_ENV).ok();
    let changed = match (from, failed, record.trying.clone()) {
        (Some(from), _, _) => {
            record.trying = None;
            record.note = format!("upgraded from {from} to {} at {now}", version());
            true
        }
        (None, Some(why), trying) => {
            let sha = trying.unwrap_or_default();
            record.refuse(&sha, format!("{why} (at {now}); {} kept", version()));
            true
        }
        (None, None, Some(sha)) => {
            record.refuse(
                &sha,
                format!(
                    "the upgrade to build sha256:{} ended without an answer (the process was stopped); {} kept",
                    short(&sha),
                    version()
                ),
            );
            true
        }
        (None, None, None) => false,
    };
    if changed {
        if let Err(e) = record.save(data_dir) {
            tracing::warn!(error = %e, "cannot record how the upgrade went");
        }
        tracing::info!(note = %record.note, "agent upgrade");
    }
    record.note
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// An upgrade decided: the build, ready to be tried.
#[derive(Debug, Clone)]
pub struct Handover {
    /// The new executable.
    pub program: PathBuf,
    /// Its version and SHA-256.
    pub version: String,
    /// Its SHA-256.
    pub sha256: String,
    /// How long it has to come up.
    pub deadline: Duration,
}

/// Where the shell finds an upgrade decided while the agent ran.
pub type Slot = std::sync::Arc<std::sync::Mutex<Option<Handover>>>;

/// Takes an offered build whose blob is at `blob`: checks it, copies it
/// executable under `<data-dir>/agent/` and records that it is tried.
pub fn prepare(
    offer: &AgentOffer,
    blob: &Path,
    key: Option<&str>,
    data_dir: &Path,
    deadline: Duration,
) -> Result<Handover, String> {
    let actual = sha256_of(blob).map_err(|e| format!("cannot read the build: {e}"))?;
    verify(offer, &actual, key).map_err(|e| e.to_string())?;
    let dir = data_dir.join("agent").join(&offer.sha256);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(OsString::from))
        .unwrap_or_else(|| "continuum-gateway".into());
    let program = dir.join(name);
    let tmp = program.with_extension("partial");
    std::fs::copy(blob, &tmp).map_err(|e| format!("cannot copy the build: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot make the build executable: {e}"))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot write the build: {e}"))?;
    std::fs::rename(&tmp, &program).map_err(|e| format!("cannot place the build: {e}"))?;
    // The copy is what runs: checked again.
    let copied = sha256_of(&program).map_err(|e| format!("cannot read the build: {e}"))?;
    verify(offer, &copied, key).map_err(|e| e.to_string())?;
    let mut record = Record::load(data_dir);
    record.trying = Some(offer.sha256.clone());
    record.note = format!("upgrading to {}", offer.version);
    record
        .save(data_dir)
        .map_err(|e| format!("cannot record the upgrade: {e}"))?;
    Ok(Handover {
        program,
        version: offer.version.clone(),
        sha256: offer.sha256.clone(),
        deadline,
    })
}

/// Replaces this process with the trial of `h` (the running program in trial
/// mode, same arguments). Returns only if that cannot be done.
pub fn hand_over(h: &Handover) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return e,
    };
    tracing::info!(version = %h.version, program = %h.program.display(), "handing over to the new agent build");
    std::process::Command::new(me)
        .args(std::env::args_os().skip(1))
        .env(TO_ENV, &h.program)
        .env(OFFER_ENV, format!("{} {}", h.version, h.sha256))
        .env(DEADLINE_ENV, h.deadline.as_millis().to_string())
        .env_remove(FROM_ENV)
        .env_remove(FAILED_ENV)
        .env_remove(READY_ENV)
        .exec()
}

/// When this process is a trial (see the module), runs it; it never returns
/// then. Otherwise returns at once.
pub fn trial_if_asked() {
    let Some(program) = std::env::var_os(TO_ENV) else {
        return;
    };
    let offer = std::env::var(OFFER_ENV).unwrap_or_default();
    let (version, _) = offer.split_once(' ').unwrap_or((offer.as_str(), ""));
    let deadline = std::env::var(DEADLINE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_millis);
    let e = trial(Path::new(&program), version, deadline);
    eprintln!("the agent upgrade cannot go on: {e}");
    std::process::exit(1);
}

fn trial(program: &Path, version: &str, deadline: Duration) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let old = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return e,
    };
    let ready = std::env::temp_dir().join(format!(
        "continuum-upgrade-{}-{}.ready",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let _ = std::fs::remove_file(&ready);
    eprintln!(
        "trying agent {version} ({}) beside {} for up to {deadline:?}",
        program.display(),
        self::version()
    );
    let outcome = run_trial(program, &args, &ready, deadline);
    let _ = std::fs::remove_file(&ready);
    let mut next = match &outcome {
        Ok(()) => {
            eprintln!("agent {version} came up: it takes over");
            let mut c = std::process::Command::new(program);
            c.env(FROM_ENV, self::version());
            c
        }
        Err(why) => {
            eprintln!(
                "agent {version} did not come up ({why}): {} goes on",
                self::version()
            );
            let mut c = std::process::Command::new(&old);
            c.env(
                FAILED_ENV,
                format!("the upgrade to {version} failed: {why}"),
            );
            c
        }
    };
    next.args(&args)
        .env_remove(TO_ENV)
        .env_remove(OFFER_ENV)
        .env_remove(DEADLINE_ENV)
        .env_remove(READY_ENV)
        .exec()
}

/// What the trial hears from the build it tries.
enum Heard {
    /// It said it is ready.
    Ready,
    /// It exited; how.
    Exited(String),
}

/// Starts `program` with `args` and waits until it says it is ready (then
/// stops it), exits, or `deadline` passes (then kills it).
///
/// It says so through `ready`, a FIFO: one thread blocks reading it, another
/// waiting for the process, and the trial waits for whichever speaks first,
/// up to the deadline.
fn run_trial(
    program: &Path,
    args: &[OsString],
    ready: &Path,
    deadline: Duration,
) -> Result<(), String> {
    nix::unistd::mkfifo(
        ready,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(|e| format!("cannot make the file it signals through: {e}"))?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .env(READY_ENV, ready)
        .env_remove(TO_ENV)
        .env_remove(OFFER_ENV)
        .env_remove(DEADLINE_ENV)
        .env_remove(FROM_ENV)
        .env_remove(FAILED_ENV)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (tx, heard) = std::sync::mpsc::channel();
    {
        let (tx, ready) = (tx.clone(), ready.to_owned());
        // Blocks until the new build opens the FIFO; when it never does,
        // the thread ends with this process (it is replaced right after).
        std::thread::spawn(move || {
            if std::fs::read(&ready).is_ok_and(|b| !b.is_empty()) {
                let _ = tx.send(Heard::Ready);
            }
        });
    }
    std::thread::spawn(move || {
        let how = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        let _ = tx.send(Heard::Exited(how));
    });
    let outcome = match heard.recv_timeout(deadline) {
        Ok(Heard::Ready) => Ok(()),
        Ok(Heard::Exited(how)) => return Err(format!("it exited ({how}) before it was ready")),
        Err(_) => Err(format!(
            "it was not registered and running within {deadline:?}"
        )),
    };
    // Stopped as on SIGTERM, so what runs keeps running; killed if it hangs.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let exited = |within: Duration| {
        let until = std::time::Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match heard.recv_timeout(left) {
                Ok(Heard::Exited(_)) => return true,
                Ok(Heard::Ready) => {}
                Err(_) => return false,
            }
        }
    };
    if !exited(Duration::from_secs(30)) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        exited(Duration::from_secs(5));
    }
    outcome
}

/// What following the orchestrator's offers needs.
#[derive(Debug)]
pub struct Follow {
    /// Where builds are fetched to.
    pub blobs: crate::blobs::BlobCache,
    /// The key builds must be signed with, if any (ed25519, hex).
    pub key: Option<String>,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// How long a new build has to come up.
    pub deadline: Duration,
    /// Where a build taken is put for the shell to hand over.
    pub slot: Slot,
    /// The upgrade note told to the orchestrator.
    pub note: tokio::sync::watch::Sender<String>,
    /// Cancelled to stop the agent for the handover.
    pub stop: tokio_util::sync::CancellationToken,
}

/// Takes the first build offered that this agent should run: another
/// version, for this machine, never refused before, whose bytes and
/// signature check out. A refusal is recorded and told; the agent goes on.
pub async fn follow_offers(
    mut offers: tokio::sync::watch::Receiver<Option<AgentOffer>>,
    f: Follow,
) {
    let mut told = std::collections::HashSet::new();
    loop {
        tokio::select! {
            r = offers.changed() => if r.is_err() { return },
            () = f.stop.cancelled() => return,
        }
        let Some(offer) = offers.borrow_and_update().clone() else {
            continue;
        };
        if offer.version == version() || std::env::var_os(READY_ENV).is_some() {
            // Already this build, or this agent is itself on trial.
            continue;
        }
        let mut record = Record::load(&f.data_dir);
        if record.refused.contains(&offer.sha256) {
            if told.insert(offer.sha256.clone()) {
                tracing::info!(version = %offer.version, "an agent build refused or failed before is offered again: not taken");
            }
            continue;
        }
        if offer.arch != std::env::consts::ARCH {
            if told.insert(offer.sha256.clone()) {
                tracing::info!(version = %offer.version, arch = %offer.arch, "the agent build offered is for another machine");
            }
            continue;
        }
        if !f.blobs.file(&offer.sha256).exists() {
            if let Err(e) = f.blobs.fetch(&offer.sha256).await {
                // Fetched again when offered again (the next link).
                tracing::warn!(version = %offer.version, error = %e, "cannot fetch the agent build offered");
                continue;
            }
        }
        let blob = f.blobs.file(&offer.sha256);
        let (key, dir, deadline) = (f.key.clone(), f.data_dir.clone(), f.deadline);
        let o = offer.clone();
        let prepared =
            tokio::task::spawn_blocking(move || prepare(&o, &blob, key.as_deref(), &dir, deadline))
                .await
                .unwrap_or_else(|e| Err(format!("the check failed: {e}")));
        match prepared {
            Ok(h) => {
                tracing::info!(version = %h.version, "agent build taken: stopping to hand over");
                *f.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
                f.stop.cancel();
                return;
            }
            Err(why) => {
                let note = format!(
                    "the upgrade to {} was refused: {why}; {} kept",
                    offer.version,
                    version()
                );
                tracing::warn!(%note, "agent build refused");
                record.refuse(&offer.sha256, note.clone());
                if let Err(e) = record.save(&f.data_dir) {
                    tracing::warn!(error = %e, "cannot record the refusal");
                }
                f.note.send_replace(note);
            }
        }
    }
}

/// Once this agent, tried as a new build, is registered and has done a pass
/// (it re-adopted what runs), tells the trial by creating its file.
pub async fn signal_ready(
    mut connected: tokio::sync::watch::Receiver<bool>,
    mut snapshot: tokio::sync::watch::Receiver<crate::agent::Snapshot>,
) {
    let Some(file) = std::env::var_os(READY_ENV) else {
        return;
    };
    loop {
        let up = *connected.borrow_and_update();
        let passed = snapshot.borrow_and_update().current.is_some();
        if up && passed {
            // A FIFO: opening it waits for the trial's reader, off the runtime.
            let told = tokio::task::spawn_blocking(move || std::fs::write(&file, version())).await;
            if let Ok(Err(e)) = told {
                tracing::error!(error = %e, "cannot tell the trial this agent is ready");
            }
            return;
        }
        tokio::select! {
            r = connected.changed() => if r.is_err() { return },
            r = snapshot.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(sha: &str) -> AgentOffer {
        AgentOffer {
            version: "9.9.9".into(),
            sha256: sha.into(),
            arch: std::env::consts::ARCH.into(),
            ..AgentOffer::default()
        }
    }

    #[test]
    fn the_build_reports_its_version_from_its_marker() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        assert!(BUILD.starts_with(MARK));
    }

    #[test]
    fn a_build_is_taken_only_with_its_hash_and_under_a_trusted_key_its_signature() {
        use ed25519_dalek::{Signer, SigningKey};
        let sha = "ab".repeat(32);
        assert_eq!(verify(&offer(&sha), &sha, None), Ok(()));
        assert!(matches!(
            verify(&offer(&sha), &"cd".repeat(32), None),
            Err(Refused::Hash { .. })
        ));
        let mut other = offer(&sha);
        other.arch = "riscv64".into();
        assert!(matches!(verify(&other, &sha, None), Err(Refused::Arch(..))));

        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let key: String = signer
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let unsigned = verify(&offer(&sha), &sha, Some(&key)).unwrap_err();
        assert_eq!(
            unsigned.to_string(),
            "the agent build is unsigned, and a trusted key is configured: refused"
        );
        let digest = [0xabu8; 32];
        let mut signed = offer(&sha);
        signed.signature = signer
            .sign(&digest)
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(verify(&signed, &sha, Some(&key)), Ok(()));
        let stranger = SigningKey::from_bytes(&[8u8; 32]);
        signed.signature = stranger
            .sign(&digest)
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(matches!(
            verify(&signed, &sha, Some(&key)),
            Err(Refused::Signature(_))
        ));
    }

    /// A trial of `sh -c script`, with `deadline`.
    fn try_script(script: &str, deadline: Duration) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<OsString> = vec!["-c".into(), script.into()];
        run_trial(
            Path::new("/bin/sh"),
            &args,
            &dir.path().join("ready"),
            deadline,
        )
    }

    #[test]
    fn a_trial_hears_ready_an_exit_or_nothing_within_its_deadline() {
        // Ready: it writes to the FIFO it is given, then runs on until stopped.
        let ready = "echo up > \"$CONTINUUM_UPGRADE_READY\"; exec sleep 60";
        assert_eq!(try_script(ready, Duration::from_secs(20)), Ok(()));
        let e = try_script("exit 3", Duration::from_secs(20)).unwrap_err();
        assert!(
            e.contains("exited (exit status: 3) before it was ready"),
            "{e}"
        );
        let started = std::time::Instant::now();
        let e = try_script("exec sleep 60", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("not registered and running within 300ms"), "{e}");
        // Stopped by SIGTERM at the deadline, not waited for.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn the_record_survives_and_a_refused_build_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(dir.path()), Record::default());
        let mut r = Record {
            trying: Some("aa".into()),
            ..Record::default()
        };
        r.refuse("aa", "bad".into());
        r.refuse("aa", "bad again".into());
        r.save(dir.path()).unwrap();
        let back = Record::load(dir.path());
        assert_eq!(back.refused, ["aa"]);
        assert_eq!(back.note, "bad again");
        assert_eq!(back.trying, None);
    }

    #[test]
    fn a_build_with_the_wrong_bytes_is_refused_before_anything_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"not the build").unwrap();
        let e = prepare(
            &offer(&"00".repeat(32)),
            &blob,
            None,
            dir.path(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("the offer says"), "{e}");
        assert!(!dir.path().join("agent").exists());
        assert_eq!(Record::load(dir.path()).trying, None);
    }
}
