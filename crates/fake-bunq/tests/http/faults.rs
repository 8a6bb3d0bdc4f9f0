//! Injected faults: replaced answers, signature faults, dropped and hanging calls, and
//! seeded probabilities.

use crate::{installation_body, start, start_with_client, Client, Sign};
use fake_bunq::{EndpointMatch, FakeConfig, FaultAction, FaultRule, Faults, RateLimitScope, Trigger};
use std::time::Duration;

fn rule(endpoint: EndpointMatch, action: FaultAction, n: u32) -> FaultRule {
    FaultRule { endpoint, action, trigger: Trigger::NextCalls(n) }
}

fn with_rules(rules: Vec<FaultRule>) -> Faults {
    Faults { rules, ..Faults::default() }
}

#[tokio::test]
async fn injected_500_html_then_normal_service() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;
    let (token, server) = client.install().await;
    assert_eq!(client.device(&token, "s").await.status, 200);
    fake.set_faults(with_rules(vec![rule(EndpointMatch::SessionServer, FaultAction::Http500Html, 1)]));
    let failed = client.session(&token, "s").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.header("content-type"), Some("text/html"));
    assert!(String::from_utf8_lossy(&failed.body).contains("<html>"));
    // The fault answered before processing: no session, no rate-limit budget spent.
    assert_eq!(fake.sessions_created_for("s"), 0);
    let ok = client.session(&token, "s").await;
    assert_eq!(ok.status, 200);
    ok.assert_signed_by(&server);
    assert_eq!(fake.calls().iter().filter(|c| c.fault == Some(FaultAction::Http500Html)).count(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn status_faults_and_signature_faults() {
    let (fake, client) = start_with_client(FakeConfig::default()).await;
    let (token, server) = client.install().await;
    fake.set_faults(with_rules(vec![
        rule(EndpointMatch::DeviceServer, FaultAction::Http503, 1),
        rule(EndpointMatch::DeviceServer, FaultAction::Maintenance491, 1),
        rule(EndpointMatch::DeviceServer, FaultAction::RateLimited429, 1),
        rule(EndpointMatch::DeviceServer, FaultAction::MissingSignature, 1),
        rule(EndpointMatch::DeviceServer, FaultAction::CorruptSignature, 1),
    ]));
    assert_eq!(client.device(&token, "s").await.status, 503);
    let maintenance = client.device(&token, "s").await;
    assert_eq!(maintenance.status, 491);
    assert!(!maintenance.error_description().is_empty());
    let limited = client.device(&token, "s").await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.error_description(),
        "Too many requests. You can do a maximum of 5 calls per 3 second to this endpoint."
    );
    let unsigned = client.device(&token, "s").await;
    assert_eq!(unsigned.status, 200);
    assert!(unsigned.header("x-bunq-server-signature").is_none());
    let corrupt = client.device(&token, "s").await;
    assert_eq!(corrupt.status, 200);
    let sig = corrupt.header("x-bunq-server-signature").unwrap();
    assert!(server.verify(&corrupt.body, sig).is_err());
    client.device(&token, "s").await.assert_signed_by(&server);
    fake.shutdown().await;
}

#[tokio::test]
async fn dropped_and_hanging_calls_fail_on_the_client_side() {
    let fake = start(FakeConfig::default()).await;
    let client = Client::with_timeout(&fake, Duration::from_millis(500));
    let body = installation_body();
    fake.set_faults(with_rules(vec![
        rule(EndpointMatch::Installation, FaultAction::DropConnection, 1),
        rule(EndpointMatch::Installation, FaultAction::Hang, 1),
    ]));
    let dropped = client.try_post("installation", &body, None, Sign::No, None).await;
    let error = dropped.err().expect("dropped connection is an error");
    assert!(!error.is_timeout(), "{error:?}");
    let hung = client.try_post("installation", &body, None, Sign::No, None).await;
    assert!(hung.err().expect("hang is an error").is_timeout());
    assert_eq!(client.try_post("installation", &body, None, Sign::No, None).await.unwrap().status, 200);

    let calls = fake.calls();
    assert_eq!(calls[0].status, None);
    assert_eq!(calls[1].status, None);
    // Shutdown releases the hanging handler instead of waiting for it forever.
    tokio::time::timeout(Duration::from_secs(5), fake.shutdown()).await.expect("shutdown completes");
}

#[tokio::test]
async fn a_lost_answer_leaves_the_session_opened_at_bunq() {
    let config = FakeConfig { rate_limit_scope: RateLimitScope::Off, ..FakeConfig::default() };
    let (fake, client) = start_with_client(config).await;
    let (token, _server) = client.install().await;
    assert_eq!(client.device(&token, "lost").await.status, 200);
    fake.set_faults(with_rules(vec![rule(EndpointMatch::SessionServer, FaultAction::LoseAnswer, 1)]));
    let body = serde_json::json!({"secret": "lost"});
    let lost = client.try_post("session-server", &body, Some(&token), Sign::Yes, None).await;
    assert!(lost.is_err(), "the client hears nothing: {:?}", lost.map(|a| a.status));
    // bunq did the work: the session exists though nobody was told.
    assert_eq!(fake.sessions_created_for("lost"), 1);
    assert_eq!(fake.calls().last().map(|c| c.status), Some(None), "recorded without an answer");
    assert_eq!(client.session(&token, "lost").await.status, 200);
    assert_eq!(fake.sessions_created_for("lost"), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn probability_faults_are_reproducible_for_a_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let fake = start(FakeConfig { rate_limit_scope: RateLimitScope::Off, ..FakeConfig::default() }).await;
        fake.set_faults(Faults {
            seed: Some(seed),
            ..with_rules(vec![FaultRule {
                endpoint: EndpointMatch::Any,
                action: FaultAction::Http503,
                trigger: Trigger::Probability(0.5),
            }])
        });
        let client = Client::new(&fake);
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(client.installation().await.status);
        }
        fake.shutdown().await;
        statuses
    }
    let a = pattern(42).await;
    assert_eq!(a, pattern(42).await);
    assert!(a.contains(&503) && a.contains(&200), "{a:?}");
}
