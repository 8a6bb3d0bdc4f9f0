//! The Redis layout (docs/contracts.md §2): the session cache keyed by user, the per-provision
//! handshake progress and idempotency index, and the per-provision lock;
//! and the gate that holds work while Redis is away (`gate.rs`).
//!
//! Keys one operation writes together share a hash tag (`{provision_id}`), so the same
//! commands run on Redis Cluster (see [`conn`]).

use crate::failure::{Failure, Reason, Retry};
use crate::seal::{self, Context, Sealer};
use crate::tls::TlsFiles;
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored record `{key}` is unreadable: {problem}")]
    Corrupt { key: String, problem: String },
    #[error(
        "the lock of provision {provision_id} passed to another delivery while this one worked; it finishes the job"
    )]
    LockLost { provision_id: u64 },
    #[error(
        "provision {provision_id}: {acked} of {wanted} Redis replicas confirmed the write in time (REDIS_MIN_REPLICAS); nothing is published until they do"
    )]
    NotReplicated { provision_id: u64, acked: u32, wanted: u32 },
}

impl StoreError {
    /// Redis coming back helps; a record we cannot read stays unreadable.
    pub(crate) fn retry(&self) -> Retry {
        match self {
            StoreError::Redis(_) => Retry::Transient { after: None },
            StoreError::Corrupt { .. } => Retry::Permanent,
            // Retrying the write cannot win the lock back; the delivery as a whole can wait
            // for the new holder (see `Failure::from`).
            StoreError::LockLost { .. } => Retry::Permanent,
            // The replicas may catch up; until then nothing depending on the write goes out.
            StoreError::NotReplicated { .. } => Retry::Transient { after: None },
        }
    }
}

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }
    /// The session downstream reads; named by `cache_key` in the session-ready event.
    pub fn session(&self, user_id: u64) -> String {
        format!("{}session:{user_id}", self.prefix)
    }
    /// provision → user id: the idempotency index.
    pub(crate) fn provision(&self, provision_id: u64) -> String {
        format!("{}provision:{{{provision_id}}}", self.prefix)
    }
    /// Handshake progress of one credential of a provision, so a retry does not repeat
    /// installation or device-server, and a token reset (a new credential) starts afresh
    /// instead of reusing a device registered with the old secret. `credential` is
    /// [`credential_tag`].
    pub(crate) fn handshake(&self, provision_id: u64, credential: &str) -> String {
        format!("{}handshake:{{{provision_id}}}:{credential}", self.prefix)
    }
    /// Every credential tag of a provision that has handshake progress: what a close
    /// deletes.
    pub fn handshakes(&self, provision_id: u64) -> String {
        format!("{}handshakes:{{{provision_id}}}", self.prefix)
    }
    /// Set when the provision is cancelled or closed: no session is announced for it after.
    pub(crate) fn closed(&self, provision_id: u64) -> String {
        format!("{}closed:{{{provision_id}}}", self.prefix)
    }
    /// The credential a renewal opens the next session with (sealed), kept only with
    /// `SESSION_RENEWAL=on`.
    pub(crate) fn credential(&self, provision_id: u64) -> String {
        format!("{}credential:{{{provision_id}}}", self.prefix)
    }
    /// The renewal schedule: provision ids scored by when their session is due (unix
    /// milliseconds). One key, so every replica serves the same schedule.
    pub(crate) fn renewals(&self) -> String {
        format!("{}renewals", self.prefix)
    }
    fn credential_prefix(&self) -> String {
        format!("{}credential:", self.prefix)
    }
    fn handshake_prefix(&self) -> String {
        format!("{}handshake:", self.prefix)
    }
    pub(crate) fn lock(&self, provision_id: u64) -> String {
        format!("{}lock:provision:{{{provision_id}}}", self.prefix)
    }
    /// The newest credential id an open of the provision has seen: an older one's event
    /// (a retry copy from before a token reset) neither replaces nor re-announces.
    pub(crate) fn newest_credential(&self, provision_id: u64) -> String {
        format!("{}newest-credential:{{{provision_id}}}", self.prefix)
    }
    /// The provision lock's generation: raised by every taking of the lock, kept past the
    /// lock's expiry, so a fenced write can tell a holder that has been overtaken.
    pub(crate) fn lock_generation(&self, provision_id: u64) -> String {
        format!("{}lock-generation:provision:{{{provision_id}}}", self.prefix)
    }
}

/// The cached session, as downstream services read it from `session:{user_id}`.
/// Token fields hold plaintext, or a sealed value (see [`crate::seal`]) when a key is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// Progress of one provision's handshake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StoredHandshake {
    pub(crate) installation_token: Option<String>,
    pub(crate) server_public_key: Option<String>,
    pub(crate) device_id: Option<u64>,
    pub(crate) session: Option<StoredSession>,
}

