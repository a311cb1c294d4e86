//! `continuum certs`: a CA of its own for a deployment, the orchestrator's
//! certificate, and one certificate per gateway naming its id.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use continuum_proto::tls::GATEWAY_URI_PREFIX;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long the CA is valid, in days.
const CA_DAYS: i64 = 3650;

#[derive(Debug, clap::Subcommand)]
pub enum Certs {
    /// A new CA and the orchestrator's certificate, in DIR (refuses to
    /// replace a CA that exists).
    Init {
        /// Where the files go: ca.pem, ca.key, server.pem, server.key.
        #[arg(long, default_value = "continuum-certs")]
        dir: PathBuf,
        /// A name the orchestrator is reached by (DNS name or IP address);
        /// localhost, 127.0.0.1 and ::1 are always in.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// How long the orchestrator's certificate is valid, in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// A gateway's certificate and key, signed by the CA in DIR: the gateway
    /// may register only as ID.
    Gateway {
        /// The gateway's id, as its subsystem names it.
        id: String,
        /// Where the CA is and the files go (gateway-ID.pem, gateway-ID.key).
        #[arg(long, default_value = "continuum-certs")]
        dir: PathBuf,
        /// How long it is valid, in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
}

/// A validity period from an hour ago (clocks differ) to `days` from today.
fn validity(params: &mut CertificateParams, days: i64) -> anyhow::Result<()> {
    anyhow::ensure!(days > 0, "a certificate must be valid for at least one day");
    let now = jiff::Timestamp::now();
    let civil = |t: jiff::Timestamp| {
        let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = civil(now - jiff::SignedDuration::from_hours(24));
    let end = now
        .checked_add(jiff::SignedDuration::from_hours(24 * days))
        .context("the validity period is too long")?;
    params.not_after = civil(end);
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Continuum");
    dn.push(DnType::CommonName, common);
    dn
}

/// Writes a file that must not exist yet; keys are readable by their owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists already; remove it first to replace it",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot create {}: {e}", path.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn subject_alt_name(n: &str) -> anyhow::Result<SanType> {
    Ok(match n.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            n.try_into()
                .map_err(|_| anyhow::anyhow!("`{n}` is neither a DNS name nor an IP address"))?,
        ),
    })
}

fn init(dir: &Path, names: &[String], days: i64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
        anyhow::ensure!(
            !dir.join(f).exists(),
            "{} exists already: this directory holds a CA (remove it first to start over)",
            dir.join(f).display()
        );
    }
    let ca_key = KeyPair::generate().context("cannot generate the CA's key")?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name("Continuum CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, CA_DAYS)?;
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA")?;

    let mut all: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let mut server = CertificateParams::default();
    server.distinguished_name = name(&all[all.len() - 1]);
    server.subject_alt_names = all
        .iter()
        .map(|n| subject_alt_name(n))
        .collect::<anyhow::Result<_>>()?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut server, days)?;
    let server_key = KeyPair::generate().context("cannot generate the server's key")?;
    let issuer = Issuer::new(ca, &ca_key);
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .context("cannot sign the server's certificate")?;

    write_new(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write_new(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write_new(&dir.join("server.pem"), &server_cert.pem(), false)?;
    write_new(&dir.join("server.key"), &server_key.serialize_pem(), true)?;
    let d = dir.display();
    eprintln!("made a CA ({d}/ca.pem, key ca.key: keep it off the orchestrator if you can)");
    eprintln!("made the orchestrator's certificate for {}", all.join(", "));
    eprintln!(
        "serve with: continuum serve --tls-cert {d}/server.pem --tls-key {d}/server.key --tls-client-ca {d}/ca.pem"
    );
    eprintln!("then, per gateway: continuum certs gateway ID --dir {d}");
    Ok(())
}

fn gateway(id: &str, dir: &Path, days: i64) -> anyhow::Result<()> {
    anyhow::ensure!(
        continuum_models::validate::is_valid_id(id),
        "`{id}` is not a valid gateway id: expected 1 to 63 lowercase letters, digits and dashes, starting with a letter"
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| {
            format!(
                "cannot read {} (make a CA first: continuum certs init --dir {})",
                dir.join(f).display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca.key")?)
        .map_err(|e| anyhow::anyhow!("{}: not a private key: {e}", dir.join("ca.key").display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, &ca_key).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a CA certificate: {e}",
            dir.join("ca.pem").display()
        )
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(id);
    let uri = format!("{GATEWAY_URI_PREFIX}{id}");
    params.subject_alt_names = vec![SanType::URI(
        uri.as_str()
            .try_into()
            .map_err(|_| anyhow::anyhow!("`{uri}` is not a URI"))?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate().context("cannot generate the gateway's key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the gateway's certificate")?;
    let (pem, key_file) = (
        dir.join(format!("gateway-{id}.pem")),
        dir.join(format!("gateway-{id}.key")),
    );
    write_new(&pem, &cert.pem(), false)?;
    write_new(&key_file, &key.serialize_pem(), true)?;
    eprintln!(
        "made gateway `{id}`'s certificate: run it with --tls-ca {} --tls-cert {} --tls-key {} and an https:// --orchestrator",
        dir.join("ca.pem").display(),
        pem.display(),
        key_file.display()
    );
    Ok(())
}

pub fn run(what: Certs) -> anyhow::Result<ExitCode> {
    match what {
        Certs::Init { dir, names, days } => init(&dir, &names, days)?,
        Certs::Gateway { id, dir, days } => gateway(&id, &dir, days)?,
    }
    Ok(ExitCode::SUCCESS)
}
