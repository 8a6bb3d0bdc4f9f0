use crate::helpers::*;
use fake_bunq::Endpoint;
use std::collections::HashSet;
use std::time::Duration;
use test_support::{future_expiry, provision_body, random_id, random_token, ready_body, relaxed_fake};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn ready_provision_yields_one_event_a_cached_session_and_three_signed_calls() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());

    let message_id = app.publish(&ready_body(id, &token)).await;

    let (event, properties) = app.next_event(WAIT).await.expect("a session-ready event");
    assert_eq!(event.event_type, "bunq.session.ready");
    assert_eq!(event.provision_id, id);
    assert_eq!(event.external_uuid.as_deref(), Some(format!("ext-{id}").as_str()));
    assert_eq!(event.cache_key, format!("{}session:{}", app.prefix, event.user_id));
    assert_eq!(event.event_id, bunq_session_worker::event::event_id(id, event.session_id));
    assert!(event.granted_by_user_id.is_some());
    assert_eq!(properties.message_id().as_ref().map(|m| m.to_string()), Some(event.event_id.to_string()));
    assert_eq!(properties.correlation_id().as_ref().map(|c| c.to_string()), Some(format!("corr-{message_id}")));
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(properties.content_type().as_ref().map(|c| c.to_string()).as_deref(), Some("application/json"));

    // The session is cached under the user, with a TTL of the session timeout minus the margin.
    let session = app.store.read_session(event.user_id).await.unwrap().expect("cached session");
    assert_eq!((session.session_id, session.provision_id), (event.session_id, id));
    let ttl: i64 = redis::cmd("TTL").arg(&event.cache_key).query_async(&mut app.redis.clone()).await.unwrap();
    let expected = 604_800 - 60;
    assert!((expected - 10..=expected).contains(&ttl), "TTL {ttl} not near {expected}");
    assert!((event.expires_at - event.occurred_at).whole_seconds() > 604_000);

    // bunq saw exactly the handshake: three calls, signed, each with its own request id.
    let calls = app.fake.calls();
    let endpoints: Vec<_> = calls.iter().map(|c| c.endpoint).collect();
    assert_eq!(endpoints, vec![Endpoint::Installation, Endpoint::DeviceServer, Endpoint::SessionServer]);
    assert!(calls.iter().all(|c| c.status == Some(200)), "{calls:?}");
    assert!(calls[1..].iter().all(|c| c.signature_valid == Some(true)), "{calls:?}");
    let request_ids: HashSet<_> = calls.iter().map(|c| c.request_id.clone().expect("request id sent")).collect();
    assert_eq!(request_ids.len(), 3);
    assert_eq!(app.fake.sessions_created_for(&token), 1);

    // Exactly one event, and the input was acked.
    app.wait_idle(WAIT).await;
    assert!(app.next_event(Duration::from_millis(300)).await.is_none());
    app.teardown().await;
}

#[tokio::test]
async fn webhook_body_and_bare_object_both_open_sessions() {
    let app = spawn_app().await;
    let (a, b) = (random_id(), random_id());
    let (token_a, token_b) = (random_token(), random_token());
    let expiry = future_expiry();
    app.publish(&provision_body(a, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(&token_a), &expiry, true)).await;
    app.publish(&provision_body(b, "ACTIVE", "PENDING_PROCESS_USER_ONBOARDING", Some(&token_b), &expiry, false)).await;

    let mut seen = HashSet::new();
    for _ in 0..2 {
        seen.insert(app.next_event(WAIT).await.expect("event").0.provision_id);
    }
    assert_eq!(seen, HashSet::from([a, b]));
    assert_eq!((app.fake.sessions_created_for(&token_a), app.fake.sessions_created_for(&token_b)), (1, 1));
    app.teardown().await;
}

