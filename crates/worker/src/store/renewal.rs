//! What renewal keeps in Redis: the sealed credential of each renewable provision, and
//! the schedule every replica serves (`renew.rs`).
//!
//! The schedule is one sorted set: member = provision id, score = when its session is
//! due for renewal (unix ms). A replica claims due entries by moving their score a lease
//! into the future in one script, so no two replicas claim the same entry at once, and
//! an entry whose claimant died comes due again when the lease runs out: that is the
//! takeover. The provision lock, not the lease, is what makes a renewal happen once.

use super::record::{provision_owner, record_error, without_key, Tokens, REDACTED};
use super::{Claim, Store, StoreError};
use crate::seal::Context;
use redis::AsyncCommands as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

/// How long a renewable session's records (credential, handshake, provision index)
/// outlive its cache entry, which ends `SESSION_TTL_MARGIN` before the session does.
const RECORDS_OUTLIVE_CACHE: Duration = Duration::from_secs(15 * 60);

/// The TTL of a renewable session's records, given its cache entry's.
pub(super) fn keep(cache_ttl: Duration) -> Duration {
    cache_ttl + RECORDS_OUTLIVE_CACHE
}

/// The credential a renewal uses, in memory.
#[derive(Debug, Clone)]
pub struct Credential {
    /// [`super::credential_tag`]: names the handshake record the session lives in.
    pub tag: String,
    pub token_value: SecretString,
    /// A renewed session whose `bunq.session.renewed` event is not confirmed yet: the
    /// next pass over the entry publishes it (same event id) before anything else.
    pub unannounced: Option<u64>,
    /// Renewal attempts that failed in a row; sets the backoff of the next.
    pub failures: u32,
}

#[derive(Serialize, Deserialize)]
pub(super) struct StoredCredential {
    tag: String,
    /// Always sealed: renewal is refused at start-up without a key.
    token_value: String,
    #[serde(default)]
    unannounced: Option<u64>,
    #[serde(default)]
    failures: u32,
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("tag", &self.tag)
            .field("token_value", &REDACTED)
            .field("unannounced", &self.unannounced)
            .field("failures", &self.failures)
            .finish()
    }
}

/// A plaintext `token_value` is never sealed on read: one is never written, so it is
/// unreadable (`corrupt_state`), not trusted.
impl Tokens for StoredCredential {
    fn tokens(&self) -> impl Iterator<Item = &String> {
        std::iter::empty()
    }
}

/// Claims up to ARGV[3] entries due at ARGV[1] (ms) by moving them to ARGV[2].
static CLAIM_DUE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due"#,
    )
});

impl Store {
    /// The `(key, value, ttl)` of a credential record, for a fenced write.
    pub(super) fn credential_write(
        &self,
        provision_id: u64,
        credential: &Credential,
        ttl: Duration,
    ) -> Option<(String, Vec<u8>, Duration)> {
        let owner = provision_owner(provision_id);
        // Without a key nothing is written: configuration refuses renewal without one,
        // and a credential is never stored in the clear.
        let sealer = self.sealer.as_ref()?;
        let token_value =
            sealer.seal(Context { owner: &owner, field: "token_value" }, credential.token_value.expose_secret());
        let stored = StoredCredential {
            tag: credential.tag.clone(),
            token_value,
            unannounced: credential.unannounced,
            failures: credential.failures,
        };
        Some((self.keys.credential(provision_id), serde_json::to_vec(&stored).expect("records serialise"), ttl))
    }

    pub async fn load_credential(&self, provision_id: u64) -> Result<Option<Credential>, StoreError> {
        let owner = provision_owner(provision_id);
        self.read_record(self.keys.credential(provision_id), |stored: StoredCredential| {
            let token_value = match &self.sealer {
                Some(sealer) => sealer.open(Context { owner: &owner, field: "token_value" }, &stored.token_value)?,
                None => return Err(without_key("token_value", &stored.token_value)),
            };
            Ok(Credential {
                tag: stored.tag,
                token_value: SecretString::from(token_value),
                unannounced: stored.unannounced,
                failures: stored.failures,
            })
        })
        .await
    }

