//! What a dead letter may keep. The dead-letter queue is a store without expiry of
//! messages nobody is processing; a provision's `token_value` is the user's API key, live
//! for hours and, after device-server, bound to a device. So no dead letter keeps it in
//! the clear:
//!
//! - a body that decodes as a provision keeps its shape; with an encryption key its
//!   `credential.token_value` is sealed, bound to the provision and the message, and
//!   `dead-letters replay` unseals it; without a key it is removed (`null`), and a replay
//!   needs a fresh event;
//! - a body that does not decode may hold a credential anywhere: with a key it is sealed
//!   whole; without one every credential-like run in it is masked.
//!
//! The `x-credential` header says which happened.

use crate::event;
use crate::seal::{Context, Sealer};
use serde_json::Value;

/// How the credential of a dead letter was handled: the `x-credential` header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No `token_value` in the body.
    Absent,
    /// `credential.token_value` sealed in place.
    Sealed,
    /// `credential.token_value` set to `null`: no key was configured.
    Removed,
    /// The undecodable body sealed whole, as `{"sealed_body": "…"}`.
    SealedBody,
    /// Credential-like runs in the undecodable body masked: no key was configured.
    Redacted,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Absent => "absent",
            Credential::Sealed => "sealed",
            Credential::Removed => "removed",
            Credential::SealedBody => "sealed-body",
            Credential::Redacted => "redacted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Credential::Absent, Credential::Sealed, Credential::Removed, Credential::SealedBody, Credential::Redacted]
            .into_iter()
            .find(|c| c.as_str() == text)
    }

    /// Whether a replay can restore what the worker received.
    pub fn replayable(self) -> bool {
        matches!(self, Credential::Absent | Credential::Sealed | Credential::SealedBody)
    }
}

/// Why a dead letter's body could not be restored for a replay.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("its credential was removed (no encryption key when it was dead-lettered): publish a fresh event")]
    NotReplayable,
    #[error("it is sealed, and no SESSION_ENCRYPTION_KEY_FILE is configured")]
    NoKey,
    #[error("cannot unseal it: {0}")]
    Unseal(String),
    #[error("its sealed body is not what the worker wrote")]
    Shape,
}

/// Token runs at least this long are masked in undecodable bodies, as in details.
const CREDENTIAL_LIKE: usize = bunq_protocol::redact::CREDENTIAL_LIKE;
const MASK: &[u8] = b"[redacted]";

/// The body a dead letter may keep, and how its credential was handled.
pub fn protect(
    body: Vec<u8>,
    sealer: Option<&Sealer>,
    message_id: Option<&str>,
    max_bytes: usize,
) -> (Vec<u8>, Credential) {
    let provision_id = event::decode(&body, max_bytes).ok().map(|p| p.id);
    match provision_id {
        Some(id) => protect_token(body, sealer, id, message_id),
        None => match sealer {
            Some(sealer) => {
                let sealed = sealer.seal_bytes(body_context(&body_owner(message_id)), &body);
                (
                    serde_json::to_vec(&serde_json::json!({ "sealed_body": sealed })).expect("JSON"),
                    Credential::SealedBody,
                )
            }
            None => (mask_credential_like(&body), Credential::Redacted),
        },
    }
}

/// Restores the body the worker received, for a replay.
pub fn restore(
    body: &[u8],
    credential: Credential,
    sealer: Option<&Sealer>,
    message_id: Option<&str>,
    max_bytes: usize,
) -> Result<Vec<u8>, RestoreError> {
    match credential {
        Credential::Absent => Ok(body.to_vec()),
        Credential::Removed | Credential::Redacted => Err(RestoreError::NotReplayable),
        Credential::SealedBody => {
            let sealer = sealer.ok_or(RestoreError::NoKey)?;
            let wrapped: Value = serde_json::from_slice(body).map_err(|_| RestoreError::Shape)?;
            let sealed = wrapped.get("sealed_body").and_then(Value::as_str).ok_or(RestoreError::Shape)?;
            sealer.open_bytes(body_context(&body_owner(message_id)), sealed).map_err(RestoreError::Unseal)
        }
        Credential::Sealed => {
            let sealer = sealer.ok_or(RestoreError::NoKey)?;
            let id = event::decode(body, max_bytes).map_err(|_| RestoreError::Shape)?.id;
            let mut value: Value = serde_json::from_slice(body).map_err(|_| RestoreError::Shape)?;
            let token = token_slot(&mut value).ok_or(RestoreError::Shape)?;
            let sealed = token.as_str().ok_or(RestoreError::Shape)?;
            let owner = token_owner(id, message_id);
            let plain =
                sealer.open(Context { owner: &owner, field: "token_value" }, sealed).map_err(RestoreError::Unseal)?;
            *token = Value::String(plain);
            Ok(serde_json::to_vec(&value).expect("JSON"))
        }
    }
}

fn protect_token(body: Vec<u8>, sealer: Option<&Sealer>, id: u64, message_id: Option<&str>) -> (Vec<u8>, Credential) {
    let Ok(mut value) = serde_json::from_slice::<Value>(&body) else {
        return (mask_credential_like(&body), Credential::Redacted);
    };
    let Some(token) = token_slot(&mut value) else { return (body, Credential::Absent) };
    let Some(plain) = token.as_str().map(str::to_owned) else { return (body, Credential::Absent) };
    let credential = match sealer {
        Some(sealer) => {
            let owner = token_owner(id, message_id);
            *token = Value::String(sealer.seal(Context { owner: &owner, field: "token_value" }, &plain));
            Credential::Sealed
        }
        None => {
            *token = Value::Null;
            Credential::Removed
        }
    };
    (serde_json::to_vec(&value).expect("JSON"), credential)
}

