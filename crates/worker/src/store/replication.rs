//! Durable before announced: how many replicas a write must reach before anything that
//! depends on it is published, and the `WAIT` that checks it; and the one clock every
//! replica reads (Redis's `TIME`).

use super::{Session, Store, StoreError};
use std::time::Duration;

/// How many replicas a write must reach before anything that depends on it is published
/// (`REDIS_MIN_REPLICAS`, `REDIS_REPLICA_TIMEOUT`): asynchronous replication loses the
/// last writes when a primary fails over, and an announced session the cache then lacks
/// would be opened and announced a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub replicas: u32,
    pub timeout: Duration,
}

impl Store {
    /// Waits for `replication` before publishing what depends on a write (none: a single
    /// node, or replicas the deployment accepts losing writes to).
    pub fn with_replication(mut self, replication: Option<Replication>) -> Self {
        self.replication = replication.filter(|r| r.replicas > 0);
        self
    }

    /// Returns once every write this worker sent where `keys` live is on the configured
    /// number of replicas; `NotReplicated` when they do not confirm in time (the caller
    /// publishes nothing, and its delivery comes back without spending an attempt). One
    /// `WAIT` per slot: on a cluster each slot has a primary and replicas of its own.
    pub(crate) async fn replicated(&self, provision_id: u64, keys: &[String]) -> Result<(), StoreError> {
        let Some(Replication { replicas, timeout }) = self.replication else { return Ok(()) };
        let mut waited = Vec::with_capacity(keys.len());
        for key in keys {
            let slot = redis::cluster_routing::Slot::for_key(key);
            if waited.contains(&slot) {
                continue;
            }
            waited.push(slot);
            let acked = self.conn.wait_for_replicas(key, replicas, timeout).await?;
            if acked < replicas {
                return Err(StoreError::NotReplicated { provision_id, acked, wanted: replicas });
            }
        }
        Ok(())
    }

    /// [`Self::replicated`] for what a session's announcement depends on: its cache entry
    /// and the provision's records (handshake, index, closed marker: one hash tag).
    pub(crate) async fn session_replicated(&self, session: &Session) -> Result<(), StoreError> {
        let keys = [self.keys.session(session.user_id), self.keys.lock(session.provision_id)];
        self.replicated(session.provision_id, &keys).await
    }

    /// [`Self::replicated`] for a provision's own records (closed marker, purge).
    pub(crate) async fn provision_replicated(&self, provision_id: u64, user_id: Option<u64>) -> Result<(), StoreError> {
        let mut keys = vec![self.keys.lock(provision_id)];
        keys.extend(user_id.map(|user_id| self.keys.session(user_id)));
        self.replicated(provision_id, &keys).await
    }

    /// Now, by Redis's clock: expiries and renewal times every replica agrees on (a
    /// replica's own clock may be off by any amount).
    pub(crate) async fn now(&self) -> Result<time::OffsetDateTime, StoreError> {
        Ok(self.conn.time().await?)
    }
}
