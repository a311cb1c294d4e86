//! The agent build on offer: gateways of its architecture that run another
//! version upgrade themselves to it (see the gateway agent's `upgrade`).

use continuum_proto::v1::AgentOffer;

use super::{Core, Transition, Update};
use crate::error::Error;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Core {
    /// The agent build on offer, if any.
    pub fn agent_offer(&self) -> Option<&AgentOffer> {
        self.agent_offer.as_ref()
    }

    /// Puts `offer` on offer for `author` at `now`; `has` says whether the
    /// blob it names was uploaded.
    pub fn offer_agent(
        &self,
        mut offer: AgentOffer,
        author: &str,
        has: impl Fn(&str) -> bool,
        now: i64,
    ) -> Result<Transition<AgentOffer>, Error> {
        let bad = |what: String| Err(Error::BadRequest(what));
        if offer.version.trim().is_empty() || offer.version.len() > 64 {
            return bad(
                "an agent offer needs the version the build reports (at most 64 characters)".into(),
            );
        }
        if !is_hex(&offer.sha256, 64) {
            return bad(format!(
                "`{}` is not a SHA-256: expected 64 lowercase hex digits",
                offer.sha256
            ));
        }
        if !has(&offer.sha256) {
            return bad(format!(
                "the agent build sha256:{} was not uploaded; upload it with BlobService.Upload first (`continuum agent offer` does)",
                offer.sha256
            ));
        }
        if offer.arch.trim().is_empty() {
            return bad(
                "an agent offer needs the architecture it runs on (x86_64, aarch64)".into(),
            );
        }
        if !offer.signature.is_empty() && !is_hex(&offer.signature, 128) {
            return bad("the signature must be the ed25519 signature of the build's SHA-256: 128 lowercase hex digits".into());
        }
        offer.offered_unix_ms = now;
        offer.author = author.to_owned();
        tracing::info!(version = %offer.version, sha256 = %offer.sha256, arch = %offer.arch, signed = !offer.signature.is_empty(), "agent build on offer");
        let mut batch = self.batch(now);
        batch.changes.agent_offer = Some(offer.clone());
        let update = Update {
            agent_offer: Some(offer.clone()),
            ..Update::default()
        };
        Ok(self.transition(batch, offer, update))
    }
}
