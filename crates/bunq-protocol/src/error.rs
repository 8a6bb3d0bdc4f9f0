//! What can go wrong talking to bunq, and whether trying again can help
//! (docs/bunq-api.md §6.2).

use std::time::Duration;

/// Each bunq call the workspace makes (handshake, ending a session, a user's filters, the
/// partner's token reset), for errors, metrics and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/installation`: registers the client's public key.
    Installation,
    /// `POST /v1/device-server`: registers the secret as a device.
    DeviceServer,
    /// `POST /v1/session-server`: opens a session.
    SessionServer,
    /// `DELETE /v1/session/{id}`: ends the session that authenticates the call.
    Session,
    /// `POST /v1/user/{userId}/notification-filter-url`: replaces the user's URL filters.
    NotificationFilterUrl,
    /// `GET /v1/user/{userId}/notification-filter-url`: lists them.
    NotificationFilterUrlList,
    /// `PUT /v1/partner-user-provision/{provisionId}`: the partner asks for a new token.
    PartnerUserProvisionUpdate,
    /// `GET /v1/partner-user-provision/{provisionId}`: the partner reads a provision.
    PartnerUserProvisionRead,
}

impl Endpoint {
    /// The path below `/v1`, also the metric label.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Installation => "installation",
            Endpoint::DeviceServer => "device-server",
            Endpoint::SessionServer => "session-server",
            Endpoint::Session => "session",
            Endpoint::NotificationFilterUrl | Endpoint::NotificationFilterUrlList => "notification-filter-url",
            Endpoint::PartnerUserProvisionUpdate | Endpoint::PartnerUserProvisionRead => "partner-user-provision",
        }
    }

    /// The HTTP method of the call.
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Session => "DELETE",
            Endpoint::NotificationFilterUrlList | Endpoint::PartnerUserProvisionRead => "GET",
            Endpoint::PartnerUserProvisionUpdate => "PUT",
            _ => "POST",
        }
    }

    /// The path below `/v1` with its ids as placeholders: a span's `url.template`.
    pub fn template(self) -> &'static str {
        match self {
            Endpoint::Installation => "/v1/installation",
            Endpoint::DeviceServer => "/v1/device-server",
            Endpoint::SessionServer => "/v1/session-server",
            Endpoint::Session => "/v1/session/{sessionId}",
            Endpoint::NotificationFilterUrl | Endpoint::NotificationFilterUrlList => {
                "/v1/user/{userId}/notification-filter-url"
            }
            Endpoint::PartnerUserProvisionUpdate | Endpoint::PartnerUserProvisionRead => {
                "/v1/partner-user-provision/{provisionId}"
            }
        }
    }

    /// Method and path, as errors name the call: `POST /session-server`.
    pub fn call(self) -> String {
        format!("{} /{}", self.method(), self.path())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}

/// A failed bunq call. Messages carry bunq's own error text and response id, never a
/// token or secret.
#[derive(Debug, thiserror::Error)]
pub enum BunqError {
    /// No connection, or it broke before a whole answer arrived.
    #[error("{call}: could not reach bunq: {source}", call = .endpoint.call())]
    Transport {
        /// The call.
        endpoint: Endpoint,
        /// What the HTTP client saw, without the URL.
        #[source]
        source: reqwest::Error,
    },
    /// No whole answer within the request timeout.
    #[error("{call}: no answer within the request timeout", call = .endpoint.call())]
    Timeout {
        /// The call.
        endpoint: Endpoint,
    },
    /// bunq answered with an error status other than 429.
    #[error("{call}: bunq answered {status}: {description} (response id {response_id})", call = .endpoint.call())]
    Api {
        /// The call.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
        /// bunq's `error_description` text, shortened.
        description: String,
        /// `X-Bunq-Client-Response-Id`, for bunq's support.
        response_id: String,
    },
    /// bunq answered 429.
    #[error("{call}: rate limited by bunq: {description} (response id {response_id})", call = .endpoint.call())]
    RateLimited {
        /// The call.
        endpoint: Endpoint,
        /// The window bunq's message names ("… per 30 second …"), if it names one.
        window: Option<Duration>,
        /// bunq's `error_description` text, shortened.
        description: String,
        /// `X-Bunq-Client-Response-Id`, for bunq's support.
        response_id: String,
    },
    /// An error status without `X-Bunq-Server-Signature` after installation: possibly a
    /// proxy or firewall speaking, not bunq, so never a reason to give up.
    #[error("{call}: unsigned {status} answer (response id {response_id}); not known to be bunq's", call = .endpoint.call())]
    Unsigned {
        /// The call.
        endpoint: Endpoint,
        /// The HTTP status.
        status: u16,
        /// `X-Bunq-Client-Response-Id`, if any.
        response_id: String,
    },
    /// The answer's `X-Bunq-Server-Signature` is missing or wrong: not bunq speaking.
    #[error("{call}: response signature {problem}; not trusting the response", call = .endpoint.call())]
    BadSignature {
        /// The call.
        endpoint: Endpoint,
        /// "is missing" or "does not verify".
        problem: &'static str,
    },
    /// A verified 2xx whose body is not the documented shape.
    #[error("{call}: unexpected response body: {detail}", call = .endpoint.call())]
    UnexpectedResponse {
        /// The call.
        endpoint: Endpoint,
        /// Which element or field was wrong; never a value from the body.
        detail: String,
    },
}

