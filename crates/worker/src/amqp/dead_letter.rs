//! What a dead letter may keep. The dead-letter queue is a store without expiry of
//! messages nobody is processing; a provision's `token_value` is the user's API key, live
//! for hours and, after device-server, bound to a device. So no dead letter keeps it in
//! the clear, whatever shape the body has. Decided from the delivery's one reading
//! (`provision::decode`), never from a second parse:
//!
//! - a body that decoded as a provision with a credential: every string in it equal to
//!   the credential's value (wherever it stands: `token_value`, an unknown field, a
//!   name) is sealed with an encryption key, bound to the provision and the message, and
//!   `dead-letters replay` unseals them; without a key each is removed (`null`, or
//!   `[redacted]` for a name), and a replay needs a fresh event;
//! - a body that did not decode may hold a credential anywhere: every string that could
//!   be one (compared after JSON unescaping) is found; with a key the body is sealed whole,
//!   without one each such string is masked, and what cannot be a credential (an
//!   upper-case identifier, a run of one character, a number, a UUID) is kept, so an
//!   operator still reads what came in; a body over the size limit is only masked, so it
//!   is never stored larger than it came;
//! - a body in which nothing is or could be a credential is kept as it came, byte for byte.
//!
//! The `x-credential` header says which happened.

use crate::provision::decode::{DecodeError, Decoded, Read};
use crate::provision::document::Json;
use crate::seal::{Context, Sealer};
use bunq_protocol::redact::{CREDENTIAL_LIKE, MASK};
use secrecy::ExposeSecret;

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
}

/// Why a dead letter's body could not be restored for a replay.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("its credential was removed (no encryption key when it was dead-lettered): publish a fresh event")]
    NotReplayable,
    #[error("it is sealed, and no SESSION_ENCRYPTION_KEY_FILE is configured")]
    NoKey,
    #[error("cannot unseal it: {0}")]
    Unseal(crate::seal::SealError),
    #[error("its sealed body is not what the worker wrote")]
    Shape,
}

/// What a dead letter keeps of a provision event's body, read as the consumer reads it:
/// for the CLI's checks, the fuzz target and the property tests.
pub fn protect_body(
    body: Vec<u8>,
    max_bytes: usize,
    sealer: Option<&Sealer>,
    message_id: Option<&str>,
) -> (Vec<u8>, Credential) {
    let decoded = crate::provision::decode::read(&body, max_bytes, crate::provision::decode::Contract::Provision);
    protect(body, &decoded, sealer, message_id)
}

