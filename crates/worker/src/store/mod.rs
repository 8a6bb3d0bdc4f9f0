//! The Redis layout (docs/contracts.md §2): the session cache keyed by user, the per-provision
//! handshake progress and idempotency index, and the per-provision lock;
//! and the gate that holds work while Redis is away (`gate.rs`).
//!
//! Keys one operation writes together share a hash tag (`{provision_id}`), so the same
//! commands run on Redis Cluster (see [`conn`]).

use crate::failure::{Failure, Reason, Retry};
use crate::metrics::Metrics;
use crate::seal::{SealError, Sealer};
use crate::tls::TlsFiles;
use redis::AsyncCommands;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored record `{key}` is unreadable: {problem}")]
    Corrupt { key: String, problem: String },
    /// Sealed by a key this process does not hold. During a key rotation's rollout a
    /// replica without the new key reads what one with it wrote: the record is fine, and
    /// this replica soon gone or given the key (docs/contracts.md §2.4).
    #[error("stored record `{key}` is sealed with a key this worker does not hold: {problem}")]
    UnknownKey { key: String, key_id: String, problem: String },
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
    /// A record that failed to unseal: sealed by a key this process lacks, or unreadable.
    pub(crate) fn unsealable(key: String, error: SealError) -> Self {
        match error.missing_key() {
            Some(id) => StoreError::UnknownKey { key, key_id: id.to_owned(), problem: error.to_string() },
            None => StoreError::Corrupt { key, problem: error.to_string() },
        }
    }

    /// Redis coming back helps; a record we cannot read stays unreadable, unless a key
    /// rotation under way explains it (bounded by the delivery's attempts).
    pub(crate) fn retry(&self) -> Retry {
        match self {
            StoreError::Redis(_) | StoreError::UnknownKey { .. } => Retry::Transient { after: None },
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
    pub fn handshake(&self, provision_id: u64, credential: &str) -> String {
        format!("{}handshake:{{{provision_id}}}:{credential}", self.prefix)
    }
    /// Every credential tag of a provision that has handshake progress: what a close
    /// deletes.
    pub fn handshakes(&self, provision_id: u64) -> String {
        format!("{}handshakes:{{{provision_id}}}", self.prefix)
    }
    /// When a credential without an `expiry_time` was first seen (one hash tag with the
    /// provision's records).
    pub fn first_seen(&self, provision_id: u64, credential: &str) -> String {
        format!("{}first-seen:{{{provision_id}}}:{credential}", self.prefix)
    }
    /// `session.closed` events no queue took, waiting for one to be bound.
    pub fn held_events(&self) -> String {
        format!("{}held-events:closed", self.prefix)
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
    /// The partner's own bunq context (sealed), one for every replica.
    pub(crate) fn partner_context(&self) -> String {
        format!("{}partner:context", self.prefix)
    }
    /// The lock the partner's handshake runs under.
    pub(crate) fn partner_lock(&self) -> String {
        format!("{}partner:lock", self.prefix)
    }
    /// A provision's token reset: which credential it replaces, when it was requested.
    pub(crate) fn reset(&self, provision_id: u64) -> String {
        format!("{}reset:{{{provision_id}}}", self.prefix)
    }
    /// New tokens requested and not yet used, scored by when requested.
    pub(crate) fn resets_outstanding(&self) -> String {
        format!("{}resets:outstanding", self.prefix)
    }
    /// Provisions waiting for a reset or their new token, scored by when last seen.
    pub(crate) fn resets_waiting(&self) -> String {
        format!("{}resets:waiting", self.prefix)
    }
    /// The provision lock's generation: raised by every taking of the lock, kept past the
    /// lock's expiry, so a fenced write can tell a holder that has been overtaken.
    pub(crate) fn lock_generation(&self, provision_id: u64) -> String {
        format!("{}lock-generation:provision:{{{provision_id}}}", self.prefix)
    }
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

mod clock;
mod close;
mod conn;
mod first_seen;
pub(crate) mod gate;
mod lock;
mod partner;
mod record;
mod renewal;
mod replication;
mod reseal;

pub use conn::{connect, Redis, Target};
pub use replication::Replication;

pub use lock::{credential_tag, Begin, Claim, Fence, Written};
pub use partner::{PartnerContext, ResetRecord};
pub(crate) use record::{StoredHandshake, StoredSession};
pub use renewal::Credential;
pub use reseal::{Resealed, Unreadable};

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
    /// Counts plaintext tokens sealed on read; tools and tests leave it out.
    metrics: Option<Arc<Metrics>>,
    /// Redis's clock, kept as an offset (`clock.rs`); shared by the store's clones.
    clock: Arc<clock::SharedClock>,
}

impl Store {
    pub fn new(conn: impl Into<Redis>, keys: Keys, sealer: Option<Arc<Sealer>>) -> Self {
        Self { conn: conn.into(), keys, sealer, replication: None, metrics: None, clock: Arc::default() }
    }

    /// The same store, counting what it does in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
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
        self.cache_session(session, ttl, claim.generation).await?;
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

    /// Writes `session:{user_id}` under the lock `generation` its writer holds, unless
    /// the entry holds the same provision's session from a later generation (then false,
    /// and nothing is written: the writer was overtaken, and its fence check before
    /// publishing stops it). Idempotent: redeliveries call it to repair a cache entry lost
    /// between the two writes of [`Self::commit_session`].
    pub async fn cache_session(&self, session: &Session, ttl: Duration, generation: u64) -> Result<bool, StoreError> {
        let mut stored = self.seal_session(session);
        stored.generation = Some(generation);
        let body = serde_json::to_vec(&stored).expect("records serialise");
        let mut conn = self.conn.clone();
        let written: i64 = record::CACHE_SESSION
            .key(self.keys.session(session.user_id))
            .arg(body)
            .arg(ttl.as_secs().max(1))
            .arg(generation)
            .arg(session.provision_id)
            .invoke_async(&mut conn)
            .await?;
        if written == 0 {
            tracing::info!(
                event = "cache_write_refused",
                provision_id = session.provision_id,
                generation,
                "a later lock generation cached this provision's session; this holder was overtaken"
            );
        }
        Ok(written == 1)
    }

    /// How long `session:{user_id}` has left, for inspection tools.
    pub(crate) async fn session_ttl(&self, user_id: u64) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let ttl_ms: i64 = redis::cmd("PTTL").arg(self.keys.session(user_id)).query_async(&mut conn).await?;
        Ok(u64::try_from(ttl_ms).ok().map(Duration::from_millis))
    }
}

/// How the handler classifies a store error.
impl From<&StoreError> for Failure {
    fn from(err: &StoreError) -> Self {
        let reason = match err {
            StoreError::Redis(_) => Reason::RedisUnavailable,
            StoreError::Corrupt { .. } => Reason::CorruptState,
            StoreError::NotReplicated { .. } => Reason::NotReplicated,
            StoreError::UnknownKey { .. } => Reason::UnknownKey,
            // The new holder finishes the job; this delivery comes back and finds it done.
            StoreError::LockLost { .. } => {
                return Failure {
                    reason: Reason::LockBusy,
                    detail: err.to_string(),
                    retry: Retry::Transient { after: None },
                    answered: None,
                }
            }
        };
        Failure { reason, detail: err.to_string(), retry: err.retry(), answered: None }
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
