//! One delivery, start to outcome: decode → decide → reuse a cached session or open one
//! → announce, or close it (`close.rs`). Knows nothing of AMQP: the consumer turns the
//! [`Outcome`] into an ack, a retry or a dead letter.

use crate::close::{CloseReason, CloseRequest, Closer};
use crate::decide::{decide, Decision, ReadyProvision, SkipReason};
use crate::event::{self, SessionClosed, SessionReady, SESSION_READY_EVENT_TYPE};
use crate::failure::{Failure, Reason, Retry};
use crate::renew::{Renewal, Renewer};
use crate::session::SessionOpener;
use crate::store::{credential_tag, Begin, Claim, Credential, Handshake, Session, Store};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// Publishes session-ready events; the AMQP publisher in production.
#[async_trait::async_trait]
pub trait Announcer: Send + Sync {
    /// Returns once the broker has confirmed the event.
    async fn announce(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure>;
    /// The same for a renewed session (`bunq.session.renewed`, routing key `session.renewed`).
    async fn announce_renewed(&self, event: &SessionReady, correlation_id: Option<&str>) -> Result<(), Failure>;
    /// The same for a closed session.
    async fn announce_closed(&self, event: &SessionClosed, correlation_id: Option<&str>) -> Result<(), Failure>;
}

/// What became of a delivery. Decided without side effects on the input message.
#[derive(Debug)]
pub enum Outcome {
    /// A session-ready event was confirmed; `reused` when no bunq call was needed.
    Announced { event: Box<SessionReady>, reused: bool },
    /// Not for this worker.
    Skipped(SkipReason),
    /// The session was closed and announced so; `None` when there was none.
    Closed { reason: CloseReason, event: Option<Box<SessionClosed>> },
    /// A `session.invalid` renewed the session: `bunq.session.renewed` was confirmed.
    Renewed { event: Box<SessionReady> },
    /// A `session.invalid` found the renewal failing: the schedule tries again (and
    /// closes the session `renewal_failed` if it never works before expiry).
    RenewalScheduled { reason: Reason },
    /// Try again later through the retry queue.
    Retry { reason: Reason, detail: String, delay: Duration, counts_as_attempt: bool },
    /// Never going to work as is.
    DeadLetter { reason: Reason, detail: String },
}

impl Outcome {
    /// Passes the detail through the one redaction gate before it reaches a log or a
    /// header: a detail may quote bunq's text or an input's shape.
    pub fn redacted(self) -> Self {
        match self {
            Outcome::Retry { reason, detail, delay, counts_as_attempt } => {
                Outcome::Retry { reason, detail: bunq_protocol::redact::detail(&detail), delay, counts_as_attempt }
            }
            Outcome::DeadLetter { reason, detail } => {
                Outcome::DeadLetter { reason, detail: bunq_protocol::redact::detail(&detail) }
            }
            other => other,
        }
    }

    /// `(outcome, reason)` labels for metrics and logs.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::Announced { reused: false, .. } => ("announced", "new_session"),
            Outcome::Announced { reused: true, .. } => ("announced", "cached_session"),
            Outcome::Skipped(reason) => ("skipped", reason.as_str()),
            Outcome::Closed { reason, event: Some(_) } => ("closed", reason.as_str()),
            Outcome::Closed { event: None, .. } => ("closed", "no_session"),
            Outcome::Renewed { .. } => ("renewed", "session_invalid"),
            Outcome::RenewalScheduled { reason } => ("renewal_scheduled", reason.as_str()),
            Outcome::Retry { reason, .. } => ("retried", reason.as_str()),
            Outcome::DeadLetter { reason, .. } => ("dead_lettered", reason.as_str()),
        }
    }
}

/// A delivery as the handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub body: &'a [u8],
    /// 1 for the first delivery; counted by the worker through the retry queue.
    pub attempt: u32,
    pub correlation_id: Option<&'a str>,
    /// The routing key it was first published with (also after a trip through the retry
    /// queue): tells a `session.invalid` message from a provision event.
    pub routing_key: &'a str,
}

