//! Every failure the handler can meet, with its reason (the dead-letter header and
//! metric label) and whether trying again can help: one [`Retry`] value, the same type
//! the bunq client and the retry loop use (docs/failure-model.md).

pub(crate) use bunq_protocol::Retry;
use bunq_protocol::{BunqError, Endpoint};

/// Reasons, as they appear in `x-dead-letter-reason`, `x-retry-reason` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Malformed,
    CredentialExpired,
    RejectedByBunq,
    UnexpectedResponse,
    BunqUnavailable,
    RateLimited,
    /// Our own shared budget has no slot soon enough: backpressure, not a failure.
    Throttled,
    RedisUnavailable,
    /// Written, but not on `REDIS_MIN_REPLICAS` replicas in time: not published yet.
    NotReplicated,
    /// `CREDENTIAL_RESET=on`: the provision waits for its token reset (a slot near enough,
    /// or bunq preparing the new token); no attempt spent.
    AwaitingReset,
    CorruptState,
    /// A record sealed by a key this replica does not hold: a key rotation rolling out
    /// (docs/contracts.md §2.4). Retried, within the delivery's attempts.
    UnknownKey,
    PublishFailed,
    OutputUnroutable,
    LockBusy,
    RetriesExhausted,
    /// Returned to the queue unsettled too often (the worker died or lost its connection
    /// while handling it, again and again): taken out before RabbitMQ's delivery limit
    /// would dead-letter it with its credential in the clear.
    RedeliveredTooOften,
}

impl Reason {
    /// Every reason; `as_str`'s match below lists the same variants.
    #[cfg(test)]
    pub(crate) const ALL: [Reason; 17] = [
        Reason::Malformed,
        Reason::CredentialExpired,
        Reason::RejectedByBunq,
        Reason::UnexpectedResponse,
        Reason::BunqUnavailable,
        Reason::RateLimited,
        Reason::Throttled,
        Reason::RedisUnavailable,
        Reason::NotReplicated,
        Reason::AwaitingReset,
        Reason::CorruptState,
        Reason::UnknownKey,
        Reason::PublishFailed,
        Reason::OutputUnroutable,
        Reason::LockBusy,
        Reason::RetriesExhausted,
        Reason::RedeliveredTooOften,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::CredentialExpired => "credential_expired",
            Reason::RejectedByBunq => "rejected_by_bunq",
            Reason::UnexpectedResponse => "unexpected_response",
            Reason::BunqUnavailable => "bunq_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::Throttled => "throttled",
            Reason::RedisUnavailable => "redis_unavailable",
            Reason::NotReplicated => "not_replicated",
            Reason::AwaitingReset => "awaiting_reset",
            Reason::CorruptState => "corrupt_state",
            Reason::UnknownKey => "unknown_key",
            Reason::PublishFailed => "publish_failed",
            Reason::OutputUnroutable => "output_unroutable",
            Reason::LockBusy => "lock_busy",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::RedeliveredTooOften => "redelivered_too_often",
        }
    }
}

/// A classified failure. `detail` is a sentence for people: no secrets.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) reason: Reason,
    pub(crate) detail: String,
    pub(crate) retry: Retry,
    /// bunq's status and the call, when bunq answered with an error.
    pub(crate) answered: Option<(Endpoint, u16)>,
}

impl Failure {
    pub(crate) fn permanent(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into(), retry: Retry::Permanent, answered: None }
    }

    pub(crate) fn transient(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into(), retry: Retry::Transient { after: None }, answered: None }
    }

    /// The same failure, worth trying again (a refused partner session is opened anew).
    pub(crate) fn into_transient(self) -> Self {
        Self { retry: Retry::Transient { after: None }, ..self }
    }

    /// bunq refused the credential (400: incorrect, expired, superseded or already used)
    /// at device-server or session-server, the two calls that send it: only a new token
    /// helps. At device-server this is a credential that expired between the budget's
    /// check and the handshake (a scale run saw one, 20 ms past its expiry).
    pub(crate) fn refused_credential(&self) -> bool {
        matches!(self.answered, Some((Endpoint::DeviceServer | Endpoint::SessionServer, 400 | 401 | 403)))
    }

    /// bunq refused the session token a call was authenticated with (401/403).
    pub(crate) fn refused_session(&self) -> bool {
        matches!(self.answered, Some((_, 401 | 403)))
    }

    /// "last failure (reason): detail", for details that wrap this failure.
    pub(crate) fn summary(&self) -> String {
        format!("last failure ({}): {}", self.reason.as_str(), self.detail)
    }

    /// When our own shared budget said how long until this call's slot: the wait to use
    /// as is (no doubling, it is not a failure), for a delivery or a renewal alike.
    pub(crate) fn budget_wait(&self) -> Option<std::time::Duration> {
        match (self.reason, &self.retry) {
            (Reason::Throttled, Retry::Transient { after }) => *after,
            _ => None,
        }
    }
}

impl From<&BunqError> for Failure {
    fn from(err: &BunqError) -> Self {
        let retry = err.retry();
        let reason = match (err, retry) {
            (BunqError::RateLimited { .. }, _) => Reason::RateLimited,
            (_, Retry::Transient { .. }) => Reason::BunqUnavailable,
            (BunqError::UnexpectedResponse { .. }, Retry::Permanent) => Reason::UnexpectedResponse,
            (_, Retry::Permanent) => Reason::RejectedByBunq,
        };
        let answered = match err {
            BunqError::Api { endpoint, status, .. } => Some((*endpoint, *status)),
            _ => None,
        };
        Failure { reason, detail: err.to_string(), retry, answered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn api(status: u16) -> BunqError {
        BunqError::Api { endpoint: Endpoint::SessionServer, status, description: "x".into(), response_id: "r".into() }
    }

    #[test]
    fn bunq_rejections_are_permanent_and_outages_transient() {
        assert_eq!(Failure::from(&api(400)).reason, Reason::RejectedByBunq);
        assert_eq!(Failure::from(&api(400)).retry, Retry::Permanent);
        assert_eq!(Failure::from(&api(503)).reason, Reason::BunqUnavailable);
        assert!(matches!(Failure::from(&api(491)).retry, Retry::Transient { .. }));
        let bad_signature = BunqError::BadSignature { endpoint: Endpoint::DeviceServer, problem: "is missing" };
        assert!(matches!(Failure::from(&bad_signature).retry, Retry::Transient { .. }));
    }

    #[test]
    fn rate_limits_keep_bunqs_window() {
        let err = BunqError::RateLimited {
            endpoint: Endpoint::SessionServer,
            window: Some(Duration::from_secs(30)),
            description: "x".into(),
            response_id: "r".into(),
        };
        let failure = Failure::from(&err);
        assert_eq!(failure.reason, Reason::RateLimited);
        assert_eq!(failure.retry, Retry::Transient { after: Some(Duration::from_secs(30)) });
    }
}
