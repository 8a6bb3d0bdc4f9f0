//! The partner's own credential and the token resets it allows (`CREDENTIAL_RESET`).

use super::{invalid, ConfigError};
use crate::partner::reset::ResetSettings;
use crate::ratelimit::limit::Limit;
use clap::Args;
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the token reset: the partner's API key and how resets run.
#[derive(Debug, Clone, Args)]
pub(crate) struct PartnerArgs {
    /// `on`: a provision whose credential expired, or that the session-server budget cannot
    /// serve before it expires, gets a new token (a reset on the partner's own session)
    /// instead of a dead letter; needs BUNQ_PARTNER_API_KEY_FILE and
    /// SESSION_ENCRYPTION_KEY_FILE. `off`: such a provision is dead-lettered
    /// `credential_expired`.
    #[arg(long, env = "CREDENTIAL_RESET", default_value = "off")]
    pub(crate) credential_reset: String,
    /// File with the partner's own bunq API key (the company's key, not a user's): opens the
    /// partner's session that resets tokens. Read once; never logged or printed.
    #[arg(long, env = "BUNQ_PARTNER_API_KEY_FILE")]
    pub(crate) bunq_partner_api_key_file: Option<PathBuf>,
    /// Resets bunq refuses for one provision before it is dead-lettered `credential_expired`.
    #[arg(long, env = "CREDENTIAL_RESET_MAX_ATTEMPTS", default_value_t = 3)]
    pub(crate) credential_reset_max_attempts: u32,
    /// How long a fresh token lives at bunq, e.g. 1h (sandbox) or 4h (production): a
    /// reset is requested only when a session-server slot is free within it.
    #[arg(long, env = "CREDENTIAL_LIFETIME", default_value = "1h")]
    pub(crate) credential_lifetime: String,
    /// Rate limit of PUT calls (the reset request), as CALLS/DURATION (bunq: 2 per 3 s).
    #[arg(long, env = "RATE_LIMIT_PUT", default_value = "2/3s")]
    pub(crate) rate_limit_put: String,
    /// Rate limit of GET calls (reading the provision), as CALLS/DURATION (bunq: 3 per 3 s).
    #[arg(long, env = "RATE_LIMIT_GET", default_value = "3/3s")]
    pub(crate) rate_limit_get: String,
}

impl PartnerArgs {
    /// The PUT and GET limits, which apply whether resets are on or not (`check` reads them).
    pub(crate) fn limits(&self) -> Result<(Limit, Limit), ConfigError> {
        let put = Limit::parse(&self.rate_limit_put).map_err(|p| invalid("RATE_LIMIT_PUT", p))?;
        let get = Limit::parse(&self.rate_limit_get).map_err(|p| invalid("RATE_LIMIT_GET", p))?;
        Ok((put, get))
    }

    pub(crate) fn settings(&self, has_sealing_key: bool) -> Result<Option<ResetSettings>, ConfigError> {
        let on = match self.credential_reset.trim() {
            "on" => true,
            "off" => false,
            other => return Err(invalid("CREDENTIAL_RESET", format!("must be `on` or `off`, not `{other}`"))),
        };
        let Some(path) = &self.bunq_partner_api_key_file else {
            if on {
                return Err(invalid(
                    "BUNQ_PARTNER_API_KEY_FILE",
                    "must be set with CREDENTIAL_RESET=on: resets run on the partner's own session",
                ));
            }
            return Ok(None);
        };
        if !on {
            return Err(invalid(
                "CREDENTIAL_RESET",
                "must be `on` when BUNQ_PARTNER_API_KEY_FILE is set (the key is only read for resets)",
            ));
        }
        if !has_sealing_key {
            return Err(invalid(
                "CREDENTIAL_RESET",
                "`on` keeps the partner's session and fresh tokens in Redis, which needs SESSION_ENCRYPTION_KEY_FILE to seal them",
            ));
        }
        let key = read_key(path)?;
        if self.credential_reset_max_attempts == 0 {
            return Err(invalid("CREDENTIAL_RESET_MAX_ATTEMPTS", "must be at least 1"));
        }
        let credential_lifetime =
            crate::duration::parse(&self.credential_lifetime).map_err(|p| invalid("CREDENTIAL_LIFETIME", p))?;
        if credential_lifetime < Duration::from_secs(10) {
            return Err(invalid("CREDENTIAL_LIFETIME", "must be at least 10s"));
        }
        Ok(Some(ResetSettings {
            partner_api_key: Arc::new(key),
            max_refusals: self.credential_reset_max_attempts,
            credential_lifetime,
        }))
    }
}

/// The key file's one line; the error names the setting and the file, never the content.
fn read_key(path: &std::path::Path) -> Result<SecretString, ConfigError> {
    const VARIABLE: &str = "BUNQ_PARTNER_API_KEY_FILE";
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| invalid(VARIABLE, format!("cannot read {}: {e}", path.display())))?,
    );
    let key = text.trim();
    if key.is_empty() || key.contains(char::is_whitespace) || !key.is_ascii() {
        return Err(invalid(VARIABLE, format!("{} must hold one API key on one line", path.display())));
    }
    Ok(SecretString::from(key.to_owned()))
}
