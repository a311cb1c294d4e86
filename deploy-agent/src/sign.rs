//! Signed firmware: an ed25519 signature of the firmware's SHA-256, checked
//! against the key the gateway trusts before anything is written.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Why a firmware is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A key is trusted, the firmware carries no signature.
    #[error("the firmware is unsigned, and a trusted key is configured: refused")]
    Unsigned,
    /// Not a signature.
    #[error("the firmware's signature is not 64 bytes in hex")]
    Malformed,
    /// Not a key.
    #[error("the trusted key is not an ed25519 public key (32 bytes in hex)")]
    Key,
    /// Signed by someone else, or for another firmware.
    #[error("the firmware's signature does not verify with the trusted key: refused")]
    Bad,
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A trusted key from its hex form.
pub fn key(hex: &str) -> Result<VerifyingKey, SignError> {
    let bytes = unhex::<32>(hex).ok_or(SignError::Key)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignError::Key)
}

/// Checks `signature` (hex) of the firmware whose SHA-256 is `digest`.
pub fn check(
    digest: &[u8; 32],
    signature: Option<&str>,
    key: &VerifyingKey,
) -> Result<(), SignError> {
    let hex = signature.ok_or(SignError::Unsigned)?;
    let bytes = unhex::<64>(hex).ok_or(SignError::Malformed)?;
    let sig = Signature::from_bytes(&bytes);
    key.verify(digest, &sig).map_err(|_| SignError::Bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn only_a_good_signature_passes() {
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let trusted = key(&hex(signer.verifying_key().as_bytes())).unwrap();
        let digest = [1u8; 32];
        let good = hex(&signer.sign(&digest).to_bytes());
        assert_eq!(check(&digest, Some(&good), &trusted), Ok(()));
        assert_eq!(check(&digest, None, &trusted), Err(SignError::Unsigned));
        assert_eq!(
            check(&digest, Some("abcd"), &trusted),
            Err(SignError::Malformed)
        );
        assert_eq!(
            check(&[2u8; 32], Some(&good), &trusted),
            Err(SignError::Bad)
        );
        let other = SigningKey::from_bytes(&[9u8; 32]);
        let forged = hex(&other.sign(&digest).to_bytes());
        assert_eq!(check(&digest, Some(&forged), &trusted), Err(SignError::Bad));
        assert_eq!(key("zz").unwrap_err(), SignError::Key);
    }
}
