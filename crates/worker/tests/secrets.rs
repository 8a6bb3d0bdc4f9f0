//! Properties over every body shape the decoder accepts or refuses: what a dead letter
//! keeps never holds the credential, raw or after JSON unescaping, with or without an
//! encryption key; a body that decodes without a credential is kept byte for byte, and
//! one that does not is at most masked where a run could be one; no decode error
//! (the dead letter's detail, the log line) quotes it. The expected result comes from
//! what the generator put in, never from the worker's functions.

use bunq_protocol::redact::{is_clean, MASK};
use bunq_session_worker::amqp::dead_letter::{self, Credential};
use bunq_session_worker::provision::decode;
use bunq_session_worker::seal::Sealer;
use proptest::prelude::*;

/// A body, the credential it carries (if any), and the decode limit.
#[derive(Clone)]
struct Case {
    body: Vec<u8>,
    token: Option<String>,
    max_bytes: usize,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("token", &self.token)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        // bunq's shape: 64 lower-case hex characters.
        "[0-9a-f]{64}",
        // An API key or sandbox key of another alphabet.
        "[A-Za-z0-9]{32,72}",
    ]
}

/// The token as a JSON string literal, some of its characters written as `\u` escapes.
fn literal(token: &str, escaped: &[bool]) -> String {
    let mut out = String::from("\"");
    for (i, c) in token.chars().enumerate() {
        if escaped.get(i).copied().unwrap_or(false) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Where else the credential appears, besides `credential.token_value`.
#[derive(Debug, Clone, Copy)]
enum Copy {
    None,
    UnknownField,
    Nested,
    Name,
    InArray,
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Bare,
    Webhook,
    /// `"NotificationUrl": null` beside a bare provision, first or last.
    NullNotificationFirst,
    NullNotificationLast,
    /// Both shapes at once: refused as ambiguous.
    Both,
    /// The whole body as a JSON string.
    DoubleEncoded,
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    /// `token_value` given twice, the credential first or last.
    DuplicateTokenFirst,
    DuplicateTokenLast,
    /// A byte that is not UTF-8 somewhere in the body.
    InvalidUtf8 {
        at: usize,
    },
    /// Cut short.
    Truncated {
        at: usize,
    },
    /// The schema broken: `id` a string.
    WrongType,
    /// Nested deeper than the decoder reads.
    TooDeep,
    /// Over the size limit.
    TooLarge,
}

#[allow(clippy::too_many_arguments)]
fn build(
    token: Option<&str>,
    escaped: &[bool],
    copy: Copy,
    shape: Shape,
    damage: Damage,
    nulls: bool,
    id: u32,
) -> Case {
    let value = match token {
        Some(t) => literal(t, escaped),
        None if nulls => "null".to_owned(),
        None => String::new(),
    };
    let token_field = match (damage, value.is_empty()) {
        (_, true) => String::new(),
        (Damage::DuplicateTokenFirst, _) => format!(r#","token_value":{value},"token_value":null"#),
        (Damage::DuplicateTokenLast, _) => format!(r#","token_value":null,"token_value":{value}"#),
        _ => format!(r#","token_value":{value}"#),
    };
    let expiry = if nulls { "null" } else { r#""2030-01-01 00:00:00.000000""# };
    let extra = match (copy, token) {
        (Copy::UnknownField, Some(_)) => format!(r#","note":{value},"token_value_previous":{value}"#),
        (Copy::Nested, Some(_)) => format!(r#","label_user":{{"meta":[{{"deep":{{"x":{value}}}}}]}}"#),
        (Copy::Name, Some(_)) => format!(r#",{value}:1"#),
        (Copy::InArray, Some(_)) => format!(r#","history":[1,{value},null]"#),
        _ => String::new(),
    };
    let id_json = if matches!(damage, Damage::WrongType) { format!(r#""{id}""#) } else { id.to_string() };
    let uuid = if nulls { "null".to_owned() } else { r#""f8b69bdd-8f0c-4c55-9d7b-6a8f1f0e3c21""#.to_owned() };
    let provision = format!(
        r#"{{"PartnerUserProvision":{{"id":{id_json},"external_uuid":{uuid},"status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING"{extra},"credential":{{"id":9,"status":"PENDING_FIRST_USE","expiry_time":{expiry}{token_field}}}}}}}"#
    );
    let inner = &provision[1..provision.len() - 1];
    let notification = r#""NotificationUrl":{"target_url":"https://x","category":"PARTNER_USER_PROVISION","event_type":"PARTNER_USER_PROVISION_PROCESS_UPDATED","object":"#;
    let mut body = match shape {
        Shape::Bare => provision.clone(),
        Shape::Webhook => format!("{{{notification}{provision}}}}}"),
        Shape::NullNotificationFirst => format!(r#"{{"NotificationUrl":null,{inner}}}"#),
        Shape::NullNotificationLast => format!(r#"{{{inner},"NotificationUrl":null}}"#),
        Shape::Both => format!("{{{notification}{provision}}},{inner}}}"),
        Shape::DoubleEncoded => serde_json::to_string(&provision).unwrap(),
    }
    .into_bytes();
    let mut max_bytes = 1 << 20;
    match damage {
        Damage::InvalidUtf8 { at } => {
            let at = at % (body.len() + 1);
            body.insert(at, 0xff);
        }
        Damage::Truncated { at } => body.truncate(at % body.len().max(1)),
        Damage::TooDeep => {
            let open = body.iter().position(|b| *b == b'{').map_or(0, |p| p + 1);
            let deep = format!(r#""deep":{}1{},"#, "[".repeat(200), "]".repeat(200));
            body.splice(open..open, deep.into_bytes());
        }
        Damage::TooLarge => max_bytes = body.len() - 1,
        _ => {}
    }
    Case { body, token: token.map(str::to_owned), max_bytes }
}

fn case() -> impl Strategy<Value = Case> {
    let copy = prop_oneof![
        Just(Copy::None),
        Just(Copy::UnknownField),
        Just(Copy::Nested),
        Just(Copy::Name),
        Just(Copy::InArray)
    ];
    let shape = prop_oneof![
        Just(Shape::Bare),
        Just(Shape::Webhook),
        Just(Shape::NullNotificationFirst),
        Just(Shape::NullNotificationLast),
        Just(Shape::Both),
        Just(Shape::DoubleEncoded),
    ];
    let damage = prop_oneof![
        4 => Just(Damage::None),
        1 => Just(Damage::DuplicateTokenFirst),
        1 => Just(Damage::DuplicateTokenLast),
        1 => any::<usize>().prop_map(|at| Damage::InvalidUtf8 { at }),
        1 => any::<usize>().prop_map(|at| Damage::Truncated { at }),
        1 => Just(Damage::WrongType),
        1 => Just(Damage::TooDeep),
        1 => Just(Damage::TooLarge),
    ];
    (
        proptest::option::weighted(0.85, token()),
        proptest::collection::vec(proptest::bool::weighted(0.2), 0..72),
        copy,
        shape,
        damage,
        any::<bool>(),
        1u32..1_000_000,
    )
        .prop_map(|(token, escaped, copy, shape, damage, nulls, id)| {
            build(token.as_deref(), &escaped, copy, shape, damage, nulls, id)
        })
}

/// Every JSON escape resolved, wherever it stands (also outside a string literal, and in
/// a body that is not JSON): what a reader that unescapes would see.
fn unescaped(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(c) => out.push(c),
                    None => out.push_str(&hex),
                }
            }
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// Whether `kept` is `body` with some runs of token characters (letters, digits, `_-+/=`,
/// read after unescaping) replaced by the mask, and nothing else changed.
fn only_masked(kept: &[u8], body: &[u8]) -> bool {
    let kept = unescaped(kept);
    let body = unescaped(body);
    let token_char = |c: char| c.is_ascii_alphanumeric() || "_-+/=".contains(c);
    let mut rest = body.as_str();
    for (i, piece) in kept.split(MASK).enumerate() {
        if i > 0 {
            // The masked run: at least one token character, then the piece.
            let run = rest.find(|c: char| !token_char(c)).unwrap_or(rest.len());
            if run == 0 {
                return false;
            }
            rest = &rest[run..];
        }
        let Some(after) = rest.strip_prefix(piece) else { return false };
        rest = after;
    }
    rest.is_empty()
}

fn sealer() -> Sealer {
    Sealer::new(&[0x5au8; 32])
}

fn holds(bytes: &[u8], token: &str) -> bool {
    let raw = bytes.windows(token.len()).any(|w| w == token.as_bytes());
    raw || unescaped(bytes).contains(token)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn no_dead_letter_holds_the_credential_and_a_body_without_one_is_kept_as_it_came(case in case()) {
        let key = sealer();
        let decodes = decode::decode(&case.body, case.max_bytes).is_ok();
        for sealer in [None, Some(&key)] {
            let (kept, credential) =
                dead_letter::protect_body(case.body.clone(), case.max_bytes, sealer, Some("m-1"));
            match &case.token {
                Some(token) => {
                    prop_assert!(!holds(&kept, token), "{} kept the credential: {}", credential.as_str(), String::from_utf8_lossy(&kept));
                }
                // A body that decodes without a credential is kept byte for byte. One that
                // does not decode cannot be known to hold none: it may be masked (only
                // masked) where a run could be one, or sealed whole (restored below).
                None => match credential {
                    Credential::Absent => prop_assert_eq!(&kept, &case.body, "a body without a credential changed"),
                    Credential::Redacted if !decodes => {
                        prop_assert!(only_masked(&kept, &case.body), "more than masked: {}", String::from_utf8_lossy(&kept));
                    }
                    Credential::SealedBody if !decodes && sealer.is_some() => {}
                    other => prop_assert!(false, "{} for a body without a credential", other.as_str()),
                },
            }
            // The header names what happened; its value is one of five words.
            prop_assert!(Credential::parse(credential.as_str()).is_some());
            // A replay restores what came in, where the credential was sealed.
            if let (Some(sealer), Credential::Sealed | Credential::SealedBody) = (sealer, credential) {
                let restored = dead_letter::restore(&kept, credential, Some(sealer), Some("m-1"), 1 << 20).unwrap();
                if credential == Credential::SealedBody {
                    prop_assert_eq!(&restored, &case.body);
                } else {
                    prop_assert!(holds(&restored, case.token.as_deref().unwrap()));
                }
            }
        }
        // The decode error is the dead letter's detail and the log line's text.
        if let Err(e) = decode::decode(&case.body, case.max_bytes) {
            let text = e.to_string();
            prop_assert!(is_clean(&text), "{text}");
            if let Some(token) = &case.token {
                prop_assert!(!text.contains(&token[..16]), "{text}");
            }
        }
    }
}

/// The shapes the issue names, each with and without a key: the credential never stays.
#[test]
fn the_named_shapes_keep_no_credential() {
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let escaped: Vec<bool> = (0..64).map(|i| i % 3 == 0).collect();
    let shapes = [
        build(Some(token), &[], Copy::None, Shape::NullNotificationFirst, Damage::None, false, 7),
        build(Some(token), &[], Copy::None, Shape::NullNotificationLast, Damage::None, false, 7),
        build(Some(token), &[], Copy::UnknownField, Shape::Bare, Damage::None, false, 7),
        build(Some(token), &escaped, Copy::None, Shape::Webhook, Damage::None, false, 7),
        build(Some(token), &escaped, Copy::None, Shape::Webhook, Damage::Truncated { at: 150 }, false, 7),
        build(Some(token), &[], Copy::Nested, Shape::DoubleEncoded, Damage::None, false, 7),
    ];
    for case in shapes {
        for sealer in [None, Some(&sealer())] {
            let (kept, credential) = dead_letter::protect_body(case.body.clone(), case.max_bytes, sealer, None);
            assert!(!holds(&kept, token), "{}: {}", credential.as_str(), String::from_utf8_lossy(&case.body));
        }
    }
    // What cannot be a credential is kept: an operator reads what came in.
    let body = br#"{"event_type":"PARTNER_USER_PROVISION_PROCESS_UPDATED","x":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","n":12345678901234567890123456789012345, oops"#;
    let (kept, credential) = dead_letter::protect_body(body.to_vec(), 1 << 20, None, None);
    assert_eq!((kept.as_slice(), credential), (&body[..], Credential::Absent));
}