#[tokio::test]
async fn provisions_in_other_states_are_acked_and_skipped_without_calling_bunq() {
    let app = spawn_app().await;
    let expiry = future_expiry();
    let token = random_token();
    let bodies = [
        provision_body(random_id(), "CREATED", "PENDING_PROCESS_USER", Some(&token), &expiry, true),
        provision_body(random_id(), "CREATED", "PENDING_PROCESS_OAUTH_REQUEST", Some(&token), &expiry, false),
        provision_body(random_id(), "CANCELLED", "PENDING_PROCESS_CLOSURE", Some(&token), &expiry, true),
        provision_body(random_id(), "ACTIVE", "NONE", Some(&token), &expiry, true),
        provision_body(random_id(), "CREATED", "PENDING_PROCESS_USER_ONBOARDING", None, &expiry, true),
    ];
    for body in &bodies {
        app.publish(body).await;
    }
    app.wait_idle(WAIT).await;

    assert!(app.fake.calls().is_empty(), "bunq was called: {:?}", app.fake.calls());
    assert!(app.next_event(Duration::from_millis(300)).await.is_none());
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 0);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"bunq_session_worker_deliveries_total{outcome="skipped",reason="not_ready"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="skipped",reason="no_credential_token"} 1"#), "{metrics}");
    // CANCELLED closes, here a provision with no session.
    assert!(metrics.contains(r#"outcome="closed",reason="no_session"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn duplicate_event_republishes_the_same_event_id_without_calling_bunq() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    let body = ready_body(id, &token);

    app.publish(&body).await;
    let (first, _) = app.next_event(WAIT).await.expect("first event");
    let calls_after_first = app.fake.calls().len();
    app.publish(&body).await;
    let (second, _) = app.next_event(WAIT).await.expect("second event");

    assert_eq!(second.event_id, first.event_id);
    assert_eq!(second.session_id, first.session_id);
    assert_eq!(app.fake.calls().len(), calls_after_first, "the duplicate called bunq");
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"outcome="announced",reason="cached_session"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn concurrent_duplicates_open_one_session() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    let body = ready_body(id, &token);
    for _ in 0..5 {
        app.publish(&body).await;
    }
    let mut event_ids = HashSet::new();
    for _ in 0..5 {
        event_ids.insert(app.next_event(WAIT).await.expect("an event per delivery").0.event_id);
    }
    assert_eq!(event_ids.len(), 1, "every announcement carries the same event id");
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    app.teardown().await;
}

#[tokio::test]
async fn unroutable_session_ready_is_never_acked_away() {
    let app =
        spawn_app_with(AppOptions { bind_output: false, flags: vec!["--max-attempts=2".into()], ..Default::default() })
            .await;
    let (id, token) = (random_id(), random_token());
    let body = ready_body(id, &token);
    app.publish(&body).await;

    // Retried once through the retry queue, then dead-lettered with the cause: the input
    // is kept, never acked away while its announcement has nowhere to go.
    let (dead, properties) = app.next_dead_letter(WAIT).await.expect("dead letter");
    // Without an encryption key the credential is removed; the rest of the body stays.
    assert_eq!(test_support::oracle::canonical(&dead), test_support::oracle::dead_letter_without_key(&body, true));
    assert!(!String::from_utf8_lossy(&dead).contains(&token), "the dead letter keeps the token");
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("removed"));
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("retries_exhausted"));
    let detail = header_str(&properties, "x-dead-letter-detail").unwrap();
    assert!(detail.contains("output_unroutable"), "{detail}");
    assert_eq!(bunq_session_worker::amqp::headers::attempts(&properties), 2);
    // The session itself was opened once and cached; a replay announces it.
    assert_eq!(app.fake.calls().iter().filter(|c| c.endpoint == Endpoint::SessionServer).count(), 1);
    app.teardown().await;
}

