//! `continuum agent offer FILE VERSION`: offers the gateways an agent
//! build; each gateway of its architecture running another version upgrades
//! itself to it (tried beside the old one, which takes over again if the new
//! one does not come up).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use continuum_proto::v1::AgentOffer;

use crate::remote;
use crate::style::Style;
use crate::Format;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload an agent build and offer it to every gateway (admin role).
    Offer {
        /// The executable: the program the gateways run (`continuum` or
        /// `continuum-gateway`), another build of it.
        file: PathBuf,
        /// The version that build reports.
        #[arg(value_name = "VERSION")]
        build_version: String,
        /// The machine it is built for (default: this one's).
        #[arg(long, default_value = std::env::consts::ARCH)]
        arch: String,
        /// The ed25519 signature of its SHA-256, in hex: gateways given an
        /// `--agent-key` take only a build signed with it.
        #[arg(long, value_name = "HEX")]
        signature: Option<String>,
    },
}

pub fn run(
    server: &remote::Server,
    command: Command,
    format: Format,
    style: &Style,
) -> anyhow::Result<ExitCode> {
    let Command::Offer {
        file,
        build_version: version,
        arch,
        signature,
    } = command;
    let bytes =
        std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    anyhow::ensure!(
        bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"#!"),
        "{} is not an executable (neither ELF nor a script); nothing was offered",
        file.display()
    );
    let digest = crate::artefacts::sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let packed = crate::artefacts::Packed {
        path: file.display().to_string(),
        digest: digest.clone(),
        bytes,
        what: format!("agent build {version}"),
    };
    remote::block_on(async {
        crate::artefacts::upload(server, std::slice::from_ref(&packed)).await?;
        let mut client = remote::connect(server).await?;
        let offered = client
            .offer_agent(AgentOffer {
                version,
                sha256: digest,
                size,
                arch,
                signature: signature.unwrap_or_default().trim().to_ascii_lowercase(),
                ..AgentOffer::default()
            })
            .await
            .map_err(|s| remote::explain_change(s, "offer"))?
            .into_inner();
        if format == Format::Json {
            super::print_json(&offered)?;
        } else {
            outln!(
                "{} agent {} ({}, sha256:{}, {} bytes{}) to every gateway; `continuum gateways` shows each one's version",
                style.green("offered"),
                offered.version,
                offered.arch,
                &offered.sha256[..12],
                offered.size,
                if offered.signature.is_empty() { "" } else { ", signed" }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
