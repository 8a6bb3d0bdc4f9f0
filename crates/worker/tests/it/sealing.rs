//! Tokens at rest across key changes (docs/contracts.md §2.4): a key rotation rolled out
//! in two phases never leaves a replica a record it cannot read; a record sealed by a key
//! a replica does not hold yet is retried, not dead-lettered, and read once the key
//! arrives, while a key that never comes still ends; a plaintext token met with a key
//! configured is sealed at once; `session reseal` rewrites `v1:` and plaintext records and
//! reports unreadable ones instead of stopping at the first.

use crate::helpers::*;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use base64::Engine as _;
use bunq_session_worker::seal::Sealer;
use bunq_session_worker::store::{credential_tag, Begin, Handshake, Keys, Session, Store, StoreError};
use redis::AsyncCommands as _;
use secrecy::{ExposeSecret as _, SecretString};
use std::sync::Arc;
use std::time::Duration;
use test_support::{connect_redis, delete_keys, random_id, random_token, ready_body, TestNames, REDIS_URL};

const WAIT: Duration = Duration::from_secs(20);

fn sealer(key_file: &str, old: &[&str]) -> Arc<Sealer> {
    let old: Vec<Vec<u8>> = old.iter().map(|path| std::fs::read(path).unwrap()).collect();
    Arc::new(Sealer::from_key_files(&std::fs::read(key_file).unwrap(), &old).unwrap())
}

fn session(provision_id: u64, user_id: u64, token: &str) -> Session {
    Session { provision_id, ..crate::redis_parts::session_of(user_id, token) }
}

/// Records the session of a `ready_body(provision_id, token)` delivery as a replica
/// sealing with `sealer` (`None`: no key) would have: handshake record, provision index,
/// cache entry. Returns the user id.
async fn record_session(app: &TestApp, sealer: Option<Arc<Sealer>>, provision_id: u64, token: &str) -> u64 {
    let store = Store::new(app.redis.clone(), Keys::new(&app.prefix), sealer);
    let tag = credential_tag(Some(provision_id + 500), &SecretString::from(token.to_owned()));
    let Begin::Locked { claim, .. } =
        store.begin_open(provision_id, tag, Some(provision_id + 500), "other-pod", WAIT).await.unwrap()
    else {
        panic!("the provision is not free");
    };
    let user_id = random_id();
    let session = session(provision_id, user_id, token);
    let handshake = Handshake { session: Some(session.clone()), ..Default::default() };
    store.commit_session(&claim, &handshake, &session, None, Duration::from_secs(600)).await.unwrap();
    store.unlock(provision_id, &claim.owner).await.unwrap();
    user_id
}

