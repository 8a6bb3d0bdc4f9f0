//! Announcing a session: the events downstream reads (`crate::event`), built from the
//! cached record, and the publisher that confirms them (AMQP in production).

use crate::event::{SessionClosed, SessionReady};
use crate::failure::Failure;
use crate::store::{Session, Store};

/// Publishes session events; returns once the broker has confirmed one.
#[async_trait::async_trait]
pub(crate) trait Announcer: Send + Sync {
    /// `bunq.session.ready`.
    async fn announce(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure>;
    /// The same for a renewed session (`bunq.session.renewed`, routing key `session.renewed`).
    async fn announce_renewed(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure>;
    /// `bunq.session.closed`.
    async fn announce_closed(&self, event: &SessionClosed, correlation_id: Option<&str>) -> Result<(), Failure>;
}

/// The event announcing `session` (ready or renewed): where to read it, never its tokens.
pub(crate) fn session_event(store: &Store, session: &Session, event_type: &str, event_id: uuid::Uuid) -> SessionReady {
    SessionReady {
        event_id,
        event_type: event_type.to_owned(),
        occurred_at: store.clock_now(),
        provision_id: session.provision_id,
        external_uuid: session.external_uuid.clone(),
        user_id: session.user_id,
        granted_by_user_id: session.granted_by_user_id,
        session_id: session.session_id,
        expires_at: session.expires_at,
        cache_key: store.keys().session(session.user_id),
    }
}
