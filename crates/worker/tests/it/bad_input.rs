use crate::helpers::*;
use bunq_session_worker::amqp::topology::{self, Names};
use bunq_session_worker::store::credential_tag;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use std::time::Duration;
use test_support::{expiry_in, provision_body, random_id, random_token, ready_body};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn malformed_bodies_are_dead_lettered_with_a_reason_and_the_worker_keeps_going() {
    let app = spawn_app_with(AppOptions { flags: vec!["--max-message-bytes=4096".into()], ..Default::default() }).await;
    let deep = format!(r#"{{"PartnerUserProvision":{}{}}}"#, "[".repeat(1500), "]".repeat(1500));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"this is not json".to_vec()),
        ("empty", Vec::new()),
        ("binary", vec![0xff, 0x00, 0xfe, 0x81, 0x7f]),
        ("wrong types", br#"{"PartnerUserProvision":{"id":"seven","status":"CREATED","sub_status":"X"}}"#.to_vec()),
        ("missing fields", br#"{"PartnerUserProvision":{"id":7}}"#.to_vec()),
        ("neither shape", br#"{"Something":{}}"#.to_vec()),
        ("too large", vec![b' '; 8192]),
        ("deeply nested", deep.into_bytes()),
    ];
    for (_, body) in &bodies {
        app.publish(body).await;
    }

    let mut dead = Vec::new();
    for _ in &bodies {
        dead.push(app.next_dead_letter(WAIT).await.expect("every malformed body is dead-lettered"));
    }
    for (name, body) in &bodies {
        let (_, properties) =
            dead.iter().find(|(b, _)| b == body).unwrap_or_else(|| panic!("{name} not dead-lettered"));
        assert_eq!(header_str(properties, "x-dead-letter-reason").as_deref(), Some("malformed"), "{name}");
        let detail = header_str(properties, "x-dead-letter-detail").unwrap();
        assert!(!detail.is_empty(), "{name}");
        assert_eq!(bunq_session_worker::amqp::headers::attempts(properties), 1, "{name}");
        // The original properties travel with the dead letter.
        assert!(properties.message_id().is_some(), "{name}");
    }

    // Still consuming: a good event after the bad ones opens a session.
    let id = random_id();
    app.publish(&ready_body(id, &random_token())).await;
    assert_eq!(app.next_event(WAIT).await.expect("worker still running").0.provision_id, id);
    assert!(app.fake.calls().len() == 3);
    app.teardown().await;
}

#[tokio::test]
async fn expired_credential_is_dead_lettered_without_calling_bunq() {
    let app = spawn_app().await;
    let past = expiry_in(time::Duration::minutes(-1));
    let token = random_token();
    let body = provision_body(random_id(), "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(&token), &past, true);
    app.publish(&body).await;

    let (dead, properties) = app.next_dead_letter(WAIT).await.expect("dead letter");
    // Without an encryption key the credential is removed; the rest of the body stays.
    assert_eq!(test_support::oracle::canonical(&dead), test_support::oracle::dead_letter_without_key(&body, true));
    assert!(!String::from_utf8_lossy(&dead).contains(&token), "the dead letter keeps the token");
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("removed"));
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("credential_expired"));
    assert!(header_str(&properties, "x-dead-letter-detail").unwrap().contains("token reset"));
    assert!(app.fake.calls().is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn a_credential_without_an_expiry_gets_one_deadline_from_its_first_sight() {
    let app = spawn_app().await;
    // Two provisions whose credentials carry no expiry_time.
    let undated = |id: u64, token: &str| {
        let mut body: serde_json::Value = serde_json::from_slice(&ready_body(id, token)).unwrap();
        let object = &mut body["NotificationUrl"]["object"]["PartnerUserProvision"]["credential"];
        object.as_object_mut().unwrap().remove("expiry_time").expect("the body had an expiry");
        serde_json::to_vec(&body).unwrap()
    };
    let (fresh, seen_long_ago) = (random_id(), random_id());
    let (fresh_token, old_token) = (random_token(), random_token());
    // One was first seen 4 h and a minute ago (by some replica, on some earlier try).
    let tag = credential_tag(Some(seen_long_ago + 500), &old_token.clone().into());
    let key = bunq_session_worker::store::Keys::new(&app.prefix).first_seen(seen_long_ago, &tag);
    let long_ago = (time::OffsetDateTime::now_utc() - time::Duration::minutes(241)).unix_timestamp();
    let mut redis = app.redis.clone();
    let () = redis::AsyncCommands::set_ex(&mut redis, &key, long_ago, 3600).await.unwrap();

    app.publish(&undated(seen_long_ago, &old_token)).await;
    let (_, properties) = app.next_dead_letter(WAIT).await.expect("dead letter");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("credential_expired"));
    assert!(header_str(&properties, "x-dead-letter-detail").unwrap().contains("no expiry_time"));
    assert!(app.fake.calls().is_empty(), "bunq was called for a credential past its window");

    // The other is served, and its first sighting is kept, not renewed on each try.
    app.publish(&undated(fresh, &fresh_token)).await;
    assert_eq!(app.next_event(WAIT).await.expect("session-ready").0.provision_id, fresh);
    let tag = credential_tag(Some(fresh + 500), &fresh_token.into());
    let key = bunq_session_worker::store::Keys::new(&app.prefix).first_seen(fresh, &tag);
    let first: i64 = redis::AsyncCommands::get(&mut redis, &key).await.unwrap();
    let (again, _) = app.store.first_seen(fresh, &tag, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again, first, "a second sighting moved the first");
    app.teardown().await;
}

#[tokio::test]
async fn bunq_rejection_is_dead_lettered_with_bunqs_reason() {
    use fake_bunq::CredentialState;
    let app = spawn_app().await;
    let token = random_token();
    app.fake.register_credential(&token, CredentialState::Expired);
    app.publish(&ready_body(random_id(), &token)).await;

    let (_, properties) = app.next_dead_letter(WAIT).await.expect("dead letter");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("rejected_by_bunq"));
    let detail = header_str(&properties, "x-dead-letter-detail").unwrap();
    assert!(detail.contains("bunq answered 400") && detail.contains("response id"), "{detail}");
    assert!(!detail.contains(&token));
    app.teardown().await;
}

#[tokio::test]
async fn a_dead_letter_queue_deleted_while_running_is_declared_again_and_keeps_the_dead_letter() {
    let app = spawn_app().await;
    app.delete_queue(&app.names.dead_letter_queue.clone()).await;

    let body = b"not json after the queue went".to_vec();
    app.publish(&body).await;
    // Settled (and counted) only once the copy is committed where it belongs.
    let deadline = std::time::Instant::now() + WAIT;
    // The series exists at 0 from start-up: wait for the count, not the name.
    while !app.metrics().await.contains(r#"outcome="dead_lettered",reason="malformed"} 1"#) {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (dead, properties) = app.next_dead_letter(WAIT).await.expect("the copy comes back and is put back");
    assert_eq!(dead, body);
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("malformed"));
    app.wait_idle(WAIT).await;
    assert_eq!(app.ready_count(&app.names.input_queue.clone()).await, 0, "acked once the copy was safe");
    app.teardown().await;
}

#[tokio::test]
async fn the_dead_letter_queue_is_bounded_and_drops_its_oldest_first() {
    let flags = vec!["--dead-letter-max-length=2".to_owned()];
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    for body in ["bad 1", "bad 2", "bad 3"] {
        app.publish(body.as_bytes()).await;
        app.wait_idle(WAIT).await;
    }
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 2);
    let (oldest_kept, _) = app.next_dead_letter(WAIT).await.unwrap();
    assert_eq!(oldest_kept, b"bad 2");
    app.teardown().await;
}

#[tokio::test]
async fn the_dead_letter_and_retry_queues_are_bounded_by_bytes() {
    use lapin::options::BasicPublishOptions;
    let flags = ["--max-message-bytes=1024", "--dead-letter-max-bytes=2500", "--retry-queue-max-bytes=2500"];
    let app = spawn_app_with(AppOptions { flags: flags.map(String::from).to_vec(), ..Default::default() }).await;
    // 1000 bytes each, nothing in them that could be a credential: kept as they came.
    let body = |n: u32| format!("bad {n}{}", " ".repeat(994)).into_bytes();
    for n in 1..=3 {
        app.publish(&body(n)).await;
        app.wait_idle(WAIT).await;
    }
    // Over 2500 bytes with the third: the oldest went.
    assert_eq!(app.ready_count(&app.names.dead_letter_queue.clone()).await, 2);
    assert_eq!(app.next_dead_letter(WAIT).await.unwrap().0, body(2));

    // The retry queue is declared with its bound: RabbitMQ refuses another, naming it.
    let connection = test_support::connect_amqp(test_support::AMQP_URL).await.unwrap();
    let other = Names { retry_queue_max_bytes: Some(2501), ..app.names.clone() };
    let refused = topology::declare(&connection.create_channel().await.unwrap(), &other).await.unwrap_err();
    let refused = format!("{refused:?}");
    assert!(refused.contains("x-max-length-bytes") && refused.contains("current is '2500'"), "{refused}");
    let _ = connection.close(200, "done".into()).await;
    // Full, it refuses a copy (the worker then holds the delivery and tries again) rather
    // than dropping one: copies that never expire fill it past the bound, the next is nacked.
    let mut confirms = Vec::new();
    for n in 1..=4 {
        let copy = body(n);
        let publish = app.channel().basic_publish(
            "".into(),
            app.names.retry_queue.as_str().into(),
            BasicPublishOptions::default(),
            &copy,
            lapin::BasicProperties::default(),
        );
        confirms.push(publish.await.unwrap().await.unwrap().is_ack());
    }
    assert_eq!(confirms, [true, true, true, false]);
    assert_eq!(app.ready_count(&app.names.retry_queue.clone()).await, 3);
    app.teardown().await;
}

#[tokio::test]
async fn a_message_returned_too_often_is_dead_lettered_by_the_worker_with_its_credential_removed() {
    let mut app = spawn_app().await;
    // Returned unsettled 10 times before a worker sees it again, as when each delivery
    // killed the worker handling it: RabbitMQ's own limit (20) would dead-letter the body
    // as it came. RabbitMQ counts the returns in `x-delivery-count` on each redelivery.
    app.stop_worker().await;
    let (id, token) = (random_id(), random_token());
    let properties = lapin::BasicProperties::default().with_message_id("m-returned".into());
    let confirm = app.publish_with(&ready_body(id, &token), properties).await;
    assert!(confirm.is_ack());
    let queue = app.names.input_queue.clone();
    for returned in 0..10 {
        let message = app.channel().basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await.unwrap();
        let message = message.expect("the message is back in the queue");
        assert_eq!(message.delivery.redelivered, returned > 0);
        message.reject(BasicRejectOptions { requeue: true }).await.unwrap();
    }
    app.spawn_replica().await;

    let (body, properties) = app.next_dead_letter(WAIT).await.expect("dead-lettered");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("redelivered_too_often"));
    assert_eq!(header_str(&properties, "x-credential").as_deref(), Some("removed"));
    assert!(!String::from_utf8_lossy(&body).contains(&token));
    assert!(app.fake.calls().is_empty(), "not handled: bunq never called");
    app.teardown().await;
}
