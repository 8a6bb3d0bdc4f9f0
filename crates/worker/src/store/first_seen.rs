//! When a credential without an `expiry_time` was first seen: its one deadline is counted
//! from then, by Redis's clock, not afresh on every try (which parked it forever).

use super::{Store, StoreError};
use std::time::Duration;

/// Keeps the first sighting (`SET NX` with Redis's `TIME`) and answers it with the time
/// now, both in Unix seconds. KEYS[1] the sighting; ARGV[1] its TTL in seconds.
static FIRST_SEEN: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local now = tonumber(redis.call('TIME')[1])
redis.call('SET', KEYS[1], now, 'NX', 'EX', ARGV[1])
return {tonumber(redis.call('GET', KEYS[1])), now}
"#,
    )
});

impl Store {
    /// When `credential` of the provision was first seen, and now (Unix seconds, Redis's
    /// clock). The sighting is kept for `keep`, longer than any deadline counted from it.
    pub async fn first_seen(
        &self,
        provision_id: u64,
        credential: &str,
        keep: Duration,
    ) -> Result<(i64, i64), StoreError> {
        let mut conn = self.conn.clone();
        let (first, now): (i64, i64) = FIRST_SEEN
            .key(self.keys.first_seen(provision_id, credential))
            .arg(keep.as_secs().max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok((first, now))
    }
}
