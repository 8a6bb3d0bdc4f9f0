//! Closing a session: its provision was cancelled or closed, or downstream reported the
//! session dead (`session.invalid`). For a closed provision a marker goes first, so
//! nothing is announced for the provision from then on; then, holding the provision's
//! lock (an open under way finishes first and, seeing the marker, announces nothing),
//! the session is ended at bunq, `bunq.session.closed` is published, and the provision's
//! records are purged. Published before the purge: a close cut short between the two is
//! redone by the redelivery, with the same event id.

use super::Parts;
use crate::event::{closed_event_id, SessionClosed, SESSION_CLOSED_EVENT_TYPE};
use crate::failure::{Failure, Reason};
use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a session is closed: [`SessionClosed::reason`] and the metrics' label, as
/// [`CloseReason::as_str`] spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::ProvisionClosed => "provision_closed",
            CloseReason::Invalidated => "invalidated",
            CloseReason::CredentialRevoked => "credential_revoked",
            CloseReason::RenewalFailed => "renewal_failed",
        }
    }
}

/// What to close.
#[derive(Debug, Clone)]
pub(crate) struct CloseRequest {
    pub(crate) provision_id: u64,
    pub(crate) external_uuid: Option<String>,
    pub(crate) reason: CloseReason,
}

/// What a close did.
#[derive(Debug)]
pub(crate) enum Closed {
    /// Closed; `event` is `None` when there was no session (only records purged).
    Done { reason: CloseReason, event: Option<Box<SessionClosed>> },
    /// Another holder has the provision (an open under way): the close goes after it.
    Busy,
}

/// How often a close looks again for the lock an open holds: from this, doubling, to
/// [`CLOSE_LOCK_POLL_MAX`].
const CLOSE_LOCK_POLL: Duration = Duration::from_millis(100);
const CLOSE_LOCK_POLL_MAX: Duration = Duration::from_secs(1);

/// A `session.closed` no queue took, as held in Redis.
#[derive(Serialize, Deserialize)]
struct HeldEvent {
    event: SessionClosed,
    correlation_id: Option<String>,
}

/// Held events published per pass.
const HELD_BATCH: isize = 100;

/// Cloned by the renewer, which closes sessions it cannot renew.
#[derive(Clone)]
pub(crate) struct Closer {
    parts: Parts,
}

impl Closer {
    pub(crate) fn new(parts: Parts) -> Self {
        Self { parts }
    }

