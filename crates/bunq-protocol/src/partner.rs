//! The partner's own calls on a provision (docs/bunq-api.md §8.1, §12): reading it, and
//! asking for a new token when the old one expired before it could open a session.
//!
//! Both run on the **partner's** session (installation, device and session opened with
//! the partner's company API key), signed like every session call: pass that session as
//! the [`UserSession`], its `user_id` being the company's.

use crate::client::{parse, unexpected, BunqClient, DeserializeValue, UserSession};
use crate::error::{BunqError, Endpoint};
use crate::model::IdObject;
use secrecy::SecretString;
use serde::Deserialize;
use time::OffsetDateTime;

/// A `PartnerUserProvision` as far as a token reset needs it.
#[derive(Debug, Clone)]
pub struct PartnerProvision {
    /// The provision's id, the `{provisionId}` of the calls.
    pub id: u64,
    /// `CREATED`, `ACTIVE`, `TOKEN_RESET_REQUESTED`, `CANCELLED`, `CLOSED`, `FAILED`.
    pub status: String,
    /// e.g. `PENDING_PROCESS_USER_ONBOARDING`, `PENDING_PROCESS_TOKEN_RESET`.
    pub sub_status: String,
    /// The current credential, when bunq shows one.
    pub credential: Option<ProvisionCredential>,
}

/// A provision's credential. `Debug` shows the token as `[REDACTED]`.
#[derive(Debug, Clone)]
pub struct ProvisionCredential {
    /// Changes with every token reset.
    pub id: u64,
    /// `PENDING_FIRST_USE`, `ACTIVE`, `EXPIRED`.
    pub status: String,
    /// Null once a session was opened with it (and, at the stand-in, while a reset is
    /// pending).
    pub token_value: Option<SecretString>,
    /// The last moment the token may open its first session.
    pub expiry_time: Option<OffsetDateTime>,
}

impl PartnerProvision {
    /// The token to open the user's session with now: a `PENDING_FIRST_USE` credential
    /// with a token, not past its expiry, and no reset pending. Anything else means wait
    /// (a reset in progress) or ask again.
    pub fn usable_token(&self, now: OffsetDateTime) -> Option<&SecretString> {
        if self.sub_status == "PENDING_PROCESS_TOKEN_RESET" {
            return None;
        }
        let credential = self.credential.as_ref()?;
        let fresh = credential.status == "PENDING_FIRST_USE" && credential.expiry_time.is_none_or(|at| at > now);
        fresh.then_some(credential.token_value.as_ref()).flatten()
    }
}

#[derive(Deserialize)]
struct ProvisionWire {
    id: u64,
    status: String,
    sub_status: String,
    credential: Option<CredentialWire>,
}

#[derive(Deserialize)]
struct CredentialWire {
    id: u64,
    status: String,
    token_value: Option<String>,
    #[serde(default, with = "crate::timestamp::option")]
    expiry_time: Option<OffsetDateTime>,
}

impl BunqClient {
    /// `PUT /partner-user-provision/{provisionId}` `{"status":"TOKEN_RESET_REQUESTED"}` on
    /// the partner's session: bunq supersedes the provision's token and makes a new one;
    /// read the provision ([`BunqClient::provision`]) until it is there.
    pub async fn request_token_reset(&self, partner: UserSession<'_>, provision_id: u64) -> Result<(), BunqError> {
        let endpoint = Endpoint::PartnerUserProvisionUpdate;
        let url = format!("{}/partner-user-provision/{provision_id}", self.base_url());
        let body = br#"{"status":"TOKEN_RESET_REQUESTED"}"#.to_vec();
        let bytes = self.as_session(endpoint, url, body, partner.session_token, partner.server_key).await?;
        read_token_reset(&bytes)
    }

    /// `GET /partner-user-provision/{provisionId}` on the partner's session, signed over
    /// the empty body.
    pub async fn provision(&self, partner: UserSession<'_>, provision_id: u64) -> Result<PartnerProvision, BunqError> {
        let endpoint = Endpoint::PartnerUserProvisionRead;
        let url = format!("{}/partner-user-provision/{provision_id}", self.base_url());
        let bytes = self.as_session(endpoint, url, Vec::new(), partner.session_token, partner.server_key).await?;
        read_provision(&bytes)
    }
}

/// Reads a verified token-reset answer: `{"Response":[{"Id":{"id":…}}]}`.
pub fn read_token_reset(bytes: &[u8]) -> Result<(), BunqError> {
    let endpoint = Endpoint::PartnerUserProvisionUpdate;
    let _: IdObject = parse(endpoint, bytes)?.element("Id").map_err(|d| unexpected(endpoint, d))?;
    Ok(())
}

