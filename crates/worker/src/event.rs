//! Event contracts (docs/contracts.md §1): the provision-status event the worker consumes and
//! the session-ready event it publishes.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why a body could not be turned into a [`Provision`]. The text never quotes the body.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is empty")]
    Empty,
    #[error("body is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    /// Kind, position and a vetted phrase (see `bunq_protocol::redact::json_error`):
    /// serde's own message would quote the offending value, credential included.
    #[error("body is not a provision event: {0}")]
    Json(String),
    #[error("body has neither `NotificationUrl.object.PartnerUserProvision` nor `PartnerUserProvision`")]
    NoProvision,
    #[error("body has both a `NotificationUrl` and a `PartnerUserProvision`; send one")]
    Ambiguous,
    #[error(r#"body is not a session.invalid message ({{"user_id": …, "session_id": …}}): {0}"#)]
    Invalidation(String),
}

/// bunq's `PartnerUserProvision`, only the fields the worker uses; others are ignored.
#[derive(Debug, Deserialize)]
pub struct Provision {
    pub id: u64,
    #[serde(default)]
    pub external_uuid: Option<String>,
    pub status: String,
    pub sub_status: String,
    #[serde(default)]
    pub credential: Option<Credential>,
}

#[derive(Debug, Deserialize)]
pub struct Credential {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub status: Option<String>,
    /// bunq time, UTC, `YYYY-MM-DD hh:mm:ss.ffffff`.
    #[serde(default, with = "bunq_protocol::timestamp::option")]
    pub expiry_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub token_value: Option<SecretString>,
}

/// The two accepted shapes: bunq's webhook body, or the object alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "NotificationUrl")]
    notification_url: Option<NotificationUrl>,
    #[serde(rename = "PartnerUserProvision")]
    provision: Option<Provision>,
}

#[derive(Deserialize)]
struct NotificationUrl {
    object: NotificationObject,
}

#[derive(Deserialize)]
struct NotificationObject {
    #[serde(rename = "PartnerUserProvision")]
    provision: Option<Provision>,
}

/// The schema's field names: the only names a decode error may quote.
const FIELDS: &[&str] = &[
    "NotificationUrl",
    "PartnerUserProvision",
    "object",
    "id",
    "external_uuid",
    "status",
    "sub_status",
    "credential",
    "expiry_time",
    "token_value",
];

/// Decodes a delivery body within the size limit.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<Provision, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: body.len(), limit: max_bytes });
    }
    // serde_json stops at 128 levels of nesting, so hostile depth is an error, not a stack overflow.
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(bunq_protocol::redact::json_error(&e, FIELDS)))?;
    match (envelope.notification_url, envelope.provision) {
        (Some(_), Some(_)) => Err(DecodeError::Ambiguous),
        (Some(n), None) => n.object.provision.ok_or(DecodeError::NoProvision),
        (None, Some(p)) => Ok(p),
        (None, None) => Err(DecodeError::NoProvision),
    }
}

/// Published when a session is cached (docs/contracts.md §1.3). Holds no secret by construction:
/// it has no field a token could go in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReady {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub user_id: u64,
    pub granted_by_user_id: Option<u64>,
    pub session_id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub cache_key: String,
}

pub const SESSION_READY_EVENT_TYPE: &str = "bunq.session.ready";
/// A renewal replaced the session at the same `cache_key`; the same fields as
/// [`SessionReady`], published with routing key [`SESSION_RENEWED_ROUTING_KEY`].
pub const SESSION_RENEWED_EVENT_TYPE: &str = "bunq.session.renewed";
pub const SESSION_RENEWED_ROUTING_KEY: &str = "session.renewed";

/// Namespace for the deterministic event id: the same session is always announced with
/// the same id, so consumers can deduplicate the at-least-once stream.
const EVENT_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5b0c8f7e-2f0a-4c55-9d7b-6a8f1f0e3c21");

pub fn event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}").as_bytes())
}

/// Downstream's word that a cached session no longer works (bunq answered 401/403), on
/// the input exchange with routing key `session.invalid` (docs/contracts.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Invalidation {
    pub user_id: u64,
    pub session_id: u64,
}

