//! Who may call the client API: bearer tokens, each with a subject and a role.
//!
//! The server keeps only each token's SHA-256, so the tokens file can be read
//! by whoever runs the server without handing out what it protects. Roles are
//! ordered: `admin` may do what `apply` may, `apply` what `read` may.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Get, diff, watch, status, history, gateways, and fetching blobs.
    Read,
    /// Also apply, roll back and upload artefacts.
    Apply,
    /// Also administer the orchestrator: forget a gateway that is gone.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Apply, Role::Admin];

    /// Its name in the tokens file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Apply => "apply",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("`{s}` is not a role: expected read, apply or admin"))
    }
}

/// One entry of the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it: the author recorded in history.
    pub subject: String,
    /// What it allows.
    pub role: Role,
    /// The token's SHA-256, lowercase hex.
    pub sha256: String,
}

/// The tokens file: `{"tokens": [{"subject", "role", "sha256"}, ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Every token the server accepts.
    pub tokens: Vec<TokenEntry>,
}

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's subject.
    pub subject: String,
    /// Its role.
    pub role: Role,
}

/// The tokens a server accepts, by hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Grant>,
}

/// A token's SHA-256 as stored in the tokens file.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Reads a tokens file's text; every problem names the entry.
    pub fn from_json(text: &str) -> Result<Tokens, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let file: TokensFile = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("at $.{}: {}", e.path(), e.inner()))?;
        Tokens::from_file(file)
    }

    /// The tokens of a parsed file.
    pub fn from_file(file: TokensFile) -> Result<Tokens, String> {
        let mut by_hash = HashMap::new();
        for (i, t) in file.tokens.into_iter().enumerate() {
            let at = format!("at $.tokens[{i}]");
            if t.subject.trim().is_empty() || t.subject.chars().any(char::is_control) {
                return Err(format!(
                    "{at}.subject: expected a name without control characters"
                ));
            }
            let hash = unhex(&t.sha256.to_ascii_lowercase()).ok_or_else(|| {
                format!("{at}.sha256: expected 64 hexadecimal digits (the token's SHA-256)")
            })?;
            let grant = Grant {
                subject: t.subject,
                role: t.role,
            };
            if by_hash.insert(hash, grant).is_some() {
                return Err(format!("{at}: the same token is listed twice"));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no token is accepted.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The grant of a presented token.
    pub fn check(&self, token: &str) -> Option<&Grant> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

/// Who may call the client API.
#[derive(Debug, Clone, Default)]
pub enum ApiAccess {
    /// Anyone who reaches the server (local development).
    #[default]
    Open,
    /// Holders of these tokens, each within its role.
    Tokens(Tokens),
}

/// The API's access, shared by the services and replaceable while they
/// serve (`continuum serve` reloads its tokens file on SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct SharedAccess(std::sync::Arc<std::sync::RwLock<ApiAccess>>);

impl SharedAccess {
    /// Shares `access`.
    pub fn new(access: ApiAccess) -> SharedAccess {
        SharedAccess(std::sync::Arc::new(std::sync::RwLock::new(access)))
    }

    /// [`ApiAccess::allow`] under what holds now.
    pub fn allow(
        &self,
        metadata: &MetadataMap,
        needed: Role,
        what: &str,
    ) -> Result<Option<Grant>, Status> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(metadata, needed, what)
    }

    /// Holds `access` from now on: requests already let in finish.
    pub fn replace(&self, access: ApiAccess) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = access;
    }
}

/// The bearer token of a request's `authorization` header.
fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(Status::unauthenticated(
            "the authorization header must be `Bearer <token>`",
        )),
    }
}

impl ApiAccess {
    /// Whether tokens are required.
    pub fn is_open(&self) -> bool {
        matches!(self, ApiAccess::Open)
    }

    /// Lets a request through when its token's role is at least `needed`, and
    /// says who made it (none when access is open). `what` names the
    /// operation in the refusal.
    pub fn allow(
        &self,
        metadata: &MetadataMap,
        needed: Role,
        what: &str,
    ) -> Result<Option<Grant>, Status> {
        let ApiAccess::Tokens(tokens) = self else {
            return Ok(None);
        };
        let token = bearer(metadata)?.ok_or_else(|| {
            Status::unauthenticated(format!(
                "{what} needs a token: this orchestrator accepts only bearer tokens (give one with --token, CONTINUUM_TOKEN or --token-file)"
            ))
        })?;
        let grant = tokens.check(token).ok_or_else(|| {
            Status::unauthenticated("the token is not one this orchestrator accepts")
        })?;
        if grant.role < needed {
            return Err(Status::permission_denied(format!(
                "{what} needs the role {needed}; `{}` holds {}",
                grant.subject, grant.role
            )));
        }
        Ok(Some(grant.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", t.parse().unwrap());
        }
        m
    }

    fn access() -> ApiAccess {
        let file = TokensFile {
            tokens: vec![
                TokenEntry {
                    subject: "ro".into(),
                    role: Role::Read,
                    sha256: token_hash("reader-secret"),
                },
                TokenEntry {
                    subject: "alice".into(),
                    role: Role::Apply,
                    sha256: token_hash("alice-secret"),
                },
            ],
        };
        ApiAccess::Tokens(Tokens::from_file(file).unwrap())
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Read < Role::Apply && Role::Apply < Role::Admin);
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .contains("read, apply or admin"));
    }

    #[test]
    fn a_token_is_checked_against_its_role() {
        let a = access();
        let alice = a
            .allow(&with(Some("Bearer alice-secret")), Role::Apply, "apply")
            .unwrap()
            .unwrap();
        assert_eq!(alice.subject, "alice");
        let denied = a
            .allow(&with(Some("Bearer reader-secret")), Role::Apply, "apply")
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("`ro` holds read"), "{denied:?}");
        for bad in [None, Some("Bearer nope"), Some("Basic YWxpY2U=")] {
            let e = a.allow(&with(bad), Role::Read, "get").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(
            ApiAccess::Open
                .allow(&with(None), Role::Admin, "x")
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_bad_tokens_file_names_the_entry() {
        let e = Tokens::from_json(r#"{"tokens":[{"subject":"a","role":"apply","sha256":"zz"}]}"#)
            .unwrap_err();
        assert!(e.contains("$.tokens[0].sha256"), "{e}");
        let e = Tokens::from_json(r#"{"tokens":[{"subject":"a","role":"god","sha256":"00"}]}"#)
            .unwrap_err();
        assert!(e.contains("$.tokens[0].role"), "{e}");
        let h = token_hash("x");
        let twice = format!(
            r#"{{"tokens":[{{"subject":"a","role":"read","sha256":"{h}"}},{{"subject":"b","role":"read","sha256":"{h}"}}]}}"#
        );
        assert!(Tokens::from_json(&twice).unwrap_err().contains("twice"));
    }
}
