//! The provision lock: one delivery at a time runs a provision's handshake. The holder
//! renews it while it works ([`Store::extend_lock`]), and every write of handshake
//! progress or of the session is fenced by it ([`Store::fenced_write`]).
//!
//! The fence only moves forward: every taking of the lock raises the provision's
//! generation (a counter kept beside the lock, outliving it), the holder's [`Claim`] names
//! the generation it got, and a fenced write is refused once the counter has moved past
//! it, whether the lock is now held by another or already released again. A holder paused
//! past its lock (GC, VM freeze, partition) while another took the provision, opened,
//! announced and released it, can no longer record anything when it resumes.

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
    /// The lock's generation this holder got: its writes are refused once a later one exists.
    pub generation: u64,
}

/// How long a provision's lock generation outlives its last taking. A holder paused
/// longer than this finds the counter gone, which refuses its writes too (0 never
/// matches a generation); the bound only keeps idle provisions from holding a key forever.
const GENERATION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Takes the lock and raises its generation. KEYS[1] the lock, KEYS[2] its generation;
/// ARGV[1] the owner, ARGV[2] the TTL in ms, ARGV[3] the generation's TTL in seconds.
/// The new generation, or 0 when another holds the lock.
const TAKE: &str = r#"
local function take()
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
  local generation = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return generation
end
"#;

static TRY_LOCK: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{TAKE}return take()")));

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

/// KEYS[1] the lock's generation, KEYS[2] the provision's closed marker, KEYS[3] its index
/// of handshake records when ARGV[2] is a credential tag to add to it (else ''), then the
/// records; ARGV[1] the holder's generation, ARGV[3] the index's TTL in seconds, then a
/// value and a TTL in seconds per record. Writes everything unless the lock was taken
/// again since the holder took it (0); else 1, or 2 when the provision is marked closed.
///
/// A lock that expired with nobody taking it over (Redis was away longer than its TTL,
/// so nobody could renew it or take it) does not stop the write: the generation is still
/// the holder's, nobody else worked on the provision, and dropping what bunq already
/// handed out would only make the next attempt ask again. The index lives as long as its longest-lived record (`EXPIRE … NX`
/// sets a first TTL, `GT` only extends it) and is written with the record, so it always
/// covers every record. Every key carries the provision's hash tag, so the script runs
/// on one Redis Cluster node.
static FENCED_WRITE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local first = 3
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[3], 'NX')
  redis.call('EXPIRE', KEYS[3], ARGV[3], 'GT')
  first = 4
end
for i = first, #KEYS do
  local at = 2 * (i - first) + 4
  redis.call('SET', KEYS[i], ARGV[at], 'EX', ARGV[at + 1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
return 1"#,
    )
});

/// An open's first step in one round trip: KEYS[1] the lock, KEYS[2] its generation,
/// KEYS[3] the closed marker, KEYS[4] the credential's handshake record, KEYS[5] the
/// newest credential id seen; ARGV[1..3] as for [`TAKE`], ARGV[4] the credential's id (0:
/// none). `closed` (nothing taken), `stale` (a newer credential was seen: nothing taken),
/// `busy` (held by another), or `locked` with the generation and the record ('' when there
/// is none).
static BEGIN_OPEN: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(&format!(
        r#"{TAKE}
if redis.call('EXISTS', KEYS[3]) == 1 then return {{'closed', 0, ''}} end
local ours = tonumber(ARGV[4])
local newest = tonumber(redis.call('GET', KEYS[5]) or '0')
if ours > 0 and newest > ours then return {{'stale', 0, ''}} end
local generation = take()
if generation == 0 then return {{'busy', 0, ''}} end
if ours > newest then redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[3]) end
return {{'locked', generation, redis.call('GET', KEYS[4]) or ''}}"#
    ))
});

/// KEYS[1] the lock's generation, KEYS[2] the closed marker; ARGV[1] the holder's
/// generation. 0: overtaken (a later generation exists), 2: the provision is closed, 1:
/// neither. Run right before publishing what the holder did.
static CHECK_FENCE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
return 1"#,
    )
});

/// What [`Store::check_fence`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The holder's generation is still the latest and the provision is open.
    Held,
    /// Another holder took the provision since.
    Overtaken,
    /// The provision was closed.
    Closed,
}

/// What [`Store::begin_open`] found.
pub enum Begin {
    /// The provision is marked closed: nothing was taken.
    Closed,
    /// A newer credential of the provision was seen (a token reset): this event's older
    /// one must not replace or re-announce its session. Nothing was taken.
    Stale,
    /// Another delivery holds the provision.
    Busy,
    /// The lock is ours (hold it with [`Store::hold`]), with the credential's handshake
    /// progress (an unreadable record is the error, reported under the lock).
    Locked { claim: Claim, handshake: Box<Result<super::Handshake, StoreError>> },
}

/// What a fenced write found besides writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The provision was marked closed (before or during this holder's work).
    pub closed: bool,
}

impl Store {
    /// Runs `work` holding the provision's lock, renewed every third of `ttl` for as long
    /// as it runs, and releases it after. `None` when another delivery holds the lock.
    /// The lock's owner is `owner_prefix` (the consumer tag) plus a per-call suffix.
    pub(crate) async fn with_lock<T, F, Fut>(
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
        let owner = lock_owner(owner_prefix);
        let Some(generation) = self.try_lock(provision_id, &owner, ttl).await? else {
            return Ok(None);
        };
        // The taking must survive a failover, or the next holder is handed this generation
        // again and both pass the fence.
        if let Err(e) = self.replicated(provision_id, &[self.keys.lock_generation(provision_id)]).await {
            self.unlock(provision_id, &owner).await?;
            return Err(e);
        }
        let claim = Claim { provision_id, credential, owner, generation };
        Ok(Some(self.hold(&claim, ttl, work(claim.clone())).await))
    }

