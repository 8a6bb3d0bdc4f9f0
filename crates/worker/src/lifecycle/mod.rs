//! A session's life for one provision, below the delivery handler: open it (the bunq
//! handshake), announce it, renew it before it expires, close it. Knows no AMQP and no
//! delivery: each part returns its own result, and the handler decides what that means
//! for the message.

pub(crate) mod announce;
pub(crate) mod close;
pub mod open;
pub(crate) mod renew;

pub(crate) use open::ReadyProvision;

use crate::store::Store;
use announce::Announcer;
use open::SessionOpener;
use std::sync::Arc;
use std::time::Duration;

/// What every part of a session's life works with: the bunq handshake, the store, the
/// publisher, and the provision lock it takes.
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) opener: SessionOpener,
    pub(crate) store: Store,
    pub(crate) announcer: Arc<dyn Announcer>,
    pub(crate) lock_ttl: Duration,
    /// Lock owner prefix (the consumer tag): who holds a provision is visible in Redis.
    pub(crate) owner: String,
}
