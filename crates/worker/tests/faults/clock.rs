//! One clock: two worker processes renew sessions, one of them with its clock 30 s fast
//! (Debian's `faketime`). Sessions live 62 s and are due 31 s after they open, by Redis's
//! clock. With each replica trusting its own clock, the fast one claims and renews every
//! session about 30 s early (and the sessions it opens are due 30 s late by everyone
//! else's clock). The ledger: each session renewed once, none early, none twice.
//! And credentials: a replica 60 s fast serves one with 30 s left, one 60 s slow spends
//! no bunq call on one expired 20 s ago: both judge by Redis's clock.

use crate::harness::*;
use fake_bunq::{Endpoint, FakeConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::{expiry_in, provision_body, random_id, random_token, ready_body, relaxed_fake, REDIS_URL};

const SESSIONS: usize = 12;
const DUE_AFTER: Duration = Duration::from_secs(31);

#[tokio::test]
async fn a_replica_whose_clock_is_30_s_fast_renews_neither_early_nor_twice() {
    let fake = FakeConfig { session_timeout_secs: 62, ..relaxed_fake() };
    let mut env = Env::new(fake, REDIS_URL).await;
    let (_key_dir, vars) = renewing(&[]);
    env.worker_env = vars;
    let right = env.start_worker("right");
    let fast = env.start_worker_with_clock("fast", "+30s");
    right.wait_ready().await;
    fast.wait_ready().await;

    let provisions: Vec<(u64, String)> = (0..SESSIONS).map(|_| (random_id(), random_token())).collect();
    for (id, token) in &provisions {
        env.publish(&ready_body(*id, token)).await;
    }
    // Every session renewed (or the deadline passes with the ledger below failing).
    let renewed = "bunq_session_worker_renewals_total{outcome=\"renewed\"";
    let deadline = Instant::now() + DUE_AFTER + Duration::from_secs(60);
    while right.metric(renewed).await + fast.metric(renewed).await < SESSIONS as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Time for a second, wrong renewal to show.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Session-server calls per credential at bunq, in the order bunq received them: the
    // open, then the renewal.
    let mut calls: HashMap<String, Vec<Instant>> = HashMap::new();
    for call in env.fake.calls() {
        if call.endpoint == Endpoint::SessionServer && call.status == Some(200) {
            calls.entry(call.secret_hash.clone().unwrap_or_default()).or_default().push(call.received);
        }
    }
    let (mut early, mut twice, mut never) = (0, 0, 0);
    for times in calls.values() {
        match times.as_slice() {
            [opened, renewed] => {
                // 2 s of slack for the renewer's poll and the test's own reading.
                if renewed.duration_since(*opened) + Duration::from_secs(2) < DUE_AFTER {
                    early += 1;
                }
            }
            [_] => never += 1,
            _ => twice += 1,
        }
    }
    println!(
        "LEDGER clock_skew: {SESSIONS} sessions -> {} credentials at bunq, {early} renewed early, {twice} renewed more than once, {never} not renewed",
        calls.len()
    );
    assert_eq!(calls.len(), SESSIONS, "every provision opened once");
    assert_eq!((early, twice, never), (0, 0, 0), "renewals by a fast clock");
    env.teardown().await;
}

#[tokio::test]
async fn replicas_whose_clocks_are_a_minute_off_judge_credentials_by_redis_clock() {
    let env = Env::new(relaxed_fake(), REDIS_URL).await;
    let credential = |seconds: i64| {
        let (id, token) = (random_id(), random_token());
        let body = provision_body(
            id,
            "CREATED",
            "PENDING_PROCESS_USER_ONBOARDING",
            Some(&token),
            &expiry_in(time::Duration::seconds(seconds)),
            true,
        );
        (body, id, token)
    };

    // 60 s fast: by its own clock a credential with 30 s left expired 30 s ago.
    let fast = env.start_worker_with_clock("fast", "+60s");
    fast.wait_ready().await;
    assert_offset_logged(&fast, -60).await;
    let (body, provision_id, token) = credential(30);
    let live = [Input { body, expect: Expect::Session { provision_id, token } }];
    env.publish_all(&live).await;
    let served = env.settle_and_check(&live, Duration::from_secs(60)).await;
    fast.signal("-TERM");

    // 60 s slow: by its own clock a credential that expired 20 s ago has 40 s left.
    let slow = env.start_worker_with_clock("slow", "-60s");
    slow.wait_ready().await;
    assert_offset_logged(&slow, 60).await;
    let calls_before = env.fake.calls().len();
    let (body, _, _) = credential(-20);
    let expired = [Input { body, expect: Expect::DeadLetter("credential_expired") }];
    env.publish_all(&expired).await;
    let refused = env.settle_and_check(&expired, Duration::from_secs(60)).await;
    let calls = env.fake.calls().len() - calls_before;
    println!(
        "LEDGER clock_credentials: +60 s replica: {} of 1 served (30 s left); -60 s replica: {} of 1 dead-lettered credential_expired (expired 20 s ago), {calls} bunq calls",
        served.sessions, refused.dead_letters
    );
    assert_eq!(calls, 0, "bunq calls spent on an expired credential");
    slow.signal("-TERM");
    env.teardown().await;
}

/// The replica logs the offset it measured against Redis: about `seconds` (Redis's clock
/// minus its own; the test set its own off by the opposite).
async fn assert_offset_logged(worker: &Worker, seconds: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&worker.log_path).unwrap_or_default();
        let offset = log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|l| {
            (l["fields"]["event"] == "clock_offset").then(|| l["fields"]["offset_ms"].as_i64()).flatten()
        });
        if let Some(offset) = offset {
            assert!((offset - seconds * 1000).abs() < 5_000, "measured offset {offset} ms, set {seconds} s");
            return;
        }
        assert!(Instant::now() < deadline, "no clock_offset logged: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
