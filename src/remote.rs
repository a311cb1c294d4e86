//! Talking to an orchestrator: connecting, and gRPC errors as sentences.

use std::path::Path;

use continuum_models::Invalid;
use continuum_proto::tls::ClientTls;
use continuum_proto::v1::blob_service_client::BlobServiceClient;
use continuum_proto::v1::model_service_client::ModelServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The orchestrator's address when neither `--server` nor `CONTINUUM_SERVER` says.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// The largest message the CLI sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Puts the bearer token on every request.
#[derive(Debug, Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;
pub type Client = ModelServiceClient<Authed>;

/// The orchestrator a command talks to, and how: its URL, the CA its
/// certificate is checked against, and the token that says who we are.
#[derive(Debug, Clone)]
pub struct Server {
    /// One URL, or several (orchestrators sharing an etcd store, of which
    /// only the leader listens): tried in turn.
    urls: Vec<String>,
    tls: Option<ClientTls>,
    auth: Auth,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

/// `http://` URLs from what the user typed (`host:port` is accepted;
/// several are separated by commas).
pub fn urls(server: &str) -> Vec<String> {
    let urls = continuum_gateway::orchestrators::endpoints(server);
    if urls.is_empty() {
        vec![DEFAULT_SERVER.to_owned()]
    } else {
        urls
    }
}

/// The token from `--token`, or else the first line of `--token-file`.
pub fn token(token: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_owned()));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("the token file {}: {e}", file.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        file.display()
    );
    Ok(Some(token))
}

impl Server {
    /// An orchestrator on plain text, without a token (one this process started).
    pub fn plain(server: &str) -> Server {
        Server {
            urls: urls(server),
            tls: None,
            auth: Auth::default(),
        }
    }

    /// `server` with the CA to trust (`https://`) and a bearer token.
    pub fn new(server: &str, ca: Option<&Path>, token: Option<String>) -> anyhow::Result<Server> {
        let tls = ca
            .map(|ca| ClientTls::load(Some(ca), None))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let urls = urls(server);
        let auth = match token {
            None => Auth(None),
            Some(t) => Auth(Some(format!("Bearer {t}").parse().map_err(|_| {
                anyhow::anyhow!("the token holds characters a header cannot carry")
            })?)),
        };
        Ok(Server { urls, tls, auth })
    }

    /// A channel to it (the first of its URLs that answers), for any of
    /// its services.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut causes = Vec::new();
        for url in &self.urls {
            let endpoint = continuum_proto::tls::endpoint(url, self.tls.as_ref())
                .map_err(anyhow::Error::msg)?;
            match endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => causes.push(
                    std::error::Error::source(&e)
                        .map_or_else(|| e.to_string(), ToString::to_string),
                ),
            }
        }
        anyhow::bail!(
            "cannot reach the orchestrator at {}: {}\n  is `continuum serve` running there? (set --server or CONTINUUM_SERVER)",
            self.urls.join(" or "),
            causes.join("; ")
        )
    }
}

