//! Closes racing renewals: 40 sessions living 62 s at the stand-in, renewed 31 s after
//! they open by two worker processes, each bunq call taking 300 ms; the partner cancels
//! each provision at its own point of its renewal (from when it comes due to 1.6 s
//! after), so closes land before, during and after their provision's renewal. The ledger, per provision:
//! one `session.closed` (repeats with its event id allowed), nothing after it, no live
//! session left at bunq (the renewed-away one, a renewal's new one: every session the
//! worker opened is ended), and nothing cached.

use crate::harness::*;
use fake_bunq::{FakeConfig, Faults};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use test_support::{future_expiry, provision_body, random_id, random_token, ready_body, relaxed_fake, REDIS_URL};

const PROVISIONS: usize = 40;

#[tokio::test]
async fn closes_racing_renewals_end_every_session_and_nothing_follows_them() {
    let fake = FakeConfig {
        session_timeout_secs: 62,
        faults: Faults { latency_ms: 300, ..Faults::default() },
        ..relaxed_fake()
    };
    let mut env = Env::new(fake, REDIS_URL).await;
    let (_key_dir, vars) = renewing(&[("LOCK_TTL", "5s")]);
    env.worker_env = vars;
    let first = env.start_worker("first");
    let second = env.start_worker("second");
    first.wait_ready().await;
    second.wait_ready().await;

    let provisions: Vec<(u64, String)> = (0..PROVISIONS).map(|_| (random_id(), random_token())).collect();
    for (id, token) in &provisions {
        env.publish(&ready_body(*id, token)).await;
    }
    // When each opened, as the test saw its session-ready; its renewal comes due 31 s
    // later (and starts within the renewer's 1 s poll).
    let mut events: Vec<serde_json::Value> = Vec::new();
    let mut opened: HashMap<u64, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while opened.len() < PROVISIONS {
        assert!(Instant::now() < deadline, "not all opened within 60 s; logs in {}", env.logs.path().display());
        let taken = env.take_events().await;
        for event in taken.iter().filter(|e| e["event_type"] == "bunq.session.ready") {
            opened.entry(event["provision_id"].as_u64().unwrap()).or_insert_with(Instant::now);
        }
        events.extend(taken);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each close lands at its own point of its renewal: from when it comes due to 1.6 s
    // after, past the renewal's 300 ms session-server call and commit.
    let mut closes: Vec<(Instant, u64)> = provisions
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (opened[id] + Duration::from_secs(31) + Duration::from_millis(80 * (i as u64 % 21)), *id))
        .collect();
    closes.sort();
    for (at, id) in closes {
        tokio::time::sleep_until(at.into()).await;
        env.publish(&provision_body(id, "CANCELLED", "NONE", None, &future_expiry(), true)).await;
    }

    // Every close announced, well before the sessions' own 62 s run out at bunq: a session
    // live after that was not ended by anyone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        events.extend(env.take_events().await);
        let closed: HashSet<u64> = events
            .iter()
            .filter(|e| e["event_type"] == "bunq.session.closed")
            .map(|e| e["provision_id"].as_u64().unwrap())
            .collect();
        if closed.len() == PROVISIONS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {PROVISIONS} closed; logs in {}",
            closed.len(),
            env.logs.path().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late repeats and anything a lost race would still publish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    events.extend(env.take_events().await);

    let mut after_close = Vec::new();
    let (mut renewed_first, mut cut, mut repeats) = (0, 0, 0);
    for (id, token) in &provisions {
        let mine: Vec<&serde_json::Value> = events.iter().filter(|e| e["provision_id"] == *id).collect();
        let first_close = mine.iter().position(|e| e["event_type"] == "bunq.session.closed").expect("closed");
        let close_ids: HashSet<&str> = mine
            .iter()
            .filter(|e| e["event_type"] == "bunq.session.closed")
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(close_ids.len(), 1, "provision {id}: closed with several event ids {close_ids:?}");
        repeats += mine.iter().filter(|e| e["event_type"] == "bunq.session.closed").count() - 1;
        after_close.extend(
            mine[first_close..]
                .iter()
                .filter(|e| e["event_type"] != "bunq.session.closed")
                .map(|e| (*id, e["event_type"].clone())),
        );
        let renewed = mine[..first_close].iter().any(|e| e["event_type"] == "bunq.session.renewed");
        renewed_first += usize::from(renewed);
        // Its renewal reached bunq, but the close won before it was announced.
        cut += usize::from(!renewed && env.fake.sessions_created_for(token) > 1);
        assert_eq!(env.fake.live_sessions_for(token), 0, "provision {id}: a session still live at bunq");
        assert!(env.store.session_of_provision(*id).await.unwrap().is_none(), "provision {id}: still cached");
    }
    let opened_at_bunq: usize = provisions.iter().map(|(_, t)| env.fake.sessions_created_for(t)).sum();
    println!(
        "LEDGER close_race: {PROVISIONS} provisions closed once ({repeats} repeated events, same id); \
         {renewed_first} renewed before their close, {cut} renewals at bunq cut by their close, {} closed before renewing; \
         {opened_at_bunq} sessions opened at bunq, 0 live after the closes; {} events after a close",
        PROVISIONS - renewed_first - cut,
        after_close.len()
    );
    assert!(after_close.is_empty(), "announced after the close: {after_close:?}");
    assert!(cut > 0, "no close raced a renewal in flight");
    first.signal("-TERM");
    second.signal("-TERM");
    env.teardown().await;
}