/// Decodes an invalidation; errors name the problem, never a value (the body is
/// downstream's, and could hold anything).
pub fn decode_invalidation(body: &[u8], max_bytes: usize) -> Result<Invalidation, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::Empty);
    }
    if body.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: body.len(), limit: max_bytes });
    }
    // serde would take `[user_id, session_id]` for the struct too; the contract is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::Invalidation("not a JSON object".to_owned()));
    }
    serde_json::from_slice(body)
        .map_err(|e| DecodeError::Invalidation(bunq_protocol::redact::json_error(&e, &["user_id", "session_id"])))
}

/// Published when a provision's session is closed (docs/contracts.md §1.4): deleted from
/// the cache and ended at bunq. No token field, like [`SessionReady`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClosed {
    pub event_id: uuid::Uuid,
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub provision_id: u64,
    pub external_uuid: Option<String>,
    pub user_id: u64,
    pub session_id: u64,
    /// Why: `provision_closed` (the partner cancelled or closed the provision),
    /// `invalidated` (downstream reported it dead and no credential is held to renew it),
    /// `credential_revoked` (bunq refused the renewal) or `renewal_failed` (renewals kept
    /// failing until the session expired).
    pub reason: String,
}

pub const SESSION_CLOSED_EVENT_TYPE: &str = "bunq.session.closed";
/// The routing key of [`SessionClosed`] on the output exchange.
pub const SESSION_CLOSED_ROUTING_KEY: &str = "session.closed";
/// [`SessionClosed::reason`] for a provision the partner cancelled or closed.
pub const CLOSED_BY_PROVISION: &str = "provision_closed";
/// [`SessionClosed::reason`] for a session downstream reported dead.
pub const CLOSED_AS_INVALID: &str = "invalidated";
/// [`SessionClosed::reason`] when bunq refused a renewal for good (400/401/403).
pub const CLOSED_CREDENTIAL_REVOKED: &str = "credential_revoked";
/// [`SessionClosed::reason`] when renewals kept failing until the session expired.
pub const CLOSED_RENEWAL_FAILED: &str = "renewal_failed";

/// The renewal that produced `session_id`: distinct from that session's ready and closed
/// events, the same on every republish.
pub fn renewed_event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}:renewed").as_bytes())
}

