//! Every failure, classified in one place (DESIGN.md §4): its reason (the dead-letter
//! header and metric label) and whether trying again can help.

use crate::bunq::error::{BunqError, Retry};
use crate::ratelimit::RateLimitError;
use crate::store::StoreError;
use std::time::Duration;

/// Reasons, as they appear in `x-dead-letter-reason`, `x-retry-reason` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    CredentialExpired,
    RejectedByBunq,
    UnexpectedResponse,
    BunqUnavailable,
    RateLimited,
    /// Our own shared budget has no slot soon enough: backpressure, not a failure.
    Throttled,
    RedisUnavailable,
    CorruptState,
    PublishFailed,
    OutputUnroutable,
    LockBusy,
    RetriesExhausted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::CredentialExpired => "credential_expired",
            Reason::RejectedByBunq => "rejected_by_bunq",
            Reason::UnexpectedResponse => "unexpected_response",
            Reason::BunqUnavailable => "bunq_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::Throttled => "throttled",
            Reason::RedisUnavailable => "redis_unavailable",
            Reason::CorruptState => "corrupt_state",
            Reason::PublishFailed => "publish_failed",
            Reason::OutputUnroutable => "output_unroutable",
            Reason::LockBusy => "lock_busy",
            Reason::RetriesExhausted => "retries_exhausted",
        }
    }
}

/// A classified failure. `detail` is a sentence for people: no secrets.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub detail: String,
    pub class: Class,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Later may work; wait at least `after` when known.
    Transient { after: Option<Duration> },
    /// Will never work as is.
    Permanent,
}

impl Failure {
    pub fn permanent(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into(), class: Class::Permanent }
    }

    pub fn transient(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into(), class: Class::Transient { after: None } }
    }

    /// For the retry loop: `None` when permanent, else the least wait (when known).
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self.class {
            Class::Transient { after } => Some(after),
            Class::Permanent => None,
        }
    }

    /// "last failure (reason): detail", for details that wrap this failure.
    pub fn summary(&self) -> String {
        format!("last failure ({}): {}", self.reason.as_str(), self.detail)
    }
}

impl From<&BunqError> for Failure {
    fn from(err: &BunqError) -> Self {
        let detail = err.to_string();
        match (err, err.retry()) {
            (BunqError::RateLimited { .. }, Retry::Transient { after }) => {
                Failure { reason: Reason::RateLimited, detail, class: Class::Transient { after } }
            }
            (_, Retry::Transient { after }) => {
                Failure { reason: Reason::BunqUnavailable, detail, class: Class::Transient { after } }
            }
            (BunqError::UnexpectedResponse { .. }, Retry::Permanent) => {
                Failure::permanent(Reason::UnexpectedResponse, detail)
            }
            (_, Retry::Permanent) => Failure::permanent(Reason::RejectedByBunq, detail),
        }
    }
}

impl From<&StoreError> for Failure {
    fn from(err: &StoreError) -> Self {
        match err {
            StoreError::Redis(_) => Failure::transient(Reason::RedisUnavailable, err.to_string()),
            StoreError::Corrupt { .. } => Failure::permanent(Reason::CorruptState, err.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::from(&err)
    }
}

impl From<&RateLimitError> for Failure {
    fn from(err: &RateLimitError) -> Self {
        match err {
            RateLimitError::NoSlot { wait, .. } => Failure {
                reason: Reason::Throttled,
                detail: err.to_string(),
                class: Class::Transient { after: Some(*wait) },
            },
            RateLimitError::Redis(_) => Failure::transient(Reason::RedisUnavailable, err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bunq::error::Endpoint;

    fn api(status: u16) -> BunqError {
        BunqError::Api { endpoint: Endpoint::SessionServer, status, description: "x".into(), response_id: "r".into() }
    }

    #[test]
    fn bunq_rejections_are_permanent_and_outages_transient() {
        assert_eq!(Failure::from(&api(400)).reason, Reason::RejectedByBunq);
        assert_eq!(Failure::from(&api(400)).class, Class::Permanent);
        assert_eq!(Failure::from(&api(503)).reason, Reason::BunqUnavailable);
        assert!(matches!(Failure::from(&api(491)).class, Class::Transient { .. }));
        let bad_signature = BunqError::BadSignature { endpoint: Endpoint::DeviceServer, problem: "is missing" };
        assert!(matches!(Failure::from(&bad_signature).class, Class::Transient { .. }));
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
        assert_eq!(failure.class, Class::Transient { after: Some(Duration::from_secs(30)) });
    }
}
