//! The Redis-backed parts on the real Redis: the shared rate limiter, the provision
//! lock, and tokens at rest.

use bunq_protocol::Endpoint;
use bunq_session_worker::metrics::Metrics;
use bunq_session_worker::ratelimit::budget::Waiter;
use bunq_session_worker::ratelimit::limit::{Limit, RateLimitError, Scope};
use bunq_session_worker::ratelimit::RateLimiter;
use bunq_session_worker::seal::Sealer;
use bunq_session_worker::store::{Begin, Claim, Credential, Handshake, Keys, Session, Store, StoreError};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use test_support::{connect_redis, delete_keys, TestNames, REDIS_URL};

fn prefix() -> String {
    TestNames::new("it").key_prefix
}

fn limiter(prefix: &str, session_server: &str) -> RateLimiter {
    let conn = connect_redis(REDIS_URL).unwrap();
    let limit = Limit::parse(session_server).unwrap();
    RateLimiter::new(conn, prefix, limit, Limit::parse("5/3s").unwrap(), Scope::Global, Arc::new(Metrics::new()))
}

async fn delete_prefix(prefix: &str) {
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), prefix).await.unwrap();
}

#[tokio::test]
async fn limiter_keeps_every_rolling_window_within_the_limit_across_replicas() {
    let prefix = prefix();
    let (replica_a, replica_b) = (limiter(&prefix, "2/500ms"), limiter(&prefix, "2/500ms"));
    let times =
        test_support::budget::two_replicas_keep_every_window(replica_a, replica_b, Duration::from_millis(500)).await;
    assert!(times[5] >= Duration::from_millis(990), "{times:?}");
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn limiter_reserves_nothing_when_the_slot_is_too_far() {
    let prefix = prefix();
    let limiter = limiter(&prefix, "1/10s");
    limiter.acquire(Endpoint::SessionServer, 1, Duration::ZERO).await.unwrap();
    for _ in 0..2 {
        match limiter.acquire(Endpoint::SessionServer, 1, Duration::from_secs(1)).await {
            // The same wait both times: a refused call took no slot. (The window is
            // spaced by 10 s plus its 250 ms margin.)
            Err(RateLimitError::NoSlot { wait, .. }) => {
                assert!(wait > Duration::from_secs(9) && wait <= Duration::from_millis(10_250), "{wait:?}");
            }
            other => panic!("expected NoSlot, got {other:?}"),
        }
    }
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn a_429_makes_every_replica_wait_bunqs_window() {
    let prefix = prefix();
    let (replica_a, replica_b) = (limiter(&prefix, "5/1s"), limiter(&prefix, "5/1s"));
    replica_a.penalize(Endpoint::SessionServer, 1, Some(Duration::from_secs(3))).await.unwrap();
    match replica_b.acquire(Endpoint::SessionServer, 1, Duration::ZERO).await {
        Err(RateLimitError::NoSlot { wait, .. }) => assert!(wait > Duration::from_millis(2900), "{wait:?}"),
        other => panic!("expected NoSlot, got {other:?}"),
    }
    // Other endpoints keep their own budget.
    replica_b.acquire(Endpoint::DeviceServer, 1, Duration::ZERO).await.unwrap();
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn a_slow_call_moves_its_log_entry_to_its_answer_so_the_next_slot_is_a_window_after_it() {
    let prefix = prefix();
    // 1 call per 500 ms (spaced 525 ms): the call takes its slot now and bunq answers it
    // 300 ms later; bunq may have counted it at any moment in between.
    let every = Limit::parse("1/500ms").unwrap();
    let limiter = RateLimiter::new(
        connect_redis(REDIS_URL).unwrap(),
        &prefix,
        every,
        every,
        Scope::Global,
        Metrics::new().into(),
    );
    let far = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let through_budget = limiter.acquire_session_server(Waiter::Open(1), 1, far, Duration::ZERO).await.unwrap();
    let through_log = limiter.acquire(Endpoint::DeviceServer, 1, Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    limiter.answered(through_budget);
    limiter.answered(through_log);
    tokio::time::sleep(Duration::from_millis(50)).await; // the stamps land in the background

    // The next slots are a window after the answers, not after the slots (225 ms away).
    let (budget, log) = tokio::join!(
        limiter.acquire_session_server(Waiter::Open(2), 2, far, Duration::from_secs(2)),
        limiter.acquire(Endpoint::DeviceServer, 2, Duration::from_secs(2)),
    );
    for wait in [budget.unwrap().waited, log.unwrap().waited] {
        assert!(wait >= Duration::from_millis(420), "the next call is due {wait:?} after the answer");
    }
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn the_provision_lock_is_released_only_by_its_owner() {
    let prefix = prefix();
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&prefix), None);
    let ttl = Duration::from_secs(10);
    let first = store.try_lock(7, "a", ttl).await.unwrap().expect("free");
    assert_eq!(store.try_lock(7, "b", ttl).await.unwrap(), None);
    store.unlock(7, "b").await.unwrap();
    assert_eq!(store.try_lock(7, "c", ttl).await.unwrap(), None, "a non-owner released the lock");
    store.unlock(7, "a").await.unwrap();
    // Every taking raises the generation, by one: the fence only moves forward.
    assert_eq!(store.try_lock(7, "c", ttl).await.unwrap(), Some(first + 1));
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn a_holder_that_lost_the_lock_records_nothing_and_the_new_holder_keeps_its_work() {
    let prefix = prefix();
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&prefix), None);
    let take = |owner: &'static str, ttl: Duration| {
        let store = store.clone();
        async move {
            let generation = store.try_lock(7, owner, ttl).await.unwrap().expect("free");
            Claim { provision_id: 7, credential: "9:ab".into(), owner: owner.into(), generation }
        }
    };
    let stale = take("stale", Duration::from_millis(200)).await;
    assert!(store.extend_lock(&stale, Duration::from_millis(200)).await.unwrap(), "the holder extends its own lock");
    tokio::time::sleep(Duration::from_millis(300)).await; // paused past the TTL
    let fresh = take("fresh", Duration::from_secs(10)).await;
    assert!(fresh.generation > stale.generation);
    let progress = |device_id| Handshake { device_id: Some(device_id), ..Default::default() };
    store.save_handshake(&fresh, &progress(2), Duration::from_secs(60)).await.unwrap();

    let lost = store.save_handshake(&stale, &progress(1), Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(lost, StoreError::LockLost { provision_id: 7 }), "{lost}");
    let session = session_of(1364, "stale");
    assert!(matches!(
        store.commit_session(&stale, &progress(1), &session, None, Duration::from_secs(60)).await,
        Err(StoreError::LockLost { .. })
    ));
    assert!(!store.extend_lock(&stale, Duration::from_secs(10)).await.unwrap(), "nor extends it");
    assert_eq!(store.load_handshake(7, "9:ab").await.unwrap().device_id, Some(2), "the new holder's progress stays");
    assert!(store.read_session(1364).await.unwrap().is_none());

    // The new holder finished and released: the lock is absent, and the stale holder
    // resuming now is refused all the same (it would overwrite the finished work).
    store.unlock(7, &fresh.owner).await.unwrap();
    assert!(matches!(
        store.commit_session(&stale, &progress(1), &session, None, Duration::from_secs(60)).await,
        Err(StoreError::LockLost { .. })
    ));
    assert!(store.read_session(1364).await.unwrap().is_none(), "a stale holder wrote after the next one released");

    // A lock that merely expired, nobody taking it since (Redis was away): its holder
    // still records what bunq handed out.
    let alone = take("alone", Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.commit_session(&alone, &progress(3), &session, None, Duration::from_secs(60)).await.unwrap();
    assert!(store.read_session(1364).await.unwrap().is_some());
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn an_open_begins_in_one_round_trip_closed_busy_or_locked_with_its_progress() {
    let prefix = prefix();
    let keys = Keys::new(&prefix);
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), keys.clone(), None);
    let ttl = Duration::from_secs(10);
    let locked = |begin: Begin| match begin {
        Begin::Locked { claim, handshake } => (claim, (*handshake).unwrap()),
        Begin::Closed => panic!("closed"),
        Begin::Stale => panic!("stale"),
        Begin::Busy => panic!("busy"),
    };
    let (claim, handshake) = locked(store.begin_open(7, "9:ab".into(), Some(9), "pod-a", ttl).await.unwrap());
    assert!(claim.owner.starts_with("pod-a:"), "{}", claim.owner);
    assert!(handshake.installation.is_none() && handshake.device_id.is_none());
    assert!(matches!(store.begin_open(7, "9:ab".into(), Some(9), "pod-b", ttl).await.unwrap(), Begin::Busy));

    // Progress is written with its index entry, in the same fenced script.
    let progress = Handshake { device_id: Some(2), ..Default::default() };
    store.save_handshake(&claim, &progress, Duration::from_secs(60)).await.unwrap();
    let mut redis = connect_redis(REDIS_URL).unwrap();
    let indexed: Vec<String> = redis::cmd("SMEMBERS").arg(keys.handshakes(7)).query_async(&mut redis).await.unwrap();
    assert_eq!(indexed, vec!["9:ab".to_owned()]);
    let index_ttl: i64 = redis::cmd("TTL").arg(keys.handshakes(7)).query_async(&mut redis).await.unwrap();
    assert!(index_ttl > 50 && index_ttl <= 60, "{index_ttl}");
    store.unlock(7, &claim.owner).await.unwrap();
    let (claim, handshake) = locked(store.begin_open(7, "9:ab".into(), Some(9), "pod-b", ttl).await.unwrap());
    assert_eq!(handshake.device_id, Some(2), "the next holder starts from the progress");

    // Closed while the holder opened: the session is still recorded (the close ends it),
    // and the commit says so.
    store.mark_closed(7).await.unwrap();
    let session = session_of(1364, "t");
    let written = store.commit_session(&claim, &progress, &session, None, Duration::from_secs(60)).await.unwrap();
    assert!(written.closed);
    assert!(store.read_session(1364).await.unwrap().is_some());
    store.unlock(7, &claim.owner).await.unwrap();
    assert!(matches!(store.begin_open(7, "9:ab".into(), Some(9), "pod-c", ttl).await.unwrap(), Begin::Closed));
    assert!(store.try_lock(7, "pod-d", ttl).await.unwrap().is_some(), "a closed provision's begin took the lock");
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn the_cache_refuses_an_older_generation_of_the_same_provision_only() {
    let prefix = prefix();
    let store = Store::new(connect_redis(REDIS_URL).unwrap(), Keys::new(&prefix), None);
    let ttl = Duration::from_secs(60);
    let user = 4242;
    // Sessions of one provision (user + 1), told apart by session id.
    let of = |session_id: u64| Session { session_id, ..session_of(user, "t") };
    let cached = || async { store.read_session(user).await.unwrap().map(|s| s.session_id) };

    assert!(store.cache_session(&of(50), ttl, 5).await.unwrap());
    // The holder paused past its lock, still at generation 3, cannot roll the cache back.
    assert!(!store.cache_session(&of(30), ttl, 3).await.unwrap());
    assert_eq!(cached().await, Some(50));
    // The same generation rewrites (a repair), a later one replaces.
    assert!(store.cache_session(&of(51), ttl, 5).await.unwrap());
    assert!(store.cache_session(&of(70), ttl, 7).await.unwrap());
    assert_eq!(cached().await, Some(70));
    // Another provision of the same user replaces it whatever its generation.
    let other = Session { provision_id: user + 99, session_id: 1, ..session_of(user, "t") };
    assert!(store.cache_session(&other, ttl, 1).await.unwrap());
    assert_eq!(cached().await, Some(1));
    // A record written before generations were kept is replaced too.
    let mut redis = connect_redis(REDIS_URL).unwrap();
    let mut legacy: serde_json::Value = serde_json::from_slice(
        &redis::AsyncCommands::get::<_, Vec<u8>>(&mut redis, Keys::new(&prefix).session(user)).await.unwrap(),
    )
    .unwrap();
    legacy.as_object_mut().unwrap().remove("generation");
    legacy["provision_id"] = (user + 1).into();
    let () = redis::AsyncCommands::set(&mut redis, Keys::new(&prefix).session(user), legacy.to_string()).await.unwrap();
    assert!(store.cache_session(&of(2), ttl, 1).await.unwrap());
    assert_eq!(cached().await, Some(2));
    delete_prefix(&prefix).await;
}

/// A session of `user_id` for an hour, its tokens `{token}-session` and `{token}-installation`.
pub(crate) fn session_of(user_id: u64, token: &str) -> Session {
    let now = time::OffsetDateTime::now_utc();
    Session {
        provision_id: user_id + 1,
        external_uuid: None,
        user_id,
        granted_by_user_id: None,
        session_id: user_id + 2,
        session_token: format!("{token}-session").into(),
        installation_token: format!("{token}-installation").into(),
        server_public_key: "pem".into(),
        created_at: now,
        expires_at: now + time::Duration::hours(1),
    }
}

#[tokio::test]
async fn keys_rotate_records_are_resealed_with_the_new_key_and_the_old_key_can_then_go() {
    let prefix = prefix();
    let conn = connect_redis(REDIS_URL).unwrap();
    let (old_key, new_key) = (hex::encode(rand::random::<[u8; 32]>()), hex::encode(rand::random::<[u8; 32]>()));
    let store = |sealer: Option<Sealer>| Store::new(conn.clone(), Keys::new(&prefix), sealer.map(Arc::new));
    let old = Sealer::from_key_files(old_key.as_bytes(), &[]).unwrap();
    // As a replica configured with the new key and the old one among the old keys.
    let rotated = || Some(Sealer::from_key_files(new_key.as_bytes(), &[old_key.clone().into_bytes()]).unwrap());
    let new_id = rotated().unwrap().current_key_id().to_owned();
    // One record from before any key, one sealed by the old key, one by the new.
    store(None).cache_session(&session_of(1, "plain"), Duration::from_secs(300), 1).await.unwrap();
    store(Some(old)).cache_session(&session_of(2, "old"), Duration::from_secs(300), 1).await.unwrap();
    store(Some(Sealer::from_key_files(new_key.as_bytes(), &[]).unwrap()))
        .cache_session(&session_of(3, "new"), Duration::from_secs(300), 1)
        .await
        .unwrap();
    let raw = |user_id: u64| {
        let mut conn = conn.clone();
        let key = format!("{prefix}session:{user_id}");
        async move { redis::AsyncCommands::get::<_, String>(&mut conn, key).await.unwrap() }
    };
    assert!(raw(1).await.contains("plain-session"));
    // A renewal credential sealed by the old key.
    let generation = store(None).try_lock(5, "test", Duration::from_secs(10)).await.unwrap().expect("free");
    let claim = Claim { provision_id: 5, credential: "0:ab".into(), owner: "test".into(), generation };
    let credential =
        Credential { tag: "0:ab".into(), token_value: "old-credential".into(), unannounced: None, failures: 0 };
    let old = Sealer::from_key_files(old_key.as_bytes(), &[]).unwrap();
    store(Some(old)).save_credential(&claim, &credential, Duration::from_secs(300)).await.unwrap();

    // The rotated configuration reads all three (sealing the plaintext one as it reads
    // it), then re-seals the two an old key sealed.
    for user_id in 1..=3 {
        assert!(store(rotated()).read_session(user_id).await.unwrap().is_some());
    }
    assert!(!raw(1).await.contains("plain-session"), "read in plaintext and left so");
    let report = store(rotated()).reseal().await.unwrap();
    assert_eq!((report.records, report.rewritten, report.skipped), (4, 2, 0));
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    for user_id in 1..=3 {
        let record = raw(user_id).await;
        assert!(!record.contains("-session") && !record.contains("-installation"), "{record}");
        assert_eq!(record.matches(&format!("\"v2:{new_id}:")).count(), 2, "{record}");
        let ttl: i64 =
            redis::cmd("PTTL").arg(format!("{prefix}session:{user_id}")).query_async(&mut conn.clone()).await.unwrap();
        assert!(ttl > 200_000, "the TTL was kept: {ttl}");
    }
    assert_eq!(store(rotated()).reseal().await.unwrap().rewritten, 0, "nothing left to do");

    // The old key can go: the new key alone opens everything.
    let new_only = store(Some(Sealer::from_key_files(new_key.as_bytes(), &[]).unwrap()));
    let read = new_only.read_session(2).await.unwrap().unwrap();
    assert_eq!(read.session_token.expose_secret(), "old-session");
    let read = new_only.load_credential(5).await.unwrap().unwrap();
    assert_eq!((read.tag.as_str(), read.token_value.expose_secret()), ("0:ab", "old-credential"));
    // And the old key alone is told which key it lacks, not handed garbage.
    let old_only = store(Some(Sealer::from_key_files(old_key.as_bytes(), &[]).unwrap()));
    let error = old_only.read_session(2).await.unwrap_err().to_string();
    assert!(error.contains(&new_id) && !error.contains("old-session"), "{error}");
    delete_prefix(&prefix).await;
}

#[tokio::test]
async fn with_a_key_tokens_never_rest_in_plaintext() {
    let prefix = prefix();
    let conn = connect_redis(REDIS_URL).unwrap();
    let sealed = Store::new(conn.clone(), Keys::new(&prefix), Some(Arc::new(Sealer::new(&[3; 32]))));
    let now = time::OffsetDateTime::now_utc();
    let session = Session {
        provision_id: 7,
        external_uuid: None,
        user_id: 1364,
        granted_by_user_id: Some(1363),
        session_id: 2173,
        session_token: "f981bd6d-session-token".to_owned().into(),
        installation_token: "installation-token-xyz".to_owned().into(),
        server_public_key: "pem".into(),
        created_at: now,
        expires_at: now + time::Duration::hours(1),
    };
    sealed.cache_session(&session, Duration::from_secs(60), 1).await.unwrap();

    let raw: String =
        redis::cmd("GET").arg(format!("{prefix}session:1364")).query_async(&mut conn.clone()).await.unwrap();
    assert!(!raw.contains("f981bd6d") && !raw.contains("installation-token"), "{raw}");
    let read = sealed.read_session(1364).await.unwrap().unwrap();
    assert_eq!(read.session_token.expose_secret(), "f981bd6d-session-token");
    // A reader without the key is told so, rather than handed ciphertext as a token.
    // It may be a pod of a rollout that turns encryption on: a key it lacks, not corruption.
    let unsealed = Store::new(conn, Keys::new(&prefix), None);
    let error = unsealed.read_session(1364).await.unwrap_err();
    assert!(error.to_string().contains("no key is configured"), "{error}");
    assert!(matches!(error, StoreError::UnknownKey { .. }), "{error:?}");
    delete_prefix(&prefix).await;
}