#[derive(Debug, Clone)]
pub struct HandlerSettings {
    pub max_message_bytes: usize,
    pub max_attempts: u32,
    pub retry_queue_delay: Duration,
    pub retry_queue_max_delay: Duration,
    pub lock_ttl: Duration,
    /// Routing key of downstream's invalidations, when bound.
    pub invalidation_routing_key: Option<String>,
}

pub struct Handler {
    opener: SessionOpener,
    store: Store,
    announcer: Arc<dyn Announcer>,
    closer: Closer,
    settings: HandlerSettings,
    /// Lock owner prefix (the consumer tag): who holds a provision is visible in Redis.
    owner: String,
    /// With `SESSION_RENEWAL=on`: new sessions are stored with their credential and
    /// scheduled, and `session.invalid` renews.
    renewer: Option<Arc<Renewer>>,
}

impl Handler {
    pub fn new(
        opener: SessionOpener,
        store: Store,
        announcer: Arc<dyn Announcer>,
        settings: HandlerSettings,
        owner: String,
    ) -> Self {
        let closer = Closer {
            opener: opener.clone(),
            store: store.clone(),
            announcer: announcer.clone(),
            lock_ttl: settings.lock_ttl,
            owner: owner.clone(),
            busy_delay: settings.retry_queue_delay,
        };
        Self { opener, store, announcer, closer, settings, owner, renewer: None }
    }

    /// What closes sessions; the renewer closes with it too.
    pub fn closer(&self) -> &Closer {
        &self.closer
    }

    /// Turns renewal on for the sessions this handler opens.
    pub fn with_renewer(mut self, renewer: Arc<Renewer>) -> Self {
        self.renewer = Some(renewer);
        self
    }

    pub async fn handle(&self, incoming: Incoming<'_>) -> Outcome {
        if self.settings.invalidation_routing_key.as_deref() == Some(incoming.routing_key) {
            return self.handle_invalidation(incoming).await;
        }
        let provision = match event::decode(incoming.body, self.settings.max_message_bytes) {
            Ok(provision) => provision,
            Err(e) => return Outcome::DeadLetter { reason: Reason::Malformed, detail: e.to_string() },
        };
        let provision_id = provision.id;
        // The consumer's span declares the field; the id is known only now.
        tracing::Span::current().record("provision_id", provision_id);
        match decide(provision, OffsetDateTime::now_utc()) {
            Decision::Skip(reason) => Outcome::Skipped(reason),
            Decision::CredentialExpired { expired_at } => Outcome::DeadLetter {
                reason: Reason::CredentialExpired,
                detail: match expired_at {
                    Some(at) => {
                        format!("credential expired at {at}; request a token reset for provision {provision_id}")
                    }
                    None => format!("credential is EXPIRED; request a token reset for provision {provision_id}"),
                },
            },
            Decision::Act(ready) => match self.act(&ready, incoming.correlation_id).await {
                Ok(outcome) => outcome,
                Err(failure) => self.after_failure(ready.credential_expires_at, failure, incoming.attempt),
            },
            Decision::Close(closed) => {
                let request = CloseRequest {
                    provision_id: closed.provision_id,
                    external_uuid: closed.external_uuid,
                    reason: CloseReason::ProvisionClosed,
                };
                self.close(&request, incoming).await
            }
        }
    }

