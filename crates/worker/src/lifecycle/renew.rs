//! Renewal (`SESSION_RENEWAL=on`): every cached session is replaced by a new one
//! `SESSION_RENEW_BEFORE` before it expires, with one session-server call on the
//! installation and device it already has.
//!
//! Every replica serves one schedule in Redis (`store/renewal.rs`): it claims due entries
//! for a lease, takes the provision's lock (the same one opens and closes take), checks
//! under it that the session is still due, renews, commits the new session where the old
//! one was (cache, handshake record, credential bookkeeping, in one fenced script),
//! publishes `bunq.session.renewed`, and puts the entry at the new session's due time.
//! A replica that dies holding an entry loses its lease and its lock, and another takes
//! the entry over; the due check under the lock makes a renewal happen once.
//!
//! A renewed session whose event is not confirmed yet is marked on the credential
//! record and published (same event id) by whoever passes the entry next.

use super::announce::session_event;
use super::close::{CloseReason, CloseRequest, Closer};
use super::Parts;
use crate::event::{renewed_event_id, SessionClosed, SessionReady, SESSION_RENEWED_EVENT_TYPE};
use crate::failure::{Failure, Reason, Retry};
use crate::metrics::Metrics;
use crate::store::gate::RedisGate;
use crate::store::{Claim, Credential, Fence, Session, StoreError};
use futures_util::{FutureExt as _, StreamExt as _};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Entries one pass claims, renewed concurrently: the renewals in flight per replica.
const BATCH: usize = 4;

#[derive(Debug, Clone)]
pub(crate) struct RenewalSettings {
    /// How long before a session expires it is renewed.
    pub(crate) renew_before: Duration,
    /// How often each replica looks for due renewals.
    pub(crate) poll_interval: Duration,
    /// The provision lock's TTL; also the lease of a claimed entry, so a dead
    /// replica's renewal is taken over about as fast as its lock frees.
    pub(crate) lock_ttl: Duration,
    /// First wait after a failed renewal; doubles per failure up to `max_retry_delay`.
    pub(crate) retry_delay: Duration,
    pub(crate) max_retry_delay: Duration,
}

impl RenewalSettings {
    /// When `session` is due: `renew_before` ahead of its expiry, but never in the first
    /// half of its life (a session shorter than `renew_before` would otherwise be renewed
    /// at once, forever).
    pub(crate) fn due_at(&self, session: &Session) -> OffsetDateTime {
        let life = session.expires_at - session.created_at;
        (session.expires_at - self.renew_before).max(session.created_at + life / 2)
    }

    fn retry_delay(&self, failures: u32, hint: Option<Duration>) -> Duration {
        let doubled = self.retry_delay.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        hint.map_or(doubled, |hint| doubled.max(hint)).min(self.max_retry_delay)
    }
}

/// What one pass over an entry did.
#[derive(Debug)]
pub(crate) enum Renewal {
    Renewed(Box<SessionReady>),
    /// Not due yet (renewed by someone else, or the entry came early): rescheduled.
    NotDue,
    /// An invalidation named a session that is no longer the current one.
    Stale,
    /// No credential or no session any more (closed, purged, expired): entry dropped.
    NothingToRenew,
    /// bunq refused for good, or renewals failed until expiry: the session is closed.
    Closed {
        reason: CloseReason,
        event: Option<Box<SessionClosed>>,
    },
    /// Failed, tried again at the time given.
    Retrying {
        at: OffsetDateTime,
        failure: Failure,
    },
    /// Someone else holds the provision (an open, a close, another renewal).
    Busy,
}

impl Renewal {
    /// The `outcome` label of `renewals`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Renewal::Renewed(_) => "renewed",
            Renewal::NotDue => "not_due",
            Renewal::Stale => "stale",
            Renewal::NothingToRenew => "nothing_to_renew",
            Renewal::Closed { reason, .. } => reason.as_str(),
            Renewal::Retrying { .. } => "retrying",
            Renewal::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// The schedule says so: renew if still due.
    Due,
    /// Downstream says this session is dead: renew now if it is still the current one.
    Invalidated { session_id: u64 },
}

pub(crate) struct Renewer {
    parts: Parts,
    closer: Closer,
    metrics: Arc<Metrics>,
    gate: Arc<RedisGate>,
    settings: RenewalSettings,
}

impl Renewer {
    /// Renews with the handshake, store, publisher and lock owner the opens use; the
    /// lock's TTL is `settings.lock_ttl`.
    pub(crate) fn new(parts: Parts, metrics: Arc<Metrics>, gate: Arc<RedisGate>, settings: RenewalSettings) -> Self {
        Self { closer: Closer::new(parts.clone()), parts, metrics, gate, settings }
    }

