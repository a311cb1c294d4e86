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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use continuum_gateway::orchestrators::Orchestrators;
use continuum_orchestrator::Orchestrator;
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

/// Keeps one uplink per gateway: those the tier above sent targets for (from
/// the ledger), and every gateway that dials here unnamed (the tier above
/// may name it).
async fn manage(shared: Arc<uplink::Shared>, known: Vec<String>, stop: CancellationToken) {
    let mut waiting = shared.orch.waiting_gateways();
    let mut uplinks: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut want: Vec<String> = known;
    want.extend(waiting.borrow_and_update().keys().cloned());
    loop {
        for gateway in want.drain(..) {
            if uplinks.contains_key(&gateway) {
                continue;
            }
            tracing::info!(%gateway, "standing in for a gateway above");
            let span = tracing::info_span!("uplink", %gateway);
            let task = tokio::spawn(
                uplink::run(Arc::clone(&shared), gateway.clone(), stop.child_token())
                    .instrument(span),
            );
            uplinks.insert(gateway, task);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = waiting.changed() => {
                if changed.is_err() {
                    break;
                }
                want.extend(waiting.borrow_and_update().keys().cloned());
            }
        }
    }
    for (_, task) in uplinks {
        let _ = task.await;
    }
}
