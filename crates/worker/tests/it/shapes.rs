//! The credential shapes a relay in front of the worker produces, through the real worker
//! with and without an encryption key: each ends with the right reason, and no dead
//! letter, retry copy or header holds the credential, raw or after JSON unescaping.

use crate::helpers::*;
use bunq_session_worker::amqp::headers;
use fake_bunq::{CredentialState, FaultAction, Faults};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use std::time::Duration;
use test_support::{expiry_in, future_expiry, random_id, random_token};

/// The provision object's inside, with `extra` fields before its credential.
fn inner(id: u64, token_json: &str, expiry: &str, extra: &str) -> String {
    format!(
        r#""PartnerUserProvision":{{"id":{id},"external_uuid":"ext-{id}","status":"CREATED","sub_status":"PENDING_PROCESS_USER_ONBOARDING"{extra},"credential":{{"id":{},"status":"PENDING_FIRST_USE","expiry_time":"{expiry}","token_value":{token_json}}}}}"#,
        id + 500
    )
}

/// Every character of `token` as a `\u` escape.
fn escaped(token: &str) -> String {
    format!("\"{}\"", token.chars().map(|c| format!("\\u{:04x}", c as u32)).collect::<String>())
}

struct Shape {
    name: &'static str,
    body: Vec<u8>,
    reason: &'static str,
    /// `x-credential` with a key and without.
    credential: (&'static str, &'static str),
}

/// The shapes of issue 17, each with a fresh provision and token.
fn shapes(app: &TestApp) -> Vec<(Shape, String)> {
    let past = expiry_in(time::Duration::minutes(-120));
    let future = future_expiry();
    let mut out = Vec::new();
    let mut add = |name, reason, credential, make: &dyn Fn(u64, &str) -> String| {
        let (id, token) = (random_id(), random_token());
        out.push((Shape { name, body: make(id, &token).into_bytes(), reason, credential }, token));
    };
    let sealed = ("sealed", "removed");
    add("null NotificationUrl first", "credential_expired", sealed, &|id, t| {
        format!(r#"{{"NotificationUrl":null,{}}}"#, inner(id, &format!("\"{t}\""), &past, ""))
    });
    add("null NotificationUrl last", "credential_expired", sealed, &|id, t| {
        format!(r#"{{{},"NotificationUrl":null}}"#, inner(id, &format!("\"{t}\""), &past, ""))
    });
    add("token under unknown fields", "credential_expired", sealed, &|id, t| {
        let extra = format!(r#","note":"{t}","token_value_previous":"{t}""#);
        format!("{{{}}}", inner(id, &format!("\"{t}\""), &past, &extra))
    });
    add("token as \\u escapes, decodable", "credential_expired", sealed, &|id, t| {
        format!(r#"{{"NotificationUrl":null,{}}}"#, inner(id, &escaped(t), &past, ""))
    });
    add("token as \\u escapes, not decodable", "malformed", ("sealed-body", "redacted"), &|id, t| {
        format!("{{{}}}", inner(id, &escaped(t), &past, "").replacen(&format!(r#""id":{id}"#), r#""id":"seven""#, 1))
    });
    // Revoked at bunq, in the null-NotificationUrl shape.
    let (id, token) = (random_id(), random_token());
    app.fake.register_credential(&token, CredentialState::Rejected);
    let body = format!(r#"{{"NotificationUrl":null,{}}}"#, inner(id, &format!("\"{token}\""), &future, ""));
    out.push((
        Shape {
            name: "revoked, null NotificationUrl",
            body: body.into_bytes(),
            reason: "rejected_by_bunq",
            credential: sealed,
        },
        token,
    ));
    out
}

/// Every JSON escape resolved wherever it stands: what a reader that unescapes sees.
fn unescaped(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 2..at + 6).unwrap_or("");
        match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
            Some(c) => {
                out.push(c);
                rest = &rest[(at + 6).min(rest.len())..];
            }
            None => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn assert_clean(what: &str, text: &[u8], token: &str) {
    let plain = String::from_utf8_lossy(text);
    assert!(!plain.contains(token) && !plain.contains(&token[..16]), "{what}: the credential in the clear");
    assert!(!unescaped(text).contains(token), "{what}: the credential after JSON unescaping");
}

async fn run(with_key: bool) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("session.key");
    std::fs::write(&key_path, hex::encode(std::array::from_fn::<u8, 32, _>(|_| rand::random()))).unwrap();
    let flags = match with_key {
        true => vec![format!("--session-encryption-key-file={}", key_path.display())],
        false => vec![],
    };
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    let shapes = shapes(&app);
    for (shape, _) in &shapes {
        app.publish(&shape.body).await;
    }
    for _ in &shapes {
        let (body, properties) = app.next_dead_letter(WAIT).await.expect("a dead letter per shape");
        let reason = header_str(&properties, headers::DEAD_LETTER_REASON).unwrap();
        let (shape, token) = shapes
            .iter()
            .find(|(_, token)| body_names(&body, token, &shapes))
            .unwrap_or_else(|| panic!("a dead letter matching no input ({reason})"));
        assert_eq!(reason, shape.reason, "{}", shape.name);
        let expected = if with_key { shape.credential.0 } else { shape.credential.1 };
        assert_eq!(header_str(&properties, headers::CREDENTIAL).as_deref(), Some(expected), "{}", shape.name);
        assert_clean(shape.name, &body, token);
        assert_clean(shape.name, format!("{properties:?}").as_bytes(), token);
    }
    app.teardown().await;
}

/// Whether `body` (a dead letter) is the one of the input carrying `token`: inputs are
/// told apart by their `ext-{id}`, which every shape keeps readable, except the one sealed
/// whole, which is then the only sealed-body one.
fn body_names(body: &[u8], token: &str, shapes: &[(Shape, String)]) -> bool {
    let (shape, _) = shapes.iter().find(|(_, t)| t == token).unwrap();
    let id_marker = String::from_utf8_lossy(&shape.body)
        .split("\"external_uuid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned)
        .unwrap();
    let text = String::from_utf8_lossy(body);
    text.contains(&format!("\"{id_marker}\"")) || (text.contains("sealed_body") && shape.reason == "malformed")
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn named_credential_shapes_without_a_key_keep_no_credential() {
    run(false).await;
}

#[tokio::test]
async fn named_credential_shapes_with_a_key_keep_no_credential() {
    run(true).await;
}

/// Retry copies hold the body as it came (it must be retried as it came), so they never
/// leave the worker's queues; their headers, which operators read, name no credential.
#[tokio::test]
async fn retry_copies_carry_no_credential_in_their_headers() {
    let app = spawn_app().await;
    app.fake.set_faults(Faults::always(FaultAction::Http500Html));
    let token = random_token();
    let body =
        format!(r#"{{"NotificationUrl":null,{}}}"#, inner(random_id(), &format!("\"{token}\""), &future_expiry(), ""));
    app.publish(body.as_bytes()).await;
    let deadline = std::time::Instant::now() + WAIT;
    let copy = loop {
        let got = app
            .channel()
            .basic_get(app.names.retry_queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        if let Some(message) = got {
            let copy = (message.delivery.data.clone(), message.delivery.properties.clone());
            message.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
            break copy;
        }
        assert!(std::time::Instant::now() < deadline, "no retry copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(copy.0, body.as_bytes(), "a retry copy is the body as it came");
    assert!(header_str(&copy.1, headers::RETRY_REASON).is_some());
    assert_clean("retry headers", format!("{:?}", copy.1).as_bytes(), &token);
    app.fake.set_faults(Faults::default());
    app.teardown().await;
}
