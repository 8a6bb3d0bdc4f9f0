//! The partner's side in Redis (`CREDENTIAL_RESET=on`): its own bunq context (sealed,
//! one for every replica), the lock its one handshake runs under, each provision's
//! token-reset record, and the set of provisions waiting for a reset or its new token.

use super::{Store, StoreError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Sealing context of the partner's tokens (who they belong to).
const OWNER: &str = "partner";

/// The partner's context as it is used: tokens unsealed and wrapped.
#[derive(Debug, Clone)]
pub struct PartnerContext {
    pub installation_token: SecretString,
    pub server_public_key: String,
    /// `None` once bunq refused it: the next use opens a new one on the same installation.
    pub session_token: Option<SecretString>,
    /// `UserCompany.id`: the partner's own user.
    pub company_id: u64,
    /// Unix seconds, Redis's clock.
    pub session_expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredContext {
    installation_token: String,
    server_public_key: String,
    session_token: Option<String>,
    company_id: u64,
    session_expires_at: i64,
}

/// One provision's reset, as every replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRecord {
    /// The token the reset replaces (the expired or refused one), as a tag without the
    /// secret; a reset is requested once per such token, across tries and replicas.
    pub replaces: Option<String>,
    /// When bunq accepted the reset request (Unix seconds); `None`: not requested yet.
    pub requested_at: Option<i64>,
    /// Reset requests bunq refused (the provision was still active).
    pub refusals: u32,
}

/// Releases the partner lock only for its owner.
static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
});

impl Store {
    pub async fn load_partner_context(&self) -> Result<Option<PartnerContext>, StoreError> {
        let key = self.keys.partner_context();
        let raw: Option<Vec<u8>> = redis::AsyncCommands::get(&mut self.conn.clone(), &key).await?;
        let Some(raw) = raw else { return Ok(None) };
        let stored: StoredContext = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Corrupt { key: key.clone(), problem: e.to_string() })?;
        let open = |field: &str, value: String| {
            self.unseal(OWNER, field, value).map_err(|e| StoreError::unsealable(key.clone(), e))
        };
        Ok(Some(PartnerContext {
            installation_token: open("installation_token", stored.installation_token)?,
            server_public_key: stored.server_public_key,
            session_token: stored.session_token.map(|t| open("session_token", t)).transpose()?,
            company_id: stored.company_id,
            session_expires_at: stored.session_expires_at,
        }))
    }

    /// Writes the context (sealed); it outlives its session so a new session reuses the
    /// installation and device.
    pub async fn save_partner_context(&self, context: &PartnerContext, keep: Duration) -> Result<(), StoreError> {
        let stored = StoredContext {
            installation_token: self.seal(OWNER, "installation_token", &context.installation_token),
            server_public_key: context.server_public_key.clone(),
            session_token: context.session_token.as_ref().map(|t| self.seal(OWNER, "session_token", t)),
            company_id: context.company_id,
            session_expires_at: context.session_expires_at,
        };
        let body = serde_json::to_vec(&stored).expect("records serialise");
        let mut conn = self.conn.clone();
        let _: () =
            redis::AsyncCommands::set_ex(&mut conn, self.keys.partner_context(), body, keep.as_secs().max(1)).await?;
        Ok(())
    }

    /// Takes the lock the partner's handshake runs under; false when another holds it.
    pub async fn lock_partner(&self, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.keys.partner_lock())
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    pub async fn unlock_partner(&self, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = UNLOCK.key(self.keys.partner_lock()).arg(owner).invoke_async(&mut conn).await?;
        Ok(())
    }

    pub async fn load_reset(&self, provision_id: u64) -> Result<ResetRecord, StoreError> {
        let key = self.keys.reset(provision_id);
        let raw: Option<Vec<u8>> = redis::AsyncCommands::get(&mut self.conn.clone(), &key).await?;
        match raw {
            None => Ok(ResetRecord::default()),
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt { key, problem: e.to_string() }),
        }
    }

    /// Writes the provision's reset record (the caller holds the provision's lock) and
    /// counts the provision as waiting.
    pub async fn save_reset(&self, provision_id: u64, record: &ResetRecord, keep: Duration) -> Result<(), StoreError> {
        let body = serde_json::to_vec(record).expect("records serialise");
        let mut conn = self.conn.clone();
        let now = self.clock_now().unix_timestamp();
        let _: () = redis::pipe()
            .set_ex(self.keys.reset(provision_id), body, keep.as_secs().max(1))
            .ignore()
            .zadd(self.keys.resets_waiting(), provision_id, now)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Counts the provision as waiting for its reset (before any record exists).
    pub async fn wait_for_reset(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let now = self.clock_now().unix_timestamp();
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.resets_waiting())
            .arg("NX")
            .arg(now)
            .arg(provision_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The provision no longer waits: its new token is used, or it was dead-lettered.
    pub async fn reset_done(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .zrem(self.keys.resets_waiting(), provision_id)
            .ignore()
            .zrem(self.keys.resets_outstanding(), provision_id)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// New tokens requested and not yet used, requested within `life` (older ones have
    /// expired unused): what the session-server budget still has to serve.
    pub async fn resets_outstanding(&self, life: Duration) -> Result<u64, StoreError> {
        self.count_recent(self.keys.resets_outstanding(), life).await
    }

    /// A request bunq refused: no new token to wait for.
    pub async fn reset_withdrawn(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::AsyncCommands::zrem(&mut conn, self.keys.resets_outstanding(), provision_id).await?;
        Ok(())
    }

    /// Counts a requested reset as outstanding until its token is used.
    pub async fn reset_requested(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let now = self.clock_now().unix_timestamp();
        let _: i64 = redis::AsyncCommands::zadd(&mut conn, self.keys.resets_outstanding(), provision_id, now).await?;
        Ok(())
    }

    /// Provisions waiting for a reset or their new token, dropping those not seen for
    /// `forget_after` (their deliveries ended elsewhere, e.g. a closed provision).
    pub async fn resets_waiting(&self, forget_after: Duration) -> Result<u64, StoreError> {
        self.count_recent(self.keys.resets_waiting(), forget_after).await
    }

    /// Members of the sorted set `key` scored (Unix seconds) within `keep` of now, the
    /// older ones dropped first.
    async fn count_recent(&self, key: String, keep: Duration) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let oldest = self.clock_now().unix_timestamp() - keep.as_secs() as i64;
        let (_, count): (i64, u64) =
            redis::pipe().zrembyscore(&key, "-inf", oldest).zcard(&key).query_async(&mut conn).await?;
        Ok(count)
    }
}