/// A session in memory: tokens unsealed and wrapped.
#[derive(Debug, Clone)]
pub struct Session {
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub user_id: u64,
    pub granted_by_user_id: Option<u64>,
    pub session_id: u64,
    pub session_token: SecretString,
    pub installation_token: SecretString,
    pub server_public_key: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// Handshake progress in memory.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub installation: Option<(SecretString, String)>,
    pub device_id: Option<u64>,
    pub session: Option<Session>,
}

mod close;
mod conn;
pub(crate) mod gate;
mod lock;
mod renewal;
mod replication;
mod reseal;

pub use conn::{connect, Redis, Target};
pub use replication::Replication;

pub use lock::{credential_tag, Begin, Claim, Written};
pub use renewal::Credential;

#[derive(Debug, Clone)]
/// The Redis side of the worker's settings.
pub struct RedisSettings {
    pub(crate) target: Target,
    pub key_prefix: String,
    /// Seals tokens at rest when a key is configured.
    pub(crate) sealer: Option<Arc<Sealer>>,
    pub(crate) tls: Option<Arc<TlsFiles>>,
    pub(crate) replication: Option<Replication>,
}

impl RedisSettings {
    /// A connection that reconnects by itself (see [`connect`]).
    pub(crate) fn connect(&self) -> Result<Redis, UnusableTarget> {
        connect(&self.target, self.tls.as_deref()).map_err(|_| UnusableTarget { variable: self.target.variable() })
    }

    /// The session store on `conn`, under this prefix, sealing when a key is set.
    pub fn store(&self, conn: Redis) -> Store {
        Store::new(conn, Keys::new(&self.key_prefix), self.sealer.clone()).with_replication(self.replication)
    }
}

/// A Redis setting the client cannot use, naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: is not usable (a bad URL, mixed credentials, or unusable TLS files)")]
pub struct UnusableTarget {
    pub variable: &'static str,
}

#[derive(Clone)]
pub struct Store {
    conn: Redis,
    keys: Keys,
    sealer: Option<Arc<Sealer>>,
    replication: Option<Replication>,
}