/// Deterministic too, and distinct from the session's ready event.
pub fn closed_event_id(provision_id: u64, session_id: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, format!("{provision_id}:{session_id}:closed").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const OBJECT: &str = r#"{"PartnerUserProvision":{"id":7,"created":"2025-09-03 08:24:13.795007",
        "external_uuid":"f8b69bdd","status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING",
        "action_required":"USER","label_user":{"uuid":"x"},
        "credential":{"id":2412203,"status":"PENDING_FIRST_USE","expiry_time":"2025-09-03 09:24:14.178685",
        "token_value":"a0239a79","permitted_device":null}}}"#;

    #[test]
    fn decodes_the_bare_object_and_ignores_unknown_fields() {
        let p = decode(OBJECT.as_bytes(), 1 << 20).unwrap();
        assert_eq!((p.id, p.status.as_str()), (7, "CREATED"));
        let credential = p.credential.unwrap();
        assert_eq!(credential.token_value.unwrap().expose_secret(), "a0239a79");
        assert_eq!(credential.expiry_time.unwrap().to_string(), "2025-09-03 9:24:14.178685 +00:00:00");
    }

    #[test]
    fn decodes_the_webhook_body() {
        let body = format!(
            r#"{{"NotificationUrl":{{"target_url":"https://x","category":"PARTNER_USER_PROVISION",
            "event_type":"PARTNER_USER_PROVISION_PROCESS_UPDATED","object":{OBJECT}}}}}"#
        );
        assert_eq!(decode(body.as_bytes(), 1 << 20).unwrap().id, 7);
    }

    #[test]
    fn rejects_bad_bodies_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"not json", "not a provision event"),
            (br#"{"PartnerUserProvision":{"id":"seven","status":"CREATED","sub_status":"X"}}"#, "invalid type"),
            (br#"{"PartnerUserProvision":{"id":7,"sub_status":"X"}}"#, "missing field `status`"),
            (br#"{"Other":{}}"#, "unknown field"),
            (br#"{}"#, "neither"),
            (br#"[1,2]"#, "not a provision event"),
        ];
        for (body, expected) in cases {
            let err = decode(body, 1 << 20).unwrap_err().to_string();
            assert!(err.contains(expected), "{:?}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn rejects_oversized_and_deeply_nested_bodies_without_panicking() {
        assert!(matches!(decode(&[b' '; 100], 10), Err(DecodeError::TooLarge { size: 100, limit: 10 })));
        let deep = format!(r#"{{"PartnerUserProvision":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(decode(deep.as_bytes(), 1 << 20), Err(DecodeError::Json(_))));
    }

    #[test]
    fn decode_errors_do_not_echo_the_token() {
        let bodies: [&[u8]; 2] = [
            br#"{"PartnerUserProvision":{"id":"seven","status":"CREATED","sub_status":"X","credential":{"token_value":"s3cr3tTOKEN"}}}"#,
            br#"{"PartnerUserProvision":{"id":7,"status":"CREATED","sub_status":"X","credential":{"token_value":"s3cr3tTOKEN","expiry_time":"soon"}}}"#,
        ];
        for body in bodies {
            let err = decode(body, 1 << 20).unwrap_err().to_string();
            assert!(!err.contains("s3cr3tTOKEN"), "{err}");
        }
    }

    /// Every hostile shape carries this secret; no error text may contain any of it.
    const SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
        let good = format!(
            r#"{{"PartnerUserProvision":{{"id":7,"status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING","credential":{{"token_value":"{SECRET}"}}}}}}"#
        );
        let provision = |credential: &str| {
            format!(
                r#"{{"PartnerUserProvision":{{"id":7,"status":"CREATED","sub_status":"X","credential":{credential}}}}}"#
            )
        };
        let mut invalid_utf8 = format!(r#"{{"PartnerUserProvision":{{"id":7,"x":"{SECRET}"#).into_bytes();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
        invalid_utf8.extend_from_slice(format!(r#"{SECRET}"}}}}"#).as_bytes());
        vec![
            ("double-encoded body", serde_json::to_vec(&good).unwrap()),
            ("token as a number", provision(&format!(r#"{{"token_value":{}}}"#, "9".repeat(64))).into_bytes()),
            ("token in an array", provision(&format!(r#"{{"token_value":["{SECRET}"]}}"#)).into_bytes()),
            (
                "object where a string belongs",
                provision(&format!(r#"{{"token_value":{{"v":"{SECRET}"}}}}"#)).into_bytes(),
            ),
            ("string where an object belongs", provision(&format!(r#""{SECRET}""#)).into_bytes()),
            ("secret as the id", good.replace(r#""id":7"#, &format!(r#""id":"{SECRET}""#)).into_bytes()),
            ("huge field name", format!(r#"{{"{}{SECRET}":1}}"#, "k".repeat(100_000)).into_bytes()),
            ("secret in an unknown field", format!(r#"{{"{SECRET}":{{}}}}"#).into_bytes()),
            ("invalid UTF-8 around it", invalid_utf8),
            (
                "nested 10,000 deep",
                format!(r#"{{"x":"{SECRET}","y":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            ),
            ("expiry holding the secret", provision(&format!(r#"{{"expiry_time":"{SECRET}"}}"#)).into_bytes()),
            ("truncated", good.as_bytes()[..good.len() - 20].to_vec()),
        ]
    }

    #[test]
    fn no_hostile_shape_puts_the_secret_into_the_error() {
        for (shape, body) in hostile_bodies() {
            let err = decode(&body, 1 << 20).expect_err(shape).to_string();
            assert!(!err.contains(SECRET) && !err.contains(&SECRET[..16]), "{shape}: {err}");
            assert!(err.len() <= 256, "{shape}: {} bytes", err.len());
        }
    }

    #[test]
    fn invalidations_decode_or_say_what_is_wrong_without_quoting() {
        let ok = decode_invalidation(br#"{"user_id":1364,"session_id":2173,"extra":1}"#, 1024).unwrap();
        assert_eq!(ok, Invalidation { user_id: 1364, session_id: 2173 });
        for body in [&br#"{"user_id":"secret-ish","session_id":1}"#[..], br#"{"user_id":1}"#, b"", b"[1,2]"] {
            let err = decode_invalidation(body, 1024).unwrap_err().to_string();
            assert!(!err.contains("secret-ish"), "{err}");
        }
        assert!(matches!(decode_invalidation(&[b' '; 2048], 1024), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn event_id_is_deterministic_per_session() {
        assert_eq!(closed_event_id(7, 2173), closed_event_id(7, 2173));
        assert_ne!(closed_event_id(7, 2173), event_id(7, 2173));
        assert_eq!(event_id(7, 2173), event_id(7, 2173));
        assert_ne!(event_id(7, 2173), event_id(7, 2174));
        assert_ne!(event_id(7, 2173), event_id(8, 2173));
    }
}
