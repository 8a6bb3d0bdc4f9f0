//! One delivery, start to outcome: decoded once (`decode.rs`) → decide → reuse a cached
//! session or open one → announce, or close it. Knows nothing of AMQP: the consumer turns
//! the [`Outcome`] into an ack, a retry or a dead letter.

use super::decide::{decide, Decision, SkipReason};
use super::decode::{self, Contract, Decoded, Read};
use super::outcome::Outcome;
use crate::event::{self, SESSION_READY_EVENT_TYPE};
use crate::failure::{Failure, Reason, Retry};
use crate::lifecycle::announce::session_event;
use crate::lifecycle::close::{CloseReason, CloseRequest, Closed, Closer};
use crate::lifecycle::renew::{Renewal, Renewer};
use crate::lifecycle::{Parts, ReadyProvision};
use crate::partner::reset::{NeedsReset, Resetter};
use crate::store::{credential_tag, Begin, Claim, Credential, Fence, Handshake, Session, StoreError};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// How long a credential without an `expiry_time` is taken to live, from when it was
/// first seen: bunq's production window for a partner credential (docs/bunq-api.md §7.3:
/// 4 h; 1 h in the sandbox, where bunq always sends the expiry).
const UNDATED_CREDENTIAL_LIFE: Duration = Duration::from_secs(4 * 3600);

/// A delivery as the handler sees it, besides its decoded body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    /// 1 for the first delivery; counted by the worker through the retry queue.
    pub(crate) attempt: u32,
    pub(crate) correlation_id: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub(crate) struct HandlerSettings {
    pub(crate) max_message_bytes: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_queue_delay: Duration,
    pub(crate) retry_queue_max_delay: Duration,
    pub(crate) lock_ttl: Duration,
    /// Routing key of downstream's invalidations, when bound.
    pub(crate) invalidation_routing_key: Option<String>,
}

pub(crate) struct Handler {
    pub(super) parts: Parts,
    closer: Closer,
    pub(super) settings: HandlerSettings,
    /// With `SESSION_RENEWAL=on`: new sessions are stored with their credential and
    /// scheduled, and `session.invalid` renews.
    renewer: Option<Arc<Renewer>>,
    /// With `CREDENTIAL_RESET=on`: a credential that can no longer open the session is
    /// reset (`reset.rs`) instead of dead-lettered.
    resetter: Option<Arc<Resetter>>,
}

impl Handler {
    /// `parts.lock_ttl` is `settings.lock_ttl`.
    pub(crate) fn new(parts: Parts, settings: HandlerSettings) -> Self {
        Self { closer: Closer::new(parts.clone()), parts, settings, renewer: None, resetter: None }
    }

    /// Turns token resets on.
    pub(crate) fn with_resetter(mut self, resetter: Arc<Resetter>) -> Self {
        self.resetter = Some(resetter);
        self
    }

    /// Turns renewal on for the sessions this handler opens.
    pub(crate) fn with_renewer(mut self, renewer: Arc<Renewer>) -> Self {
        self.renewer = Some(renewer);
        self
    }

    /// The one reading of a body: `routing_key` is the one it was first published with
    /// (also after a trip through the retry queue), which tells a `session.invalid`
    /// message from a provision event.
    pub(crate) fn read(&self, body: &[u8], routing_key: &str) -> Decoded {
        let contract = match self.settings.invalidation_routing_key.as_deref() == Some(routing_key) {
            true => Contract::Invalidation,
            false => Contract::Provision,
        };
        decode::read(body, self.settings.max_message_bytes, contract)
    }

