//! One clock: two worker processes renew sessions, one of them with its clock 30 s fast
//! (Debian's `faketime`). Sessions live 62 s and are due 31 s after they open, by Redis's
//! clock. With each replica trusting its own clock, the fast one claims and renews every
//! session about 30 s early (and the sessions it opens are due 30 s late by everyone
//! else's clock). The ledger: each session renewed once, none early, none twice.

use crate::harness::*;
use fake_bunq::{Endpoint, FakeConfig};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::{random_id, random_token, ready_body, relaxed_fake, REDIS_URL};

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