/// The body a dead letter may keep, and how its credential was handled.
pub(crate) fn protect(
    body: Vec<u8>,
    decoded: &Decoded,
    sealer: Option<&Sealer>,
    message_id: Option<&str>,
) -> (Vec<u8>, Credential) {
    // The body as it came may hold the credential: wiped unless it is what is kept.
    let mut body = zeroize::Zeroizing::new(body);
    if let (Some(token), Some(id), Some(document)) = (decoded.credential(), decoded.provision_id(), &decoded.document) {
        let token = token.expose_secret();
        let mut kept = document.clone();
        let (replacement, credential) = match sealer {
            Some(sealer) => {
                let owner = token_owner(id, message_id);
                let sealed = sealer.seal(Context { owner: &owner, field: "token_value" }, token);
                (Json::String(sealed), Credential::Sealed)
            }
            None => (Json::Null, Credential::Removed),
        };
        kept.rewrite_strings(&mut |s| (s == token).then(|| replacement.clone()));
        return (kept.to_vec(), credential);
    }
    if let Read::Provision(_) = decoded.read {
        // Decoded, and no credential where the contract puts one (names given twice are
        // refused by the decoder, so there is no other value it could have read).
        return (std::mem::take(&mut *body), Credential::Absent);
    }
    let too_large = matches!(decoded.read, Read::Malformed(DecodeError::TooLarge { .. }));
    let masked = match &decoded.document {
        Some(document) => {
            let mut kept = document.clone();
            let masked = kept.rewrite_strings(&mut |s| mask_runs(s).map(Json::String));
            (masked > 0).then(|| kept.to_vec())
        }
        None => mask_raw(&body),
    };
    let Some(masked) = masked else { return (std::mem::take(&mut *body), Credential::Absent) };
    match sealer {
        // Sealing whole keeps the body restorable, but makes it larger: not for a body
        // already over the limit.
        Some(sealer) if !too_large => {
            let sealed = sealer.seal_bytes(body_context(&body_owner(message_id)), &body);
            (serde_json::to_vec(&serde_json::json!({ "sealed_body": sealed })).expect("JSON"), Credential::SealedBody)
        }
        _ => (masked, Credential::Redacted),
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
            let wrapped: serde_json::Value = serde_json::from_slice(body).map_err(|_| RestoreError::Shape)?;
            let sealed = wrapped.get("sealed_body").and_then(serde_json::Value::as_str).ok_or(RestoreError::Shape)?;
            sealer.open_bytes(body_context(&body_owner(message_id)), sealed).map_err(RestoreError::Unseal)
        }
        Credential::Sealed => {
            let sealer = sealer.ok_or(RestoreError::NoKey)?;
            let decoded =
                crate::provision::decode::read(body, max_bytes, crate::provision::decode::Contract::Provision);
            let (Some(id), Some(mut document)) = (decoded.provision_id(), decoded.document) else {
                return Err(RestoreError::Shape);
            };
            let owner = token_owner(id, message_id);
            let context = Context { owner: &owner, field: "token_value" };
            let mut failed = None;
            let opened = document.rewrite_strings(&mut |s| {
                if !crate::seal::is_sealed(s) {
                    return None;
                }
                match sealer.open(context, s) {
                    Ok(plain) => Some(Json::String(plain)),
                    Err(e) => {
                        failed.get_or_insert(e);
                        None
                    }
                }
            });
            match (opened, failed) {
                (0, Some(e)) => Err(RestoreError::Unseal(e)),
                (0, None) => Err(RestoreError::Shape),
                _ => Ok(document.to_vec()),
            }
        }
    }
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

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '=')
}

/// Whether a run of token characters could be a credential: as long as one, and not
/// plainly something else.
fn could_be_credential(run: &str) -> bool {
    run.len() >= CREDENTIAL_LIKE && !plainly_not_a_credential(run)
}

/// `text` (unescaped) with every run of token characters that could be a credential
/// masked, the rest kept so an operator still reads it; `None` when there is none.
fn mask_runs(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut masked = false;
    let mut run_start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (is_token_char(c) && i < text.len(), run_start) {
            (true, None) => run_start = Some(i),
            (true, Some(_)) => {}
            (false, start) => {
                if let Some(start) = start {
                    let run = &text[start..i];
                    let credential = could_be_credential(run);
                    masked |= credential;
                    out.push_str(if credential { MASK } else { run });
                    run_start = None;
                }
                if i < text.len() {
                    out.push(c);
                }
            }
        }
    }
    masked.then_some(out)
}

/// An upper-case identifier (`PARTNER_USER_PROVISION_PROCESS_UPDATED`), a run of one
/// character, a number, or a UUID (whole or cut short): no credential bunq issues looks
/// like these.
fn plainly_not_a_credential(run: &str) -> bool {
    let bytes = run.as_bytes();
    let identifier = run.contains('_')
        && !run.starts_with('_')
        && !run.ends_with('_')
        && !run.contains("__")
        && bytes.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
    let one_character = bytes.iter().all(|b| *b == bytes[0]);
    let number = run.strip_prefix(['-', '+']).unwrap_or(run).bytes().all(|b| b.is_ascii_digit());
    // A UUID, or one cut short: hex with dashes at its places.
    let uuid = run.len() <= 36
        && run.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    identifier || one_character || number || uuid
}

