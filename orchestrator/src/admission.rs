//! Which gateways may hold a link. With mutual TLS a link may only register
//! as the id its certificate names; and only ids a model names (or the
//! allow-list holds) are admitted at all. An id no model names is neither
//! registered nor stored: its link waits, holding nothing, until a revision
//! names it (a gateway may start before the first apply), and only so many
//! links may wait at once.

use std::collections::BTreeSet;
use std::sync::Arc;

use continuum_proto::tls::GATEWAY_URI_PREFIX;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How many links of ids no model names may wait at once.
pub const MAX_WAITING: usize = 256;

/// The rules of admission.
#[derive(Debug, Clone, Default)]
pub struct GatewayAdmission {
    /// Every link must present a certificate naming the gateway it registers.
    pub require_certificate: bool,
    /// Ids admitted although no model names them.
    pub allow: BTreeSet<String>,
}

/// The admission rules and the links waiting to be named.
#[derive(Debug, Clone)]
pub(crate) struct Gatekeeper {
    pub rules: GatewayAdmission,
    waiting: Arc<Semaphore>,
    /// The ids whose links wait now, with how many links each (a tier
    /// above is asked for them).
    waiting_ids: Arc<watch::Sender<Waiting>>,
}

/// A link's place among those that wait to be named; given back on drop.
#[derive(Debug)]
pub(crate) struct WaitSlot {
    _permit: OwnedSemaphorePermit,
    gateway: String,
    ids: Arc<watch::Sender<Waiting>>,
}

/// The ids of the links waiting to be named, with how many links each.
pub type Waiting = std::collections::BTreeMap<String, usize>;

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.ids.send_if_modified(|ids| {
            let Some(n) = ids.get_mut(&self.gateway) else {
                return false;
            };
            *n -= 1;
            if *n == 0 {
                ids.remove(&self.gateway);
                return true;
            }
            false
        });
    }
}

impl Gatekeeper {
    pub fn new(rules: GatewayAdmission) -> Gatekeeper {
        Gatekeeper {
            rules,
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            waiting_ids: Arc::new(watch::channel(Waiting::new()).0),
        }
    }

    /// The ids of the links waiting to be named, as they change.
    pub fn waiting(&self) -> watch::Receiver<Waiting> {
        self.waiting_ids.subscribe()
    }

    /// Checks that a link's certificate (the first of `certs`, as the
    /// handshake verified it) names `gateway`.
    pub fn check_certificate(
        &self,
        certs: Option<&[impl AsRef<[u8]>]>,
        gateway: &str,
    ) -> Result<(), Status> {
        if !self.rules.require_certificate {
            return Ok(());
        }
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Err(Status::unauthenticated(format!(
                "gateway `{gateway}` presented no certificate: this orchestrator admits gateways only with a certificate from its CA (`continuum certs gateway {gateway}`)"
            )));
        };
        let named = gateway_of_certificate(leaf.as_ref()).map_err(|why| {
            Status::unauthenticated(format!("the link's certificate is unusable: {why}"))
        })?;
        if named != gateway {
            return Err(Status::permission_denied(format!(
                "the link's certificate is for gateway `{named}`; it may not register as `{gateway}`"
            )));
        }
        Ok(())
    }

    /// Whether `gateway` is admitted without a model naming it.
    pub fn allowed(&self, gateway: &str) -> bool {
        self.rules.allow.contains(gateway)
    }

    /// A place among the links that wait to be named.
    pub fn wait_slot(&self, gateway: &str) -> Result<WaitSlot, Status> {
        let permit = Arc::clone(&self.waiting).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "no model names gateway `{gateway}`, and {MAX_WAITING} links of unnamed gateways wait already; try again later"
            ))
        })?;
        self.waiting_ids.send_if_modified(|ids| {
            let n = ids.entry(gateway.to_owned()).or_default();
            *n += 1;
            *n == 1
        });
        Ok(WaitSlot {
            _permit: permit,
            gateway: gateway.to_owned(),
            ids: Arc::clone(&self.waiting_ids),
        })
    }
}

/// The gateway id a certificate names: its `urn:continuum:gateway:<id>` URI,
/// else its subject's common name.
pub fn gateway_of_certificate(der: &[u8]) -> Result<String, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(GATEWAY_URI_PREFIX) {
                    return Ok(id.to_owned());
                }
            }
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    common_name.ok_or_else(|| {
        format!("it names no gateway (neither a {GATEWAY_URI_PREFIX}<id> URI nor a common name)")
    })
}