#[tokio::test]
async fn a_record_sealed_by_a_key_this_replica_lacks_is_retried_and_read_once_the_key_arrives() {
    let ((_a, key_a), (_b, key_b)) = (key_file(), key_file());
    let flags = vec![format!("--session-encryption-key-file={key_a}"), "--max-attempts=100".into()];
    let mut app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    let (id, token) = (random_id(), random_token());
    // A replica that already seals with key B opened the session: this one holds only A.
    let user_id = record_session(&app, Some(sealer(&key_b, &[])), id, &token).await;
    app.publish(&ready_body(id, &token)).await;
    let retried = r#"bunq_session_worker_deliveries_total{outcome="retried",reason="unknown_key"}"#;
    let metrics = app.metrics_with(retried, WAIT).await;
    assert!(metrics.contains(retried), "not retried as unknown_key:\n{metrics}");
    // Every dead-letter series exists from start-up at 0; none may have counted.
    let mut dead_lettered = metrics.lines().filter(|l| l.contains(r#"outcome="dead_lettered""#));
    assert!(dead_lettered.all(|l| l.ends_with(" 0")), "{metrics}");

    // Phase 1 reaches this replica's successor: key B among the old keys.
    app.spawn_replica_with(&[format!("--session-encryption-old-key-files={key_b}")]).await;
    app.stop_worker().await;
    let (event, _) = app.next_event(WAIT).await.expect("the replica holding key B announces the session");
    assert_eq!((event.provision_id, event.user_id), (id, user_id));
    assert!(app.next_dead_letter(Duration::from_millis(500)).await.is_none(), "a delivery was dead-lettered");
    app.teardown().await;
}

#[tokio::test]
async fn a_key_that_never_arrives_ends_in_a_dead_letter_once_the_attempts_are_spent() {
    let ((_a, key_a), (_b, key_b)) = (key_file(), key_file());
    let flags = vec![format!("--session-encryption-key-file={key_a}"), "--max-attempts=3".into()];
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    let (id, token) = (random_id(), random_token());
    record_session(&app, Some(sealer(&key_b, &[])), id, &token).await;
    app.publish(&ready_body(id, &token)).await;
    let (_, properties) = app.next_dead_letter(WAIT).await.expect("dead-lettered after its attempts");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("retries_exhausted"));
    let detail = header_str(&properties, "x-dead-letter-detail").unwrap();
    assert!(detail.contains("gave up after 3 attempts") && detail.contains("(unknown_key)"), "{detail}");
    assert!(detail.contains(sealer(&key_b, &[]).current_key_id()), "names the missing key: {detail}");
    app.teardown().await;
}

#[tokio::test]
async fn the_two_phase_procedure_never_leaves_a_replica_a_record_it_cannot_read() {
    let prefix = TestNames::new("it").key_prefix;
    let conn = connect_redis(REDIS_URL).unwrap();
    let ((_a, a), (_b, b)) = (key_file(), key_file());
    let store = |sealer: Arc<Sealer>| Store::new(conn.clone(), Keys::new(&prefix), Some(sealer));
    let before = store(sealer(&a, &[]));
    let phase_1 = store(sealer(&a, &[&b])); // B accepted, A still seals
    let phase_2 = store(sealer(&b, &[&a])); // B seals, A still accepted
                                            // Each rollout has replicas of two configurations side by side: each reads the other's records.
    for (user_id, (writer, reader)) in
        (1..).zip([(&before, &phase_1), (&phase_1, &before), (&phase_1, &phase_2), (&phase_2, &phase_1)])
    {
        writer.cache_session(&session(7, user_id, "t"), Duration::from_secs(60), 1).await.unwrap();
        let read = reader.read_session(user_id).await.unwrap().expect("readable");
        assert_eq!(read.session_token.expose_secret(), "t-session");
    }
    // Skipping phase 1: a replica with A alone meets B's records, which a rollout explains.
    phase_2.cache_session(&session(7, 9, "t"), Duration::from_secs(60), 1).await.unwrap();
    let b_id = sealer(&b, &[]).current_key_id().to_owned();
    match before.read_session(9).await {
        Err(StoreError::UnknownKey { key_id, .. }) => assert_eq!(key_id, b_id),
        other => panic!("expected an unknown key, got {other:?}"),
    }
    delete_keys(&mut conn.clone(), &prefix).await.unwrap();
}

#[tokio::test]
async fn a_plaintext_token_read_with_a_key_configured_is_sealed_in_place_and_counted() {
    let (_dir, key) = key_file();
    let app = spawn_app_with(AppOptions {
        flags: vec![format!("--session-encryption-key-file={key}")],
        ..Default::default()
    })
    .await;
    let (id, token) = (random_id(), random_token());
    // Written before the key was configured.
    let user_id = record_session(&app, None, id, &token).await;
    let tag = credential_tag(Some(id + 500), &SecretString::from(token.clone()));
    let record = Keys::new(&app.prefix).handshake(id, &tag);
    let raw = |key: String| {
        let mut conn = app.redis.clone();
        async move { conn.get::<_, String>(key).await.unwrap() }
    };
    assert!(raw(record.clone()).await.contains(&format!("{token}-session")));

    app.publish(&ready_body(id, &token)).await;
    let (event, _) = app.next_event(WAIT).await.expect("the stored session is announced");
    assert_eq!(event.user_id, user_id);
    let sealed = raw(record.clone()).await;
    assert!(!sealed.contains(&token[..16]), "still plaintext: {sealed}");
    assert_eq!(sealed.matches(&format!("\"v2:{}:", sealer(&key, &[]).current_key_id())).count(), 2, "{sealed}");
    let ttl: i64 = redis::cmd("PTTL").arg(&record).query_async(&mut app.redis.clone()).await.unwrap();
    assert!(ttl > 500_000, "the TTL was kept: {ttl}");
    let counted = "bunq_session_worker_plaintext_resealed_total 1";
    assert!(app.metrics_with(counted, WAIT).await.contains(counted));
    app.teardown().await;
}

/// A `v1:` value as releases before key ids wrote it: the field name alone as associated data.
fn seal_v1(key_file: &str, field: &str, plaintext: &str) -> String {
    let key = hex::decode(std::fs::read_to_string(key_file).unwrap().trim()).unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let nonce: [u8; 12] = rand::random();
    let mut buffer = plaintext.as_bytes().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(field.as_bytes()), &mut buffer)
        .unwrap();
    format!("v1:{}", base64::prelude::BASE64_STANDARD.encode([nonce.as_slice(), &buffer].concat()))
}