    pub(crate) async fn handle(&self, decoded: &Decoded, incoming: Incoming<'_>) -> Outcome {
        let provision = match &decoded.read {
            Read::Provision(provision) => provision,
            Read::Invalidation(invalidation) => return self.handle_invalidation(*invalidation, incoming).await,
            Read::Malformed(e) => return Outcome::DeadLetter { reason: Reason::Malformed, detail: e.to_string() },
        };
        let provision_id = provision.id;
        // The consumer's span declares the field; the id is known only now.
        tracing::Span::current().record("provision_id", provision_id);
        let needs_reset = |why: String| NeedsReset {
            provision_id,
            external_uuid: provision.external_uuid.clone(),
            lapses_at: None,
            replaces: provision
                .credential
                .as_ref()
                .and_then(|c| c.token_value.as_ref())
                .map(|t| credential_tag(None, t)),
            why,
        };
        match decide(provision, self.parts.store.clock_now()) {
            Decision::Skip(reason) => Outcome::Skipped(reason),
            Decision::CredentialExpired { expired_at } if self.resetter.is_some() => {
                let why =
                    format!("credential expired at {}", expired_at.map_or("EXPIRED".to_owned(), |at| at.to_string()));
                let resetter = self.resetter.as_deref().expect("checked");
                self.reset_then_open(resetter, needs_reset(why), incoming).await
            }
            Decision::CredentialExpired { expired_at } => Outcome::DeadLetter {
                reason: Reason::CredentialExpired,
                detail: match expired_at {
                    Some(at) => {
                        format!("credential expired at {at}; request a token reset for provision {provision_id}")
                    }
                    None => format!("credential is EXPIRED; request a token reset for provision {provision_id}"),
                },
            },
            Decision::Act(mut ready) => {
                if ready.credential_expires_at.is_none() {
                    match self.undated_deadline(&ready).await {
                        Ok(Ok(deadline)) => ready.credential_expires_at = Some(deadline),
                        Ok(Err(expired)) => return expired,
                        Err(failure) => return self.after_failure(None, failure, incoming.attempt),
                    }
                }
                match (self.act(&ready, incoming.correlation_id).await, self.resetter.as_deref()) {
                    // This event's credential was replaced by the worker's own reset: no
                    // other event carries the new one, so this one finishes its job.
                    (Ok(Outcome::Skipped(SkipReason::StaleCredential)), Some(resetter)) => {
                        let replaces = Some(credential_tag(None, &ready.token_value));
                        let needs = NeedsReset { replaces, ..needs_reset("its credential was replaced".to_owned()) };
                        self.reset_then_open(resetter, needs, incoming).await
                    }
                    (Ok(outcome), _) => outcome,
                    // No slot before it expires, or bunq refused it: a new token helps.
                    (Err(failure), Some(resetter))
                        if failure.reason == Reason::CredentialExpired || failure.refused_credential() =>
                    {
                        let replaces = Some(credential_tag(None, &ready.token_value));
                        // Refused: now. Out of the budget's reach: once it lapses (the
                        // line may still change; a new token's life starts no sooner).
                        let lapses_at =
                            (!failure.refused_credential()).then_some(ready.credential_expires_at).flatten();
                        let needs = NeedsReset { replaces, lapses_at, ..needs_reset(failure.detail) };
                        self.reset_then_open(resetter, needs, incoming).await
                    }
                    // With resets on, an expiry before the next try is no reason to give up:
                    // the try after it resets the credential.
                    (Err(failure), Some(_)) => self.after_failure(None, failure, incoming.attempt),
                    (Err(failure), None) => self.after_failure(ready.credential_expires_at, failure, incoming.attempt),
                }
            }
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
    async fn handle_invalidation(&self, invalidation: decode::Invalidation, incoming: Incoming<'_>) -> Outcome {
        let session = match self.parts.store.read_session(invalidation.user_id).await {
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
            Ok(Closed::Done { reason, event }) => Outcome::Closed { reason, event },
            // An open under way holds the provision; it sees the closed marker and
            // announces nothing, and this close goes after it.
            Ok(Closed::Busy) => Outcome::Retry {
                reason: Reason::LockBusy,
                detail: format!(
                    "provision {} is being opened by another delivery; the close goes after it",
                    request.provision_id
                ),
                delay: self.settings.retry_queue_delay,
                counts_as_attempt: false,
            },
            Err(failure) => self.after_failure(None, failure, incoming.attempt),
        }
    }

    /// The one deadline of a credential without an `expiry_time`: bunq's production
    /// window from when it was first seen (by any replica, on any try), or, once that has
    /// passed, the dead letter an expired credential gets.
    async fn undated_deadline(&self, ready: &ReadyProvision) -> Result<Result<OffsetDateTime, Outcome>, Failure> {
        let credential = credential_tag(ready.credential_id, &ready.token_value);
        let keep = UNDATED_CREDENTIAL_LIFE * 2;
        let (first, now) = self.parts.store.first_seen(ready.provision_id, &credential, keep).await?;
        let first = OffsetDateTime::from_unix_timestamp(first).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let deadline = first + UNDATED_CREDENTIAL_LIFE;
        if deadline.unix_timestamp() > now {
            return Ok(Ok(deadline));
        }
        let hours = UNDATED_CREDENTIAL_LIFE.as_secs() / 3600;
        Ok(Err(Outcome::DeadLetter {
            reason: Reason::CredentialExpired,
            detail: format!(
                "credential has no expiry_time and was first seen at {first}, over {hours} h ago (bunq's \
                 window); request a token reset for provision {}",
                ready.provision_id
            ),
        }))
    }

    /// Everything under the provision's lock, announcing included: a close takes the
    /// same lock after marking the provision closed, so once the marker is set no
    /// announcement can slip out after the close's (see `close.rs`).
    pub(super) async fn act(&self, ready: &ReadyProvision, correlation_id: Option<&str>) -> Result<Outcome, Failure> {
        let id = ready.provision_id;
        let credential = credential_tag(ready.credential_id, &ready.token_value);
        let ttl = self.parts.lock_ttl;
        match self.parts.store.begin_open(id, credential, ready.credential_id, &self.parts.owner, ttl).await? {
            Begin::Closed => Ok(Outcome::Skipped(SkipReason::ProvisionClosed)),
            Begin::Stale => Ok(Outcome::Skipped(SkipReason::StaleCredential)),
            Begin::Busy => Ok(self.lock_busy(id)),
            Begin::Locked { claim, handshake } => {
                let work = async { self.act_locked(ready, &claim, (*handshake)?, correlation_id).await };
                self.parts.store.hold(&claim, ttl, work).await
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
        let now = self.parts.store.clock_now();
        // A redelivery or duplicate finds the session and re-announces it.
        let (session, reused) =
            match handshake.session.as_ref().filter(|s| self.parts.opener.is_usable(s, now)).cloned() {
                Some(session) => {
                    // Repairs a cache entry lost between the writes of a crashed attempt, or
                    // evicted; meanwhile, a close marked since the lock was taken stops the
                    // announcement (two keys in two slots: side by side, not one script).
                    let ttl = self.parts.opener.cache_ttl(&session, now);
                    let (cached, closed) = tokio::join!(
                        self.parts.store.cache_session(&session, ttl, claim.generation),
                        self.parts.store.is_closed(ready.provision_id)
                    );
                    cached?;
                    if closed? {
                        return Ok(Outcome::Skipped(SkipReason::ProvisionClosed));
                    }
                    (session, true)
                }
                None => {
                    let opened = self.parts.opener.open(ready, handshake, claim, credential.as_ref()).await?;
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
        self.announce(session, claim, reused, correlation_id).await
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
            return Ok(self.parts.store.schedule_renewal(session.provision_id, due).await?);
        }
        if self.parts.store.load_credential(session.provision_id).await?.is_none() {
            let ttl = self.parts.opener.cache_ttl(session, self.parts.store.clock_now());
            self.parts.store.save_credential(claim, credential, ttl).await?;
        }
        Ok(self.parts.store.schedule_renewal_if_absent(session.provision_id, due).await?)
    }

    pub(super) async fn announce(
        &self,
        session: Session,
        claim: &Claim,
        reused: bool,
        correlation_id: Option<&str>,
    ) -> Result<Outcome, Failure> {
        let event_id = event::event_id(session.provision_id, session.session_id);
        let event = session_event(&self.parts.store, &session, SESSION_READY_EVENT_TYPE, event_id);
        // Durable before announced: a failover that lost the session would open a second.
        self.parts.store.session_replicated(&session).await?;
        // Last, still the holder and still open: a holder paused since its commit must not
        // announce after a close or over the next holder's session.
        match self.parts.store.check_fence(claim).await? {
            Fence::Held => {}
            Fence::Closed => return Ok(Outcome::Skipped(SkipReason::ProvisionClosed)),
            Fence::Overtaken => return Err(Failure::from(StoreError::LockLost { provision_id: claim.provision_id })),
        }
        self.parts.announcer.announce(&event, correlation_id).await?;
        Ok(Outcome::Announced { event: Box::new(event), reused })
    }

    pub(super) fn lock_busy(&self, id: u64) -> Outcome {
        Outcome::Retry {
            reason: Reason::LockBusy,
            detail: format!("provision {id} is being processed by another delivery"),
            delay: self.settings.retry_queue_delay,
            counts_as_attempt: false,
        }
    }

    pub(super) fn after_failure(
        &self,
        credential_expires_at: Option<OffsetDateTime>,
        failure: Failure,
        attempt: u32,
    ) -> Outcome {
        after_failure(&self.settings, credential_expires_at, failure, attempt, self.parts.store.clock_now())
    }
}

/// Turns a failure into retry or dead letter: permanent failures, spent budgets and
/// credentials that expire before the next try end in the dead-letter queue. Waiting for
/// our own rate-limit budget is backpressure, not a failure: it spends no attempt.
pub(crate) fn after_failure(
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
    // Our own budget's wait, replicas catching up and a lock another holder took over
    // (it finishes the job) are not failures of this delivery.
    let counts_as_attempt = !matches!(failure.reason, Reason::Throttled | Reason::NotReplicated | Reason::LockBusy);
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
pub(crate) fn retry_delay(settings: &HandlerSettings, attempt: u32, hint: Option<Duration>) -> Duration {
    let doubled = settings.retry_queue_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let delay = hint.map_or(doubled, |hint| doubled.max(hint));
    delay.min(settings.retry_queue_max_delay)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
