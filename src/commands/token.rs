//! `continuum token`: a new bearer token for the client API. Only its hash
//! goes into the tokens file `serve --tokens` reads; the token itself is
//! printed once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use continuum_orchestrator::access::{token_hash, Role, TokenEntry, Tokens, TokensFile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Who holds it: the author history records for what it applies.
    pub subject: String,
    /// What it allows: read, apply (and roll back) or admin.
    #[arg(long)]
    pub role: Role,
    /// The tokens file to add it to (created if missing).
    #[arg(
        long,
        env = "CONTINUUM_TOKENS",
        default_value = "continuum-tokens.json"
    )]
    pub tokens: PathBuf,
}

/// 32 bytes from the kernel's random source, as hex behind a recognisable prefix.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(format!(
        "ctm_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn read_file(path: &Path) -> anyhow::Result<TokensFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Checked as the server would read it.
            Tokens::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).with_context(|| path.display().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !args.subject.trim().is_empty() && !args.subject.chars().any(char::is_control),
        "the subject must be a name without control characters"
    );
    let mut file = read_file(&args.tokens)?;
    let token = new_token()?;
    file.tokens.push(TokenEntry {
        subject: args.subject.clone(),
        role: args.role,
        sha256: token_hash(&token),
    });
    let text = serde_json::to_string_pretty(&file).expect("tokens serialize") + "\n";
    super::write_atomically(&args.tokens, text.as_bytes(), true)?;
    outln!("{token}");
    eprintln!(
        "added a {} token for `{}` to {} (the orchestrator reads it at start: continuum serve --tokens {}); the token above is not kept anywhere",
        args.role,
        args.subject,
        args.tokens.display(),
        args.tokens.display()
    );
    Ok(ExitCode::SUCCESS)
}