#[tokio::test]
async fn session_reseal_rewrites_v1_and_plaintext_records_and_reports_unreadable_ones() {
    let prefix = TestNames::new("it").key_prefix;
    let mut conn = connect_redis(REDIS_URL).unwrap();
    let ((_k, key), (_o, other)) = (key_file(), key_file());
    let secret = random_token();
    let record = |user_id: u64, session_token: &str, installation_token: &str| {
        serde_json::json!({
            "provision_id": 7, "external_uuid": null, "user_id": user_id, "granted_by_user_id": null,
            "session_id": 3, "session_token": session_token, "installation_token": installation_token,
            "server_public_key": "pem", "created_at": "2026-01-01T12:00:00Z", "expires_at": "2099-01-01T12:00:00Z",
        })
        .to_string()
    };
    let write = |user_id: u64, value: String| {
        let mut conn = conn.clone();
        let key = format!("{prefix}session:{user_id}");
        async move { conn.set_ex::<_, _, ()>(key, value, 600).await.unwrap() }
    };
    let v1 = |field| seal_v1(&key, field, &format!("{secret}-{field}"));
    write(1, record(1, &v1("session_token"), &v1("installation_token"))).await;
    write(2, format!("not a record {secret}")).await;
    let foreign = Store::new(conn.clone(), Keys::new(&prefix), Some(sealer(&other, &[])));
    foreign.cache_session(&session(7, 3, &secret), Duration::from_secs(600), 1).await.unwrap();
    write(4, record(4, &format!("{secret}-plain"), &format!("{secret}-plain"))).await;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bunq-session-worker"))
        .args(["session", "reseal"])
        .env_clear()
        .env("REDIS_URL", REDIS_URL)
        .env("REDIS_KEY_PREFIX", &prefix)
        .env("SESSION_ENCRYPTION_KEY_FILE", &key)
        .env("LOG_FORMAT", "pretty")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "unreadable records make the run fail: {stdout}");
    assert!(
        stdout.contains("records 4  rewritten 2  changed meanwhile (left as the worker wrote them) 0  unreadable 2")
    );
    let unreadable: Vec<&str> = stdout.lines().filter(|l| l.starts_with("unreadable ")).collect();
    assert_eq!(unreadable.len(), 2, "{stdout}");
    assert!(unreadable.iter().any(|l| l.starts_with(&format!("unreadable {prefix}session:2: "))), "{stdout}");
    let other_id = sealer(&other, &[]).current_key_id().to_owned();
    assert!(unreadable.iter().any(|l| l.contains(&format!("{prefix}session:3")) && l.contains(&other_id)));
    let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(!text.contains(&secret[..16]), "a value was printed: {text}");

    // Both rewritten as v2 under the key, bound to their record, and still what they were.
    let key_id = sealer(&key, &[]).current_key_id().to_owned();
    let store = Store::new(conn.clone(), Keys::new(&prefix), Some(sealer(&key, &[])));
    for (user_id, token) in [(1, format!("{secret}-session_token")), (4, format!("{secret}-plain"))] {
        let raw: String = conn.get(format!("{prefix}session:{user_id}")).await.unwrap();
        assert_eq!(raw.matches(&format!("\"v2:{key_id}:")).count(), 2, "{raw}");
        let read = store.read_session(user_id).await.unwrap().unwrap();
        assert_eq!(read.session_token.expose_secret(), token.as_str());
    }
    delete_keys(&mut conn, &prefix).await.unwrap();
}
