//! The handler's side of token resets (`CREDENTIAL_RESET=on`): a provision whose
//! credential can no longer open its session is not dead-lettered but handed to the
//! resetter (`partner/reset.rs`) under its lock, and opened with the fresh token.

use super::decide::SkipReason;
use super::handler::{Handler, Incoming};
use super::outcome::Outcome;
use crate::failure::{Failure, Reason};
use crate::partner::reset::{NeedsReset, Reset, Resetter};

impl Handler {
    /// Resets the credential, then opens the session with the new one. A provision that
    /// already has a usable session (a newer credential's, e.g. relayed by the partner)
    /// needs nothing: the old credential's event is stale.
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
                let _ = parts.store.reset_done(id).await;
                return Outcome::Skipped(SkipReason::StaleCredential);
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
            Err(failure) => self.after_failure(None, failure, incoming.attempt),
        }
    }
}
