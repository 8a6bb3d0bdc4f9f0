//! The real binary as a process: secrets in logs, configuration errors, SIGTERM.

use crate::helpers::{observe_output, Binary};
use bunq_session_worker::store::{Keys, Store};
use secrecy::ExposeSecret;
use std::time::Duration;
use test_support::{
    connect_redis, publish_input, random_id, random_token, ready_body, relaxed_fake, TestNames, WorkerEnv, CLIENT_KEY,
    REDIS_URL,
};

const BIN: &str = env!("CARGO_BIN_EXE_bunq-session-worker");

#[tokio::test]
async fn no_secret_reaches_the_logs_or_the_published_event() {
    let fake =
        fake_bunq::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), relaxed_fake()).await.unwrap();
    let names = TestNames::new("it");
    let env = WorkerEnv::fast(&fake.base_url(), &names);
    let mut worker = Binary::run(env.vars());
    // Observe the output with our own queue, the way downstream would.
    let (_connection, channel, capture, leftovers) = observe_output(&names).await;
    let token = random_token();
    let body = ready_body(random_id(), &token);
    publish_input(&channel, &names.topology, &body, Default::default()).await.unwrap();

    let event_body = loop {
        if let Some(message) = channel.basic_get(capture.as_str().into(), Default::default()).await.unwrap() {
            message.ack(Default::default()).await.unwrap();
            break message.delivery.data.clone();
        }
        worker.assert_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let event: serde_json::Value = serde_json::from_slice(&event_body).unwrap();
    let user_id = event["user_id"].as_u64().unwrap();
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&names.key_prefix), None);
    let session = store.read_session(user_id).await.unwrap().expect("cached session");

    // SIGTERM: the worker drains and exits 0.
    let logs = worker.terminate().await;

    assert!(logs.contains("session_announced"), "the logs are not what this test thinks: {logs}");
    let event_text = String::from_utf8(event_body).unwrap();
    for (name, secret) in [
        ("token_value", token.as_str()),
        ("session token", session.session_token.expose_secret()),
        ("installation token", session.installation_token.expose_secret()),
    ] {
        assert!(!logs.contains(secret), "{name} appears in the logs");
        assert!(!event_text.contains(secret), "{name} appears in the session-ready event");
    }

    leftovers.clean().await.unwrap();
    fake.shutdown().await;
}

/// `run` with a valid minimum (bunq unreachable) and `overrides`, to its exit.
async fn run_configured(overrides: &[(&str, &str)]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("BUNQ_BASE_URL", "http://127.0.0.1:9/v1")
        .env("BUNQ_ALLOW_INSECURE_HTTP", "true")
        .env("BUNQ_CLIENT_PRIVATE_KEY_FILE", CLIENT_KEY)
        .envs(overrides.iter().copied())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_configuration_stops_start_up_naming_the_variable() {
    let cases = [
        (vec![("PREFETCH", "0")], "PREFETCH"),
        (vec![("BUNQ_BASE_URL", "")], "BUNQ_BASE_URL"),
        (vec![("BUNQ_CLIENT_PRIVATE_KEY_FILE", "/nonexistent/key.pem")], "BUNQ_CLIENT_PRIVATE_KEY_FILE"),
        (vec![("RATE_LIMIT_SCOPE", "everywhere")], "RATE_LIMIT_SCOPE"),
        (vec![("OPS_ADDR", "not-an-address")], "OPS_ADDR"),
        (vec![("LOCK_TTL", "999ms")], "LOCK_TTL"),
        (vec![("LOCK_TTL_MS", "999")], "LOCK_TTL_MS"),
        (vec![("LOCK_TTL", "30s"), ("LOCK_TTL_MS", "30000")], "LOCK_TTL"),
    ];
    for (overrides, variable) in cases {
        let output = run_configured(&[&[("LOG_FORMAT", "pretty")], &overrides[..]].concat()).await;
        assert!(!output.status.success(), "{variable}: started anyway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable} not named in: {stderr}");
    }
}

#[tokio::test]
async fn a_deprecated_duration_name_is_read_with_a_warning_naming_its_successor() {
    // PREFETCH=0 stops start-up after the durations are read: no broker needed.
    let output =
        run_configured(&[("LOG_FORMAT", "json"), ("RETRY_QUEUE_MAX_DELAY_MS", "120000"), ("PREFETCH", "0")]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warning = stderr.lines().find(|l| l.contains(r#""event":"deprecated_setting""#)).expect("a warning");
    assert!(warning.contains(r#""level":"WARN""#), "{warning}");
    assert!(warning.contains("set RETRY_QUEUE_MAX_DELAY=120000ms instead"), "{warning}");
    assert!(stderr.contains("PREFETCH"), "read past the durations: {stderr}");
}

#[tokio::test]
async fn help_never_prints_connection_passwords_from_the_environment() {
    for args in [vec!["--help"], vec!["run", "--help"], vec!["dead-letters", "list", "--help"]] {
        let output = tokio::process::Command::new(BIN)
            .args(&args)
            .env("AMQP_URL", "amqp://user:amqp-hunter2@broker:5672/%2f")
            .env("REDIS_URL", "redis://:redis-hunter2@cache:6379/0")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("AMQP_URL"), "{args:?}: help does not document AMQP_URL");
        assert!(!text.contains("hunter2"), "{args:?} printed a password: {text}");
    }
}
