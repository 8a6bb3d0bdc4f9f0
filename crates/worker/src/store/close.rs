//! What closing a provision does in Redis: the closed marker that stops every later
//! announcement, the index of its handshake records, and the purge.

use super::{Session, Store, StoreError, StoredSession};
use redis::AsyncCommands as _;
use std::time::Duration;

/// How long a closed provision stays closed: far longer than any of its credentials can
/// open a session (4 h at bunq) plus the longest retry-queue delay, so a late or
/// redelivered ready event never opens or announces one again.
pub(crate) const CLOSED_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a `session.closed` event no queue took is held for one to be bound; older
/// ones are dropped (the close itself is done: only the notice is lost), as dead letters
/// are after `DEAD_LETTER_MAX_AGE`'s default.
pub(crate) const HELD_EVENT_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Deletes a key only if it still holds what was read.
static DELETE_IF_UNCHANGED: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#,
    )
});

impl Store {
    /// From now on nothing is announced for the provision (see `handler.rs`).
    pub async fn mark_closed(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let () = conn.set_ex(self.keys.closed(provision_id), 1, CLOSED_MARKER_TTL.as_secs()).await?;
        Ok(())
    }

    pub async fn is_closed(&self, provision_id: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.keys.closed(provision_id)).await?)
    }

    /// Holds `event` (a `session.closed` no queue took; it holds no secret) until a queue
    /// for it is bound, ordered by when it was held.
    pub(crate) async fn hold_event(&self, event: &[u8]) -> Result<(), StoreError> {
        let now = self.now().await?.unix_timestamp();
        let mut conn = self.conn.clone();
        let _: i64 = conn.zadd(self.keys.held_events(), event, now).await?;
        Ok(())
    }

    /// The oldest held events, at most `limit`, after dropping those held longer than
    /// [`HELD_EVENT_MAX_AGE`]; and how many are held in all.
    pub(crate) async fn held_events(&self, limit: isize) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        let oldest_kept = self.now().await?.unix_timestamp() - HELD_EVENT_MAX_AGE.as_secs() as i64;
        let key = self.keys.held_events();
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrembyscore(&key, "-inf", format!("({oldest_kept}")).await?;
        let events: Vec<Vec<u8>> = conn.zrange(&key, 0, limit - 1).await?;
        let held: u64 = conn.zcard(&key).await?;
        Ok((events, held))
    }

    /// Forgets a held event once it is published.
    pub(crate) async fn release_event(&self, event: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(self.keys.held_events(), event).await?;
        Ok(())
    }

    /// The session a close must end: the cached one if it is still this provision's,
    /// else one a handshake record holds (the cache entry may have been evicted).
    pub(crate) async fn session_to_close(&self, provision_id: u64) -> Result<Option<Session>, StoreError> {
        if let Some(session) = self.session_of_provision(provision_id).await? {
            if session.provision_id == provision_id {
                return Ok(Some(session));
            }
        }
        for credential in self.handshake_credentials(provision_id).await? {
            if let Some(session) = self.load_handshake(provision_id, &credential).await?.session {
                return Ok(Some(session));
            }
        }
        Ok(None)
    }

    async fn handshake_credentials(&self, provision_id: u64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.smembers(self.keys.handshakes(provision_id)).await?)
    }

    /// Deletes what the worker keeps of the provision: its user's cached session (if it is
    /// still this provision's), every handshake record and their index, the sealed
    /// credential, the provision index last, in one DEL (one slot), so a purge cut short is found and
    /// finished by the next attempt.
    pub(crate) async fn purge_provision(&self, provision_id: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let user_id: Option<u64> = conn.get(self.keys.provision(provision_id)).await?;
        if let Some(user_id) = user_id {
            let key = self.keys.session(user_id);
            let raw: Option<Vec<u8>> = conn.get(&key).await?;
            let ours = raw.as_deref().is_some_and(|raw| {
                // An unreadable record under this provision's user goes too: it cannot be used.
                serde_json::from_slice::<StoredSession>(raw).map_or(true, |s| s.provision_id == provision_id)
            });
            if let (true, Some(raw)) = (ours, raw) {
                let _: i64 = DELETE_IF_UNCHANGED.key(&key).arg(raw).invoke_async(&mut conn).await?;
            }
        }
        let mut keys: Vec<String> = self
            .handshake_credentials(provision_id)
            .await?
            .iter()
            .map(|credential| self.keys.handshake(provision_id, credential))
            .collect();
        keys.push(self.keys.handshakes(provision_id));
        keys.push(self.keys.credential(provision_id));
        keys.push(self.keys.provision(provision_id));
        let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        // Another slot: after the DEL, so an entry left by a purge cut short finds no
        // credential and is dropped by the renewer.
        self.unschedule_renewal(provision_id).await
    }
}
