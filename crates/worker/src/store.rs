//! The Redis layout (docs/contracts.md §2): the session cache keyed by user, the per-provision
//! handshake progress and idempotency index, and the per-provision lock.
//!
//! Keys one operation writes together share a hash tag (`{provision_id}`), so the same
//! commands run on Redis Cluster.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored record `{key}` is unreadable: {problem}")]
    Corrupt { key: String, problem: String },
}

impl StoreError {
    /// Redis coming back helps; a record we cannot read stays unreadable.
    pub fn retry(&self) -> bunq_protocol::Retry {
        match self {
            StoreError::Redis(_) => bunq_protocol::Retry::Transient { after: None },
            StoreError::Corrupt { .. } => bunq_protocol::Retry::Permanent,
        }
    }
}

/// A Redis connection that reconnects by itself; commands fail fast while Redis is
/// away, so deliveries go to the retry queue instead of hanging.
pub fn connect(url: &SecretString) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
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
    pub fn provision(&self, provision_id: u64) -> String {
        format!("{}provision:{{{provision_id}}}", self.prefix)
    }
    /// Handshake progress, so a retry does not repeat installation or device-server.
    pub fn handshake(&self, provision_id: u64) -> String {
        format!("{}handshake:{{{provision_id}}}", self.prefix)
    }
    pub fn lock(&self, provision_id: u64) -> String {
        format!("{}lock:provision:{{{provision_id}}}", self.prefix)
    }
}

/// The cached session, as downstream services read it from `session:{user_id}`.
/// Token fields hold plaintext, or `v1:<base64 nonce‖ciphertext>` when a key is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub user_id: u64,
    pub granted_by_user_id: Option<u64>,
    pub session_id: u64,
    pub session_token: String,
    pub installation_token: String,
    pub server_public_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Progress of one provision's handshake.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredHandshake {
    pub installation_token: Option<String>,
    pub server_public_key: Option<String>,
    pub device_id: Option<u64>,
    pub session: Option<StoredSession>,
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

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    keys: Keys,
    sealer: Option<std::sync::Arc<Sealer>>,
}

/// Releases the lock only if we still own it: an expired lock may belong to someone else now.
/// Built once: a `Script` hashes its source, and EVALSHA then avoids resending it.
static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#,
    )
});