    /// Downstream says a cached session no longer works. With its credential (renewal
    /// on), the session is renewed at once; without, it is closed `invalidated`, and the
    /// provision stays open, so a later event with a usable credential opens a new one.
    /// A `session_id` other than the cached one is stale: the cache already holds a
    /// newer session.
    async fn handle_invalidation(&self, incoming: Incoming<'_>) -> Outcome {
        let invalidation = match event::decode_invalidation(incoming.body, self.settings.max_message_bytes) {
            Ok(invalidation) => invalidation,
            Err(e) => return Outcome::DeadLetter { reason: Reason::Malformed, detail: e.to_string() },
        };
        let session = match self.store.read_session(invalidation.user_id).await {
            Ok(session) => session,
            Err(e) => return self.after_failure(None, Failure::from(e), incoming.attempt),
        };
        let Some(session) = session else {
            return Outcome::Closed { reason: CloseReason::Invalidated, event: None };
        };
        tracing::Span::current().record("provision_id", session.provision_id);
        if let Some(renewer) = &self.renewer {
            match renewer.invalidated(session.provision_id, invalidation.session_id).await {
                Ok(Renewal::NothingToRenew) => {} // no credential held: closed below
                Ok(renewal) => return self.renewal_outcome(renewal),
                Err(failure) => return self.after_failure(None, failure, incoming.attempt),
            }
        }
        if session.session_id != invalidation.session_id {
            return Outcome::Skipped(SkipReason::StaleInvalidation);
        }
        let request = CloseRequest {
            provision_id: session.provision_id,
            external_uuid: session.external_uuid,
            reason: CloseReason::Invalidated,
        };
        self.close(&request, incoming).await
    }

    fn renewal_outcome(&self, renewal: Renewal) -> Outcome {
        match renewal {
            Renewal::Renewed(event) => Outcome::Renewed { event },
            Renewal::Stale | Renewal::NotDue => Outcome::Skipped(SkipReason::StaleInvalidation),
            Renewal::Closed { reason, event } => Outcome::Closed { reason, event },
            Renewal::Retrying { failure, .. } => Outcome::RenewalScheduled { reason: failure.reason },
            Renewal::NothingToRenew => Outcome::Closed { reason: CloseReason::Invalidated, event: None },
            Renewal::Busy => Outcome::Retry {
                reason: Reason::LockBusy,
                detail: "the provision is being processed by another delivery".to_owned(),
                delay: self.settings.retry_queue_delay,
                counts_as_attempt: false,
            },
        }
    }

    async fn close(&self, request: &CloseRequest, incoming: Incoming<'_>) -> Outcome {
        match self.closer.close(request, incoming.correlation_id).await {
            Ok(outcome) => outcome,
            Err(failure) => self.after_failure(None, failure, incoming.attempt),
        }
    }

    /// Everything under the provision's lock, announcing included: a close takes the
    /// same lock after marking the provision closed, so once the marker is set no
    /// announcement can slip out after the close's (see `close.rs`).
    async fn act(&self, ready: &ReadyProvision, correlation_id: Option<&str>) -> Result<Outcome, Failure> {
        let id = ready.provision_id;
        let credential = credential_tag(ready.credential_id, &ready.token_value);
        let ttl = self.settings.lock_ttl;
        match self.store.begin_open(id, credential, &self.owner, ttl).await? {
            Begin::Closed => Ok(Outcome::Skipped(SkipReason::ProvisionClosed)),
            Begin::Busy => Ok(Outcome::Retry {
                reason: Reason::LockBusy,
                detail: format!("provision {id} is being processed by another delivery"),
                delay: self.settings.retry_queue_delay,
                counts_as_attempt: false,
            }),
            Begin::Locked { claim, handshake } => {
                let work = async { self.act_locked(ready, &claim, (*handshake)?, correlation_id).await };
                self.store.hold(&claim, ttl, work).await
            }
        }
    }

    async fn act_locked(
        &self,
        ready: &ReadyProvision,
        claim: &Claim,
        handshake: Handshake,
        correlation_id: Option<&str>,
    ) -> Result<Outcome, Failure> {
        let credential = self.renewer.as_ref().map(|_| Credential {
            tag: claim.credential.clone(),
            token_value: ready.token_value.clone(),
            unannounced: None,
            failures: 0,
        });
        let now = OffsetDateTime::now_utc();
        // A redelivery or duplicate finds the session and re-announces it.
        let (session, reused) = match handshake.session.as_ref().filter(|s| self.opener.is_usable(s, now)).cloned() {
            Some(session) => {
                // Repairs a cache entry lost between the writes of a crashed attempt, or
                // evicted; meanwhile, a close marked since the lock was taken stops the
                // announcement (two keys in two slots: side by side, not one script).
                let ttl = self.opener.cache_ttl(&session, now);
                let (cached, closed) =
                    tokio::join!(self.store.cache_session(&session, ttl), self.store.is_closed(ready.provision_id));
                cached?;
                if closed? {
                    return Ok(Outcome::Skipped(SkipReason::ProvisionClosed));
                }
                (session, true)
            }
            None => {
                let opened = self.opener.open(ready, handshake, claim, credential.as_ref()).await?;
                if opened.closed {
                    // Closed while we opened: the close, waiting for this lock, ends it.
                    return Ok(Outcome::Skipped(SkipReason::ProvisionClosed));
                }
                (opened.session, false)
            }
        };
        if let (Some(renewer), Some(credential)) = (&self.renewer, &credential) {
            self.schedule_renewal(renewer, claim, &session, credential, reused).await?;
        }
        self.announce(session, reused, correlation_id).await
    }

