//! A provision the partner cancels or closes: its session is ended at bunq with its own
//! token, purged from Redis and announced closed; a close with no session is only
//! counted; a close racing the open wins. Downstream's `session.invalid` closes the
//! session it names (`invalidated`), unless the cache already holds a newer one.

use crate::helpers::*;
use bunq_session_worker::event::closed_event_id;
use fake_bunq::{Endpoint, FakeConfig, Faults};
use std::time::Duration;
use test_support::{
    future_expiry, provision_body, publish_invalidation, publish_to_input, random_id, random_token, ready_body,
    relaxed_fake,
};

const WAIT: Duration = Duration::from_secs(15);

fn close_body(id: u64, status: &str) -> Vec<u8> {
    provision_body(id, status, "NONE", None, &future_expiry(), true)
}

/// Keys the worker still holds for the test beside the closed markers and the rate-limit
/// logs (which hold no secret and expire with their window).
async fn keys_left(app: &TestApp) -> Vec<String> {
    let mut scan = app.redis.scan(&format!("{}*", app.prefix)).await.unwrap();
    let mut keys = Vec::new();
    // The closed marker, the lock's generation and the newest credential outlive a close
    // by design: the marker stops late events, the generation keeps the fence moving
    // forward (a holder from before the close cannot write after it), the credential order
    // keeps an older credential from coming back.
    let kept = [
        format!("{}closed:", app.prefix),
        format!("{}ratelimit:", app.prefix),
        format!("{}lock-generation:", app.prefix),
        format!("{}newest-credential:", app.prefix),
    ];
    while let Some(batch) = scan.next_batch().await.unwrap() {
        keys.extend(batch.into_iter().filter(|k| !kept.iter().any(|p| k.starts_with(p.as_str()))));
    }
    keys
}