    /// `session reseal`: the record at `key` sealed by the current key, `None` when it
    /// already is.
    pub(super) fn resealed_credential(
        &self,
        key: &str,
        provision_id: u64,
        raw: &[u8],
        sealer: &crate::seal::Sealer,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut stored: StoredCredential = serde_json::from_slice(raw)
            .map_err(|e| StoreError::Corrupt { key: key.to_owned(), problem: record_error(&e) })?;
        if sealer.is_current(&stored.token_value) {
            return Ok(None);
        }
        let owner = provision_owner(provision_id);
        let context = Context { owner: &owner, field: "token_value" };
        let opened = SecretString::from(
            sealer.open(context, &stored.token_value).map_err(|e| StoreError::unsealable(key.to_owned(), e))?,
        );
        stored.token_value = sealer.seal(context, opened.expose_secret());
        Ok(Some(serde_json::to_vec(&stored).expect("records serialise")))
    }

    /// Rewrites the credential record (its bookkeeping changed) while `claim` holds the
    /// lock; `cache_ttl` is the session's cache TTL (the record outlives it).
    pub async fn save_credential(
        &self,
        claim: &Claim,
        credential: &Credential,
        cache_ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl = keep(cache_ttl);
        let writes: Vec<_> = self.credential_write(claim.provision_id, credential, ttl).into_iter().collect();
        self.fenced_write(claim, None, &writes).await.map(|_| ())
    }

    /// Puts the provision's renewal at `due`, replacing any earlier entry.
    pub(crate) async fn schedule_renewal(&self, provision_id: u64, due: OffsetDateTime) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let () = conn.zadd(self.keys.renewals(), provision_id, unix_ms(due)).await?;
        Ok(())
    }

    /// The same, unless the provision already has an entry (possibly claimed).
    pub(crate) async fn schedule_renewal_if_absent(
        &self,
        provision_id: u64,
        due: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.renewals())
            .arg("NX")
            .arg(unix_ms(due))
            .arg(provision_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    pub(crate) async fn unschedule_renewal(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let () = conn.zrem(self.keys.renewals(), provision_id).await?;
        Ok(())
    }

    /// Claims up to `limit` entries due by `now` for `lease`; they come due again when
    /// it runs out, unless the claimant reschedules them first.
    pub(crate) async fn claim_due_renewals(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let claimed: Vec<u64> = CLAIM_DUE
            .key(self.keys.renewals())
            .arg(unix_ms(now))
            .arg(unix_ms(now) + lease.as_millis() as i64)
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(claimed)
    }

    /// `(entries, entries due by now)`: the schedule's size and how far behind it is.
    pub(crate) async fn renewal_backlog(&self, now: OffsetDateTime) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn.clone();
        let (total, due): (u64, u64) = redis::pipe()
            .zcard(self.keys.renewals())
            .zcount(self.keys.renewals(), "-inf", unix_ms(now))
            .query_async(&mut conn)
            .await?;
        Ok((total, due))
    }

    /// When the provision's renewal is scheduled (tests and tools).
    pub async fn renewal_due(&self, provision_id: u64) -> Result<Option<OffsetDateTime>, StoreError> {
        let mut conn = self.conn.clone();
        let score: Option<i64> = conn.zscore(self.keys.renewals(), provision_id).await?;
        Ok(score.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()))
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_stored_credential_prints_no_token() {
        let stored = StoredCredential {
            tag: "0:ab".into(),
            token_value: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            unannounced: Some(3),
            failures: 1,
        };
        let printed = format!("{stored:?}");
        assert!(!printed.contains("9f86d081884c7d65") && printed.contains(REDACTED), "{printed}");
    }
}
