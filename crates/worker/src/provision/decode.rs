//! The input contracts (docs/contracts.md §1.1, §1.5), decoded once per delivery: the
//! provision-status event and downstream's `session.invalid`. What the one reading finds
//! ([`Decoded`]) serves every later step, the dead-letter copy included.

use super::document::Json;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

/// Which contract a body is read against: the routing key it came with decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    Provision,
    Invalidation,
}

/// What the one reading of a body found.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The body as JSON, when it is JSON at all (whether or not it fits the contract).
    pub(crate) document: Option<Json>,
    pub(crate) read: Read,
}

#[derive(Debug)]
pub(crate) enum Read {
    Provision(Provision),
    Invalidation(Invalidation),
    Malformed(DecodeError),
}

impl Decoded {
    /// The credential the body carries where the contract puts it (`credential.token_value`),
    /// when it decoded as a provision and holds one.
    pub(crate) fn credential(&self) -> Option<&SecretString> {
        match &self.read {
            Read::Provision(p) => p.token_value(),
            _ => None,
        }
    }

    /// The provision id, when the body decoded as a provision.
    pub(crate) fn provision_id(&self) -> Option<u64> {
        match &self.read {
            Read::Provision(p) => Some(p.id),
            _ => None,
        }
    }
}

/// Reads `body` once against `contract`, within the size limit.
pub(crate) fn read(body: &[u8], max_bytes: usize, contract: Contract) -> Decoded {
    let malformed = |e| Decoded { document: None, read: Read::Malformed(e) };
    if body.is_empty() {
        return malformed(DecodeError::Empty);
    }
    if body.len() > max_bytes {
        return malformed(DecodeError::TooLarge { size: body.len(), limit: max_bytes });
    }
    // serde_json stops at 128 levels of nesting, so hostile depth is an error, not a stack overflow.
    let document: Json = match serde_json::from_slice(body) {
        Ok(document) => document,
        Err(e) => {
            return malformed(match contract {
                Contract::Provision => DecodeError::Json(bunq_protocol::redact::json_error(&e, FIELDS)),
                Contract::Invalidation => {
                    DecodeError::Invalidation(bunq_protocol::redact::json_error(&e, INVALIDATION))
                }
            })
        }
    };
    let read = match contract {
        Contract::Provision => provision(&document).map_or_else(Read::Malformed, Read::Provision),
        Contract::Invalidation => invalidation(&document).map_or_else(Read::Malformed, Read::Invalidation),
    };
    Decoded { document: Some(document), read }
}

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
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) external_uuid: Option<String>,
    pub(crate) status: String,
    pub(crate) sub_status: String,
    #[serde(default)]
    pub(crate) credential: Option<Credential>,
}

impl Provision {
    /// `credential.token_value`, when there is one and it is not empty.
    pub fn token_value(&self) -> Option<&SecretString> {
        self.credential.as_ref()?.token_value.as_ref().filter(|t| !t.expose_secret().is_empty())
    }
}

#[derive(Debug, Deserialize)]
pub struct Credential {
    #[serde(default)]
    pub(crate) id: Option<u64>,
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// bunq time, UTC, `YYYY-MM-DD hh:mm:ss.ffffff`.
    #[serde(default, with = "bunq_protocol::timestamp::option")]
    pub(crate) expiry_time: Option<OffsetDateTime>,
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

/// Decodes a provision event within the size limit (see [`read`]).
pub fn decode(body: &[u8], max_bytes: usize) -> Result<Provision, DecodeError> {
    match read(body, max_bytes, Contract::Provision).read {
        Read::Provision(p) => Ok(p),
        Read::Malformed(e) => Err(e),
        Read::Invalidation(_) => unreachable!("read as a provision"),
    }
}

/// The name an object gives twice, if it is the schema's (any other is "a field").
fn duplicate(name: &str, known: &[&str]) -> String {
    match known.iter().find(|k| **k == name) {
        Some(k) => format!("`{k}` given twice"),
        None => "a field given twice".to_owned(),
    }
}

fn provision(document: &Json) -> Result<Provision, DecodeError> {
    let value = document.to_value().map_err(|name| DecodeError::Json(duplicate(&name, FIELDS)))?;
    let envelope: Envelope =
        serde_json::from_value(value).map_err(|e| DecodeError::Json(bunq_protocol::redact::json_error(&e, FIELDS)))?;
    match (envelope.notification_url, envelope.provision) {
        (Some(_), Some(_)) => Err(DecodeError::Ambiguous),
        (Some(n), None) => n.object.provision.ok_or(DecodeError::NoProvision),
        (None, Some(p)) => Ok(p),
        (None, None) => Err(DecodeError::NoProvision),
    }
}

/// Downstream's word that a cached session no longer works (bunq answered 401/403), on
/// the input exchange with routing key `session.invalid` (docs/contracts.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct Invalidation {
    pub(crate) user_id: u64,
    pub(crate) session_id: u64,
}

const INVALIDATION: &[&str] = &["user_id", "session_id"];

/// Decodes an invalidation (see [`read`]); errors name the problem, never a value (the
/// body is downstream's, and could hold anything).
#[cfg(test)]
fn decode_invalidation(body: &[u8], max_bytes: usize) -> Result<Invalidation, DecodeError> {
    match read(body, max_bytes, Contract::Invalidation).read {
        Read::Invalidation(i) => Ok(i),
        Read::Malformed(e) => Err(e),
        Read::Provision(_) => unreachable!("read as an invalidation"),
    }
}

fn invalidation(document: &Json) -> Result<Invalidation, DecodeError> {
    // serde would take `[user_id, session_id]` for the struct too; the contract is an object.
    if !matches!(document, Json::Object(_)) {
        return Err(DecodeError::Invalidation("not a JSON object".to_owned()));
    }
    let value = document.to_value().map_err(|name| DecodeError::Invalidation(duplicate(&name, INVALIDATION)))?;
    serde_json::from_value(value)
        .map_err(|e| DecodeError::Invalidation(bunq_protocol::redact::json_error(&e, INVALIDATION)))
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
    fn debug_of_a_reading_prints_no_token_in_any_shape() {
        let token = &SECRET[..48];
        let bodies = [
            OBJECT.replace("a0239a79", token),
            // Decodes, with the token also under a field the schema does not know.
            OBJECT.replace(r#""permitted_device":null"#, &format!(r#""note":"{token}""#)).replace("a0239a79", token),
            // JSON, but not a provision: the document alone holds it.
            format!(r#"{{"PartnerUserProvision":{{"id":"seven","{token}":"{token}"}}}}"#),
        ];
        for body in bodies {
            let decoded = read(body.as_bytes(), 1 << 20, Contract::Provision);
            assert!(decoded.document.is_some(), "{body}");
            for printed in [format!("{decoded:?}"), format!("{decoded:#?}")] {
                assert!(!printed.contains(&token[..16]), "{printed}");
            }
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
}
