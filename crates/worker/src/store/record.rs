//! The records that hold tokens, as Redis keeps them (docs/contracts.md §2.3–§2.5): sealed
//! on write, opened on read. With a key configured, a token met in plaintext (written
//! before the key was, or by something else) is not trusted to stay so: the record is
//! sealed in place at once and counted.

use super::{Handshake, Session, Store, StoreError};
use crate::seal::{self, Context, SealError};
use redis::AsyncCommands as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// What `Debug` prints for a token.
pub(super) const REDACTED: &str = "[REDACTED]";

/// The cached session, as downstream services read it from `session:{user_id}`.
/// Token fields hold plaintext, or a sealed value (see [`crate::seal`]) when a key is set.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
    pub(crate) user_id: u64,
    pub(crate) granted_by_user_id: Option<u64>,
    pub(crate) session_id: u64,
    pub(crate) session_token: String,
    pub(crate) installation_token: String,
    pub(crate) server_public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) expires_at: OffsetDateTime,
    /// In `session:{user_id}` only: the lock generation of the write, so a holder whose
    /// lock was taken over cannot roll the cache back (see [`CACHE_SESSION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) generation: Option<u64>,
}

/// Tokens may be plaintext: `Debug` never prints them.
impl fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSession")
            .field("provision_id", &self.provision_id)
            .field("user_id", &self.user_id)
            .field("session_id", &self.session_id)
            .field("session_token", &REDACTED)
            .field("installation_token", &REDACTED)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Progress of one provision's handshake.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct StoredHandshake {
    pub(crate) installation_token: Option<String>,
    pub(crate) server_public_key: Option<String>,
    pub(crate) device_id: Option<u64>,
    pub(crate) session: Option<StoredSession>,
}

impl fmt::Debug for StoredHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredHandshake")
            .field("installation_token", &self.installation_token.as_ref().map(|_| REDACTED))
            .field("device_id", &self.device_id)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The token fields of a stored record, as stored (sealed or not).
pub(super) trait Tokens {
    fn tokens(&self) -> impl Iterator<Item = &String>;
}

impl Tokens for StoredSession {
    fn tokens(&self) -> impl Iterator<Item = &String> {
        [&self.session_token, &self.installation_token].into_iter()
    }
}

impl Tokens for StoredHandshake {
    fn tokens(&self) -> impl Iterator<Item = &String> {
        let session = self.session.iter().flat_map(|s| [&s.session_token, &s.installation_token]);
        self.installation_token.iter().chain(session)
    }
}

/// A record that does not parse is described by shape, never by content: it holds tokens.
pub(super) fn record_error(err: &serde_json::Error) -> String {
    bunq_protocol::redact::json_error(
        err,
        &["session_token", "installation_token", "user_id", "provision_id", "session_id"],
    )
}

/// Sealed fields of a session record belong to its user; of a handshake record, to its
/// provision.
fn user_owner(user_id: u64) -> String {
    format!("user:{user_id}")
}

pub(super) fn provision_owner(provision_id: u64) -> String {
    format!("provision:{provision_id}")
}

/// Writes `session:{user_id}` unless it holds the same provision's session written under a
/// later lock generation: a holder paused past its lock (and past a failover that lost
/// the generation's counter) cannot replace the newer holder's session with its own.
/// Another provision's session for the same user is replaced (the later provision wins,
/// as before). KEYS[1] the cache key; ARGV[1] the record, ARGV[2] its TTL in seconds,
/// ARGV[3] the writer's generation, ARGV[4] its provision id. 1 written, 0 refused.
pub(super) static CACHE_SESSION: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' and tonumber(record.provision_id) == tonumber(ARGV[4])
     and tonumber(record.generation) and tonumber(record.generation) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#,
    )
});

/// Replaces a record only if it still holds what was read, keeping its TTL.
static REPLACE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') return 1 else return 0 end"#,
    )
});

impl Store {
    pub async fn load_handshake(&self, provision_id: u64, credential: &str) -> Result<Handshake, StoreError> {
        let key = self.keys.handshake(provision_id, credential);
        let handshake = self.read_record(key, |stored| self.open_handshake(provision_id, stored)).await?;
        Ok(handshake.unwrap_or_default())
    }