impl Store {
    pub fn new(conn: ConnectionManager, keys: Keys, sealer: Option<std::sync::Arc<Sealer>>) -> Self {
        Self { conn, keys, sealer }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn load_handshake(&self, provision_id: u64) -> Result<Handshake, StoreError> {
        let key = self.keys.handshake(provision_id);
        Ok(self.read_record(key, |stored| self.open_handshake(stored)).await?.unwrap_or_default())
    }

    /// GET, decode and unseal one record; a record that fails either is `Corrupt`.
    async fn read_record<S: serde::de::DeserializeOwned, T>(
        &self,
        key: String,
        open: impl FnOnce(S) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Option<Vec<u8>> = conn.get(&key).await?;
        let Some(raw) = raw else { return Ok(None) };
        serde_json::from_slice(&raw)
            .map_err(|e| e.to_string())
            .and_then(open)
            .map(Some)
            .map_err(|problem| StoreError::Corrupt { key, problem })
    }

    /// Records progress before the session exists.
    pub async fn save_handshake(
        &self,
        provision_id: u64,
        handshake: &Handshake,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let stored = self.seal_handshake(handshake);
        let body = serde_json::to_vec(&stored).expect("records serialise");
        let mut conn = self.conn.clone();
        let () = conn.set_ex(self.keys.handshake(provision_id), body, ttl.as_secs().max(1)).await?;
        Ok(())
    }

    /// Makes a new session durable: handshake (with the session) and the provision
    /// index atomically, then the user-keyed cache entry.
    pub async fn commit_session(
        &self,
        handshake: &Handshake,
        session: &Session,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl_secs = ttl.as_secs().max(1);
        let stored = serde_json::to_vec(&self.seal_handshake(handshake)).expect("records serialise");
        let mut conn = self.conn.clone();
        let () = redis::pipe()
            .atomic()
            .set_ex(self.keys.handshake(session.provision_id), stored, ttl_secs)
            .ignore()
            .set_ex(self.keys.provision(session.provision_id), session.user_id, ttl_secs)
            .ignore()
            .query_async(&mut conn)
            .await?;
        self.cache_session(session, ttl).await
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

    /// `SET NX PX`: true when this owner now holds the provision.
    pub async fn try_lock(&self, provision_id: u64, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.lock(provision_id))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    pub async fn unlock(&self, provision_id: u64, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = UNLOCK.key(self.keys.lock(provision_id)).arg(owner).invoke_async(&mut conn).await?;
        Ok(())
    }

    fn seal(&self, field: &str, value: &SecretString) -> String {
        match &self.sealer {
            Some(sealer) => sealer.seal(field, value.expose_secret()),
            None => value.expose_secret().to_owned(),
        }
    }

    fn unseal(&self, field: &str, value: String) -> Result<SecretString, String> {
        match &self.sealer {
            Some(sealer) => sealer.open(field, &value).map(SecretString::from),
            None if value.starts_with(SEALED_PREFIX) => Err(format!("{field} is encrypted but no key is configured")),
            None => Ok(SecretString::from(value)),
        }
    }

    fn seal_session(&self, s: &Session) -> StoredSession {
        StoredSession {
            provision_id: s.provision_id,
            external_uuid: s.external_uuid.clone(),
            user_id: s.user_id,
            granted_by_user_id: s.granted_by_user_id,
            session_id: s.session_id,
            session_token: self.seal("session_token", &s.session_token),
            installation_token: self.seal("installation_token", &s.installation_token),
            server_public_key: s.server_public_key.clone(),
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }

    fn open_session(&self, s: StoredSession) -> Result<Session, String> {
        Ok(Session {
            session_token: self.unseal("session_token", s.session_token)?,
            installation_token: self.unseal("installation_token", s.installation_token)?,
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

    fn seal_handshake(&self, h: &Handshake) -> StoredHandshake {
        StoredHandshake {
            installation_token: h.installation.as_ref().map(|(token, _)| self.seal("installation_token", token)),
            server_public_key: h.installation.as_ref().map(|(_, key)| key.clone()),
            device_id: h.device_id,
            session: h.session.as_ref().map(|s| self.seal_session(s)),
        }
    }

    fn open_handshake(&self, h: StoredHandshake) -> Result<Handshake, String> {
        let installation = match (h.installation_token, h.server_public_key) {
            (Some(token), Some(key)) => Some((self.unseal("installation_token", token)?, key)),
            _ => None,
        };
        let session = h.session.map(|s| self.open_session(s)).transpose()?;
        Ok(Handshake { installation, device_id: h.device_id, session })
    }
}

const SEALED_PREFIX: &str = "v1:";

/// AES-256-GCM for tokens at rest. The field name is the associated data, so a sealed
/// value cannot be moved into another field.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256");
        Self { key: LessSafeKey::new(unbound) }
    }

    /// Accepts the key as 32 raw bytes, 64 hex characters, or base64 of 32 bytes, and
    /// refuses what looks like a passphrase or a made-up key rather than 32 random bytes.
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, String> {
        if let Ok(key) = <[u8; 32]>::try_from(bytes) {
            if key.iter().all(|b| (0x20..0x7f).contains(b)) {
                return Err("32 printable characters look like a passphrase, not a key: \
                            write 32 random bytes (e.g. `head -c 32 /dev/urandom`)"
                    .to_owned());
            }
            return Self::random_looking(key);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "must be 32 raw bytes, 64 hex characters or base64")?.trim();
        let decoded = hex::decode(text)
            .ok()
            .or_else(|| BASE64.decode(text).ok())
            .ok_or("must be 32 raw bytes, 64 hex characters or base64")?;
        let key = <[u8; 32]>::try_from(decoded.as_slice())
            .map_err(|_| format!("key is {} bytes, AES-256 needs 32", decoded.len()))?;
        Self::random_looking(key)
    }

    /// 32 random bytes almost surely hold more than 16 distinct values (fewer than 16 has
    /// a probability below 1e-10); a repeated or counted pattern does not.
    fn random_looking(key: [u8; 32]) -> Result<Self, String> {
        let distinct = key.iter().collect::<std::collections::BTreeSet<_>>().len();
        if distinct < 16 {
            return Err(format!(
                "the key has only {distinct} distinct byte values: not random; generate one with \
                 `head -c 32 /dev/urandom`"
            ));
        }
        Ok(Self::new(&key))
    }

    pub fn seal(&self, field: &str, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness is available");
        let mut buffer = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(field.as_bytes()), &mut buffer)
            .expect("sealing a short value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        format!("{SEALED_PREFIX}{}", BASE64.encode(out))
    }

    pub fn open(&self, field: &str, sealed: &str) -> Result<String, String> {
        let encoded = sealed.strip_prefix(SEALED_PREFIX).ok_or_else(|| format!("{field} is not encrypted"))?;
        let mut bytes = BASE64.decode(encoded).map_err(|_| format!("{field}: not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(format!("{field}: too short"));
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| format!("{field}: bad nonce"))?;
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(field.as_bytes()), &mut ciphertext)
            .map_err(|_| format!("{field}: cannot decrypt (wrong SESSION_ENCRYPTION_KEY_FILE?)"))?;
        String::from_utf8(plaintext.to_vec()).map_err(|_| format!("{field}: not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag_per_provision() {
        let keys = Keys::new("bsw:");
        assert_eq!(keys.handshake(7), "bsw:handshake:{7}");
        assert_eq!(keys.provision(7), "bsw:provision:{7}");
        assert_eq!(keys.lock(7), "bsw:lock:provision:{7}");
        assert_eq!(keys.session(1364), "bsw:session:1364");
    }

    #[test]
    fn sealed_values_round_trip_and_are_bound_to_their_field() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal("session_token", "f981bd6d");
        assert!(sealed.starts_with("v1:") && !sealed.contains("f981bd6d"));
        assert_eq!(sealer.open("session_token", &sealed).unwrap(), "f981bd6d");
        assert!(sealer.open("installation_token", &sealed).is_err());
        assert!(Sealer::new(&[8; 32]).open("session_token", &sealed).is_err());
        assert_ne!(sealer.seal("session_token", "f981bd6d"), sealed, "nonces must differ");
    }

    #[test]
    fn key_file_accepts_raw_hex_and_base64() {
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).unwrap();
        raw[0] = 0x80; // never all printable
        for file in [raw.to_vec(), hex::encode(raw).into_bytes(), format!("{}\n", BASE64.encode(raw)).into_bytes()] {
            let sealer = Sealer::from_key_file(&file).unwrap();
            assert_eq!(Sealer::new(&raw).open("f", &sealer.seal("f", "x")).unwrap(), "x");
        }
        assert!(Sealer::from_key_file(b"short").unwrap_err().contains("32"));
    }

    #[test]
    fn key_files_that_are_not_random_are_refused() {
        let passphrase = b"correct horse battery staple!!!!";
        assert!(Sealer::from_key_file(passphrase).unwrap_err().contains("passphrase"));
        assert!(Sealer::from_key_file(&[9u8; 32]).unwrap_err().contains("distinct"));
        assert!(Sealer::from_key_file(hex::encode([7u8; 32]).as_bytes()).unwrap_err().contains("distinct"));
    }
}
