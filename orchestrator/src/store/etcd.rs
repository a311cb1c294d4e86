//! The store in an etcd cluster, shared by several orchestrators of which one
//! leads.
//!
//! **Leading.** Each orchestrator holds an etcd lease, kept alive while it
//! runs, and campaigns in an election under the store's prefix. The one
//! elected loads the state and serves; the others wait in the campaign (they
//! stand by) and one of them is elected when the leader's lease ends: at
//! once when it stops, within the lease's TTL when it dies.
//!
//! **Fencing.** Every write is a transaction that holds only while the
//! election key this orchestrator won still exists with the revision it was
//! created at. Once its lease has ended, a deposed leader's writes are
//! refused by etcd itself, whatever the deposed process believes; it is
//! told ([`StoreError::Deposed`]) and stops.
//!
//! The orchestrator calls its store from blocking threads; the etcd client is
//! async, so it runs on a small runtime of its own and each call waits for
//! its answer there.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use continuum_proto::v1::{AgentOffer, Diverged, Event, Gateway, Revision, Rollout};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, KeyValue,
    SortOrder, SortTarget, Txn, TxnOp,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::etcd_ops::{self, Framed, Layout, Op, Parts};
use super::{Backend, Changes, Snapshot, StoreError, FORMAT};
use crate::records::StoredRevision;

/// Where the store is and how this orchestrator campaigns to lead it.
#[derive(Clone)]
pub struct EtcdConfig {
    /// The cluster's client endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// Every key is under this prefix (several systems may share one etcd).
    pub prefix: String,
    /// How long the leader's lease lasts without being renewed: a dead
    /// leader is replaced after about this long.
    pub lease_ttl: Duration,
    /// What this orchestrator tells the others about itself (its address).
    pub name: String,
    /// The etcd user and password, when etcd's authentication is on.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdConfig {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("name", &self.name)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl EtcdConfig {
    /// Parses `etcd://[user:password@]host:port[,host:port…][/prefix]`.
    pub fn parse(url: &str, name: &str) -> Result<EtcdConfig, String> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            format!("`{url}`: an etcd store is named etcd://[user:password@]host:port[,host:port…][/prefix]")
        })?;
        let (user, rest) = match rest.split_once('@') {
            Some((credentials, rest)) => {
                let (u, p) = credentials
                    .split_once(':')
                    .filter(|(u, _)| !u.is_empty())
                    .ok_or_else(|| format!("`{url}`: credentials are user:password"))?;
                (Some((u.to_owned(), p.to_owned())), rest)
            }
            None => (None, rest),
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{}", p.trim_matches('/'))),
            None => (rest, "/continuum".to_owned()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!("`{url}` names no etcd endpoint"));
        }
        for e in &endpoints {
            let port_ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("`{url}`: the endpoint `{e}` is not host:port"));
            }
        }
        Ok(EtcdConfig {
            endpoints,
            prefix,
            lease_ttl: Duration::from_secs(5),
            name: name.to_owned(),
            user,
        })
    }

    fn at(&self) -> String {
        format!("{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// The largest answer read from etcd (a page of up to 64 values of at most
/// 512 KiB each, and headroom).
const MAX_ANSWER: usize = 48 << 20;
/// Keys read per page.
const PAGE: i64 = 64;
/// How long a request is retried while etcd has no quorum or a member is
/// gone, before the caller is told.
const RETRY_FOR: Duration = Duration::from_secs(8);

/// A runtime of the store's own; shut down without waiting, wherever it is
/// dropped (an async context forbids waiting).
#[derive(Debug)]
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The election key this orchestrator holds while it leads.
#[derive(Debug, Clone)]
struct Fence {
    key: Vec<u8>,
    rev: i64,
    lease: i64,
}

/// The leading orchestrator's store in etcd.
pub struct EtcdStore {
    /// Dropped last.
    _rt: OwnRuntime,
    handle: tokio::runtime::Handle,
    inner: std::sync::Arc<Inner>,
}

/// What the calls share, on the store's runtime.
struct Inner {
    client: Client,
    layout: Layout,
    at: String,
    fence: Fence,
    lost: CancellationToken,
    /// How many parts each split value has (only the leader writes).
    parts: Mutex<Parts>,
    next_journal: AtomicU64,
    /// Tests: a batch that needs the journal stops at its commit point, as
    /// if the leader died there.
    #[cfg(test)]
    die_at_commit_point: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("at", &self.inner.at)
            .field("lease", &self.inner.fence.lease)
            .finish_non_exhaustive()
    }
}

fn etcd_error(at: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd {
        at: at.to_owned(),
        cause: e.to_string(),
    }
}

/// Whether an error may pass once etcd has a quorum again or another member
/// answers.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            // The election service answers every error as UNKNOWN, refusals
            // of who we are among them: those will not pass.
            let refused = [
                "user name",
                "permission denied",
                "authentication",
                "auth token",
            ]
            .iter()
            .any(|m| s.message().contains(m));
            !refused
                && matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::Aborted
                )
        }
        _ => false,
    }
}