    pub(crate) fn settings(&self) -> &RenewalSettings {
        &self.settings
    }

    /// Serves the schedule until `shutdown`; a pass under way finishes first.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            // Jittered, so the replicas' passes do not fall into step with one of them
            // always first to claim whatever came due.
            let pause = self.settings.poll_interval.mul_f64(0.5 + rand::random::<f64>());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            // While Redis is away there is nothing to claim; the gate's probe says when.
            if !self.gate.is_up() {
                continue;
            }
            loop {
                // A bug in one pass must not end renewal on this replica: the claimed
                // entries' leases run out and they come due again.
                let pass = std::panic::AssertUnwindSafe(self.pass(&shutdown)).catch_unwind().await;
                let Ok(pass) = pass else {
                    self.metrics.observe_renewal("panicked");
                    tracing::error!(event = "renewal_pass_panicked");
                    break;
                };
                match pass {
                    // A full claim: more may be due. Claiming a few at a time leaves the
                    // rest to other replicas' passes.
                    Ok(claimed) if claimed == BATCH && !shutdown.is_cancelled() => {}
                    Ok(_) => break,
                    Err(failure) => {
                        tracing::warn!(event = "renewal_pass_failed", error = %failure.summary());
                        if failure.reason == Reason::RedisUnavailable {
                            self.gate.report_down();
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Claims up to [`BATCH`] due entries and renews them; returns how many it claimed.
    async fn pass(&self, shutdown: &CancellationToken) -> Result<usize, Failure> {
        // Redis's clock, not this replica's: what is due is due for every replica alike.
        let now = self.parts.store.now().await?;
        let (scheduled, due) = self.parts.store.renewal_backlog(now).await?;
        self.metrics.renewal_backlog(scheduled, due);
        if due == 0 || shutdown.is_cancelled() {
            return Ok(0);
        }
        let claimed = self.parts.store.claim_due_renewals(now, self.settings.lock_ttl, BATCH).await?;
        let count = claimed.len();
        futures_util::stream::iter(claimed)
            .for_each_concurrent(BATCH, |provision_id| {
                // A trace of its own per renewal: nothing upstream asked for it.
                let span = tracing::info_span!(
                    "renewal",
                    otel.name = "renew session",
                    provision_id,
                    trace_id = tracing::field::Empty,
                    span_id = tracing::field::Empty,
                );
                crate::telemetry::trace::record_ids(&span);
                self.renew_entry(provision_id).instrument(span)
            })
            .await;
        Ok(count)
    }

    async fn renew_entry(&self, provision_id: u64) {
        match self.renew(provision_id, Trigger::Due).await {
            Ok(renewal) => self.record(provision_id, &renewal),
            Err(failure) => {
                // The entry stays claimed until its lease runs out, then comes due again.
                self.metrics.observe_renewal("error");
                tracing::warn!(event = "renewal_error", provision_id, error = %failure.summary());
                if failure.reason == Reason::RedisUnavailable {
                    self.gate.report_down();
                }
            }
        }
    }

    fn record(&self, provision_id: u64, renewal: &Renewal) {
        self.metrics.observe_renewal(renewal.label());
        match renewal {
            Renewal::Renewed(event) => tracing::info!(
                event = "session_renewed",
                provision_id,
                user_id = event.user_id,
                session_id = event.session_id,
                expires_at = %event.expires_at,
            ),
            Renewal::Closed { reason, event } => tracing::warn!(
                event = "renewal_closed_session",
                provision_id,
                reason = reason.as_str(),
                session_id = event.as_ref().map(|e| e.session_id),
            ),
            Renewal::Retrying { at, failure } => tracing::warn!(
                event = "renewal_retry",
                provision_id,
                retry_at = %at,
                error = %failure.summary(),
            ),
            other => tracing::debug!(event = "renewal_pass", provision_id, outcome = other.label()),
        }
    }

    /// Downstream reported `session_id` dead: renew at once if the worker holds the
    /// credential (`NothingToRenew` if not: the caller closes it instead).
    pub(crate) async fn invalidated(&self, provision_id: u64, session_id: u64) -> Result<Renewal, Failure> {
        let renewal = self.renew(provision_id, Trigger::Invalidated { session_id }).await?;
        self.metrics.observe_renewal(renewal.label());
        Ok(renewal)
    }

    async fn renew(&self, provision_id: u64, trigger: Trigger) -> Result<Renewal, Failure> {
        // The tag names the credential the lock is for; without one the lock is still taken,
        // so the entry is dropped only when no open is writing a credential right now.
        let tag = match self.parts.store.load_credential(provision_id).await? {
            Some(credential) => credential.tag,
            None => "renewal".to_owned(),
        };
        let work = |claim| self.renew_locked(claim, trigger);
        let ttl = self.settings.lock_ttl;
        match self.parts.store.with_lock(provision_id, tag, &self.parts.owner, ttl, work).await? {
            Some(renewal) => renewal,
            None => Ok(Renewal::Busy),
        }
    }

    async fn renew_locked(&self, claim: Claim, trigger: Trigger) -> Result<Renewal, Failure> {
        let id = claim.provision_id;
        // Read again under the lock: a token reset may have replaced the credential.
        let (Some(mut credential), false) =
            (self.parts.store.load_credential(id).await?, self.parts.store.is_closed(id).await?)
        else {
            self.parts.store.unschedule_renewal(id).await?;
            return Ok(Renewal::NothingToRenew);
        };
        let claim = Claim { credential: credential.tag.clone(), ..claim };
        let mut handshake = self.parts.store.load_handshake(id, &credential.tag).await?;
        let Some(current) = handshake.session.clone() else {
            self.parts.store.unschedule_renewal(id).await?;
            return Ok(Renewal::NothingToRenew);
        };
        if credential.unannounced.is_some() {
            // A renewal whose event was not confirmed: its session is the current one.
            if credential.unannounced == Some(current.session_id) {
                self.announce(&current, &claim, &mut credential).await?;
            }
            credential.unannounced = None;
        }
        let now = self.parts.store.now().await?;
        match trigger {
            Trigger::Due if self.settings.due_at(&current) > now => {
                self.parts.store.schedule_renewal(id, self.settings.due_at(&current)).await?;
                return Ok(Renewal::NotDue);
            }
            Trigger::Invalidated { session_id } if session_id != current.session_id => return Ok(Renewal::Stale),
            _ => {}
        }
        match self.parts.opener.renew(&current, &credential.token_value).await {
            Ok(renewed) => {
                handshake.session = Some(renewed.clone());
                credential.unannounced = Some(renewed.session_id);
                credential.failures = 0;
                let ttl = self.parts.opener.cache_ttl(&renewed, self.parts.store.clock_now());
                // bunq has opened the session: held until Redis takes it, like an open.
                let commit = || self.parts.store.commit_session(&claim, &handshake, &renewed, Some(&credential), ttl);
                let written = self.parts.opener.durably(id, commit).await?;
                if written.closed {
                    // Closed while renewing: the close, waiting for this lock, ends the new
                    // session, and nothing may be announced after it; the old one goes here.
                    self.end_replaced(&current).await;
                    return Ok(Renewal::NothingToRenew);
                }
                let event = match self.announce(&renewed, &claim, &mut credential).await {
                    Ok(event) => event,
                    Err(failure) => {
                        // Closed between the commit and the announcement: the close ends
                        // the session the commit cached; the one it replaced goes here.
                        if self.parts.store.is_closed(id).await.unwrap_or(false) {
                            self.end_replaced(&current).await;
                        }
                        return Err(failure);
                    }
                };
                self.parts.store.schedule_renewal(id, self.settings.due_at(&renewed)).await?;
                self.end_replaced(&current).await;
                Ok(Renewal::Renewed(Box::new(event)))
            }
            Err(failure) if failure.reason == Reason::RejectedByBunq => {
                self.close(&current, CloseReason::CredentialRevoked).await
            }
            // The shared budget serves earlier deadlines first and reaches this one only
            // after the session expired.
            Err(failure) if failure.reason == Reason::CredentialExpired => {
                self.close(&current, CloseReason::RenewalFailed).await
            }
            Err(failure) => {
                // Our own budget being full is backpressure, not a failed renewal.
                let hint = match failure.retry {
                    Retry::Transient { after } => after,
                    Retry::Permanent => None,
                };
                if !matches!(failure.reason, Reason::Throttled | Reason::NotReplicated) {
                    credential.failures += 1;
                }
                let delay = match failure.budget_wait() {
                    Some(wait) => wait.min(self.settings.max_retry_delay),
                    None => self.settings.retry_delay(credential.failures.max(1), hint),
                };
                let now = self.parts.store.now().await?;
                let at = now + delay;
                if at >= current.expires_at {
                    return self.close(&current, CloseReason::RenewalFailed).await;
                }
                let ttl = self.parts.opener.cache_ttl(&current, now);
                self.parts.store.save_credential(&claim, &credential, ttl).await?;
                self.parts.store.schedule_renewal(id, at).await?;
                Ok(Renewal::Retrying { at, failure })
            }
        }
    }

    /// Publishes `bunq.session.renewed` for `session` and clears the mark.
    async fn announce(
        &self,
        session: &Session,
        claim: &Claim,
        credential: &mut Credential,
    ) -> Result<SessionReady, Failure> {
        let event_id = renewed_event_id(session.provision_id, session.session_id);
        let event = session_event(&self.parts.store, session, SESSION_RENEWED_EVENT_TYPE, event_id);
        self.parts.store.session_replicated(session).await?;
        // Still the holder and still open (see the handler's announce): a renewal overtaken
        // or closed since its commit announces nothing; the entry comes due again.
        if self.parts.store.check_fence(claim).await? != Fence::Held {
            return Err(Failure::from(StoreError::LockLost { provision_id: claim.provision_id }));
        }
        self.parts.announcer.announce_renewed(&event, None).await?;
        credential.unannounced = None;
        let ttl = self.parts.opener.cache_ttl(session, self.parts.store.clock_now());
        self.parts.store.save_credential(claim, credential, ttl).await?;
        Ok(event)
    }

    /// Ends at bunq the session a renewal replaced: nobody is served by it any more, and a
    /// live session is a credential. Best effort: one bunq does not end lapses at its timeout.
    async fn end_replaced(&self, replaced: &Session) {
        match self.parts.opener.end(replaced).await {
            Ok(_) => tracing::info!(event = "replaced_session_ended", session_id = replaced.session_id),
            Err(failure) => tracing::warn!(
                event = "replaced_session_not_ended",
                session_id = replaced.session_id,
                error = %failure.summary()
            ),
        }
    }

    /// Closes the session (the lock is held): ended at bunq, announced, purged.
    async fn close(&self, session: &Session, reason: CloseReason) -> Result<Renewal, Failure> {
        let request =
            CloseRequest { provision_id: session.provision_id, external_uuid: session.external_uuid.clone(), reason };
        let event = self.closer.close_locked(&request, None).await?;
        Ok(Renewal::Closed { reason, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn settings(renew_before: u64) -> RenewalSettings {
        RenewalSettings {
            renew_before: Duration::from_secs(renew_before),
            poll_interval: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(30),
            retry_delay: Duration::from_secs(5),
            max_retry_delay: Duration::from_secs(300),
        }
    }

    fn session(life_secs: i64) -> Session {
        let created_at = time::macros::datetime!(2026-01-01 12:00 UTC);
        Session {
            provision_id: 1,
            external_uuid: None,
            user_id: 2,
            granted_by_user_id: None,
            session_id: 3,
            session_token: SecretString::from("t"),
            installation_token: SecretString::from("i"),
            server_public_key: String::new(),
            created_at,
            expires_at: created_at + time::Duration::seconds(life_secs),
        }
    }

    #[test]
    fn a_session_is_due_renew_before_its_expiry_but_never_in_its_first_half() {
        let week = session(604_800);
        assert_eq!(settings(3600).due_at(&week), week.expires_at - time::Duration::hours(1));
        let short = session(1800);
        assert_eq!(settings(3600).due_at(&short), short.created_at + time::Duration::seconds(900));
    }

    #[test]
    fn failed_renewals_back_off_doubling_to_the_cap_and_respect_hints() {
        let s = settings(3600);
        let waits: Vec<u64> = (1..=8).map(|f| s.retry_delay(f, None).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(s.retry_delay(1, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }

    /// The alert the chart ships, read at compile time so a renamed outcome fails here.
    const ALERTS: &str = include_str!("../../../../helm/bunq-session-worker/templates/prometheusrule.yaml");

    #[test]
    fn the_renewal_alert_matches_the_outcomes_the_renewer_labels() {
        // The renewal outcomes the renewal alert matches, as the renewer labels them.
        let failure = Failure::transient(Reason::BunqUnavailable, "503");
        let retrying = Renewal::Retrying { at: OffsetDateTime::now_utc(), failure };
        let closes = [CloseReason::RenewalFailed, CloseReason::CredentialRevoked]
            .map(|r| Renewal::Closed { reason: r, event: None });
        let outcomes = [retrying.label(), closes[0].label(), closes[1].label(), "error"];
        assert!(ALERTS.contains(&format!(r#"outcome=~"{}""#, outcomes.join("|"))), "{outcomes:?}");
        let others = [Renewal::NotDue, Renewal::Stale, Renewal::NothingToRenew, Renewal::Busy].map(|r| r.label());
        for outcome in outcomes.iter().chain(&others).chain(&["renewed", "panicked"]) {
            assert!(crate::metrics::RENEWAL_OUTCOMES.contains(outcome), "{outcome} is not created at 0");
        }
    }
}
