//! Event contracts the worker publishes (docs/contracts.md §1.3-1.4): session-ready,
//! -renewed and -closed, their routing keys and deterministic ids. Holds no secret by
//! construction: no event has a field a token could go in.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Published when a session is cached (docs/contracts.md §1.3). Holds no secret by construction:
/// it has no field a token could go in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReady {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub user_id: u64,
    pub granted_by_user_id: Option<u64>,
    pub session_id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub cache_key: String,
}

pub(crate) const SESSION_READY_EVENT_TYPE: &str = "bunq.session.ready";
/// A renewal replaced the session at the same `cache_key`; the same fields as
/// [`SessionReady`], published with routing key [`SESSION_RENEWED_ROUTING_KEY`].
pub(crate) const SESSION_RENEWED_EVENT_TYPE: &str = "bunq.session.renewed";
pub(crate) const SESSION_RENEWED_ROUTING_KEY: &str = "session.renewed";

/// Namespace for the deterministic event id: the same session is always announced with
/// the same id, so consumers can deduplicate the at-least-once stream.
const EVENT_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5b0c8f7e-2f0a-4c55-9d7b-6a8f1f0e3c21");

pub fn event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}").as_bytes())
}

/// Published when a provision's session is closed (docs/contracts.md §1.4): deleted from
/// the cache and ended at bunq. No token field, like [`SessionReady`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionClosed {
    pub(crate) event_id: uuid::Uuid,
    pub(crate) event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) occurred_at: OffsetDateTime,
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
    pub(crate) user_id: u64,
    pub(crate) session_id: u64,
    /// Why: `provision_closed` (the partner cancelled or closed the provision),
    /// `invalidated` (downstream reported it dead and no credential is held to renew it),
    /// `credential_revoked` (bunq refused the renewal) or `renewal_failed` (renewals kept
    /// failing until the session expired).
    pub(crate) reason: String,
}

pub(crate) const SESSION_CLOSED_EVENT_TYPE: &str = "bunq.session.closed";
/// The routing key of [`SessionClosed`] on the output exchange.
pub(crate) const SESSION_CLOSED_ROUTING_KEY: &str = "session.closed";

/// The renewal that produced `session_id`: distinct from that session's ready and closed
/// events, the same on every republish.
pub fn renewed_event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}:renewed").as_bytes())
}

/// Deterministic too, and distinct from the session's ready event.
pub fn closed_event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}:closed").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_deterministic_per_session() {
        assert_eq!(closed_event_id(7, 2173), closed_event_id(7, 2173));
        assert_ne!(closed_event_id(7, 2173), event_id(7, 2173));
        assert_eq!(event_id(7, 2173), event_id(7, 2173));
        assert_ne!(event_id(7, 2173), event_id(7, 2174));
        assert_ne!(event_id(7, 2173), event_id(8, 2173));
    }
}