#[tokio::test]
async fn cancelled_and_closed_provisions_end_the_session_purge_it_and_announce_it_closed() {
    let app = spawn_app().await;
    for status in ["CANCELLED", "CLOSED"] {
        let (id, token) = (random_id(), random_token());
        app.publish(&ready_body(id, &token)).await;
        let (ready, _) = app.next_event(WAIT).await.expect("session-ready");

        app.publish(&close_body(id, status)).await;
        let closed = app.next_json(WAIT).await.expect("session-closed");
        assert_eq!(closed["event_type"], "bunq.session.closed");
        assert_eq!(closed["reason"], "provision_closed");
        assert_eq!(closed["provision_id"], id);
        assert_eq!(closed["external_uuid"], format!("ext-{id}"));
        assert_eq!(
            (closed["user_id"].as_u64(), closed["session_id"].as_u64()),
            (Some(ready.user_id), Some(ready.session_id))
        );
        assert_eq!(closed["event_id"], closed_event_id(id, ready.session_id).to_string());
        assert!(closed.get("session_token").is_none() && closed.get("cache_key").is_none());

        // Ended at bunq by a DELETE the session's own token authenticated, signed.
        let deletes: Vec<_> = app.fake.calls().into_iter().filter(|c| c.endpoint == Endpoint::Session).collect();
        let delete = deletes.last().expect("a DELETE /session");
        assert_eq!(
            (delete.method.as_str(), delete.status, delete.session_id),
            ("DELETE", Some(200), Some(ready.session_id))
        );
        assert_eq!(delete.signature_valid, Some(true));
        assert!(app.fake.ended_sessions().contains(&ready.session_id));

        // Nothing of it is left in Redis once the close is acked (the purge follows the
        // event's confirm), and a late ready event opens nothing.
        app.wait_idle(WAIT).await;
        assert!(app.store.read_session(ready.user_id).await.unwrap().is_none(), "still cached");
        assert_eq!(keys_left(&app).await, Vec::<String>::new());
        app.publish(&ready_body(id, &token)).await;
        app.wait_idle(WAIT).await;
        assert!(app.next_json(Duration::from_millis(300)).await.is_none(), "announced after its close");
        assert_eq!(app.fake.sessions_created_for(&token), 1);
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"deliveries_total{outcome="closed",reason="provision_closed"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"deliveries_total{outcome="skipped",reason="provision_closed"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"bunq_requests_total{endpoint="session",status="200"} 2"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_close_without_a_session_is_acked_and_counted_and_nothing_else() {
    let app = spawn_app().await;
    app.publish(&close_body(random_id(), "CLOSED")).await;
    app.wait_idle(WAIT).await;
    assert!(app.fake.calls().is_empty(), "bunq was called: {:?}", app.fake.calls());
    assert!(app.next_json(Duration::from_millis(300)).await.is_none());
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 0);
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"deliveries_total{outcome="closed",reason="no_session"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_close_arriving_while_the_session_opens_wins() {
    // Each bunq answer takes 300 ms: the close arrives while the handshake runs.
    let fake = FakeConfig { faults: Faults { latency_ms: 300, ..Default::default() }, ..relaxed_fake() };
    let app = spawn_app_with(AppOptions { fake, ..Default::default() }).await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    // The close goes out once the open is inside its handshake (holding the lock): bunq
    // has seen its device-server call, and its session-server call is still to come.
    let deadline = std::time::Instant::now() + WAIT;
    while !app.fake.calls().iter().any(|c| c.endpoint == Endpoint::DeviceServer) {
        assert!(std::time::Instant::now() < deadline, "the open never reached device-server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.publish(&close_body(id, "CANCELLED")).await;

    let mut events = Vec::new();
    while let Some(event) = app.next_json(Duration::from_secs(10)).await {
        let closed = event["event_type"] == "bunq.session.closed";
        events.push(event);
        if closed {
            break;
        }
    }
    app.wait_idle(WAIT).await;
    while let Some(event) = app.next_json(Duration::from_millis(500)).await {
        events.push(event);
    }
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["bunq.session.closed"], "the open announced although its provision closed");
    // The session bunq opened meanwhile was ended, and nothing is cached.
    assert_eq!(app.fake.sessions_created_for(&token), 1);
    assert_eq!(app.fake.ended_sessions(), vec![events[0]["session_id"].as_u64().unwrap()]);
    assert_eq!(keys_left(&app).await, Vec::<String>::new());
    // The race happened: the open finished after the close had marked the provision.
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"outcome="skipped",reason="provision_closed"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn session_invalid_closes_the_named_session_and_ignores_a_stale_one() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    let confirm = |c: lapin::Confirmation| assert!(c.is_ack() && c.take_message().is_none());

    // A session the cache no longer holds: nothing happens to the cached one.
    confirm(publish_invalidation(app.channel(), &app.names, ready.user_id, ready.session_id + 1).await.unwrap());
    app.wait_idle(WAIT).await;
    assert!(app.next_json(Duration::from_millis(300)).await.is_none());
    assert!(app.store.read_session(ready.user_id).await.unwrap().is_some(), "a stale report closed the session");

    // The cached session: ended at bunq, announced closed `invalidated`, purged.
    confirm(publish_invalidation(app.channel(), &app.names, ready.user_id, ready.session_id).await.unwrap());
    let closed = app.next_json(WAIT).await.expect("session-closed");
    assert_eq!((closed["reason"].as_str(), closed["provision_id"].as_u64()), (Some("invalidated"), Some(id)));
    assert_eq!(closed["session_id"], ready.session_id);
    assert_eq!(app.fake.ended_sessions(), vec![ready.session_id]);
    app.wait_idle(WAIT).await;
    assert!(app.store.read_session(ready.user_id).await.unwrap().is_none(), "still cached");
    // The provision itself stays open: a later event with a usable credential may open again.
    assert!(!app.store.is_closed(id).await.unwrap());

    // No session for the user: counted; not a report at all: dead-lettered as malformed.
    confirm(publish_invalidation(app.channel(), &app.names, ready.user_id, ready.session_id).await.unwrap());
    let garbage = br#"{"user_id":"x"}"#;
    confirm(publish_to_input(app.channel(), &app.names, "session.invalid", garbage, Default::default()).await.unwrap());
    let (_, properties) = app.next_dead_letter(WAIT).await.expect("a dead letter");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("malformed"));
    app.wait_idle(WAIT).await;
    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"outcome="skipped",reason="stale_invalidation"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outcome="closed",reason="invalidated"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outcome="closed",reason="no_session"} 1"#), "{metrics}");
    app.teardown().await;
}

#[tokio::test]
async fn a_close_finding_the_provision_locked_waits_for_it_in_process_not_behind_the_retry_queue() {
    let app = spawn_app().await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");
    app.wait_idle(WAIT).await;

    // A budget park of five minutes at the head of the retry queue: a close sent there
    // would wait behind it.
    let park = lapin::BasicProperties::default().with_expiration("300000".into());
    let queue = app.names.retry_queue.as_str();
    let confirm = app.channel().basic_publish("".into(), queue.into(), Default::default(), b"parked", park);
    confirm.await.unwrap().await.unwrap();
    // An open under way holds the provision when the close arrives.
    let holder = app.store.try_lock(id, "an-open-under-way", Duration::from_secs(30)).await.unwrap();
    assert!(holder.is_some(), "the test could not take the lock");
    app.publish(&close_body(id, "CANCELLED")).await;
    // The close marks the provision first, then asks for the lock: once the marker is
    // there, the open under way finishes (here: the test lets go a little later).
    let marked = tokio::time::Instant::now() + WAIT;
    while !app.store.is_closed(id).await.unwrap() {
        assert!(tokio::time::Instant::now() < marked, "the close never marked the provision");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.store.unlock(id, "an-open-under-way").await.unwrap();

    // Far sooner than the park ahead of it in the retry queue, and without a trip there.
    let closed = app.next_json(Duration::from_secs(60)).await.expect("session-closed");
    assert_eq!(
        (closed["event_type"].as_str(), closed["session_id"].as_u64()),
        (Some("bunq.session.closed"), Some(ready.session_id))
    );
    let metrics = app.metrics().await;
    let busy = r#"bunq_session_worker_deliveries_total{outcome="retried",reason="lock_busy"}"#;
    let sent_round = metrics.lines().any(|l| l.starts_with(busy) && !l.ends_with(" 0"));
    assert!(!sent_round, "a close went round the retry queue: {metrics}");
    assert_eq!(app.ready_count(queue).await, 1, "the park is still there, untouched");
    app.teardown().await;
}

#[tokio::test]
async fn with_no_queue_for_session_closed_the_close_still_purges_and_the_event_waits_for_one() {
    let app = spawn_app_with(AppOptions { bind_output: false, ..Default::default() }).await;
    let bind = |routing_key: &'static str| {
        let (channel, queue, exchange) =
            (app.channel(), app.capture_queue.as_str(), app.names.output_exchange.as_str());
        async move {
            let (options, args) = (Default::default(), Default::default());
            channel.queue_bind(queue.into(), exchange.into(), routing_key.into(), options, args).await.unwrap();
        }
    };
    // Downstream listens for session-ready only.
    bind("session.ready").await;
    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (ready, _) = app.next_event(WAIT).await.expect("session-ready");

    // Nobody takes session.closed: the close is done all the same, its event held.
    app.publish(&close_body(id, "CANCELLED")).await;
    app.wait_idle(WAIT).await;
    assert!(app.store.read_session(ready.user_id).await.unwrap().is_none(), "the close did not purge");
    assert_eq!(keys_left(&app).await, vec![app.store.keys().held_events()], "only the held event is left");
    assert!(app.next_dead_letter(Duration::from_millis(300)).await.is_none());

    // Once a queue is bound for it, the held event is delivered, once, and forgotten.
    bind("session.closed").await;
    let closed = app.next_json(Duration::from_secs(60)).await.expect("the held session-closed");
    assert_eq!(closed["event_type"], "bunq.session.closed");
    assert_eq!((closed["provision_id"].as_u64(), closed["session_id"].as_u64()), (Some(id), Some(ready.session_id)));
    assert_eq!(closed["event_id"], closed_event_id(id, ready.session_id).to_string());
    let held = tokio::time::Instant::now() + WAIT;
    while !keys_left(&app).await.is_empty() {
        assert!(tokio::time::Instant::now() < held, "the delivered event is still held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.next_json(Duration::from_secs(12)).await.is_none(), "delivered twice by one replica");
    app.teardown().await;
}