/// Masks, in a body that is not JSON (or not whole), every run that could be a
/// credential: in string literals read after JSON unescaping (to the literal's end or the
/// body's), and among bare characters; `None` when there is nothing to mask.
fn mask_raw(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut masked = false;
    let mut at = 0;
    while at < body.len() {
        if body[at] == b'"' {
            let (end, text, closed) = string_literal(body, at + 1);
            match mask_runs(&text) {
                Some(kept) => {
                    let literal = serde_json::to_string(&kept).expect("a string serialises");
                    // A literal the body cut short stays open.
                    out.extend_from_slice(if closed {
                        literal.as_bytes()
                    } else {
                        &literal.as_bytes()[..literal.len() - 1]
                    });
                    masked = true;
                }
                None => out.extend_from_slice(&body[at..end]),
            }
            at = end;
            continue;
        }
        let run = body[at..].iter().take_while(|b| is_token_char(char::from(**b))).count();
        if run == 0 {
            out.push(body[at]);
            at += 1;
            continue;
        }
        let text = std::str::from_utf8(&body[at..at + run]).expect("ASCII");
        if could_be_credential(text) {
            out.extend_from_slice(MASK.as_bytes());
            masked = true;
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        at += run;
    }
    masked.then_some(out)
}

/// The literal starting after its opening quote at `from`: where it ends (past its
/// closing quote, or the body's end), its text with JSON escapes resolved (bytes that
/// are not UTF-8 read as U+FFFD, which breaks a run as any other non-token character),
/// and whether it was closed.
fn string_literal(body: &[u8], from: usize) -> (usize, String, bool) {
    let mut text = Vec::new();
    let mut at = from;
    while at < body.len() {
        match body[at] {
            b'"' => return (at + 1, String::from_utf8_lossy(&text).into_owned(), true),
            b'\\' if at + 1 < body.len() => {
                let escaped = body[at + 1];
                at += 2;
                match escaped {
                    b'u' => {
                        let (c, used) = unicode_escape(&body[at..]);
                        let mut buf = [0u8; 4];
                        text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        at += used;
                    }
                    b'n' => text.push(b'\n'),
                    b't' => text.push(b'\t'),
                    b'r' => text.push(b'\r'),
                    b'b' | b'f' => text.push(b' '),
                    other => text.push(other),
                }
            }
            other => {
                text.push(other);
                at += 1;
            }
        }
    }
    (at.min(body.len()), String::from_utf8_lossy(&text).into_owned(), false)
}

/// `XXXX` after `\u`, with a following `\uXXXX` low surrogate: the character and the
/// bytes used; anything malformed reads as U+FFFD.
fn unicode_escape(rest: &[u8]) -> (char, usize) {
    let hex = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| u16::from_str_radix(s, 16).ok());
    let Some(high) = rest.get(..4).and_then(hex) else { return (char::REPLACEMENT_CHARACTER, 0) };
    if (0xD800..0xDC00).contains(&high) {
        if let Some(low) = rest.get(4..6).filter(|p| *p == b"\\u").and_then(|_| rest.get(6..10)).and_then(hex) {
            let c = char::decode_utf16([high, low]).next().and_then(Result::ok);
            return (c.unwrap_or(char::REPLACEMENT_CHARACTER), 10);
        }
    }
    (char::from_u32(u32::from(high)).unwrap_or(char::REPLACEMENT_CHARACTER), 4)
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

    fn protect(body: Vec<u8>, sealer: Option<&Sealer>, message_id: Option<&str>, max: usize) -> (Vec<u8>, Credential) {
        protect_body(body, max, sealer, message_id)
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
            assert_eq!(crate::provision::decode::decode(&kept, 1 << 20).unwrap().id, 7, "still a provision");
            let restored = restore(&kept, credential, Some(&sealer), Some("m-1"), 1 << 20).unwrap();
            let token =
                crate::provision::decode::decode(&restored, 1 << 20).unwrap().credential.unwrap().token_value.unwrap();
            assert_eq!(ExposeSecret::expose_secret(&token), TOKEN);
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