/// Whether trying again can help: the one classification of failures in this
/// workspace. The worker's retry loop, its failure type and this client all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again, not sooner than `after` when the other side said how long to wait.
    Transient {
        /// The least wait the answer named, if any.
        after: Option<Duration>,
    },
    /// Trying again cannot help; a person or upstream must act.
    Permanent,
}

impl BunqError {
    /// Whether trying again can help, and how long to wait at least.
    pub fn retry(&self) -> Retry {
        match self {
            BunqError::Transport { .. }
            | BunqError::Timeout { .. }
            | BunqError::BadSignature { .. }
            | BunqError::Unsigned { .. } => Retry::Transient { after: None },
            BunqError::RateLimited { window, .. } => Retry::Transient { after: *window },
            BunqError::Api { status, .. } => classify_status(*status),
            // A 200 we cannot read is contract drift; repeating session-server would open
            // sessions we cannot use.
            BunqError::UnexpectedResponse { .. } => Retry::Permanent,
        }
    }

    /// A short, closed-set label of the outcome, for metrics: the status code, or what
    /// went wrong before one could be trusted.
    pub fn status_label(&self) -> &'static str {
        match self {
            BunqError::Api { status, .. } => status_label(*status),
            BunqError::RateLimited { .. } => "429",
            BunqError::Timeout { .. } => "timeout",
            BunqError::Transport { .. } => "transport",
            BunqError::BadSignature { .. } => "bad_signature",
            BunqError::Unsigned { .. } => "unsigned",
            BunqError::UnexpectedResponse { .. } => "unexpected",
        }
    }

    /// The call that failed.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            BunqError::Transport { endpoint, .. }
            | BunqError::Timeout { endpoint }
            | BunqError::Api { endpoint, .. }
            | BunqError::RateLimited { endpoint, .. }
            | BunqError::BadSignature { endpoint, .. }
            | BunqError::Unsigned { endpoint, .. }
            | BunqError::UnexpectedResponse { endpoint, .. } => *endpoint,
        }
    }
}

/// bunq's status codes (docs/bunq-api.md §6.2): 4xx are the caller's problem, except 429;
/// 491 is maintenance; 5xx are bunq's.
pub fn classify_status(status: u16) -> Retry {
    match status {
        429 | 491 => Retry::Transient { after: None },
        500..=599 => Retry::Transient { after: None },
        _ => Retry::Permanent,
    }
}

/// Status codes as metric labels: the ones bunq documents by name, the rest by class,
/// so an odd answer cannot grow the label set.
fn status_label(status: u16) -> &'static str {
    const NAMED: [&str; 12] = ["400", "401", "403", "404", "405", "466", "490", "491", "500", "502", "503", "504"];
    let code = status.to_string();
    if let Some(named) = NAMED.iter().find(|named| **named == code) {
        return named;
    }
    match status {
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The longest wait a 429 may impose: bunq's windows are seconds (docs/bunq-api.md §6.3);
/// a larger number is not believed, so no answer can freeze a shared budget for days or
/// overflow a deadline.
pub const MAX_RATE_LIMIT_WINDOW: Duration = Duration::from_secs(300);

/// Reads the window from bunq's 429 text, "… a maximum of 3 calls per 3 second …", at
/// most [`MAX_RATE_LIMIT_WINDOW`].
pub fn rate_limit_window(description: &str) -> Option<Duration> {
    let after = &description[description.find(" per ")? + 5..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).take(7).collect();
    let seconds: u64 = digits.parse().ok()?;
    let window = Duration::from_secs(seconds).min(MAX_RATE_LIMIT_WINDOW);
    after[digits.len()..].trim_start().starts_with("second").then_some(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_design_table() {
        for status in [400, 401, 403, 404, 405, 466, 490] {
            assert_eq!(classify_status(status), Retry::Permanent, "{status}");
        }
        for status in [429, 491, 500, 502, 503, 504] {
            assert!(matches!(classify_status(status), Retry::Transient { .. }), "{status}");
        }
    }

    #[test]
    fn status_labels_are_a_closed_set() {
        assert_eq!(status_label(429), "4xx", "429 has its own error variant");
        assert_eq!(status_label(503), "503");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(302), "other");
    }

    #[test]
    fn reads_the_window_from_bunqs_rate_limit_messages() {
        let old = "Too many requests. You can do a maximum of 3 calls per 3 second to this endpoint.";
        let new = "You can do a maximum of 1 calls per 30 seconds to this endpoint.";
        assert_eq!(rate_limit_window(old), Some(Duration::from_secs(3)));
        assert_eq!(rate_limit_window(new), Some(Duration::from_secs(30)));
        assert_eq!(rate_limit_window("Too many requests."), None);
        assert_eq!(rate_limit_window("per minute"), None);
        let absurd = "a maximum of 1 calls per 99999999999999999999999 seconds";
        assert_eq!(rate_limit_window(absurd), None, "an overlong number is not read");
        assert_eq!(rate_limit_window("1 calls per 86400 seconds"), Some(MAX_RATE_LIMIT_WINDOW));
    }

    #[test]
    fn rate_limit_errors_carry_the_window_as_the_retry_hint() {
        let err = BunqError::RateLimited {
            endpoint: Endpoint::SessionServer,
            window: Some(Duration::from_secs(30)),
            description: String::new(),
            response_id: String::new(),
        };
        assert_eq!(err.retry(), Retry::Transient { after: Some(Duration::from_secs(30)) });
    }
}