    pub(crate) async fn close(&self, closed: &CloseRequest, correlation_id: Option<&str>) -> Result<Closed, Failure> {
        let id = closed.provision_id;
        if closed.reason == CloseReason::ProvisionClosed {
            self.parts.store.mark_closed(id).await?;
            // The marker must survive a failover before anything acts on it: a lost one
            // would let a late event or a renewal announce after the close.
            self.parts.store.provision_replicated(id, None).await?;
        }
        // An open under way holds the provision. It sees the marker at its next write or
        // fence check and gives up, so the close waits for it here, for as long as a dead
        // holder could keep the lock: through the retry queue it could wait behind budget
        // parks of minutes (RabbitMQ expires that queue from its head).
        let give_up = tokio::time::Instant::now() + self.parts.lock_ttl;
        let mut pause = CLOSE_LOCK_POLL;
        loop {
            let work = |_claim| self.close_locked(closed, correlation_id);
            let owner = &self.parts.owner;
            if let Some(event) =
                self.parts.store.with_lock(id, "close".to_owned(), owner, self.parts.lock_ttl, work).await?
            {
                return Ok(Closed::Done { reason: closed.reason, event: event? });
            }
            if tokio::time::Instant::now() + pause > give_up {
                return Ok(Closed::Busy);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(CLOSE_LOCK_POLL_MAX);
        }
    }

    /// The close itself; the caller holds the provision's lock (a renewal closes under
    /// the lock it renews with). The event, `None` when there was no session.
    pub(crate) async fn close_locked(
        &self,
        closed: &CloseRequest,
        correlation_id: Option<&str>,
    ) -> Result<Option<Box<SessionClosed>>, Failure> {
        let id = closed.provision_id;
        let Some(session) = self.parts.store.session_to_close(id).await? else {
            // An unfinished handshake's progress goes too: it holds an installation token.
            self.parts.store.purge_provision(id).await?;
            self.parts.store.provision_replicated(id, None).await?;
            return Ok(None);
        };
        // Best effort: a session bunq does not end now lapses at its timeout, and nothing
        // here serves it any more. Waiting for bunq would keep the session cached.
        match self.parts.opener.end(&session).await {
            Ok(true) => tracing::info!(event = "session_ended", session_id = session.session_id),
            Ok(false) => tracing::info!(event = "session_already_gone", session_id = session.session_id),
            Err(failure) => {
                tracing::warn!(event = "session_not_ended", session_id = session.session_id, error = %failure.summary());
            }
        }
        let event = SessionClosed {
            event_id: closed_event_id(id, session.session_id),
            event_type: SESSION_CLOSED_EVENT_TYPE.to_owned(),
            occurred_at: self.parts.store.clock_now(),
            provision_id: id,
            external_uuid: closed.external_uuid.clone().or_else(|| session.external_uuid.clone()),
            user_id: session.user_id,
            session_id: session.session_id,
            reason: closed.reason.as_str().to_owned(),
        };
        match self.parts.announcer.announce_closed(&event, correlation_id).await {
            Ok(()) => {}
            // No queue is bound for `session.closed`: the close still ends and purges (the
            // tokens must not stay in Redis for want of a listener), and the event waits in
            // Redis until one is bound ([`Closer::deliver_held`]).
            Err(failure) if failure.reason == Reason::OutputUnroutable => {
                let held = HeldEvent { event: event.clone(), correlation_id: correlation_id.map(str::to_owned) };
                self.parts.store.hold_event(&serde_json::to_vec(&held).expect("events serialise")).await?;
                self.parts.store.replicated(id, &[self.parts.store.keys().held_events()]).await?;
                tracing::warn!(
                    event = "session_closed_held",
                    provision_id = id,
                    "no queue takes session.closed: the event is held in Redis until one is bound"
                );
            }
            Err(failure) => return Err(failure),
        }
        self.parts.store.purge_provision(id).await?;
        self.parts.store.provision_replicated(id, Some(session.user_id)).await?;
        Ok(Some(Box::new(event)))
    }

    /// Publishes held `session.closed` events, oldest first, until one is still
    /// unroutable; each is forgotten once the broker confirmed it. Several replicas may
    /// publish the same one: consumers take repeats (same `event_id`). The count still
    /// held, for the metric.
    pub(crate) async fn deliver_held(&self) -> Result<u64, Failure> {
        let store = &self.parts.store;
        let (events, mut held) = store.held_events(HELD_BATCH).await?;
        for raw in events {
            let Ok(one) = serde_json::from_slice::<HeldEvent>(&raw) else {
                tracing::warn!(event = "held_event_unreadable", "dropped a held event that does not decode");
                store.release_event(&raw).await?;
                held -= 1;
                continue;
            };
            match self.parts.announcer.announce_closed(&one.event, one.correlation_id.as_deref()).await {
                Ok(()) => {
                    store.release_event(&raw).await?;
                    held -= 1;
                    tracing::info!(event = "held_event_delivered", provision_id = one.event.provision_id);
                }
                Err(failure) if failure.reason == Reason::OutputUnroutable => break,
                Err(failure) => return Err(failure),
            }
        }
        Ok(held)
    }

    /// [`Self::deliver_held`] every `interval` until `shutdown`.
    pub(crate) async fn deliver_held_every(
        self,
        interval: Duration,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        loop {
            match self.deliver_held().await {
                Ok(held) => metrics.held_events(held),
                Err(failure) => tracing::warn!(event = "held_events_not_delivered", error = %failure.summary()),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
