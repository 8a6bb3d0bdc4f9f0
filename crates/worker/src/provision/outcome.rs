//! What became of a delivery, decided without side effects on the input message: the
//! consumer turns it into an ack, a retry-queue copy or a dead letter.

use super::decide::SkipReason;
use crate::event::{SessionClosed, SessionReady};
use crate::failure::Reason;
use crate::lifecycle::close::CloseReason;
use std::time::Duration;

/// What became of a delivery. Decided without side effects on the input message.
#[derive(Debug)]
pub(crate) enum Outcome {
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
    pub(crate) fn redacted(self) -> Self {
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
    pub(crate) fn labels(&self) -> (&'static str, &'static str) {
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

#[cfg(test)]
mod tests {
    use crate::failure::Reason;

    #[test]
    fn every_dead_letter_reason_is_created_at_zero_by_the_metrics() {
        let reasons: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, crate::metrics::DEAD_LETTER_REASONS, "metrics::DEAD_LETTER_REASONS follows Reason");
    }
}