    /// Reads a cached session by user id (downstream's view; used by tests and tools).
    pub async fn read_session(&self, user_id: u64) -> Result<Option<Session>, StoreError> {
        self.read_record(self.keys.session(user_id), |stored| self.open_session(stored)).await
    }

    /// GET, decode and unseal one record (see [`Self::open_record`]).
    pub(super) async fn read_record<S, T>(
        &self,
        key: String,
        open: impl FnOnce(S) -> Result<T, SealError>,
    ) -> Result<Option<T>, StoreError>
    where
        S: serde::de::DeserializeOwned + Tokens,
    {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(&key).await?;
        self.open_record(key, raw, open).await
    }

    /// Decodes and unseals the record `raw` read from `key`: one that fails either is
    /// unreadable ([`StoreError::unsealable`]). With a key configured, plaintext tokens in
    /// it are sealed in place before it is used.
    pub(super) async fn open_record<S, T>(
        &self,
        key: String,
        raw: Option<Vec<u8>>,
        open: impl FnOnce(S) -> Result<T, SealError>,
    ) -> Result<Option<T>, StoreError>
    where
        S: serde::de::DeserializeOwned + Tokens,
    {
        let Some(raw) = raw.map(Zeroizing::new) else { return Ok(None) };
        let stored: S = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Corrupt { key: key.clone(), problem: record_error(&e) })?;
        let plaintext = self.sealer.is_some() && stored.tokens().any(|token| !seal::is_sealed(token));
        let opened = open(stored).map_err(|e| StoreError::unsealable(key.clone(), e))?;
        if plaintext {
            self.seal_plaintext(&key, &raw).await;
        }
        Ok(Some(opened))
    }

    /// Seals the plaintext tokens of the record `raw` at `key`, unless a writer replaced
    /// it meanwhile (it sealed them). Not sealing it (Redis away) fails nothing: the next
    /// read or write seals it.
    async fn seal_plaintext(&self, key: &str, raw: &[u8]) {
        let Some(sealer) = &self.sealer else { return };
        let replaced = match self.resealed(key, raw, sealer) {
            Ok(Some(sealed)) => self.replace_unchanged(key, raw, &sealed).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match replaced {
            Ok(true) => {
                if let Some(metrics) = &self.metrics {
                    metrics.plaintext_resealed();
                }
                tracing::warn!(
                    event = "plaintext_token_sealed",
                    key,
                    "a token stored in plaintext while SESSION_ENCRYPTION_KEY_FILE is set was sealed in place"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(event = "plaintext_token_not_sealed", key, error = %e),
        }
    }

    /// Replaces `key`'s value with `new` only if it still holds `old`, keeping its TTL;
    /// false when it changed meanwhile.
    pub(super) async fn replace_unchanged(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let replaced: i64 = REPLACE.key(key).arg(old).arg(new).invoke_async(&mut conn).await?;
        Ok(replaced == 1)
    }

    pub(super) fn seal(&self, owner: &str, field: &str, value: &SecretString) -> String {
        match &self.sealer {
            Some(sealer) => sealer.seal(Context { owner, field }, value.expose_secret()),
            None => value.expose_secret().to_owned(),
        }
    }

    pub(super) fn unseal(&self, owner: &str, field: &str, value: String) -> Result<SecretString, SealError> {
        match &self.sealer {
            Some(sealer) if seal::is_sealed(&value) => {
                sealer.open(Context { owner, field }, &value).map(SecretString::from)
            }
            // Written before a key was configured: readable, and sealed at once (see
            // `open_record`).
            Some(_) => Ok(SecretString::from(value)),
            None if seal::is_sealed(&value) => Err(without_key(field, &value)),
            None => Ok(SecretString::from(value)),
        }
    }

    pub(super) fn seal_session(&self, s: &Session) -> StoredSession {
        let owner = user_owner(s.user_id);
        StoredSession {
            provision_id: s.provision_id,
            external_uuid: s.external_uuid.clone(),
            user_id: s.user_id,
            granted_by_user_id: s.granted_by_user_id,
            session_id: s.session_id,
            session_token: self.seal(&owner, "session_token", &s.session_token),
            installation_token: self.seal(&owner, "installation_token", &s.installation_token),
            server_public_key: s.server_public_key.clone(),
            created_at: s.created_at,
            expires_at: s.expires_at,
            generation: None,
        }
    }

    pub(super) fn open_session(&self, s: StoredSession) -> Result<Session, SealError> {
        let owner = user_owner(s.user_id);
        Ok(Session {
            session_token: self.unseal(&owner, "session_token", s.session_token)?,
            installation_token: self.unseal(&owner, "installation_token", s.installation_token)?,
            provision_id: s.provision_id,
            external_uuid: s.external_uuid,
            user_id: s.user_id,
            granted_by_user_id: s.granted_by_user_id,
            session_id: s.session_id,
            server_public_key: s.server_public_key,
            created_at: s.created_at,
            expires_at: s.expires_at,
        })
    }

    pub(super) fn seal_handshake(&self, provision_id: u64, h: &Handshake) -> StoredHandshake {
        let owner = provision_owner(provision_id);
        StoredHandshake {
            installation_token: h
                .installation
                .as_ref()
                .map(|(token, _)| self.seal(&owner, "installation_token", token)),
            server_public_key: h.installation.as_ref().map(|(_, key)| key.clone()),
            device_id: h.device_id,
            session: h.session.as_ref().map(|s| self.seal_session(s)),
        }
    }

    pub(super) fn open_handshake(&self, provision_id: u64, h: StoredHandshake) -> Result<Handshake, SealError> {
        let owner = provision_owner(provision_id);
        let installation = match (h.installation_token, h.server_public_key) {
            (Some(token), Some(key)) => Some((self.unseal(&owner, "installation_token", token)?, key)),
            _ => None,
        };
        let session = h.session.map(|s| self.open_session(s)).transpose()?;
        Ok(Handshake { installation, device_id: h.device_id, session })
    }
}

/// A sealed `value` read by a process without a key: a `v2` value names the key it
/// lacks (the key may be on its way, see [`StoreError::UnknownKey`]).
pub(super) fn without_key(field: &str, value: &str) -> SealError {
    match seal::key_id(value) {
        Some(id) => SealError::NoKey { field: field.to_owned(), key_id: id.to_owned() },
        None => SealError::unreadable(field, "is encrypted but no key is configured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "f981bd6d7c2e4a51b0d3e6f7a8b9c0d1e2f3a4b5c6d7e8f9";

    fn stored_session() -> StoredSession {
        let now = OffsetDateTime::now_utc();
        StoredSession {
            provision_id: 7,
            external_uuid: None,
            user_id: 1364,
            granted_by_user_id: None,
            session_id: 2173,
            session_token: format!("{TOKEN}-session"),
            installation_token: format!("{TOKEN}-installation"),
            server_public_key: "pem".into(),
            created_at: now,
            expires_at: now,
            generation: Some(3),
        }
    }

    #[test]
    fn debug_of_stored_records_prints_no_token() {
        let handshake = StoredHandshake {
            installation_token: Some(format!("{TOKEN}-handshake")),
            server_public_key: Some("pem".into()),
            device_id: Some(3),
            session: Some(stored_session()),
        };
        for printed in [format!("{:?}", stored_session()), format!("{handshake:?}"), format!("{handshake:#?}")] {
            assert!(!printed.contains(&TOKEN[..16]), "{printed}");
            assert!(printed.contains(REDACTED) && printed.contains("1364"), "{printed}");
        }
        // And in memory, opened: the tokens are secrets there (`Session`: cli::session's tests).
        let opened = Handshake {
            installation: Some((SecretString::from(format!("{TOKEN}-handshake")), "pem".into())),
            device_id: Some(3),
            session: None,
        };
        let credential = super::super::Credential {
            tag: "0:ab".into(),
            token_value: SecretString::from(TOKEN.to_owned()),
            unannounced: None,
            failures: 0,
        };
        for printed in [format!("{opened:?}"), format!("{credential:?}")] {
            assert!(!printed.contains(&TOKEN[..16]), "{printed}");
        }
    }
}
