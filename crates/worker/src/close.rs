//! Closing a session: its provision was cancelled or closed, or downstream reported the
//! session dead (`session.invalid`). For a closed provision a marker goes first, so
//! nothing is announced for the provision from then on; then, holding the provision's
//! lock (an open under way finishes first and, seeing the marker, announces nothing),
//! the session is ended at bunq, `bunq.session.closed` is published, and the provision's
//! records are purged. Published before the purge: a close cut short between the two is
//! redone by the redelivery, with the same event id.

use crate::event::{
    closed_event_id, SessionClosed, CLOSED_AS_INVALID, CLOSED_BY_PROVISION, CLOSED_CREDENTIAL_REVOKED,
    CLOSED_RENEWAL_FAILED, SESSION_CLOSED_EVENT_TYPE,
};
use crate::failure::{Failure, Reason};
use crate::handler::{Announcer, Outcome};
use crate::session::SessionOpener;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Why a session is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The partner cancelled or closed the provision: closed for good (marker set).
    ProvisionClosed,
    /// Downstream reported the session dead and there is no credential to renew it with.
    /// The provision stays open: a later event with a usable credential opens a new one.
    Invalidated,
    /// bunq refused to renew the session with the stored credential (400/401/403).
    CredentialRevoked,
    /// Renewals failed until the session expired (`renew.rs`).
    RenewalFailed,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ProvisionClosed => CLOSED_BY_PROVISION,
            CloseReason::Invalidated => CLOSED_AS_INVALID,
            CloseReason::CredentialRevoked => CLOSED_CREDENTIAL_REVOKED,
            CloseReason::RenewalFailed => CLOSED_RENEWAL_FAILED,
        }
    }
}

/// What to close.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub reason: CloseReason,
}

/// Cloned by the renewer, which closes sessions it cannot renew.
#[derive(Clone)]
pub struct Closer {
    pub(crate) opener: SessionOpener,
    pub(crate) store: Store,
    pub(crate) announcer: Arc<dyn Announcer>,
    pub(crate) lock_ttl: Duration,
    /// Lock owner prefix (the consumer tag).
    pub(crate) owner: String,
    /// How long a close waits for an open under way (through the retry queue).
    pub(crate) busy_delay: Duration,
}

impl Closer {
    pub async fn close(&self, closed: &CloseRequest, correlation_id: Option<&str>) -> Result<Outcome, Failure> {
        let id = closed.provision_id;
        if closed.reason == CloseReason::ProvisionClosed {
            self.store.mark_closed(id).await?;
        }
        let work = |_claim| self.close_locked(closed, correlation_id);
        match self.store.with_lock(id, "close".to_owned(), &self.owner, self.lock_ttl, work).await? {
            Some(outcome) => outcome,
            None => Ok(Outcome::Retry {
                reason: Reason::LockBusy,
                detail: format!("provision {id} is being opened by another delivery; the close goes after it"),
                delay: self.busy_delay,
                counts_as_attempt: false,
            }),
        }
    }

    /// The close itself; the caller holds the provision's lock (a renewal closes under
    /// the lock it renews with).
    pub(crate) async fn close_locked(
        &self,
        closed: &CloseRequest,
        correlation_id: Option<&str>,
    ) -> Result<Outcome, Failure> {
        let id = closed.provision_id;
        let Some(session) = self.store.session_to_close(id).await? else {
            // An unfinished handshake's progress goes too: it holds an installation token.
            self.store.purge_provision(id).await?;
            return Ok(Outcome::Closed { reason: closed.reason, event: None });
        };
        // Best effort: a session bunq does not end now lapses at its timeout, and nothing
        // here serves it any more. Waiting for bunq would keep the session cached.
        match self.opener.end(&session).await {
            Ok(true) => tracing::info!(event = "session_ended", session_id = session.session_id),
            Ok(false) => tracing::info!(event = "session_already_gone", session_id = session.session_id),
            Err(failure) => {
                tracing::warn!(event = "session_not_ended", session_id = session.session_id, error = %failure.summary());
            }
        }
        let event = SessionClosed {
            event_id: closed_event_id(id, session.session_id),
            event_type: SESSION_CLOSED_EVENT_TYPE.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            provision_id: id,
            external_uuid: closed.external_uuid.clone().or_else(|| session.external_uuid.clone()),
            user_id: session.user_id,
            session_id: session.session_id,
            reason: closed.reason.as_str().to_owned(),
        };
        self.announcer.announce_closed(&event, correlation_id).await?;
        self.store.purge_provision(id).await?;
        Ok(Outcome::Closed { reason: closed.reason, event: Some(Box::new(event)) })
    }
}
