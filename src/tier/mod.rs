//! Tiers: an orchestrator that serves as the gateways of a higher one, so a
//! regional orchestrator runs a subtree of the megamodel.
//!
//! The regional orchestrator's subtree is made of the gateways that dial
//! it. For each of them it opens a gateway link to the tier above under
//! that gateway's id (the one the megamodel above names), so the tier above
//! needs nothing new: it pushes, counts generations, stages rollouts and
//! shows status per subsystem as it does for any gateway. What arrives from
//! above becomes a local revision, which the regional orchestrator pushes to
//! its gateways; how they run is reported up, generations translated.
//!
//! Cut off from above, the region keeps its subtree running (its gateways
//! link to it, not above) and takes local applies; linked, it refuses local
//! changes to the subsystems above runs, as a gateway's local API does. On
//! the way back the tier above is told the subsystem diverged, and its
//! target replaces the local one.

mod ledger;
mod uplink;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use continuum_gateway::orchestrators::Orchestrators;
use continuum_orchestrator::Orchestrator;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How a regional orchestrator reaches the tier above.
#[derive(Debug, Clone)]
pub struct TierConfig {
    /// The orchestrators above (several when they share a store; one leads).
    pub above: Orchestrators,
    /// Whom the tier above must be (`https://`).
    pub tls: Option<continuum_proto::tls::ClientTls>,
    /// This orchestrator's name, shown above as where its gateways are.
    pub region: String,
    /// Where the ledger and the blobs fetched from above are kept.
    pub data_dir: PathBuf,
    /// The longest wait between two dials of the tier above.
    pub max_backoff: Duration,
}

/// Starts standing in for this orchestrator's gateways above; runs until
/// the orchestrator stops.
pub fn start(orch: &Orchestrator, config: TierConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let ledger = ledger::Ledger::open(&config.data_dir)?;
    let mut blobs = continuum_gateway::blobs::BlobCache::new(
        config.data_dir.join("blobs-from-above"),
        config.above.clone(),
    );
    if let Some(tls) = &config.tls {
        blobs = blobs.with_tls(tls.clone());
    }
    let known: Vec<String> = ledger.gateways().map(str::to_owned).collect();
    let span = tracing::info_span!("tier_above", region = %config.region, above = %config.above);
    let shared = Arc::new(uplink::Shared {
        orch: orch.clone(),
        ledger: Mutex::new(ledger),
        config,
        blobs,
    });
    orch.spawn_task(move |stop| manage(shared, known, stop).instrument(span));
    Ok(())
}

/// Events read from the log at once.
const EVENT_BATCH: usize = 1000;

/// Keeps one uplink per gateway: those the tier above sent targets for (from
/// the ledger), and every gateway that dials here unnamed (the tier above
/// may name it). Reads the event log once for all of them and tells each
/// what concerns it.
async fn manage(shared: Arc<uplink::Shared>, known: Vec<String>, stop: CancellationToken) {
    let mut waiting = shared.orch.waiting_gateways();
    let mut seq = shared.orch.event_seq();
    let mut last = *seq.borrow_and_update();
    let mut uplinks = Uplinks::default();
    for gateway in &known {
        let subsystem = shared
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(gateway)
            .subsystem;
        uplinks.gateway_of.insert(subsystem, gateway.clone());
    }
    let mut want: Vec<String> = known;
    want.extend(waiting.borrow_and_update().keys().cloned());
    loop {
        for gateway in want.drain(..) {
            uplinks.start(&shared, gateway, &stop);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = waiting.changed() => {
                if changed.is_err() {
                    break;
                }
                want.extend(waiting.borrow_and_update().keys().cloned());
            }
            changed = seq.changed() => {
                if changed.is_err() {
                    break;
                }
                seq.borrow_and_update();
                last = uplinks.dispatch(&shared, last).await;
            }
        }
    }
    for (_, (_, task)) in uplinks.running {
        let _ = task.await;
    }
}

/// The uplinks running, and where to find each.
#[derive(Default)]
struct Uplinks {
    running: BTreeMap<
        String,
        (
            mpsc::UnboundedSender<uplink::Nudge>,
            tokio::task::JoinHandle<()>,
        ),
    >,
    /// The gateway of each subsystem, as events said.
    gateway_of: BTreeMap<String, String>,
}

impl Uplinks {
    fn start(&mut self, shared: &Arc<uplink::Shared>, gateway: String, stop: &CancellationToken) {
        if self.running.contains_key(&gateway) {
            return;
        }
        tracing::info!(%gateway, "standing in for a gateway above");
        let span = tracing::info_span!("uplink", %gateway);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            uplink::run(Arc::clone(shared), gateway.clone(), rx, stop.child_token())
                .instrument(span),
        );
        self.running.insert(gateway, (tx, task));
    }

    /// Reads the events after `last` and nudges the uplinks they concern;
    /// returns the last event read.
    async fn dispatch(&mut self, shared: &uplink::Shared, mut last: u64) -> u64 {
        use continuum_proto::v1::event::Kind;
        let mut refresh: BTreeSet<String> = BTreeSet::new();
        let mut everyone = false;
        loop {
            let events = match shared.orch.events_after(last, EVENT_BATCH).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log: reporting everything again");
                    everyone = true;
                    break;
                }
            };
            let Some(first) = events.first() else { break };
            // Some were forgotten (the log keeps the newest): start over.
            everyone |= first.seq > last + 1;
            for event in &events {
                last = event.seq;
                let Some(kind) = &event.kind else { continue };
                let gateway = match kind {
                    Kind::Revision(_) | Kind::Rollout(_) => {
                        everyone = true;
                        continue;
                    }
                    Kind::TargetSent(t) => self.learn(&t.subsystem, &t.gateway_id),
                    Kind::Connected(c) => self.learn(&c.subsystem, &c.gateway_id),
                    Kind::Acknowledged(a) => Some(a.gateway_id.clone()),
                    Kind::Disconnected(d) => Some(d.gateway_id.clone()),
                    Kind::Diverged(d) => Some(d.gateway_id.clone()),
                    Kind::Component(c) => self.gateway_of.get(&c.subsystem).cloned(),
                    Kind::Current(c) => self.gateway_of.get(&c.subsystem).cloned(),
                    Kind::Step(s) => {
                        if let Some((tx, _)) = self
                            .gateway_of
                            .get(&s.subsystem)
                            .and_then(|g| self.running.get(g))
                        {
                            let _ = tx.send(uplink::Nudge::Step(s.clone()));
                        }
                        continue;
                    }
                };
                refresh.extend(gateway);
            }
            if events.len() < EVENT_BATCH {
                break;
            }
        }
        for (gateway, (tx, _)) in &self.running {
            if everyone || refresh.contains(gateway) {
                let _ = tx.send(uplink::Nudge::Refresh);
            }
        }
        last
    }

    /// Remembers that `gateway` runs `subsystem`; the gateway.
    fn learn(&mut self, subsystem: &str, gateway: &str) -> Option<String> {
        if !subsystem.is_empty() {
            self.gateway_of
                .insert(subsystem.to_owned(), gateway.to_owned());
        }
        Some(gateway.to_owned())
    }
}
