//! Renewal (`SESSION_RENEWAL=on`) with sessions that live 62 s: renewed 31 s before
//! they expire (half their life), with one session-server call on the installation and
//! device they already have, the record replaced at the same `cache_key`, one
//! `bunq.session.renewed` event; once with two replicas; taken over from a replica that
//! died holding it; closed when bunq refuses the credential; at once on `session.invalid`.

use crate::helpers::*;
use bunq_session_worker::event::renewed_event_id;
use fake_bunq::{CredentialState, Endpoint, EndpointMatch, FakeConfig, FaultAction, FaultRule, Faults, Trigger};
use std::time::Duration;
use test_support::{publish_invalidation, random_id, random_token, ready_body, relaxed_fake};

const WAIT: Duration = Duration::from_secs(15);
/// Past the renewal of a 62 s session (due 31 s after it opened), with room to spare.
const RENEWAL_WAIT: Duration = Duration::from_secs(60);
const LIFE_SECS: u64 = 62;

async fn renewing_app(session_timeout_secs: u64, lock_ttl_ms: u64) -> (TestApp, tempfile::TempDir) {
    let (dir, key) = key_file();
    let fake = FakeConfig { session_timeout_secs, ..relaxed_fake() };
    let flags = vec![
        format!("--session-encryption-key-file={key}"),
        "--session-renewal=on".to_owned(),
        "--session-renew-before=31s".to_owned(),
        "--session-ttl-margin=30s".to_owned(),
        format!("--lock-ttl={lock_ttl_ms}ms"),
    ];
    (spawn_app_with(AppOptions { fake, flags, ..Default::default() }).await, dir)
}

fn calls_to(app: &TestApp, endpoint: Endpoint) -> Vec<fake_bunq::RecordedCall> {
    app.fake.calls().into_iter().filter(|c| c.endpoint == endpoint).collect()
}

