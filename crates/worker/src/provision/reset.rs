//! The handler's side of token resets (`CREDENTIAL_RESET=on`): a provision whose
//! credential can no longer open its session is not dead-lettered but handed to the
//! resetter (`partner/reset.rs`) under its lock, and opened with the fresh token.

use super::handler::{Handler, Incoming};
use super::outcome::Outcome;
use crate::failure::{Failure, Reason};
use crate::partner::reset::{NeedsReset, Reset, Resetter};
use crate::store::Claim;

impl Handler {
    /// Resets the credential, then opens the session with the new one. A provision that
    /// already has a usable session (a newer credential's: an earlier try's, or relayed
    /// by the partner) needs no reset: its session is announced (again: the same event
    /// id), as any redelivery announces a cached session.
    pub(super) async fn reset_then_open(
        &self,
        resetter: &Resetter,
        needs: NeedsReset,
        incoming: Incoming<'_>,
    ) -> Outcome {
        let id = needs.provision_id;
        let parts = &self.parts;
        match parts.store.session_of_provision(id).await {
            Ok(Some(session)) if parts.opener.is_usable(&session, parts.store.clock_now()) => {
                let work =
                    |claim: Claim| async move { self.announce(session, &claim, true, incoming.correlation_id).await };
                let owner = &parts.owner;
                let outcome = match parts.store.with_lock(id, "announce".to_owned(), owner, parts.lock_ttl, work).await
                {
                    Ok(Some(Ok(outcome))) => outcome,
                    Ok(Some(Err(failure))) => return self.after_failure(None, failure, incoming.attempt),
                    Ok(None) => return self.lock_busy(id),
                    Err(e) => return self.after_failure(None, Failure::from(e), incoming.attempt),
                };
                let _ = parts.store.reset_done(id).await;
                return outcome;
            }
            Ok(_) => {}
            Err(e) => return self.after_failure(None, Failure::from(e), incoming.attempt),
        }
        let work = |_claim| resetter.reset(&needs);
        let reset = match parts.store.with_lock(id, "reset".to_owned(), &parts.owner, parts.lock_ttl, work).await {
            Ok(Some(reset)) => reset,
            Ok(None) => return self.lock_busy(id),
            Err(e) => return self.after_failure(None, Failure::from(e), incoming.attempt),
        };
        let fresh = match reset {
            Ok(Reset::Fresh(fresh)) => fresh,
            Ok(Reset::Later { after, detail }) => {
                return Outcome::Retry { reason: Reason::AwaitingReset, detail, delay: after, counts_as_attempt: false }
            }
            Ok(Reset::Refused(detail)) => return Outcome::DeadLetter { reason: Reason::CredentialExpired, detail },
            // The partner's session or bunq failing: like any failure, without the old
            // credential's expiry (it is being replaced).
            Err(failure) => return self.after_failure(None, failure, incoming.attempt),
        };
        match self.act(&fresh, incoming.correlation_id).await {
            Ok(outcome) => {
                if matches!(outcome, Outcome::Announced { .. } | Outcome::Skipped(_)) {
                    let _ = parts.store.reset_done(id).await;
                }
                outcome
            }
            // The fresh token refused too (used by a call whose answer was lost): the next
            // try resets again, within the delivery's attempts.
            Err(failure) if failure.refused_credential() => Outcome::Retry {
                reason: Reason::RejectedByBunq,
                detail: format!("the new token was refused: {}", failure.detail),
                delay: self.settings.retry_queue_delay,
                counts_as_attempt: true,
            },
            // The budget could not serve the new token in time after all (more earlier
            // deadlines came while bunq prepared it): the next try reads the token again
            // (no second request while it is usable) and waits for its slot.
            Err(failure) if failure.reason == Reason::CredentialExpired => Outcome::Retry {
                reason: Reason::AwaitingReset,
                detail: failure.detail,
                delay: self.settings.retry_queue_delay,
                counts_as_attempt: false,
            },
            Err(failure) => self.after_failure(None, failure, incoming.attempt),
        }
    }
}
