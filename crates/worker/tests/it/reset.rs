//! Token resets (`CREDENTIAL_RESET=on`) against the stand-in playing the partner: a
//! provision whose credential expired gets a new token on the partner's session and its
//! session with it; a cancelled provision's reset is refused and dead-lettered; an answer
//! lost after bunq opened the session (the token now used) gets a fresh token too.

use crate::helpers::*;
use bunq_session_worker::amqp::headers;
use fake_bunq::{EndpointMatch, FakeConfig, FaultAction, FaultRule, Faults, Trigger};
use std::time::Duration;
use test_support::{expiry_in, random_id, random_token, ready_body_with, relaxed_fake};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(30);
const PARTNER_KEY: &str = "sandbox_partner_0123456789abcdef0123456789abcdef0123456789abcdef";

/// The stand-in with the partner's key and a quick reset; the worker with resets on.
struct Partnered {
    app: TestApp,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn partnered(fake: FakeConfig) -> Partnered {
    let (key_dir, key) = key_file();
    let partner_dir = tempfile::tempdir().unwrap();
    let partner_key = partner_dir.path().join("partner.key");
    std::fs::write(&partner_key, format!("{PARTNER_KEY}\n")).unwrap();
    let fake = FakeConfig {
        partner_api_key: Some(PARTNER_KEY.to_owned()),
        token_reset_delay: Duration::from_millis(400),
        ..fake
    };
    let flags = vec![
        "--credential-reset=on".to_owned(),
        format!("--bunq-partner-api-key-file={}", partner_key.display()),
        format!("--session-encryption-key-file={key}"),
    ];
    let app = spawn_app_with(AppOptions { fake, flags, ..AppOptions::default() }).await;
    Partnered { app, _dirs: (key_dir, partner_dir) }
}

/// A ready provision's event carrying `token` (bunq's credential `credential_id`),
/// expiring `seconds` from now.
fn ready(id: u64, credential_id: u64, token: &str, seconds: i64) -> Vec<u8> {
    ready_body_with(id, credential_id, token, &expiry_in(time::Duration::seconds(seconds)))
}

#[tokio::test]
async fn an_expired_credential_gets_a_new_token_on_the_partner_session_and_its_session() {
    let Partnered { app, _dirs } = partnered(relaxed_fake()).await;
    let (id, old) = (random_id(), random_token());
    let credential =
        app.fake.register_provision(id, &old, OffsetDateTime::now_utc() - time::Duration::minutes(1)).unwrap();
    app.publish(&ready(id, credential, &old, -60)).await;

    let (event, _) = app.next_event(WAIT).await.expect("the session, after a reset");
    assert_eq!(event.provision_id, id);
    let new = app.fake.current_token(id).expect("the provision's new token");
    assert_ne!(new, old);
    assert_eq!(app.fake.token_resets(id), 1, "one reset");
    assert_eq!(app.fake.sessions_created_for(&new), 1, "the session opened with the new token");
    assert_eq!(app.fake.sessions_created_for(&old), 0, "never with the expired one");
    let stats = app.fake.stats();
    assert_eq!((stats.refused_superseded_tokens, stats.refused_expired_tokens), (0, 0));
    let metrics = app.metrics_with("credential_resets_total{outcome=\"token_received\"} 1", WAIT).await;
    assert!(metrics.contains("credential_resets_total{outcome=\"requested\"} 1"), "{metrics}");
    assert!(!metrics.contains(PARTNER_KEY) && !metrics.contains(&new));
    app.teardown().await;
}

/// The event says the credential has a minute left, bunq that it expired (it lapsed
/// between the budget's check and the handshake, or the clocks disagree): bunq refuses
/// it at device-server, the first call that sends it, and a new token helps there too.
#[tokio::test]
async fn a_credential_bunq_refuses_at_device_server_gets_a_new_token_not_a_dead_letter() {
    let Partnered { app, _dirs } = partnered(relaxed_fake()).await;
    let (id, old) = (random_id(), random_token());
    let credential =
        app.fake.register_provision(id, &old, OffsetDateTime::now_utc() - time::Duration::seconds(1)).unwrap();
    app.publish(&ready(id, credential, &old, 60)).await;

    let (event, _) = app.next_event(WAIT).await.expect("the session, after a reset");
    assert_eq!(event.provision_id, id);
    assert_eq!(app.fake.stats().refused_expired_tokens, 1, "bunq refused the old token once");
    let new = app.fake.current_token(id).expect("the provision's new token");
    assert_eq!(app.fake.token_resets(id), 1, "one reset");
    assert_eq!(app.fake.sessions_created_for(&new), 1, "the session opened with the new token");
    assert!(app.next_dead_letter(Duration::from_secs(1)).await.is_none(), "no dead letter");
    app.teardown().await;
}

#[tokio::test]
async fn a_cancelled_provisions_reset_is_refused_and_dead_lettered_with_what_bunq_said() {
    let Partnered { app, _dirs } = partnered(relaxed_fake()).await;
    let (id, old) = (random_id(), random_token());
    let credential =
        app.fake.register_provision(id, &old, OffsetDateTime::now_utc() - time::Duration::minutes(1)).unwrap();
    app.fake.set_provision_status(id, fake_bunq::ProvisionStatus::Cancelled).unwrap();
    app.publish(&ready(id, credential, &old, -60)).await;

    let (body, properties) = app.next_dead_letter(WAIT).await.expect("a dead letter");
    assert_eq!(header_str(&properties, headers::DEAD_LETTER_REASON).as_deref(), Some("credential_expired"));
    let detail = header_str(&properties, headers::DEAD_LETTER_DETAIL).unwrap();
    assert!(detail.contains("CANCELLED") || detail.contains("CLOSED"), "{detail}");
    assert!(!String::from_utf8_lossy(&body).contains(&old) && !detail.contains(PARTNER_KEY));
    assert_eq!(app.fake.token_resets(id), 0);
    app.metrics_with("credential_resets_total{outcome=\"refused\"} 1", WAIT).await;
    app.teardown().await;
}

#[tokio::test]
async fn an_answer_lost_after_bunq_opened_the_session_gets_a_fresh_token() {
    let lose = FaultRule {
        endpoint: EndpointMatch::SessionServer,
        action: FaultAction::LoseAnswer,
        trigger: Trigger::NextCalls(1),
    };
    // bunq does not let a used token open a second session (the case this covers).
    let fake = FakeConfig {
        allow_credential_reuse: false,
        faults: Faults { rules: vec![lose], ..Faults::default() },
        ..relaxed_fake()
    };
    let Partnered { app, _dirs } = partnered(fake).await;
    let (id, token) = (random_id(), random_token());
    let credential =
        app.fake.register_provision(id, &token, OffsetDateTime::now_utc() + time::Duration::minutes(30)).unwrap();
    app.publish(&ready(id, credential, &token, 1800)).await;

    let (event, _) = app.next_event(WAIT).await.expect("the session, after a reset");
    assert_eq!(event.provision_id, id);
    let new = app.fake.current_token(id).unwrap();
    assert_eq!(app.fake.sessions_created_for(&token), 1, "the lost answer's session, an orphan");
    assert_eq!(app.fake.sessions_created_for(&new), 1);
    assert_eq!(app.fake.token_resets(id), 1);
    assert!(app.next_event(Duration::from_secs(2)).await.is_none(), "announced once");
    app.teardown().await;
}

#[tokio::test]
async fn the_new_token_relayed_by_the_partner_and_the_workers_own_read_open_one_session() {
    // bunq takes 3 s to prepare the new token: time for the partner's relay to forward it.
    let fake = FakeConfig { token_reset_delay: Duration::from_secs(3), ..relaxed_fake() };
    let Partnered { app, _dirs } = partnered(fake).await;
    let (id, old) = (random_id(), random_token());
    let credential =
        app.fake.register_provision(id, &old, OffsetDateTime::now_utc() - time::Duration::minutes(1)).unwrap();
    app.publish(&ready(id, credential, &old, -60)).await;
    // The reset is requested; once bunq has the new token, the partner's webhook relay
    // forwards the provision carrying it, while the worker reads it too.
    let deadline = std::time::Instant::now() + WAIT;
    let (new_id, new) = loop {
        if let (1, Some(new_id), Some(new)) =
            (app.fake.token_resets(id), app.fake.current_credential_id(id), app.fake.current_token(id))
        {
            break (new_id, new);
        }
        assert!(std::time::Instant::now() < deadline, "no new token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.publish(&ready(id, new_id, &new, 3600)).await;

    let (event, _) = app.next_event(WAIT).await.expect("the session");
    assert_eq!(event.provision_id, id);
    // The other delivery, whichever came second, announces the same session or nothing.
    if let Some((again, _)) = app.next_event(Duration::from_secs(5)).await {
        assert_eq!(again.session_id, event.session_id, "one session");
    }
    assert_eq!(app.fake.sessions_created_for(&new), 1, "one session with the new token");
    assert_eq!(app.fake.token_resets(id), 1, "one reset");
    app.teardown().await;
}
