//! While Redis is away, work waits instead of failing. Every step needs Redis (the shared
//! bunq budget, the lock, the progress and the session all live there), so a delivery
//! that met an unreachable Redis is not sent round the retry queue, where it would spend
//! attempts and end dead-lettered `retries_exhausted` after a few minutes of outage. It is
//! held, unacked, in the worker; the consumer takes no new deliveries; `/readyz` says
//! not ready; one probe pings Redis until it answers, and then everything resumes where
//! it stopped, without a restart. Progress and sessions that bunq has already handed
//! out are written once Redis is back, never dropped (see `session.rs`).

use super::Store;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the probe pings Redis while it is away.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) struct RedisGate {
    store: Store,
    metrics: Arc<Metrics>,
    up: watch::Sender<bool>,
    /// Cancelled at shutdown: nobody waits for Redis then.
    closed: CancellationToken,
}

impl RedisGate {
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.redis_up(true);
        Arc::new(Self { store, metrics, up: watch::Sender::new(true), closed: CancellationToken::new() })
    }

    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// A Redis command failed: Redis counts as away until the probe reaches it.
    pub(crate) fn report_down(self: &Arc<Self>) {
        let was_up = self.up.send_replace(false);
        if !was_up {
            return; // the probe is already running
        }
        self.metrics.redis_up(false);
        tracing::warn!(event = "redis_away", "Redis does not answer: holding deliveries until it does");
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = gate.closed.cancelled() => return,
                    _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
                if gate.store.ping().await.is_ok() {
                    gate.metrics.redis_up(true);
                    tracing::info!(event = "redis_back", "Redis answers again: resuming");
                    gate.up.send_replace(true);
                    return;
                }
            }
        });
    }

    /// Waits until Redis answers; `false` when the worker shuts down first.
    pub(crate) async fn wait_up(&self) -> bool {
        let mut up = self.up.subscribe();
        if !*up.borrow() {
            self.metrics.held_for_redis();
        }
        tokio::select! {
            _ = self.closed.cancelled() => false,
            seen = up.wait_for(|up| *up) => seen.is_ok(),
        }
    }

    /// Shutdown: every waiter gives up (its delivery returns to the queue unsettled).
    pub(crate) fn close(&self) {
        self.closed.cancel();
    }
}