/// Runs `f` until it succeeds, fails for good, or [`RETRY_FOR`] has passed.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Err(e) if transient(&e) && start.elapsed() < RETRY_FOR => {
                tracing::debug!(error = %e, "etcd: retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

impl EtcdStore {
    /// Connects, stands by until this orchestrator is elected, then makes
    /// the store ready (the journal replayed). `standing_by` is told who
    /// leads while this one waits.
    pub async fn lead(
        config: EtcdConfig,
        standing_by: impl Fn(&str) + Send + 'static,
    ) -> Result<EtcdStore, StoreError> {
        let at = config.at();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| etcd_error(&at, format!("cannot start its runtime: {e}")))?;
        let handle = rt.handle().clone();
        let rt = OwnRuntime(Some(rt));
        let layout = Layout::new(&config.prefix);
        let lost = CancellationToken::new();
        let (client, fence) = handle
            .spawn(campaign(
                config.clone(),
                layout.clone(),
                lost.clone(),
                standing_by,
            ))
            .await
            .map_err(|e| etcd_error(&at, e))??;
        let inner = std::sync::Arc::new(Inner {
            client,
            layout,
            at: at.clone(),
            fence,
            lost,
            parts: Mutex::new(Parts::new()),
            next_journal: AtomicU64::new(1),
            #[cfg(test)]
            die_at_commit_point: Default::default(),
        });
        let store = EtcdStore {
            _rt: rt,
            handle,
            inner,
        };
        let me = store.shared();
        store
            .handle
            .spawn(async move { me.init().await })
            .await
            .map_err(|e| etcd_error(&at, e))??;
        Ok(store)
    }

    /// Cancelled once this orchestrator may no longer lead (its lease ended,
    /// or a write was fenced off).
    pub fn lost(&self) -> CancellationToken {
        self.inner.lost.clone()
    }

    /// One key's raw value.
    fn run_get(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let me = self.shared();
        self.run(async move { me.get_raw(key).await })
    }

    fn shared(&self) -> std::sync::Arc<Inner> {
        std::sync::Arc::clone(&self.inner)
    }

    /// Waits here for `f`, run on the store's runtime.
    fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        // Nothing sent: the call panicked, or the runtime is shutting down.
        rx.recv()
            .unwrap_or_else(|_| Err(etcd_error(&self.inner.at, "the etcd client's call failed")))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads until `buf` is full or the file ends; how much was read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

impl Inner {
    fn corrupt(&self, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            at: self.at.clone(),
            what: what.into(),
        }
    }

    /// Checks the format, replays the journal and learns which values are
    /// split.
    async fn init(&self) -> Result<(), StoreError> {
        let format_key = self.layout.key("meta/", "format");
        let found = self.get_raw(format_key.clone()).await?;
        match found {
            None => {
                self.write(vec![Op::Put {
                    key: format_key,
                    value: FORMAT.to_string().into_bytes(),
                }])
                .await?;
            }
            Some(v) => {
                let found: u64 = String::from_utf8_lossy(&v)
                    .parse()
                    .map_err(|_| self.corrupt("the format key is not a number"))?;
                if found != FORMAT {
                    return Err(StoreError::Format {
                        at: self.at.clone(),
                        found,
                    });
                }
            }
        }
        let parts_keys = self.range_keys("parts/").await?;
        *self.parts.lock().unwrap_or_else(|e| e.into_inner()) =
            etcd_ops::parts_index(&self.layout, parts_keys.iter().map(String::as_str));
        // Journal entries left by a leader that died while applying them.
        let mut newest = 0;
        for kv in self.range("journal/", None).await? {
            let key = kv.key_str().map_err(|e| self.corrupt(e.to_string()))?;
            let id: u64 = self
                .layout
                .id("journal/", key)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.corrupt(format!("a journal key `{key}`")))?;
            let n = u32::from_be_bytes(
                kv.value()
                    .try_into()
                    .map_err(|_| self.corrupt(format!("journal entry {id}")))?,
            );
            let (from, to) = self.layout.journal_parts_range(id);
            let parts: Vec<Vec<u8>> = self
                .range_between(from, to, None)
                .await?
                .into_iter()
                .map(|kv| kv.value().to_vec())
                .collect();
            if parts.len() != n as usize {
                return Err(self.corrupt(format!(
                    "journal entry {id} has {} parts of {n}",
                    parts.len()
                )));
            }
            let ops = etcd_ops::from_journal(&parts).map_err(|e| self.corrupt(e))?;
            tracing::info!(
                entry = id,
                ops = ops.len(),
                "etcd: replaying a journal entry"
            );
            self.apply_journaled(id, ops, Vec::new()).await?;
            newest = newest.max(id);
        }
        // Parts of entries whose header was never written: never committed.
        self.write(vec![Op::DeleteRange {
            from: self.layout.key("jparts/", ""),
            to: self.layout.table_end("jparts/"),
        }])
        .await?;
        let start = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros(),
        )
        .unwrap_or(u64::MAX / 2);
        self.next_journal
            .store(start.max(newest + 1), Ordering::SeqCst);
        Ok(())
    }

    /// One transaction of `ops`, fenced by the election key.
    async fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let txn_ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
                Op::DeleteRange { from, to } => {
                    TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)))
                }
            })
            .collect();
        let fence = self.fence.clone();
        let kv = self.client.kv_client();
        let answer = retry(|| {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    fence.key.clone(),
                    CompareOp::Equal,
                    fence.rev,
                )])
                .and_then(txn_ops.clone());
            let mut kv = kv.clone();
            async move { kv.txn(txn).await }
        })
        .await;
        match answer {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => {
                self.lost.cancel();
                Err(StoreError::Deposed {
                    at: self.at.clone(),
                })
            }
            Err(e) => Err(etcd_error(&self.at, e)),
        }
    }

    /// Applies a committed journal entry, then removes it.
    async fn apply_journaled(
        &self,
        id: u64,
        ops: Vec<Op>,
        after: Vec<(String, u32)>,
    ) -> Result<(), StoreError> {
        for group in etcd_ops::groups(ops) {
            self.write(group).await?;
        }
        let (from, to) = self.layout.journal_parts_range(id);
        self.write(vec![
            Op::DeleteRange { from, to },
            Op::Delete {
                key: self.layout.journal_key(id),
            },
        ])
        .await?;
        self.learn_parts(after);
        Ok(())
    }

    fn learn_parts(&self, after: Vec<(String, u32)>) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, n) in after {
            if n == 0 {
                parts.remove(&key);
            } else {
                parts.insert(key, n);
            }
        }
    }

    async fn commit_async(&self, changes: &Changes) -> Result<(), StoreError> {
        let rchanges = if changes.clear_rollout_changes {
            self.range_keys("rchange/").await?
        } else {
            Vec::new()
        };
        let (ops, after) = {
            let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            etcd_ops::plan(&self.layout, changes, &parts, &rchanges)
        };
        if etcd_ops::fits(&ops) {
            self.write(ops).await?;
            self.learn_parts(after);
            return Ok(());
        }
        // Too big for one transaction: the journal entry is the commit point.
        let id = self.next_journal.fetch_add(1, Ordering::SeqCst);
        let parts = etcd_ops::journal(&ops);
        let n = u32::try_from(parts.len()).expect("fewer than 4 G parts");
        for (i, part) in (0..).zip(parts) {
            self.write(vec![Op::Put {
                key: self.layout.journal_part(id, i),
                value: part,
            }])
            .await?;
        }
        self.write(vec![Op::Put {
            key: self.layout.journal_key(id),
            value: n.to_be_bytes().to_vec(),
        }])
        .await?;
        #[cfg(test)]
        if self.die_at_commit_point.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = self.apply_journaled(id, ops, after).await {
            // Committed, but not all applied: whoever leads next replays it.
            self.lost.cancel();
            tracing::error!(error = %e, entry = id, "etcd: a committed batch could not be applied; stepping down so that the next leader applies it");
            return Err(e);
        }
        Ok(())
    }

    /// One read, retried while etcd is briefly unavailable.
    async fn get(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, StoreError> {
        let kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER);
        retry(|| {
            let mut kv = kv.clone();
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
        .map_err(|e| etcd_error(&self.at, e))
    }

    async fn get_raw(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.get(key, None).await?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Every key of `table` (keys only).
    async fn range_keys(&self, table: &str) -> Result<Vec<String>, StoreError> {
        let kvs = self
            .range_between_with(
                self.layout.key(table, ""),
                self.layout.table_end(table),
                None,
                true,
            )
            .await?;
        kvs.iter()
            .map(|kv| {
                kv.key_str()
                    .map(str::to_owned)
                    .map_err(|e| self.corrupt(e.to_string()))
            })
            .collect()
    }

    /// Up to `limit` entries of `table` in key order (all: `None`).
    async fn range(&self, table: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        self.range_between(
            self.layout.key(table, ""),
            self.layout.table_end(table),
            limit,
        )
        .await
    }

    async fn range_between(
        &self,
        from: String,
        to: String,
        limit: Option<usize>,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.range_between_with(from, to, limit, false).await
    }

    /// `[from, to)` in pages, in key order.
    async fn range_between_with(
        &self,
        mut from: String,
        to: String,
        limit: Option<usize>,
        keys_only: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        loop {
            let want = limit.map_or(PAGE, |l| {
                PAGE.min(i64::try_from(l - out.len()).unwrap_or(PAGE))
            });
            let mut options = GetOptions::new().with_range(to.clone()).with_limit(want);
            if keys_only {
                options = options.with_keys_only();
            }
            let mut r = self.get(from.clone(), Some(options)).await?;
            let more = r.more();
            let page = r.take_kvs();
            let Some(last) = page.last() else { break };
            let mut next = last.key().to_vec();
            next.push(0);
            from = String::from_utf8(next).map_err(|e| self.corrupt(e.to_string()))?;
            out.extend(page);
            if !more || limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
        Ok(out)
    }

    /// The newest entry of `table`, if any.
    async fn last(&self, table: &str) -> Result<Option<KeyValue>, StoreError> {
        let options = GetOptions::new()
            .with_range(self.layout.table_end(table))
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        let mut r = self.get(self.layout.key(table, ""), Some(options)).await?;
        Ok(r.take_kvs().into_iter().next())
    }

    /// A stored value, its parts joined.
    async fn value(&self, kv: &KeyValue) -> Result<Vec<u8>, StoreError> {
        let key = kv.key_str().map_err(|e| self.corrupt(e.to_string()))?;
        match etcd_ops::unframe(kv.value()).map_err(|e| self.corrupt(format!("{key}: {e}")))? {
            Framed::Inline(bytes) => Ok(bytes.to_vec()),
            Framed::Split(n) => {
                let (from, to) = self.layout.parts_range(key);
                let parts = self.range_between(from, to, None).await?;
                if parts.len() != n as usize {
                    return Err(self.corrupt(format!("{key} has {} parts of {n}", parts.len())));
                }
                Ok(parts.iter().flat_map(|p| p.value().to_vec()).collect())
            }
        }
    }

    async fn decode<M: Message + Default>(
        &self,
        kv: &KeyValue,
        what: &str,
    ) -> Result<M, StoreError> {
        let bytes = self.value(kv).await?;
        M::decode(bytes.as_slice()).map_err(|e| self.corrupt(format!("{what}: {e}")))
    }

    /// Every entry of `table`, by id.
    async fn all<M: Message + Default>(
        &self,
        table: &str,
        what: &str,
    ) -> Result<Vec<(String, M)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.range(table, None).await? {
            let key = kv.key_str().map_err(|e| self.corrupt(e.to_string()))?;
            let id = self.layout.id(table, key).unwrap_or(key).to_owned();
            let m = self.decode(&kv, &format!("{what} of `{id}`")).await?;
            out.push((id, m));
        }
        Ok(out)
    }

    async fn load_async(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        if let Some(head) = self.get_raw(self.layout.key("meta/", "head")).await? {
            let n: u64 = match etcd_ops::unframe(&head) {
                Ok(Framed::Inline(bytes)) => String::from_utf8_lossy(bytes).parse().ok(),
                _ => None,
            }
            .ok_or_else(|| self.corrupt("the head is not a number"))?;
            snapshot.head = Some(
                self.revision_async(n)
                    .await?
                    .ok_or_else(|| self.corrupt(format!("the head revision {n} is missing")))?,
            );
        }
        snapshot.targets = self.all("target/", "target").await?;
        snapshot.currents = self.all("current/", "current model").await?;
        snapshot.gateways = self
            .all::<Gateway>("gateway/", "gateway")
            .await?
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        if let Some(kv) = self.last("event/").await? {
            snapshot.last_seq = self.decode::<Event>(&kv, "event").await?.seq;
        }
        if let Some(kv) = self.last("rollout/").await? {
            snapshot.rollout = Some(self.decode(&kv, "rollout").await?);
        }
        snapshot.rollout_changes = self.all("rchange/", "rollout change").await?;
        snapshot.agent_offer = self
            .all::<AgentOffer>("agent/", "agent offer")
            .await?
            .into_iter()
            .find(|(k, _)| k == "offer")
            .map(|(_, o)| o);
        Ok(snapshot)
    }

    async fn revision_async(&self, n: u64) -> Result<Option<StoredRevision>, StoreError> {
        let key = self.layout.seq_key("rev/", n);
        let mut r = self.get(key, None).await?;
        match r.take_kvs().into_iter().next() {
            None => Ok(None),
            Some(kv) => Ok(Some(self.decode(&kv, &format!("revision {n}")).await?)),
        }
    }
}

/// Connects, keeps a lease alive and campaigns until elected.
async fn campaign(
    config: EtcdConfig,
    layout: Layout,
    lost: CancellationToken,
    standing_by: impl Fn(&str),
) -> Result<(Client, Fence), StoreError> {
    let at = config.at();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.clone());
    }
    let client = Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(|e| etcd_error(&at, e))?;
    let ttl = i64::try_from(config.lease_ttl.as_secs())
        .unwrap_or(5)
        .max(1);
    let mut lease_client = client.lease_client();
    let lease = retry(|| {
        let mut c = lease_client.clone();
        async move { c.grant(ttl, None).await }
    })
    .await
    .map_err(|e| etcd_error(&at, e))?
    .id();
    lease_client = client.lease_client();
    tokio::spawn(keep_alive(
        lease_client,
        lease,
        config.lease_ttl.max(Duration::from_secs(1)),
        lost.clone(),
        at.clone(),
    ));
    let election = layout.election();
    let mut told = String::new();
    loop {
        if lost.is_cancelled() {
            return Err(etcd_error(&at, "the lease ended while standing by"));
        }
        // Who leads now, for the operator.
        let mut ec = client.election_client();
        if let Ok(r) = ec.leader(election.clone()).await {
            if let Some(kv) = r.kv() {
                let who = String::from_utf8_lossy(kv.value()).into_owned();
                if who != told && kv.lease() != lease {
                    standing_by(&who);
                    told = who;
                }
            }
        }
        // The campaign answers once elected; it is asked again now and then
        // so that a member gone mid-campaign does not stall it.
        let asked = tokio::time::timeout(
            config.lease_ttl.max(Duration::from_secs(2)),
            ec.campaign(election.clone(), config.name.clone(), lease),
        )
        .await;
        match asked {
            Ok(Ok(mut r)) => {
                let leader = r
                    .take_leader()
                    .ok_or_else(|| etcd_error(&at, "elected without a leader key"))?;
                tracing::info!(lease, rev = leader.rev(), "etcd: elected to lead");
                let fence = Fence {
                    key: leader.key().to_vec(),
                    rev: leader.rev(),
                    lease,
                };
                return Ok((client, fence));
            }
            Ok(Err(e)) if !transient(&e) => return Err(etcd_error(&at, e)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "etcd: campaign interrupted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {}
        }
    }
}

/// Renews the lease a few times per TTL; cancels `lost` once it has ended
/// or could not be renewed for a whole TTL.
async fn keep_alive(
    mut client: etcd_client::LeaseClient,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    at: String,
) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    while !lost.is_cancelled() {
        if let Ok((mut keeper, mut stream)) = client.keep_alive(lease).await {
            loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = Instant::now(),
                    Ok(Ok(Some(_))) => {
                        tracing::error!(%at, "etcd: the lease has ended");
                        lost.cancel();
                        return;
                    }
                    _ => break,
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = lost.cancelled() => return,
                }
            }
        }
        if renewed.elapsed() >= ttl {
            tracing::error!(%at, "etcd: the lease could not be renewed for its whole TTL");
            lost.cancel();
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = lost.cancelled() => return,
        }
    }
}