/// `credential.token_value` of either accepted shape.
fn token_slot(value: &mut Value) -> Option<&mut Value> {
    let provision = if value.get("NotificationUrl").is_some() {
        value.get_mut("NotificationUrl")?.get_mut("object")?.get_mut("PartnerUserProvision")?
    } else {
        value.get_mut("PartnerUserProvision")?
    };
    provision.get_mut("credential")?.get_mut("token_value").filter(|t| !t.is_null())
}

fn token_owner(provision_id: u64, message_id: Option<&str>) -> String {
    format!("dead-letter:provision:{provision_id}:message:{}", message_id.unwrap_or("-"))
}

fn body_owner(message_id: Option<&str>) -> String {
    format!("dead-letter:message:{}", message_id.unwrap_or("-"))
}

fn body_context(owner: &str) -> Context<'_> {
    Context { owner, field: "body" }
}

/// Masks every run of credential-like bytes; the rest stays, so an operator still sees
/// what was wrong with the body.
fn mask_credential_like(body: &[u8]) -> Vec<u8> {
    let token = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'/' | b'=');
    let mut out = Vec::with_capacity(body.len());
    let mut start = 0;
    while start < body.len() {
        let run = body[start..].iter().take_while(|b| token(b)).count();
        if run == 0 {
            out.push(body[start]);
            start += 1;
        } else {
            out.extend_from_slice(if run >= CREDENTIAL_LIKE { MASK } else { &body[start..start + run] });
            start += run;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "a0239a79f981bd6d0123456789abcdef0123456789abcdef0123456789abcdef";

    fn sealer() -> Sealer {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        Sealer::new(&key)
    }

    fn ready(webhook: bool) -> Vec<u8> {
        let object = format!(
            r#"{{"PartnerUserProvision":{{"id":7,"status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING","credential":{{"id":9,"token_value":"{TOKEN}"}}}}}}"#
        );
        if webhook {
            format!(r#"{{"NotificationUrl":{{"category":"PARTNER_USER_PROVISION","object":{object}}}}}"#).into_bytes()
        } else {
            object.into_bytes()
        }
    }

    #[test]
    fn a_provisions_token_is_sealed_in_place_and_restored_for_replay() {
        let sealer = sealer();
        for webhook in [false, true] {
            let (kept, credential) = protect(ready(webhook), Some(&sealer), Some("m-1"), 1 << 20);
            assert_eq!(credential, Credential::Sealed);
            assert!(!String::from_utf8_lossy(&kept).contains(&TOKEN[..24]));
            assert_eq!(event::decode(&kept, 1 << 20).unwrap().id, 7, "still a provision");
            let restored = restore(&kept, credential, Some(&sealer), Some("m-1"), 1 << 20).unwrap();
            let token = event::decode(&restored, 1 << 20).unwrap().credential.unwrap().token_value.unwrap();
            assert_eq!(secrecy::ExposeSecret::expose_secret(&token), TOKEN);
            // Bound to the message: another message id cannot unseal it.
            assert!(matches!(
                restore(&kept, credential, Some(&sealer), Some("m-2"), 1 << 20),
                Err(RestoreError::Unseal(_))
            ));
        }
    }

    #[test]
    fn without_a_key_the_token_is_removed_and_replay_refused() {
        let (kept, credential) = protect(ready(true), None, Some("m-1"), 1 << 20);
        assert_eq!(credential, Credential::Removed);
        assert!(!String::from_utf8_lossy(&kept).contains(&TOKEN[..24]));
        assert!(matches!(restore(&kept, credential, None, Some("m-1"), 1 << 20), Err(RestoreError::NotReplayable)));
    }

    #[test]
    fn an_undecodable_body_is_sealed_whole_or_masked() {
        let double_encoded = serde_json::to_vec(&String::from_utf8(ready(true)).unwrap()).unwrap();
        let mut broken = double_encoded.clone();
        broken.extend_from_slice(&[0xff, 0x00]);
        let sealer = sealer();
        for body in [double_encoded, broken] {
            let (kept, credential) = protect(body.clone(), Some(&sealer), None, 1 << 20);
            assert_eq!(credential, Credential::SealedBody);
            assert!(!String::from_utf8_lossy(&kept).contains(&TOKEN[..24]));
            assert_eq!(restore(&kept, credential, Some(&sealer), None, 1 << 20).unwrap(), body);

            let (kept, credential) = protect(body, None, None, 1 << 20);
            assert_eq!(credential, Credential::Redacted);
            let text = String::from_utf8_lossy(&kept);
            assert!(!text.contains(&TOKEN[..24]) && text.contains("[redacted]"), "{text}");
            assert!(text.contains("PartnerUserProvision"), "the shape stays readable: {text}");
        }
    }

    #[test]
    fn a_provision_without_a_token_is_kept_as_is() {
        let body = br#"{"PartnerUserProvision":{"id":7,"status":"CREATED","sub_status":"X","credential":{"token_value":null}}}"#;
        let (kept, credential) = protect(body.to_vec(), Some(&sealer()), None, 1 << 20);
        assert_eq!((kept.as_slice(), credential), (body.as_slice(), Credential::Absent));
    }
}
