//! TLS for the orchestrator's gRPC port, from PEM files: the server's identity
//! and the CA its gateways' client certificates must come from, and on the
//! other side the CA a client trusts and, for a gateway, its own identity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The URI a gateway certificate carries as a subject alternative name:
/// `urn:continuum:gateway:<id>`.
pub const GATEWAY_URI_PREFIX: &str = "urn:continuum:gateway:";

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct PemError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub why: String,
}

/// Reads a PEM file and checks it holds a block of the kind wanted.
pub fn read_pem(path: &Path, wanted: &str) -> Result<Vec<u8>, PemError> {
    let bytes = std::fs::read(path).map_err(|e| PemError {
        path: path.to_owned(),
        why: format!("cannot read it: {e}"),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let holds = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(wanted))
    });
    if !holds {
        return Err(PemError {
            path: path.to_owned(),
            why: format!("expected a PEM file with a {wanted} block (-----BEGIN …{wanted}-----)"),
        });
    }
    Ok(bytes)
}

/// The orchestrator's TLS: its identity, and the CA of gateway certificates.
#[derive(Debug, Clone)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl ServerTls {
    /// Loads the server's certificate (chain) and key, and the CA gateways'
    /// certificates must be signed by (none: gateways are not authenticated).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, PemError> {
        Ok(ServerTls {
            cert: read_pem(cert, "CERTIFICATE")?,
            key: read_pem(key, "PRIVATE KEY")?,
            client_ca: client_ca.map(|p| read_pem(p, "CERTIFICATE")).transpose()?,
        })
    }

    /// Whether gateways must present a certificate from the client CA.
    pub fn verifies_clients(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The server configuration: client certificates are verified when
    /// presented and optional at the handshake (clients of the API
    /// authenticate with tokens; the gateway link demands a certificate).
    pub fn config(&self) -> ServerTlsConfig {
        let mut c = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(Duration::from_secs(10));
        if let Some(ca) = &self.client_ca {
            c = c
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        c
    }
}

/// A client's TLS: whom it trusts and who it is.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl ClientTls {
    /// Trusts the CA in `ca` (none: the system's roots) and, when given,
    /// presents a certificate and key of its own.
    pub fn load(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<ClientTls, PemError> {
        Ok(ClientTls {
            ca: ca.map(|p| read_pem(p, "CERTIFICATE")).transpose()?,
            identity: identity
                .map(|(c, k)| {
                    Ok::<_, PemError>((read_pem(c, "CERTIFICATE")?, read_pem(k, "PRIVATE KEY")?))
                })
                .transpose()?,
            domain: None,
        })
    }

    /// Checks the server's certificate against this name rather than the
    /// URL's host.
    pub fn with_domain(mut self, domain: impl Into<String>) -> ClientTls {
        self.domain = Some(domain.into());
        self
    }

    /// Whether it presents a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The client configuration.
    pub fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca {
            Some(ca) => c.ca_certificate(Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// An endpoint for `url` (`http://` plain text, `https://` with `tls`, or
/// the system's roots when `tls` is none).
pub fn endpoint(url: &str, tls: Option<&ClientTls>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a server address: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let config = tls.cloned().unwrap_or_default().config();
        return endpoint
            .tls_config(config)
            .map_err(|e| format!("TLS for {url}: {e}"));
    }
    if tls.is_some_and(ClientTls::has_identity) {
        return Err(format!(
            "{url} is plain text, yet a client certificate was given: use https://"
        ));
    }
    Ok(endpoint)
}
