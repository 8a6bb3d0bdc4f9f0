//! Every error the fake answers on `/v1`, with its status code and bunq-style text.
//!
//! Where bunq's status or wording was observed, it is reused verbatim; the rest is
//! marked UNCERTAIN here and in the report (docs/bunq-api.md §4.1, §6, §11).

use axum::http::StatusCode;

/// An error answered with bunq's `{"Error":[…]}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BunqError {
    /// `User-Agent` is the one header bunq's spec marks required. UNCERTAIN wording.
    #[error("The header \"User-Agent\" is required.")]
    MissingUserAgent,

    /// Unknown or missing installation token. 403 + this text is what bunq answers for
    /// an invalid session token (jorttbv/bunq-client#34); applied to installation tokens
    /// by analogy. UNCERTAIN (401 is the documented alternative).
    #[error("Insufficient authentication.")]
    InsufficientAuthentication,

    /// Missing `X-Bunq-Client-Signature` (466 per bunq's status table).
    #[error("For this operation a request signature is required.")]
    SignatureRequired,

    /// Signature not over these body bytes with the installation's key (observed as 400).
    #[error("The request signature is invalid.")]
    SignatureInvalid,

    /// A reused `X-Bunq-Client-Request-Id` on the same installation. Documented as an
    /// error, but status and wording were never captured: UNCERTAIN.
    #[error("The request id \"{0}\" has already been used.")]
    RequestIdReused(String),

    /// Rolling-window rate limit, in the pattern of the observed message.
    #[error("Too many requests. You can do a maximum of {calls} calls per {per_secs} second to this endpoint.")]
    RateLimited { calls: u32, per_secs: u64 },

    /// `client_public_key` missing or not an RSA-2048 SPKI PEM.
    #[error("The client public key is invalid: {0}")]
    InvalidPublicKey(String),

    /// Malformed JSON or a missing/invalid field. UNCERTAIN wording.
    #[error("{0}")]
    InvalidBody(String),

    /// Unknown, rejected or expired credential, or a secret without a device on this
    /// installation. The text and 400 are what bunq answers for an unusable API key
    /// (bunq/sdk_python#147, bunq/sdk_csharp#114); for an expired Partner credential the
    /// exact answer is UNCERTAIN (docs/bunq-api.md §11).
    #[error("User credentials are incorrect. Incorrect API key or IP address.")]
    CredentialsIncorrect,

    #[error("Route not found.")]
    NotFound,

    /// `GET`/`PUT /partner-user-provision/{id}` for an id the partner does not have.
    /// UNCERTAIN wording.
    #[error("PartnerUserProvision not found.")]
    ProvisionNotFound,

    /// A token reset (or closing) of a provision that is cancelled, closed or failed: bunq
    /// resets tokens only "as long as the provision and user are active". UNCERTAIN wording.
    #[error("The provision is not active: a new token can only be requested for an active provision and user.")]
    ProvisionNotActive,

    #[error("Method not allowed for this route.")]
    MethodNotAllowed,

    /// Injected maintenance answer (491 MAINTENANCE ERROR).
    #[error("bunq is currently in maintenance. Please try again later.")]
    Maintenance,
}

/// bunq's non-standard codes; `from_u16` only fails outside 100..=999.
fn custom(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl BunqError {
    pub fn status(&self) -> StatusCode {
        match self {
            BunqError::MissingUserAgent
            | BunqError::SignatureInvalid
            | BunqError::RequestIdReused(_)
            | BunqError::InvalidPublicKey(_)
            | BunqError::InvalidBody(_)
            | BunqError::ProvisionNotActive
            | BunqError::CredentialsIncorrect => StatusCode::BAD_REQUEST,
            BunqError::InsufficientAuthentication => StatusCode::FORBIDDEN,
            BunqError::SignatureRequired => custom(466),
            BunqError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            BunqError::NotFound | BunqError::ProvisionNotFound => StatusCode::NOT_FOUND,
            BunqError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BunqError::Maintenance => custom(491),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_text_matches_bunq_pattern() {
        let e = BunqError::RateLimited { calls: 1, per_secs: 30 };
        assert_eq!(e.to_string(), "Too many requests. You can do a maximum of 1 calls per 30 second to this endpoint.");
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn bunq_specific_codes() {
        assert_eq!(BunqError::SignatureRequired.status().as_u16(), 466);
        assert_eq!(BunqError::Maintenance.status().as_u16(), 491);
        assert_eq!(BunqError::SignatureInvalid.status().as_u16(), 400);
    }
}