pub async fn connect(server: &Server) -> anyhow::Result<Client> {
    Ok(
        ModelServiceClient::with_interceptor(server.channel().await?, server.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

/// A client of the orchestrator's blobs.
pub async fn blobs(server: &Server) -> anyhow::Result<BlobServiceClient<Authed>> {
    Ok(BlobServiceClient::with_interceptor(
        server.channel().await?,
        server.auth.clone(),
    ))
}

/// The problems of a rejected model, when the status carries them.
pub fn rejection(status: &Status) -> Option<Invalid> {
    continuum_proto::rejection::from_status(status)
}

/// A gRPC status as a sentence a user can act on.
pub fn explain(status: Status) -> anyhow::Error {
    let message = status.message();
    let sentence = match status.code() {
        Code::Unavailable => format!("the orchestrator is unavailable: {message}"),
        Code::Unauthenticated => format!("not authenticated: {message}"),
        Code::PermissionDenied => format!("not allowed: {message}"),
        Code::DeadlineExceeded => format!("the orchestrator did not answer in time: {message}"),
        Code::Unimplemented => format!(
            "the orchestrator does not support this request (is it an older version?): {message}"
        ),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            format!("the orchestrator failed: {message}")
        }
        Code::ResourceExhausted | Code::OutOfRange if message.contains("too large") => {
            format!("the message is too large for the orchestrator: {message}")
        }
        _ => message.to_owned(),
    };
    anyhow::anyhow!(sentence)
}

/// A failed change whose request had left: when the failure is the
/// connection's, the change may have been committed all the same, and the
/// user is told how to find out rather than tempted to apply twice.
pub fn explain_change(status: Status, what: &str) -> anyhow::Error {
    let uncertain = matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    );
    let e = explain(status);
    if !uncertain {
        return e;
    }
    anyhow::anyhow!(
        "{e}\n  the {what} was sent before the connection failed, so its outcome is unknown: `continuum history` shows whether it became a revision; retry with --base N (the head you based it on) and a second copy is refused instead of applied"
    )
}

fn timestamp(unix_ms: i64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(unix_ms).ok()
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn clock(unix_ms: i64) -> String {
    timestamp(unix_ms).map_or_else(
        || "--:--:--".to_owned(),
        |t| t.strftime("%H:%M:%S").to_string(),
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn date_time(unix_ms: i64) -> String {
    timestamp(unix_ms).map_or_else(
        || "an unknown time".to_owned(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// How long ago, to the second (`3m 20s ago`).
pub fn ago(unix_ms: i64, now_ms: i64) -> String {
    let seconds = (now_ms - unix_ms).max(0) / 1000;
    format!("{:#} ago", jiff::SignedDuration::from_secs(seconds))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Prints rows as aligned columns; the first row is the header.
pub fn table(rows: &[Vec<String>], header: &dyn Fn(&str) -> String) {
    let Some((first, rest)) = rows.split_first() else {
        return;
    };
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(first.iter().map(|h| header(h)));
    for row in rest {
        t.add_row(row);
    }
    // The preset pads each cell with one space on either side.
    for line in t.lines() {
        outln!("{}", line.strip_prefix(' ').unwrap_or(&line).trim_end());
    }
}

/// Runs one client request to completion on a small runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?
        .block_on(f)
}

/// Change counts as `+2 -1 ~3, links +1`, or `in sync`.
pub fn counts(c: Option<&continuum_proto::v1::DiffCounts>) -> String {
    let Some(c) = c else {
        return "in sync".to_owned();
    };
    let signed = |pairs: &[(u32, &str)]| -> String {
        pairs
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, sign)| format!("{sign}{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let components = signed(&[(c.added, "+"), (c.removed, "-"), (c.changed, "~")]);
    let links = signed(&[(c.links_added, "+"), (c.links_removed, "-")]);
    match (components.is_empty(), links.is_empty()) {
        (true, true) => "in sync".to_owned(),
        (false, true) => components,
        (true, false) => format!("links {links}"),
        (false, false) => format!("{components}, links {links}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(clock(1_795_000_000_000), "11:06:40");
        assert_eq!(ago(0, 200_000), "3m 20s ago");
    }

    #[test]
    fn a_change_cut_by_the_connection_has_an_unknown_outcome() {
        let cut = explain_change(Status::unavailable("transport error"), "apply").to_string();
        assert!(
            cut.contains("outcome is unknown") && cut.contains("continuum history"),
            "{cut}"
        );
        let refused = explain_change(Status::aborted("conflict"), "apply").to_string();
        assert!(!refused.contains("unknown"), "{refused}");
    }

    #[test]
    fn server_addresses_get_a_scheme_and_several_are_tried_in_turn() {
        assert_eq!(urls("127.0.0.1:7070"), ["http://127.0.0.1:7070"]);
        assert_eq!(urls("https://o.example:443"), ["https://o.example:443"]);
        assert_eq!(
            urls("a:1, b:2,"),
            ["http://a:1", "http://b:2"],
            "orchestrators sharing a store"
        );
        assert_eq!(urls(" "), [DEFAULT_SERVER]);
    }
}