    /// A new session goes into the schedule at its due time. A reused one keeps its entry
    /// (it may be claimed right now); one missing it (a crash after the commit, or
    /// renewal turned on since) gets the credential record and the entry.
    async fn schedule_renewal(
        &self,
        renewer: &Renewer,
        claim: &Claim,
        session: &Session,
        credential: &Credential,
        reused: bool,
    ) -> Result<(), Failure> {
        let due = renewer.settings().due_at(session);
        if !reused {
            return Ok(self.store.schedule_renewal(session.provision_id, due).await?);
        }
        if self.store.load_credential(session.provision_id).await?.is_none() {
            let ttl = self.opener.cache_ttl(session, OffsetDateTime::now_utc());
            self.store.save_credential(claim, credential, ttl).await?;
        }
        Ok(self.store.schedule_renewal_if_absent(session.provision_id, due).await?)
    }

    async fn announce(&self, session: Session, reused: bool, correlation_id: Option<&str>) -> Result<Outcome, Failure> {
        let event_id = event::event_id(session.provision_id, session.session_id);
        let event = session_event(&self.store, &session, SESSION_READY_EVENT_TYPE, event_id);
        self.announcer.announce(&event, correlation_id).await?;
        Ok(Outcome::Announced { event: Box::new(event), reused })
    }

    fn after_failure(&self, credential_expires_at: Option<OffsetDateTime>, failure: Failure, attempt: u32) -> Outcome {
        after_failure(&self.settings, credential_expires_at, failure, attempt, OffsetDateTime::now_utc())
    }
}

/// The event announcing `session` (ready or renewed): where to read it, never its tokens.
pub(crate) fn session_event(store: &Store, session: &Session, event_type: &str, event_id: uuid::Uuid) -> SessionReady {
    SessionReady {
        event_id,
        event_type: event_type.to_owned(),
        occurred_at: OffsetDateTime::now_utc(),
        provision_id: session.provision_id,
        external_uuid: session.external_uuid.clone(),
        user_id: session.user_id,
        granted_by_user_id: session.granted_by_user_id,
        session_id: session.session_id,
        expires_at: session.expires_at,
        cache_key: store.keys().session(session.user_id),
    }
}

/// Turns a failure into retry or dead letter: permanent failures, spent budgets and
/// credentials that expire before the next try end in the dead-letter queue. Waiting for
/// our own rate-limit budget is backpressure, not a failure: it spends no attempt.
pub fn after_failure(
    settings: &HandlerSettings,
    credential_expires_at: Option<OffsetDateTime>,
    failure: Failure,
    attempt: u32,
    now: OffsetDateTime,
) -> Outcome {
    let after = match failure.retry {
        Retry::Permanent => return Outcome::DeadLetter { reason: failure.reason, detail: failure.detail },
        Retry::Transient { after } => after,
    };
    let counts_as_attempt = failure.reason != Reason::Throttled;
    if counts_as_attempt && attempt >= settings.max_attempts {
        return Outcome::DeadLetter {
            reason: Reason::RetriesExhausted,
            detail: format!("gave up after {attempt} attempts; {}", failure.summary()),
        };
    }
    let delay = match failure.budget_wait() {
        // The budget said when this one's slot comes: back just before it.
        Some(wait) => wait.min(settings.retry_queue_max_delay),
        None => retry_delay(settings, attempt, after),
    };
    if let Some(expires_at) = credential_expires_at {
        if expires_at <= now + delay {
            return Outcome::DeadLetter {
                reason: Reason::CredentialExpired,
                detail: format!("credential expires at {expires_at}, before the next attempt; {}", failure.summary()),
            };
        }
    }
    Outcome::Retry { reason: failure.reason, detail: failure.detail, delay, counts_as_attempt }
}

