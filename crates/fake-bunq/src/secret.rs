//! The fake never stores or records a `secret` (API key / credential token): it keys
//! its state by the secret's SHA-256 and shows only a short prefix of that.

use aws_lc_rs::digest::{digest, SHA256};
use std::fmt;

/// SHA-256 of a secret. Knowing it does not reveal the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        Self(out)
    }

    /// 12 hex characters: enough to tell secrets apart in call records and stats.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretDigest({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_stable_and_not_the_secret() {
        let d = SecretDigest::of("sandbox_abc");
        assert_eq!(d, SecretDigest::of("sandbox_abc"));
        assert_eq!(d.short().len(), 12);
        assert!(!d.short().contains("abc"));
        assert_ne!(d, SecretDigest::of("sandbox_abd"));
    }
}