#[tokio::test]
async fn transient_bunq_failures_are_retried_until_the_session_opens() {
    use fake_bunq::{EndpointMatch, FaultAction, FaultRule, Faults, Trigger};
    let app = spawn_app().await;
    app.fake.set_faults(Faults {
        rules: vec![
            FaultRule {
                endpoint: EndpointMatch::Installation,
                action: FaultAction::Http503,
                trigger: Trigger::NextCalls(2),
            },
            FaultRule {
                endpoint: EndpointMatch::SessionServer,
                action: FaultAction::Http500Html,
                trigger: Trigger::NextCalls(1),
            },
        ],
        ..Default::default()
    });
    let token = random_token();
    app.publish(&ready_body(random_id(), &token)).await;

    let (event, _) = app.next_event(WAIT).await.expect("event after retries");
    let session_calls = app.fake.calls().into_iter().filter(|c| c.endpoint == Endpoint::SessionServer).count();
    assert_eq!(session_calls, 2);
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    assert!(app.store.read_session(event.user_id).await.unwrap().is_some());
    app.teardown().await;
}

#[tokio::test]
async fn a_429_is_waited_out_for_the_window_bunq_names() {
    use fake_bunq::{EndpointMatch, FaultAction, FaultRule, Faults, Trigger};
    let mut fake = relaxed_fake();
    // bunq's message will say "a maximum of 1 calls per 2 second".
    fake.session_server_limit = (1, Duration::from_secs(2));
    fake.faults = Faults {
        rules: vec![FaultRule {
            endpoint: EndpointMatch::SessionServer,
            action: FaultAction::RateLimited429,
            trigger: Trigger::NextCalls(1),
        }],
        ..Default::default()
    };
    let app = spawn_app_with(AppOptions { fake, ..Default::default() }).await;
    let token = random_token();
    let started = std::time::Instant::now();
    app.publish(&ready_body(random_id(), &token)).await;

    app.next_event(WAIT).await.expect("session after the rate limit");
    assert!(started.elapsed() >= Duration::from_secs(2), "retried after {:?}", started.elapsed());
    let statuses: Vec<_> =
        app.fake.calls().iter().filter(|c| c.endpoint == Endpoint::SessionServer).map(|c| c.status).collect();
    assert_eq!(statuses, vec![Some(429), Some(200)]);
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    app.teardown().await;
}

#[tokio::test]
async fn waiting_for_the_shared_rate_limit_spends_no_attempts() {
    // One session-server call per 2 s for all replicas, and a 1 s budget per attempt: the
    // second and third provisions cannot get a slot in time and go round the retry queue.
    let app = spawn_app_with(AppOptions {
        flags: vec![
            "--rate-limit-scope=global".into(),
            "--rate-limit-session-server=1/2s".into(),
            "--retry-budget=1000ms".into(),
            "--max-attempts=1".into(),
        ],
        ..Default::default()
    })
    .await;
    let ids = [random_id(), random_id(), random_id()];
    for id in ids {
        app.publish(&ready_body(id, &random_token())).await;
    }
    let mut announced = HashSet::new();
    for _ in ids {
        announced.insert(
            app.next_event(Duration::from_secs(30)).await.expect("every provision gets its session").0.provision_id,
        );
    }
    assert_eq!(announced, HashSet::from(ids));
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 0);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"outcome="retried",reason="throttled""#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_handshake_outlasting_the_lock_ttl_still_opens_one_session() {
    // Each bunq answer takes 600 ms: the handshake takes about 1.8 s, the lock lives 1 s.
    // Duplicates come back through the retry queue every 200 ms meanwhile.
    let app = spawn_app_with(AppOptions { flags: vec!["--lock-ttl=1000ms".into()], ..Default::default() }).await;
    app.fake.set_faults(fake_bunq::Faults { latency_ms: 600, ..Default::default() });
    let (id, token) = (random_id(), random_token());
    let body = ready_body(id, &token);
    for _ in 0..3 {
        app.publish(&body).await;
    }
    let mut event_ids = HashSet::new();
    for _ in 0..3 {
        event_ids.insert(app.next_event(WAIT).await.expect("an event per delivery").0.event_id);
    }
    assert_eq!(event_ids.len(), 1);
    assert_eq!(app.fake.sessions_created_for(&token), 1, "the lock was renewed, not taken over");
    app.teardown().await;
}