/// Retry-queue delay: doubling from the base per attempt, never below a hint, never above
/// the configured maximum (a hint cannot push a message's `expiration` past it).
pub fn retry_delay(settings: &HandlerSettings, attempt: u32, hint: Option<Duration>) -> Duration {
    let doubled = settings.retry_queue_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let delay = hint.map_or(doubled, |hint| doubled.max(hint));
    delay.min(settings.retry_queue_max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HandlerSettings {
        HandlerSettings {
            max_message_bytes: 1024,
            max_attempts: 5,
            retry_queue_delay: Duration::from_secs(5),
            retry_queue_max_delay: Duration::from_secs(60),
            lock_ttl: Duration::from_secs(60),
            invalidation_routing_key: None,
        }
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2026-01-01 12:00 UTC);

    fn transient(reason: Reason, after: Option<Duration>) -> Failure {
        Failure { reason, detail: "d".into(), retry: Retry::Transient { after } }
    }

    #[test]
    fn permanent_failures_are_dead_lettered_with_their_own_reason() {
        let outcome = after_failure(&settings(), None, Failure::permanent(Reason::RejectedByBunq, "400"), 1, NOW);
        assert!(matches!(outcome, Outcome::DeadLetter { reason: Reason::RejectedByBunq, .. }));
    }

    #[test]
    fn transient_failures_retry_until_the_attempt_budget_is_spent() {
        let outcome = after_failure(&settings(), None, transient(Reason::BunqUnavailable, None), 4, NOW);
        assert!(matches!(outcome, Outcome::Retry { counts_as_attempt: true, .. }));
        let outcome = after_failure(&settings(), None, transient(Reason::BunqUnavailable, None), 5, NOW);
        match outcome {
            Outcome::DeadLetter { reason: Reason::RetriesExhausted, detail } => {
                assert!(detail.contains("bunq_unavailable"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn waiting_for_our_own_rate_limit_spends_no_attempt() {
        let wait = Some(Duration::from_secs(45));
        let outcome = after_failure(&settings(), None, transient(Reason::Throttled, wait), 50, NOW);
        match outcome {
            // Attempt 50's doubling does not apply: the budget named the wait.
            Outcome::Retry { counts_as_attempt: false, delay, .. } => assert_eq!(delay, Duration::from_secs(45)),
            other => panic!("{other:?}"),
        }
        let outcome =
            after_failure(&settings(), None, transient(Reason::Throttled, Some(Duration::from_secs(900))), 1, NOW);
        assert!(matches!(outcome, Outcome::Retry { delay, .. } if delay == Duration::from_secs(60)), "capped");
    }

    #[test]
    fn a_credential_that_expires_before_the_next_try_is_dead_lettered() {
        let expires = Some(NOW + time::Duration::seconds(20));
        let outcome =
            after_failure(&settings(), expires, transient(Reason::Throttled, Some(Duration::from_secs(30))), 1, NOW);
        assert!(matches!(outcome, Outcome::DeadLetter { reason: Reason::CredentialExpired, .. }));
        let outcome = after_failure(&settings(), expires, transient(Reason::BunqUnavailable, None), 1, NOW);
        assert!(matches!(outcome, Outcome::Retry { .. }), "5 s retry still fits before expiry");
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap_and_respects_hints() {
        let s = settings();
        let delays: Vec<u64> = (1..=6).map(|a| retry_delay(&s, a, None).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_delay(&s, 1, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(retry_delay(&s, 100, None), Duration::from_secs(60));
        assert_eq!(retry_delay(&s, 1, Some(Duration::from_secs(86_400 * 365))), Duration::from_secs(60));
    }
}
