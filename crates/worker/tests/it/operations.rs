//! The operator commands as processes: `dead-letters list|replay` and `check`.

use crate::helpers::*;
use bunq_session_worker::amqp::dead_letter::{self, Credential};
use bunq_session_worker::seal::Sealer;
use fake_bunq::CredentialState;
use std::time::Duration;
use test_support::{random_id, random_token, ready_body, AMQP_URL, CLIENT_KEY, REDIS_URL};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");
const WAIT: Duration = Duration::from_secs(15);

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    cli_with(app, args, &[])
}

fn cli_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("AMQP_URL", AMQP_URL)
        .envs(app.names.as_env())
        .envs(env.iter().copied())
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap()
}

#[tokio::test]
async fn dead_letters_are_listed_without_secrets_and_replayed_after_the_cause_is_fixed() {
    // With a key, the dead letter's credential is sealed, and the replay unseals it.
    let (_dir, key) = key_file();
    let flags = vec![format!("--session-encryption-key-file={key}")];
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    let (rejected_id, token) = (random_id(), random_token());
    app.fake.register_credential(&token, CredentialState::Rejected);
    app.publish(&ready_body(rejected_id, &token)).await;
    // Not an event, and a credential-like run in it: a body that may hide one.
    let malformed = format!("not an event {}", random_token());
    app.publish(malformed.as_bytes()).await;
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
    // Listing takes nothing away: what it held unacked returns when it disconnects (a
    // quorum queue applies the return through its log, so it may take a moment).
    let deadline = std::time::Instant::now() + WAIT;
    while app.ready_count(&app.names.dead_letter_queue.clone()).await != 2 {
        assert!(std::time::Instant::now() < deadline, "listing took dead letters away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The partner fixed the credential: replay only that reason.
    app.fake.register_credential(&token, CredentialState::PendingFirstUse);
    let replayed = cli_with(
        &app,
        &["dead-letters", "replay", "--reason", "rejected_by_bunq"],
        &[("SESSION_ENCRYPTION_KEY_FILE", &key)],
    );
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replayed 1 message"));

    let (event, _) = app.next_event(WAIT).await.expect("the replayed provision opens its session");
    assert_eq!(event.provision_id, rejected_id);
    app.wait_idle(WAIT).await;
    let (left, properties) = app.next_dead_letter(WAIT).await.expect("the malformed one stays");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("malformed"));
    // An undecodable body may hide a credential anywhere: with a key it is sealed whole.
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("sealed-body"));
    assert!(!String::from_utf8_lossy(&left).contains(&malformed[13..]));
    let sealer = Sealer::from_key_files(&std::fs::read(&key).unwrap(), &[]).unwrap();
    let message_id = properties.message_id().as_ref().map(|m| m.as_str().to_owned());
    let restored = dead_letter::restore(&left, Credential::SealedBody, Some(&sealer), message_id.as_deref(), 1 << 20);
    assert_eq!(restored.unwrap(), malformed.as_bytes());
    assert!(app.next_dead_letter(Duration::from_millis(300)).await.is_none());
    app.teardown().await;
}

#[tokio::test]
async fn without_a_key_a_dead_letter_holds_no_token_and_waits_for_a_fresh_event() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    app.fake.register_credential(&token, CredentialState::Rejected);
    app.publish(&ready_body(id, &token)).await;
    app.wait_idle(WAIT).await;

    let replayed = cli(&app, &["dead-letters", "replay"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let stdout = String::from_utf8_lossy(&replayed.stdout);
    assert!(stdout.contains("replayed 0 message(s)") && stdout.contains("kept 1"), "{stdout}");
    assert!(String::from_utf8_lossy(&replayed.stderr).contains("publish a fresh event"));

    let (body, properties) = app.next_dead_letter(WAIT).await.expect("kept in the queue");
    assert!(!String::from_utf8_lossy(&body).contains(&token), "the dead letter keeps the token");
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("removed"));
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("rejected_by_bunq"));
    app.teardown().await;
}

#[tokio::test]
async fn a_replay_goes_back_the_way_the_message_came_with_none_of_the_workers_headers() {
    use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let app = spawn_app().await;
    // Sees what reaches the input exchange: the publish, then the replay. Exclusive, so it
    // goes with the test's connection.
    let tap = app
        .channel()
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    let exchange = app.names.input_exchange.as_str();
    let bind = QueueBindOptions { nowait: false };
    app.channel()
        .queue_bind(tap.name().clone(), exchange.into(), "#".into(), bind, FieldTable::default())
        .await
        .unwrap();
    // A publisher's forged route would send the replay elsewhere, were it kept.
    let mut headers = FieldTable::default();
    for (name, value) in [("x-original-exchange", "elsewhere"), ("x-attempts", "7"), ("x-partner", "kept")] {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    let properties = lapin::BasicProperties::default().with_message_id("m-replayed".into()).with_headers(headers);
    app.publish_with(b"not an event", properties).await;
    app.wait_idle(WAIT).await;

    let replayed = cli(&app, &["dead-letters", "replay"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replayed 1 message"));
    let get = || app.channel().basic_get(tap.name().as_str().into(), BasicGetOptions { no_ack: true });
    get().await.unwrap().expect("the publish");
    let replay = get().await.unwrap().expect("the replay went to the input exchange");
    assert_eq!(replay.delivery.exchange.as_str(), exchange);
    assert_eq!(replay.delivery.routing_key.as_str(), test_support::ROUTING_KEY);
    let mut carried: Vec<String> =
        replay.delivery.properties.headers().as_ref().unwrap().inner().keys().map(|k| k.to_string()).collect();
    carried.sort();
    // What the publisher sent that is not the worker's, and the replay count.
    assert_eq!(carried, ["x-partner", "x-replays"]);

    let (_, properties) = app.next_dead_letter(WAIT).await.expect("malformed again");
    assert_eq!(header_str(&properties, "x-original-exchange").as_deref(), Some(exchange));
    assert_eq!(bunq_session_worker::amqp::headers::attempts(&properties), 1);
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