#[tokio::test]
async fn a_token_reset_starts_a_fresh_handshake_instead_of_reusing_the_old_device() {
    let app = spawn_app_with(AppOptions { flags: vec!["--max-attempts=1".into()], ..Default::default() }).await;
    let id = random_id();
    let (old, new) = (random_token(), random_token());
    // The old credential gets through installation and device-server, then session-server
    // fails until the delivery is dead-lettered: its progress stays in Redis.
    let failing = fake_bunq::FaultRule {
        endpoint: fake_bunq::EndpointMatch::SessionServer,
        action: fake_bunq::FaultAction::Http503,
        trigger: fake_bunq::Trigger::Probability(1.0),
    };
    app.fake.set_faults(fake_bunq::Faults { rules: vec![failing], ..Default::default() });
    app.publish(&ready_body(id, &old)).await;
    app.next_dead_letter(WAIT).await.expect("dead-lettered while bunq fails");
    app.fake.set_faults(fake_bunq::Faults::default());

    // The partner resets the token: same provision, new secret (and credential id).
    let reset = provision_body(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(&new), &future_expiry(), true);
    let reset =
        String::from_utf8(reset).unwrap().replace(&format!("\"id\":{}", id + 500), &format!("\"id\":{}", id + 501));
    app.publish(reset.as_bytes()).await;
    app.next_event(WAIT).await.expect("the new credential opens a session");
    let device_calls = app.fake.calls().iter().filter(|c| c.endpoint == Endpoint::DeviceServer).count();
    assert_eq!(device_calls, 2, "the new secret registered its own device");
    assert_eq!(app.fake.sessions_created_for(&new), 1);
    app.teardown().await;
}

/// `body` with its credential's id set to `credential_id`.
fn with_credential_id(body: &[u8], credential_id: u64) -> Vec<u8> {
    let mut value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["NotificationUrl"]["object"]["PartnerUserProvision"]["credential"]["id"] = credential_id.into();
    serde_json::to_vec(&value).unwrap()
}

#[tokio::test]
async fn an_older_credentials_event_after_a_token_reset_neither_replaces_nor_reannounces() {
    let app = spawn_app().await;
    let id = random_id();
    let (old_token, new_token) = (random_token(), random_token());
    let old = with_credential_id(&ready_body(id, &old_token), 100);
    app.publish(&old).await;
    let (first, _) = app.next_event(WAIT).await.expect("the first credential's session");
    // The partner reset the token: credential 101.
    app.publish(&with_credential_id(&ready_body(id, &new_token), 101)).await;
    let (second, _) = app.next_event(WAIT).await.expect("the new credential's session");
    assert_ne!(second.session_id, first.session_id);

    // A retry copy of the old credential's event arrives late.
    app.publish(&old).await;
    let line = r#"outcome="skipped",reason="stale_credential"} 1"#;
    assert!(app.metrics_with(line, WAIT).await.contains(line), "not skipped as stale_credential");
    assert!(app.next_event(Duration::from_millis(500)).await.is_none(), "the older session was announced again");
    let cached = app.store.read_session(second.user_id).await.unwrap().expect("cached");
    assert_eq!(cached.session_id, second.session_id, "the older credential's session replaced the newer");
    assert_eq!(app.fake.sessions_created_for(&old_token), 1);
    app.teardown().await;
}

#[tokio::test]
async fn the_worker_asks_the_broker_for_small_frames() {
    let app = spawn_app().await;
    // The connection is named after the consumer tag, which starts with POD_NAME: the
    // run's id, the first part of every queue name.
    let pod = app.names.input_queue.split('.').next().unwrap().to_owned();
    let frame_max = || {
        let output = std::process::Command::new("rabbitmqctl")
            .args(["list_connections", "client_properties", "frame_max", "--formatter", "json"])
            .output()
            .unwrap();
        let connections: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        let ours = connections.into_iter().find(|c| c["client_properties"].to_string().contains(&pod));
        ours.and_then(|c| c["frame_max"].as_u64())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let found = loop {
        if let Some(found) = frame_max() {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "the worker's connection is not listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 32 KiB, not RabbitMQ's 128 KiB: lapin keeps 64 frames of buffer per connection.
    assert_eq!(found, 32 * 1024);
    app.teardown().await;
}