#[tokio::test]
async fn a_session_is_renewed_before_it_expires_on_the_installation_and_device_it_has() {
    let (app, _key) = renewing_app(LIFE_SECS, 15_000).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    let opened_on = calls_to(&app, Endpoint::SessionServer)[0].installation_id;
    assert!(app.store.renewal_due(id).await.unwrap().is_some(), "not scheduled");
    app.fake.clear_calls();

    let renewed = app.next_json(RENEWAL_WAIT).await.expect("session-renewed");
    assert_eq!(renewed["event_type"], "bunq.session.renewed");
    let session_id = renewed["session_id"].as_u64().unwrap();
    assert_ne!(session_id, ready.session_id);
    assert_eq!(renewed["event_id"], renewed_event_id(id, session_id).to_string());
    assert_eq!(renewed["provision_id"], id);
    assert_eq!(renewed["user_id"], ready.user_id);
    assert_eq!(renewed["cache_key"], ready.cache_key);
    let expires_at = time::OffsetDateTime::parse(
        renewed["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires_at > ready.expires_at, "the new session must outlive the old");
    // Renewed early: the old session had not expired yet.
    assert!(time::OffsetDateTime::now_utc() < ready.expires_at);

    // One session-server call on the same installation; no installation, no device.
    let calls: Vec<_> = app.fake.calls().into_iter().filter(|c| c.endpoint != Endpoint::Session).collect();
    let endpoints: Vec<Endpoint> = calls.iter().map(|c| c.endpoint).collect();
    assert_eq!(endpoints, vec![Endpoint::SessionServer], "{calls:?}");
    // The session it replaced is ended at bunq, once the new one is announced.
    let deadline = std::time::Instant::now() + WAIT;
    while !app.fake.ended_sessions().contains(&ready.session_id) {
        assert!(std::time::Instant::now() < deadline, "the replaced session still lives at bunq");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!app.fake.ended_sessions().contains(&session_id), "the new session was ended");
    assert_eq!((calls[0].status, calls[0].installation_id), (Some(200), opened_on));

    // The record at the same cache_key is the new session (committed before the event).
    let cached = app.store.read_session(ready.user_id).await.unwrap().expect("cached");
    assert_eq!((cached.session_id, cached.expires_at), (session_id, expires_at));
    // The next renewal is scheduled after the event and counted after that.
    let counted = r#"bunq_session_worker_renewals_total{outcome="renewed"} 1"#;
    let metrics = app.metrics_with(counted, WAIT).await;
    assert!(metrics.contains(counted), "{metrics}");
    let due = app.store.renewal_due(id).await.unwrap().expect("next renewal scheduled");
    assert!(due > time::OffsetDateTime::now_utc() + time::Duration::seconds(20), "{due}");
    assert!(app.next_json(Duration::from_secs(1)).await.is_none(), "a second event");
    let metrics = app.metrics().await;
    assert!(metrics.contains("bunq_session_worker_renewals_scheduled 1"), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn two_replicas_renew_each_session_exactly_once() {
    let (mut app, _key) = renewing_app(LIFE_SECS, 15_000).await;
    let second = app.spawn_replica().await;
    let provisions: Vec<(u64, String)> = (0..6).map(|_| (random_id(), random_token())).collect();
    for (id, token) in &provisions {
        app.publish(&ready_body(*id, token)).await;
    }
    let mut renewed = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + RENEWAL_WAIT + WAIT;
    while renewed.len() < provisions.len() && tokio::time::Instant::now() < deadline {
        if let Some(event) = app.next_json(Duration::from_secs(1)).await {
            if event["event_type"] == "bunq.session.renewed" {
                let previous = renewed.insert(event["provision_id"].as_u64().unwrap(), event);
                assert!(previous.is_none(), "renewed twice: {previous:?}");
            }
        }
    }
    assert_eq!(renewed.len(), provisions.len(), "not every session was renewed");
    // No late duplicate, and bunq saw one open and one renewal per credential.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(event) = app.next_json(Duration::from_millis(300)).await {
        assert_ne!(event["event_type"], "bunq.session.renewed", "renewed again: {event}");
    }
    for (_, token) in &provisions {
        assert_eq!(app.fake.sessions_created_for(token), 2);
    }
    // Both replicas served the schedule (each renewal counted once, wherever it ran).
    let count = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"bunq_session_worker_renewals_total{outcome="renewed"} "#))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let first = count(&app.metrics().await);
    let other = count(&test_support::ops::metrics(second).await.unwrap());
    assert_eq!(first + other, provisions.len() as u64);
    app.teardown().await;
}

#[tokio::test]
async fn a_renewal_held_by_a_replica_that_died_is_taken_over() {
    let (app, _key) = renewing_app(LIFE_SECS, 3_000).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");

    // A replica took the provision's lock for the renewal due at 31 s and died: the lock
    // only runs out, at 36 s. Meanwhile the live worker's claims meet the lock, and the
    // entry keeps coming due again as their 3 s leases run out.
    // Timed from before the lock is taken: Redis counts its 36 s from later still, so a
    // stalled test task cannot make a correct renewal look early.
    let started = std::time::Instant::now();
    assert!(app.store.try_lock(id, "dead-replica:1", Duration::from_secs(36)).await.unwrap().is_some());

    let renewed = app.next_json(RENEWAL_WAIT).await.expect("the renewal was lost");
    assert_eq!(renewed["event_type"], "bunq.session.renewed");
    assert!(started.elapsed() >= Duration::from_secs(35), "renewed while the dead replica held it");
    assert_eq!(app.fake.sessions_created_for(&token), 2);
    // The cache entry had run out by then; the renewal puts the new session back.
    let cached = app.store.read_session(ready.user_id).await.unwrap().expect("cached again");
    assert_eq!(Some(cached.session_id), renewed["session_id"].as_u64());
    let metrics = app.metrics().await;
    // Created at 0 at start-up: counted means above 0.
    let busy = metrics.lines().find_map(|l| l.strip_prefix(r#"bunq_session_worker_renewals_total{outcome="busy"} "#));
    assert!(busy.is_some_and(|n| n != "0"), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_renewal_bunq_refuses_closes_the_session_as_credential_revoked() {
    let (app, _key) = renewing_app(LIFE_SECS, 15_000).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    app.fake.register_credential(&token, CredentialState::Rejected);

    let closed = app.next_json(RENEWAL_WAIT).await.expect("session-closed");
    assert_eq!(closed["event_type"], "bunq.session.closed");
    assert_eq!(
        (closed["reason"].as_str(), closed["session_id"].as_u64()),
        (Some("credential_revoked"), Some(ready.session_id))
    );
    // Counted once the purge that follows the event is done.
    let counted = r#"renewals_total{outcome="credential_revoked"} 1"#;
    let metrics = app.metrics_with(counted, WAIT).await;
    assert!(metrics.contains(counted), "{metrics}");
    // Session, credential and schedule entry gone; the old session ended at bunq.
    assert!(app.store.read_session(ready.user_id).await.unwrap().is_none(), "still cached");
    assert!(app.store.load_credential(id).await.unwrap().is_none(), "credential kept");
    assert!(app.store.renewal_due(id).await.unwrap().is_none(), "still scheduled");
    assert!(app.fake.ended_sessions().contains(&ready.session_id));
    app.teardown().await;
}

#[tokio::test]
async fn session_invalid_renews_at_once_and_a_stale_report_does_nothing() {
    // A week-long session: nothing is due, so a renewal can only come from the report.
    let (app, _key) = renewing_app(604_800, 15_000).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    let confirm = |c: lapin::Confirmation| assert!(c.is_ack() && c.take_message().is_none());

    confirm(publish_invalidation(app.channel(), &app.names, ready.user_id, ready.session_id).await.unwrap());
    let renewed = app.next_json(WAIT).await.expect("session-renewed");
    assert_eq!(renewed["event_type"], "bunq.session.renewed");
    let session_id = renewed["session_id"].as_u64().unwrap();
    assert_eq!(app.store.read_session(ready.user_id).await.unwrap().unwrap().session_id, session_id);
    assert_eq!(app.fake.sessions_created_for(&token), 2);

    // The report again (a redelivery, or a second downstream): the session it names is
    // no longer cached, so nothing happens.
    confirm(publish_invalidation(app.channel(), &app.names, ready.user_id, ready.session_id).await.unwrap());
    app.wait_idle(WAIT).await;
    assert!(app.next_json(Duration::from_millis(500)).await.is_none());
    assert_eq!(app.fake.sessions_created_for(&token), 2);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"deliveries_total{outcome="renewed",reason="session_invalid"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outcome="skipped",reason="stale_invalidation"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn renewals_failing_until_the_session_expires_close_it_as_renewal_failed() {
    let (app, _key) = renewing_app(LIFE_SECS, 15_000).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    // From now on bunq answers every session-server call with a 503.
    let rule = FaultRule {
        endpoint: EndpointMatch::SessionServer,
        action: FaultAction::Http503,
        trigger: Trigger::Probability(1.0),
    };
    app.fake.set_faults(Faults { rules: vec![rule], ..Default::default() });

    let closed = app.next_json(RENEWAL_WAIT + WAIT).await.expect("session-closed");
    assert_eq!(closed["event_type"], "bunq.session.closed");
    assert_eq!(
        (closed["reason"].as_str(), closed["session_id"].as_u64()),
        (Some("renewal_failed"), Some(ready.session_id))
    );
    // Tried with backoff until the session was about to expire, not given up early.
    let now = time::OffsetDateTime::now_utc();
    assert!(
        now > ready.expires_at - time::Duration::seconds(12),
        "gave up at {now}, session expires {}",
        ready.expires_at
    );
    // Counted once the purge that follows the event is done.
    let counted = r#"renewals_total{outcome="renewal_failed"} 1"#;
    let metrics = app.metrics_with(counted, WAIT).await;
    assert!(metrics.contains(counted), "{metrics}");
    let retries = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"bunq_session_worker_renewals_total{outcome="retrying"} "#))
        .map_or(0, |n| n.parse::<u64>().unwrap());
    assert!(retries >= 2, "{metrics}");
    assert!(app.store.load_credential(id).await.unwrap().is_none(), "credential kept");
    assert!(app.store.renewal_due(id).await.unwrap().is_none(), "still scheduled");
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    app.teardown().await;
}
