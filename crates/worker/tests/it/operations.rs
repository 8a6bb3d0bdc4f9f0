//! The operator commands as processes: `dead-letters list|replay` and `check`.

use crate::helpers::*;
use fake_bunq::CredentialState;
use std::time::Duration;
use test_support::{random_id, random_token, ready_body, AMQP_URL, CLIENT_KEY, REDIS_URL};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const WAIT: Duration = Duration::from_secs(15);

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("AMQP_URL", AMQP_URL)
        .envs(app.names.as_env())
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap()
}

#[tokio::test]
async fn dead_letters_are_listed_without_secrets_and_replayed_after_the_cause_is_fixed() {
    let app = spawn_app().await;
    let (rejected_id, token) = (random_id(), random_token());
    app.fake.register_credential(&token, CredentialState::Rejected);
    app.publish(&ready_body(rejected_id, &token)).await;
    app.publish(b"not an event").await;
    app.wait_idle(WAIT).await;
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 2);

    let listed = cli(&app, &["dead-letters", "list", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let stdout = String::from_utf8(listed.stdout).unwrap();
    assert!(!stdout.contains(&token), "list printed the token");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let reasons: std::collections::HashSet<_> = rows.iter().map(|r| r["reason"].as_str().unwrap().to_owned()).collect();
    assert_eq!(reasons, ["rejected_by_bunq".to_owned(), "malformed".to_owned()].into());
    let rejected = rows.iter().find(|r| r["reason"] == "rejected_by_bunq").unwrap();
    assert_eq!(rejected["provision_id"], rejected_id);
    assert_eq!(rejected["attempts"], 1);
    assert!(rejected["age_secs"].as_u64().is_some());
    // Listing takes nothing away.
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 2);

    // The partner fixed the credential: replay only that reason.
    app.fake.register_credential(&token, CredentialState::PendingFirstUse);
    let replayed = cli(&app, &["dead-letters", "replay", "--reason", "rejected_by_bunq"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replayed 1 message"));

    let (event, _) = app.next_event(WAIT).await.expect("the replayed provision opens its session");
    assert_eq!(event.provision_id, rejected_id);
    app.wait_idle(WAIT).await;
    let (left, properties) = app.next_dead_letter(WAIT).await.expect("the malformed one stays");
    assert_eq!(left, b"not an event");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("malformed"));
    assert!(app.next_dead_letter(Duration::from_millis(300)).await.is_none());
    app.teardown().await;
}

#[tokio::test]
async fn check_names_the_dependency_that_fails() {
    let app = spawn_app().await;
    // Asynchronous: the fake answering `check` runs on this test's runtime.
    let run = |redis_url: &str| {
        tokio::process::Command::new(BIN)
            .arg("check")
            .env_clear()
            .env("AMQP_URL", AMQP_URL)
            .env("REDIS_URL", redis_url)
            .env("BUNQ_BASE_URL", app.fake.base_url())
            .env("BUNQ_ALLOW_INSECURE_HTTP", "true")
            .env("BUNQ_CLIENT_PRIVATE_KEY_FILE", CLIENT_KEY)
            .env("LOG_FORMAT", "pretty")
            .output()
    };
    let good = run(REDIS_URL).await.unwrap();
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    for name in ["config", "rabbitmq", "redis", "bunq"] {
        assert!(stdout.lines().any(|l| l.starts_with(name) && l.contains("ok")), "{name}: {stdout}");
    }

    let bad = run("redis://127.0.0.1:1/0").await.unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success());
    assert!(stdout.lines().any(|l| l.starts_with("redis") && l.contains("FAILED")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("rabbitmq") && l.contains("ok")), "{stdout}");
    app.teardown().await;
}