    /// An open's closed check, credential order check, lock and handshake read, in one
    /// round trip. `credential_id`: bunq's id of the credential (issued in increasing
    /// order); `None` takes no part in the order.
    pub async fn begin_open(
        &self,
        provision_id: u64,
        credential: String,
        credential_id: Option<u64>,
        owner_prefix: &str,
        ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let owner = lock_owner(owner_prefix);
        let record_key = self.keys.handshake(provision_id, &credential);
        let mut conn = self.conn.clone();
        let (state, generation, record): (String, u64, Vec<u8>) = BEGIN_OPEN
            .key(self.keys.lock(provision_id))
            .key(self.keys.lock_generation(provision_id))
            .key(self.keys.closed(provision_id))
            .key(&record_key)
            .key(self.keys.newest_credential(provision_id))
            .arg(&owner)
            .arg(ttl.as_millis() as u64)
            .arg(GENERATION_TTL.as_secs())
            .arg(credential_id.unwrap_or(0))
            .invoke_async(&mut conn)
            .await?;
        Ok(match state.as_str() {
            "closed" => Begin::Closed,
            "stale" => Begin::Stale,
            "busy" => Begin::Busy,
            _ => {
                let raw = (!record.is_empty()).then_some(record);
                let handshake = self
                    .open_record(record_key, raw, |stored| self.open_handshake(provision_id, stored))
                    .await
                    .map(Option::unwrap_or_default);
                if let Err(e) = self.replicated(provision_id, &[self.keys.lock_generation(provision_id)]).await {
                    self.unlock(provision_id, &owner).await?;
                    return Err(e);
                }
                let claim = Claim { provision_id, credential, owner, generation };
                Begin::Locked { claim, handshake: Box::new(handshake) }
            }
        })
    }

    /// Runs `work` while `claim` holds the lock it took, renewing it every third of `ttl`,
    /// then releases it.
    pub(crate) async fn hold<T>(&self, claim: &Claim, ttl: Duration, work: impl std::future::Future<Output = T>) -> T {
        // Renewed however long the work takes (bunq may be slow); the writes are fenced
        // by it in case a renewal is missed.
        let result = tokio::select! {
            result = work => result,
            never = self.keep_lock(claim, ttl) => match never {},
        };
        if let Err(e) = self.unlock(claim.provision_id, &claim.owner).await {
            // The lock expires on its own; a late release only delays the next holder.
            tracing::warn!(event = "unlock_failed", provision_id = claim.provision_id, error = %e);
        }
        result
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

    /// Takes the provision for `owner` unless another holds it: the generation it got.
    pub async fn try_lock(&self, provision_id: u64, owner: &str, ttl: Duration) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let generation: u64 = TRY_LOCK
            .key(self.keys.lock(provision_id))
            .key(self.keys.lock_generation(provision_id))
            .arg(owner)
            .arg(ttl.as_millis() as u64)
            .arg(GENERATION_TTL.as_secs())
            .invoke_async(&mut conn)
            .await?;
        Ok((generation > 0).then_some(generation))
    }

    /// Whether `claim` may still publish what it did: its generation is the latest and the
    /// provision is not closed. Checked right before publishing; the publish itself cannot
    /// be fenced (RabbitMQ knows no generation), so a pause between the two stays possible.
    pub(crate) async fn check_fence(&self, claim: &Claim) -> Result<Fence, StoreError> {
        let mut conn = self.conn.clone();
        let found: i64 = CHECK_FENCE
            .key(self.keys.lock_generation(claim.provision_id))
            .key(self.keys.closed(claim.provision_id))
            .arg(claim.generation)
            .invoke_async(&mut conn)
            .await?;
        Ok(match found {
            0 => Fence::Overtaken,
            2 => Fence::Closed,
            _ => Fence::Held,
        })
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

    /// Writes `(key, value, ttl)` records atomically while `claim` holds the lock; with
    /// `index` (the TTL of the index), also adds the claim's credential to the provision's
    /// index of handshake records.
    pub(super) async fn fenced_write(
        &self,
        claim: &Claim,
        index: Option<Duration>,
        writes: &[(String, Vec<u8>, Duration)],
    ) -> Result<Written, StoreError> {
        let mut invocation = FENCED_WRITE.key(self.keys.lock_generation(claim.provision_id));
        invocation.key(self.keys.closed(claim.provision_id)).arg(claim.generation);
        match index {
            Some(ttl) => {
                invocation.key(self.keys.handshakes(claim.provision_id));
                invocation.arg(&claim.credential).arg(ttl.as_secs().max(1));
            }
            None => {
                invocation.arg("").arg(0);
            }
        }
        for (key, value, ttl) in writes {
            invocation.key(key).arg(value.as_slice()).arg(ttl.as_secs().max(1));
        }
        let mut conn = self.conn.clone();
        match invocation.invoke_async::<i64>(&mut conn).await? {
            0 => Err(StoreError::LockLost { provision_id: claim.provision_id }),
            written => Ok(Written { closed: written == 2 }),
        }
    }
}

/// A lock value unique to one holding: the prefix (the consumer tag) says who holds it.
fn lock_owner(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}
