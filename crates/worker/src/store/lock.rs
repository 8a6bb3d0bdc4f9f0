//! The provision lock: one delivery at a time runs a provision's handshake. The holder
//! renews it while it works ([`Store::extend_lock`]), and every write of handshake
//! progress or of the session is fenced by it ([`Store::fenced_set`]): a holder whose lock
//! passed to another (a pause longer than its TTL) can no longer record anything, so the
//! new holder never finds its progress overwritten by a stale one.

use super::{Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

/// Who holds a provision's lock, for which credential.
#[derive(Debug, Clone)]
pub struct Claim {
    pub provision_id: u64,
    /// [`credential_tag`] of the credential being used.
    pub credential: String,
    /// The lock's value: unique per delivery.
    pub owner: String,
}

/// Names a credential without revealing it: its id and the start of the secret's
/// SHA-256, so a token reset (same provision, new secret) gets progress of its own.
pub fn credential_tag(credential_id: Option<u64>, token: &SecretString) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.expose_secret().as_bytes());
    format!("{}:{}", credential_id.unwrap_or(0), hex::encode(&digest.as_ref()[..8]))
}

/// Releases the lock only if we still own it: an expired lock may belong to someone else now.
/// Built once: a `Script` hashes its source, and EVALSHA then avoids resending it.
static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#,
    )
});

/// Extends the lock only if we still own it.
static EXTEND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#,
    )
});

/// KEYS[1] the lock, ARGV[1] its owner; then for each further key a value and a TTL in
/// seconds. Writes all of them unless another owner holds the lock. A lock that expired
/// with nobody taking it over (Redis was away longer than its TTL, so nobody could renew
/// it or take it) does not stop the write: nobody else is working on the provision, and
/// dropping what bunq already handed out would only make the next attempt ask again.
/// Every key carries the provision's hash tag, so the script runs on one Redis Cluster node.
static FENCED_SET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 2], 'EX', ARGV[2 * i - 1])
end
return 1"#,
    )
});

impl Store {
    /// Runs `work` holding the provision's lock, renewed every third of `ttl` for as long
    /// as it runs, and releases it after. `None` when another delivery holds the lock.
    /// The lock's owner is `owner_prefix` (the consumer tag) plus a per-call suffix.
    pub async fn with_lock<T, F, Fut>(
        &self,
        provision_id: u64,
        credential: String,
        owner_prefix: &str,
        ttl: Duration,
        work: F,
    ) -> Result<Option<T>, StoreError>
    where
        F: FnOnce(Claim) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let owner = format!("{owner_prefix}:{}", uuid::Uuid::new_v4().simple());
        if !self.try_lock(provision_id, &owner, ttl).await? {
            return Ok(None);
        }
        let claim = Claim { provision_id, credential, owner };
        // Renewed however long the work takes (bunq may be slow); the writes are fenced
        // by it in case a renewal is missed.
        let result = tokio::select! {
            result = work(claim.clone()) => result,
            never = self.keep_lock(&claim, ttl) => match never {},
        };
        if let Err(e) = self.unlock(provision_id, &claim.owner).await {
            // The lock expires on its own; a late release only delays the next holder.
            tracing::warn!(event = "unlock_failed", provision_id, error = %e);
        }
        Ok(Some(result))
    }

    /// Extends the lock every third of its TTL, forever: the caller stops it by finishing.
    async fn keep_lock(&self, claim: &Claim, ttl: Duration) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(ttl / 3).await;
            match self.extend_lock(claim, ttl).await {
                Ok(true) => {}
                // The fenced writes will refuse; nothing to do but say so.
                Ok(false) => tracing::warn!(event = "lock_lost", provision_id = claim.provision_id),
                Err(e) => tracing::warn!(event = "lock_extend_failed", provision_id = claim.provision_id, error = %e),
            }
        }
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

    /// Gives the holder another `ttl`; false when the lock is no longer ours.
    pub async fn extend_lock(&self, claim: &Claim, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let extended: i64 = EXTEND
            .key(self.keys.lock(claim.provision_id))
            .arg(&claim.owner)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }

    pub async fn unlock(&self, provision_id: u64, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = UNLOCK.key(self.keys.lock(provision_id)).arg(owner).invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Writes `(key, value, ttl)` records atomically while `claim` holds the lock.
    pub(super) async fn fenced_set(
        &self,
        claim: &Claim,
        writes: &[(String, Vec<u8>, Duration)],
    ) -> Result<(), StoreError> {
        let mut invocation = FENCED_SET.key(self.keys.lock(claim.provision_id));
        invocation.arg(&claim.owner);
        for (key, value, ttl) in writes {
            invocation.key(key).arg(value.as_slice()).arg(ttl.as_secs().max(1));
        }
        let mut conn = self.conn.clone();
        let written: i64 = invocation.invoke_async(&mut conn).await?;
        if written == 1 {
            Ok(())
        } else {
            Err(StoreError::LockLost { provision_id: claim.provision_id })
        }
    }
}