impl Drop for EtcdStore {
    /// Gives the lease up, so that a standby leads at once.
    fn drop(&mut self) {
        let mut client = self.inner.client.lease_client();
        let lease = self.inner.fence.lease;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(client.revoke(lease).await.is_ok());
        });
        let _ = rx.recv_timeout(Duration::from_secs(2));
        self.inner.lost.cancel();
    }
}

impl Backend for EtcdStore {
    fn location(&self) -> String {
        format!("etcd://{}", self.inner.at)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let me = self.shared();
        self.run(async move { me.load_async().await })
    }

    fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let me = self.shared();
        let changes = changes.clone();
        self.run(async move { me.commit_async(&changes).await })
    }

    fn revision(&self, number: u64) -> Result<Option<StoredRevision>, StoreError> {
        let me = self.shared();
        self.run(async move { me.revision_async(number).await })
    }

    fn history(&self, limit: usize) -> Result<Vec<Revision>, StoreError> {
        let me = self.shared();
        self.run(async move {
            let (from, to) = (me.layout.key("rev/", ""), me.layout.table_end("rev/"));
            let mut options = GetOptions::new()
                .with_range(to)
                .with_sort(SortTarget::Key, SortOrder::Descend);
            if limit > 0 {
                options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
            }
            let mut r = me.get(from.clone(), Some(options)).await?;
            let mut out = Vec::new();
            for kv in r.take_kvs() {
                let r: StoredRevision = me.decode(&kv, "revision").await?;
                out.extend(r.meta);
            }
            Ok(out)
        })
    }

    fn rollouts_of(&self, revisions: &[u64]) -> Result<Vec<Rollout>, StoreError> {
        let me = self.shared();
        let revisions = revisions.to_vec();
        self.run(async move {
            let mut out = Vec::new();
            for n in revisions {
                if let Some(v) = me.get_raw(me.layout.seq_key("rollout/", n)).await? {
                    let Framed::Inline(bytes) = etcd_ops::unframe(&v).map_err(|e| me.corrupt(e))?
                    else {
                        return Err(me.corrupt(format!("rollout of revision {n} is split")));
                    };
                    out.push(
                        Rollout::decode(bytes)
                            .map_err(|e| me.corrupt(format!("rollout of revision {n}: {e}")))?,
                    );
                }
            }
            Ok(out)
        })
    }

    fn divergences(&self) -> Result<Vec<Diverged>, StoreError> {
        let me = self.shared();
        self.run(async move {
            let mut out: Vec<Diverged> = Vec::new();
            for kv in me.range("div/", None).await? {
                out.push(me.decode(&kv, "divergence").await?);
            }
            out.reverse();
            Ok(out)
        })
    }

    fn events_after(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError> {
        let me = self.shared();
        self.run(async move {
            let from = me.layout.seq_key("event/", after.saturating_add(1));
            let to = me.layout.table_end("event/");
            let mut out = Vec::new();
            for kv in me.range_between(from, to, Some(max)).await? {
                out.push(me.decode(&kv, "event").await?);
            }
            Ok(out)
        })
    }

    fn first_seq(&self) -> Result<u64, StoreError> {
        let me = self.shared();
        self.run(async move {
            match me.range("event/", Some(1)).await?.first() {
                None => Ok(0),
                Some(kv) => Ok(me.decode::<Event>(kv, "event").await?.seq),
            }
        })
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        let me = self.shared();
        self.run(async move {
            let options = GetOptions::new()
                .with_range(me.layout.table_end("event/"))
                .with_count_only();
            let r = me.get(me.layout.key("event/", ""), Some(options)).await?;
            Ok(u64::try_from(r.count()).unwrap_or(0))
        })
    }

    fn share_blob(&self, digest: &str, path: &std::path::Path) -> Result<(), StoreError> {
        let me = self.shared();
        let header = me.layout.key("blob/", digest);
        if self.run_get(header.clone())?.is_some() {
            return Ok(());
        }
        let io = |e: std::io::Error| etcd_error(&me.at, format!("blob {digest}: {e}"));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut buf = vec![0u8; etcd_ops::INLINE_MAX];
        let mut size = 0u64;
        for i in 0u32.. {
            let n = read_full(&mut file, &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            let op = Op::Put {
                key: me.layout.key("bpart/", &format!("{digest}/{i:06}")),
                value: buf[..n].to_vec(),
            };
            let m = self.shared();
            self.run(async move { m.write(vec![op]).await })?;
        }
        // The header last: a blob is shared once all of it is.
        let mut value = size.to_be_bytes().to_vec();
        value.extend(now_ms().to_be_bytes());
        let m = self.shared();
        self.run(async move { m.write(vec![Op::Put { key: header, value }]).await })
    }

    fn shared_blob(&self, digest: &str, out: &mut dyn std::io::Write) -> Result<bool, StoreError> {
        let me = self.shared();
        if self.run_get(me.layout.key("blob/", digest))?.is_none() {
            return Ok(false);
        }
        let mut from = me.layout.key("bpart/", &format!("{digest}/"));
        let to = me.layout.key("bpart/", &format!("{digest}0"));
        loop {
            let m = self.shared();
            let (f, t) = (from.clone(), to.clone());
            let page = self.run(async move { m.range_between(f, t, Some(8)).await })?;
            let Some(last) = page.last() else { break };
            let mut next = last.key().to_vec();
            next.push(0);
            from = String::from_utf8(next).map_err(|e| me.corrupt(e.to_string()))?;
            for kv in &page {
                out.write_all(kv.value())
                    .map_err(|e| etcd_error(&me.at, format!("blob {digest}: {e}")))?;
            }
            if page.len() < 8 {
                break;
            }
        }
        Ok(true)
    }

    fn collect_shared_blobs(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: Duration,
    ) -> Result<usize, StoreError> {
        let me = self.shared();
        let m = self.shared();
        let headers = self.run(async move { m.range("blob/", None).await })?;
        let now = now_ms();
        let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let mut removed = 0;
        for kv in headers {
            let key = kv.key_str().map_err(|e| me.corrupt(e.to_string()))?;
            let Some(digest) = me.layout.id("blob/", key) else {
                continue;
            };
            let shared_at = kv
                .value()
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(0, i64::from_be_bytes);
            if keep.contains(digest) || now.saturating_sub(shared_at) <= grace {
                continue;
            }
            let ops = vec![
                Op::Delete {
                    key: key.to_owned(),
                },
                Op::DeleteRange {
                    from: me.layout.key("bpart/", &format!("{digest}/")),
                    to: me.layout.key("bpart/", &format!("{digest}0")),
                },
            ];
            let m = self.shared();
            self.run(async move { m.write(ops).await })?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
#[path = "etcd_tests.rs"]
mod tests;
