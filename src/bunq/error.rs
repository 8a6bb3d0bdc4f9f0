//! What can go wrong talking to bunq, and whether trying again can help (DESIGN.md §4).

use std::time::Duration;

/// The three handshake endpoints, for errors, metrics and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Installation,
    DeviceServer,
    SessionServer,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Installation => "installation",
            Endpoint::DeviceServer => "device-server",
            Endpoint::SessionServer => "session-server",
        }
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
    #[error("POST /{endpoint}: could not reach bunq: {source}")]
    Transport {
        endpoint: Endpoint,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST /{endpoint}: no answer within the request timeout")]
    Timeout { endpoint: Endpoint },
    #[error("POST /{endpoint}: bunq answered {status}: {description} (response id {response_id})")]
    Api { endpoint: Endpoint, status: u16, description: String, response_id: String },
    #[error("POST /{endpoint}: rate limited by bunq: {description} (response id {response_id})")]
    RateLimited { endpoint: Endpoint, window: Option<Duration>, description: String, response_id: String },
    #[error("POST /{endpoint}: response signature {problem}; not trusting the response")]
    BadSignature { endpoint: Endpoint, problem: &'static str },
    #[error("POST /{endpoint}: unexpected response body: {detail}")]
    UnexpectedResponse { endpoint: Endpoint, detail: String },
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again, not sooner than `after` when bunq said how long to wait.
    Transient { after: Option<Duration> },
    /// Trying again cannot help; a person or upstream must act.
    Permanent,
}

impl BunqError {
    pub fn retry(&self) -> Retry {
        match self {
            BunqError::Transport { .. } | BunqError::Timeout { .. } | BunqError::BadSignature { .. } => {
                Retry::Transient { after: None }
            }
            BunqError::RateLimited { window, .. } => Retry::Transient { after: *window },
            BunqError::Api { status, .. } => classify_status(*status),
            // A 200 we cannot read is contract drift; repeating session-server would open
            // sessions we cannot use.
            BunqError::UnexpectedResponse { .. } => Retry::Permanent,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            BunqError::Transport { endpoint, .. }
            | BunqError::Timeout { endpoint }
            | BunqError::Api { endpoint, .. }
            | BunqError::RateLimited { endpoint, .. }
            | BunqError::BadSignature { endpoint, .. }
            | BunqError::UnexpectedResponse { endpoint, .. } => *endpoint,
        }
    }
}

/// bunq's status codes (bunq-api.md §6.2): 4xx are the caller's problem, except 429;
/// 491 is maintenance; 5xx are bunq's.
pub fn classify_status(status: u16) -> Retry {
    match status {
        429 | 491 => Retry::Transient { after: None },
        500..=599 => Retry::Transient { after: None },
        _ => Retry::Permanent,
    }
}

/// Reads the window from bunq's 429 text, "… a maximum of 3 calls per 3 second …".
pub fn rate_limit_window(description: &str) -> Option<Duration> {
    let after = &description[description.find(" per ")? + 5..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let seconds: u64 = digits.parse().ok()?;
    after[digits.len()..].trim_start().starts_with("second").then(|| Duration::from_secs(seconds))
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
    fn reads_the_window_from_bunqs_rate_limit_messages() {
        let old = "Too many requests. You can do a maximum of 3 calls per 3 second to this endpoint.";
        let new = "You can do a maximum of 1 calls per 30 seconds to this endpoint.";
        assert_eq!(rate_limit_window(old), Some(Duration::from_secs(3)));
        assert_eq!(rate_limit_window(new), Some(Duration::from_secs(30)));
        assert_eq!(rate_limit_window("Too many requests."), None);
        assert_eq!(rate_limit_window("per minute"), None);
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