/// Reads a verified `GET /partner-user-provision/{id}` answer. Errors name fields, never
/// a value (the body holds `token_value`).
pub fn read_provision(bytes: &[u8]) -> Result<PartnerProvision, BunqError> {
    let endpoint = Endpoint::PartnerUserProvisionRead;
    let body = parse(endpoint, bytes)?;
    let value = body
        .all("PartnerUserProvision")
        .next()
        .ok_or_else(|| unexpected(endpoint, "no `PartnerUserProvision` element in Response".to_owned()))?;
    let wire = ProvisionWire::deserialize_value(value).map_err(|d| unexpected(endpoint, d))?;
    Ok(PartnerProvision {
        id: wire.id,
        status: wire.status,
        sub_status: wire.sub_status,
        credential: wire.credential.map(|c| ProvisionCredential {
            id: c.id,
            status: c.status,
            token_value: c.token_value.map(SecretString::from),
            expiry_time: c.expiry_time,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    const TOKEN: &str = "a0239a79f981bd6d0123456789abcdef0123456789abcdef0123456789ab63d4";

    /// bunq's example (docs/bunq-api.md §8.1), label_user and oauth_request included.
    fn example(status: &str, sub_status: &str, credential_status: &str, token: &str) -> String {
        format!(
            r#"{{"Response":[{{"PartnerUserProvision":{{"id":7,"created":"2025-09-03 08:24:13.795007","updated":"2025-09-03 08:24:14.266407",
            "external_uuid":"f8b69bdd","status":"{status}","sub_status":"{sub_status}","action_required":"NONE","products":["USER_VERIFIED"],
            "label_user":{{"uuid":"u","display_name":"New bunqer","country":"NL","public_nick_name":"New bunqer","type":"PERSON"}},
            "oauth_request":{{"uuid":"o","oauth_client_id":13383,"status":"ACCEPTED"}},
            "credential":{{"id":2412203,"created":"2025-09-03 08:24:14.178726","updated":"2025-09-03 08:24:14.178726","status":"{credential_status}",
            "expiry_time":"2025-09-03 09:24:14.178685","token_value":{token},"permitted_device":null}}}}}}]}}"#
        )
    }

    #[test]
    fn reads_bunqs_example_and_never_shows_the_token_in_debug() {
        let body = example("ACTIVE", "NONE", "PENDING_FIRST_USE", &format!("\"{TOKEN}\""));
        let provision = read_provision(body.as_bytes()).unwrap();
        assert_eq!((provision.id, provision.status.as_str(), provision.sub_status.as_str()), (7, "ACTIVE", "NONE"));
        let credential = provision.credential.as_ref().unwrap();
        assert_eq!((credential.id, credential.status.as_str()), (2412203, "PENDING_FIRST_USE"));
        assert_eq!(credential.token_value.as_ref().unwrap().expose_secret(), TOKEN);
        assert_eq!(credential.expiry_time, Some(datetime!(2025-09-03 09:24:14.178685 UTC)));
        let debug = format!("{provision:?}");
        assert!(!debug.contains(TOKEN) && !debug.contains("a0239a79"), "{debug}");

        let before = datetime!(2025-09-03 09:00:00 UTC);
        assert_eq!(provision.usable_token(before).map(|t| t.expose_secret()), Some(TOKEN));
        assert!(provision.usable_token(datetime!(2025-09-03 09:24:15 UTC)).is_none(), "past its expiry");
    }

    #[test]
    fn a_pending_reset_or_a_used_credential_has_no_usable_token() {
        let pending = example("TOKEN_RESET_REQUESTED", "PENDING_PROCESS_TOKEN_RESET", "PENDING_FIRST_USE", "null");
        let pending = read_provision(pending.as_bytes()).unwrap();
        assert!(pending.credential.as_ref().unwrap().token_value.is_none());
        let now = datetime!(2025-09-03 09:00:00 UTC);
        assert!(pending.usable_token(now).is_none());
        // A token still shown while the reset is pending is the old one: not usable.
        let stale = example("TOKEN_RESET_REQUESTED", "PENDING_PROCESS_TOKEN_RESET", "PENDING_FIRST_USE", "\"x\"");
        assert!(read_provision(stale.as_bytes()).unwrap().usable_token(now).is_none());
        let used = example("CREATED", "PENDING_PROCESS_USER_ONBOARDING", "ACTIVE", "null");
        assert!(read_provision(used.as_bytes()).unwrap().usable_token(now).is_none());
    }

    #[test]
    fn a_wrong_shape_is_unexpected_and_its_error_holds_no_value() {
        let wrong = format!(
            r#"{{"Response":[{{"PartnerUserProvision":{{"id":7,"status":"CREATED","sub_status":"NONE","credential":{{"id":"{TOKEN}","status":"x"}}}}}}]}}"#
        );
        let err = read_provision(wrong.as_bytes()).unwrap_err();
        assert!(matches!(err, BunqError::UnexpectedResponse { .. }), "{err:?}");
        assert!(!err.to_string().contains(TOKEN), "{err}");
        let none = read_provision(br#"{"Response":[{"Id":{"id":7}}]}"#).unwrap_err();
        assert!(none.to_string().contains("no `PartnerUserProvision` element"), "{none}");
        read_token_reset(br#"{"Response":[{"Id":{"id":7}}]}"#).unwrap();
        assert!(read_token_reset(br#"{"Response":[]}"#).is_err());
    }
}
