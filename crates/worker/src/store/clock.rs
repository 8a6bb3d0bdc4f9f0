//! One clock for every replica: Redis's `TIME`. What replicas must agree on (a
//! credential's expiry at decision time, when the next try may still run, how long a
//! cache entry lives) is judged by it, so a replica whose own clock is off neither
//! dead-letters a credential early nor spends bunq calls on one already expired.
//! Reading `TIME` per decision would cost a round trip per delivery, so the offset
//! between Redis's clock and this replica's is measured at start and every
//! [`REFRESH`], and applied to the local clock in between (a skew changes slowly).

use super::{Store, StoreError};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// How often the offset is measured again.
const REFRESH: Duration = Duration::from_secs(10);
/// An offset beyond this is logged: the replica's clock needs fixing (NTP).
const WORTH_A_WARNING: time::Duration = time::Duration::seconds(2);

/// Redis's clock minus this replica's, in microseconds; 0 until first measured.
#[derive(Debug, Default)]
pub(crate) struct SharedClock {
    offset_us: AtomicI64,
}

impl SharedClock {
    /// Now by Redis's clock, without a round trip.
    pub(crate) fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::microseconds(self.offset_us.load(Ordering::Relaxed))
    }

    /// Measures the offset: Redis's `TIME` against the middle of the round trip.
    async fn measure(&self, store: &Store) -> Result<time::Duration, StoreError> {
        let before = OffsetDateTime::now_utc();
        let redis = store.now().await?;
        let after = OffsetDateTime::now_utc();
        let offset: time::Duration = redis - (before + (after - before) / 2);
        self.offset_us.store(offset.whole_microseconds() as i64, Ordering::Relaxed);
        Ok(offset)
    }
}

impl Store {
    /// Now by the clock every replica shares (see [`SharedClock`]).
    pub fn clock_now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Measures the offset at once (again every 500 ms until Redis answers), then every
    /// [`REFRESH`] until shutdown; a failed measure keeps the last one (Redis away: the
    /// gate stops work meanwhile anyway). Until the first measure the local clock stands in.
    pub(crate) async fn keep_clock(self, shutdown: CancellationToken) {
        let mut warned = false;
        let mut measured = false;
        loop {
            match self.clock.measure(&self).await {
                Ok(offset) => {
                    let off = offset.abs() > WORTH_A_WARNING;
                    if !measured || (off && !warned) {
                        log_offset(offset);
                    }
                    (measured, warned) = (true, off);
                }
                Err(e) => tracing::debug!(event = "clock_not_measured", error = %e),
            }
            let every = if measured { REFRESH } else { Duration::from_millis(500) };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn log_offset(offset: time::Duration) {
    if offset.abs() > WORTH_A_WARNING {
        tracing::warn!(
            event = "clock_offset",
            offset_ms = offset.whole_milliseconds() as i64,
            "this replica's clock differs from Redis's; decisions use Redis's clock, but fix the host's time (NTP)"
        );
    } else {
        tracing::debug!(event = "clock_offset", offset_ms = offset.whole_milliseconds() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_applies_the_measured_offset() {
        let clock = SharedClock::default();
        clock.offset_us.store(-30_000_000, Ordering::Relaxed);
        let behind = OffsetDateTime::now_utc() - clock.now();
        assert!(behind >= time::Duration::seconds(29) && behind <= time::Duration::seconds(31), "{behind}");
    }
}