impl Store {
    pub fn new(conn: impl Into<Redis>, keys: Keys, sealer: Option<Arc<Sealer>>) -> Self {
        Self { conn: conn.into(), keys, sealer, replication: None }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn load_handshake(&self, provision_id: u64, credential: &str) -> Result<Handshake, StoreError> {
        let key = self.keys.handshake(provision_id, credential);
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(&key).await?;
        Ok(self.decode_handshake(provision_id, key, raw)?.unwrap_or_default())
    }

    /// Decodes and unseals a handshake record read as `raw` from `key`.
    pub(super) fn decode_handshake(
        &self,
        provision_id: u64,
        key: String,
        raw: Option<Vec<u8>>,
    ) -> Result<Option<Handshake>, StoreError> {
        decode_record(key, raw, |stored| self.open_handshake(provision_id, stored))
    }

    /// GET, decode and unseal one record; a record that fails either is `Corrupt`.
    async fn read_record<S: serde::de::DeserializeOwned, T>(
        &self,
        key: String,
        open: impl FnOnce(S) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(&key).await?;
        decode_record(key, raw, open)
    }

    /// Records progress before the session exists, if `claim` still holds the lock.
    pub async fn save_handshake(&self, claim: &Claim, handshake: &Handshake, ttl: Duration) -> Result<(), StoreError> {
        let stored = self.seal_handshake(claim.provision_id, handshake);
        let body = serde_json::to_vec(&stored).expect("records serialise");
        let key = self.keys.handshake(claim.provision_id, &claim.credential);
        self.fenced_write(claim, Some(ttl), &[(key, body, ttl)]).await.map(|_| ())
    }

    /// Makes a new session durable: handshake (with the session) and the provision
    /// index atomically and only while `claim` holds the lock, then the user-keyed cache
    /// entry. Says whether the provision was marked closed meanwhile: the session is
    /// recorded either way, so the close waiting for the lock finds it and ends it.
    /// With `credential` (renewal on), the sealed credential is written in the same
    /// fenced script: a session that can be renewed never exists without what renews it.
    pub async fn commit_session(
        &self,
        claim: &Claim,
        handshake: &Handshake,
        session: &Session,
        credential: Option<&Credential>,
        ttl: Duration,
    ) -> Result<Written, StoreError> {
        let stored =
            serde_json::to_vec(&self.seal_handshake(claim.provision_id, handshake)).expect("records serialise");
        // A renewable session's records outlive its cache entry: a late renewal, or the
        // close after renewals failed, still finds them.
        let keep = if credential.is_some() { renewal::keep(ttl) } else { ttl };
        let mut writes = vec![
            (self.keys.handshake(claim.provision_id, &claim.credential), stored, keep),
            (self.keys.provision(claim.provision_id), session.user_id.to_string().into_bytes(), keep),
        ];
        if let Some(write) = credential.and_then(|c| self.credential_write(claim.provision_id, c, keep)) {
            writes.push(write);
        }
        let written = self.fenced_write(claim, Some(keep), &writes).await?;
        self.cache_session(session, ttl).await?;
        Ok(written)
    }

    /// The session a provision's last commit recorded, through the provision index.
    pub async fn session_of_provision(&self, provision_id: u64) -> Result<Option<Session>, StoreError> {
        let mut conn = self.conn.clone();
        let user_id: Option<u64> = conn.get(self.keys.provision(provision_id)).await?;
        match user_id {
            Some(user_id) => self.read_session(user_id).await,
            None => Ok(None),
        }
    }

    /// Writes `session:{user_id}`. Idempotent: redeliveries call it to repair a cache
    /// entry lost between the two writes of [`Self::commit_session`].
    pub async fn cache_session(&self, session: &Session, ttl: Duration) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&self.seal_session(session)).expect("records serialise");
        let mut conn = self.conn.clone();
        let () = conn.set_ex(self.keys.session(session.user_id), body, ttl.as_secs().max(1)).await?;
        Ok(())
    }

    /// Reads a cached session by user id (downstream's view; used by tests and tools).
    pub async fn read_session(&self, user_id: u64) -> Result<Option<Session>, StoreError> {
        self.read_record(self.keys.session(user_id), |stored| self.open_session(stored)).await
    }

    /// How long `session:{user_id}` has left, for inspection tools.
    pub(crate) async fn session_ttl(&self, user_id: u64) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let ttl_ms: i64 = redis::cmd("PTTL").arg(self.keys.session(user_id)).query_async(&mut conn).await?;
        Ok(u64::try_from(ttl_ms).ok().map(Duration::from_millis))
    }

    fn seal(&self, owner: &str, field: &str, value: &SecretString) -> String {
        match &self.sealer {
            Some(sealer) => sealer.seal(Context { owner, field }, value.expose_secret()),
            None => value.expose_secret().to_owned(),
        }
    }

    fn unseal(&self, owner: &str, field: &str, value: String) -> Result<SecretString, String> {
        match &self.sealer {
            Some(sealer) if seal::is_sealed(&value) => {
                sealer.open(Context { owner, field }, &value).map(SecretString::from)
            }
            // Written before a key was configured: still readable, sealed on the next write.
            Some(_) => Ok(SecretString::from(value)),
            None if seal::is_sealed(&value) => Err(format!("{field} is encrypted but no key is configured")),
            None => Ok(SecretString::from(value)),
        }
    }

    fn seal_session(&self, s: &Session) -> StoredSession {
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
        }
    }

    fn open_session(&self, s: StoredSession) -> Result<Session, String> {
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

    fn seal_handshake(&self, provision_id: u64, h: &Handshake) -> StoredHandshake {
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

    fn open_handshake(&self, provision_id: u64, h: StoredHandshake) -> Result<Handshake, String> {
        let owner = provision_owner(provision_id);
        let installation = match (h.installation_token, h.server_public_key) {
            (Some(token), Some(key)) => Some((self.unseal(&owner, "installation_token", token)?, key)),
            _ => None,
        };
        let session = h.session.map(|s| self.open_session(s)).transpose()?;
        Ok(Handshake { installation, device_id: h.device_id, session })
    }
}

/// Decodes and unseals a record read from `key`; one that fails either is `Corrupt`.
fn decode_record<S: serde::de::DeserializeOwned, T>(
    key: String,
    raw: Option<Vec<u8>>,
    open: impl FnOnce(S) -> Result<T, String>,
) -> Result<Option<T>, StoreError> {
    let Some(raw) = raw else { return Ok(None) };
    serde_json::from_slice(&raw)
        .map_err(|e| record_error(&e))
        .and_then(open)
        .map(Some)
        .map_err(|problem| StoreError::Corrupt { key, problem })
}

/// A record that does not parse is described by shape, never by content: it holds tokens.
fn record_error(err: &serde_json::Error) -> String {
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

fn provision_owner(provision_id: u64) -> String {
    format!("provision:{provision_id}")
}

/// How the handler classifies a store error.
impl From<&StoreError> for Failure {
    fn from(err: &StoreError) -> Self {
        let reason = match err {
            StoreError::Redis(_) => Reason::RedisUnavailable,
            StoreError::Corrupt { .. } => Reason::CorruptState,
            StoreError::NotReplicated { .. } => Reason::NotReplicated,
            // The new holder finishes the job; this delivery comes back and finds it done.
            StoreError::LockLost { .. } => {
                return Failure {
                    reason: Reason::LockBusy,
                    detail: err.to_string(),
                    retry: Retry::Transient { after: None },
                }
            }
        };
        Failure { reason, detail: err.to_string(), retry: err.retry() }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::from(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_per_provision() {
        let keys = Keys::new("bsw:");
        assert_eq!(keys.handshake(7, "9:ab12"), "bsw:handshake:{7}:9:ab12");
        assert_eq!(keys.provision(7), "bsw:provision:{7}");
        assert_eq!(keys.lock(7), "bsw:lock:provision:{7}");
        assert_eq!(keys.session(1364), "bsw:session:1364");
    }
}
