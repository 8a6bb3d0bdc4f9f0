//! Token resets at scale (`CREDENTIAL_RESET=on`), the stand-in playing the partner: a
//! backlog ten times what the session-server budget serves within a credential's life
//! (budget 5 calls/s, credentials expiring 10–30 s after publish, new tokens living 20 s),
//! two worker processes. Then a replica SIGKILLed between a reset and its session.
//! The ledger: every provision one announced session, none dead-lettered; resets only
//! for provisions whose credential expired before their session opened, never for one
//! served in time; no session-server call with a superseded or expired token; 0 × 429.

use crate::harness::*;
use fake_bunq::FakeConfig;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use test_support::{expiry_in, random_id, random_token, ready_body_with, relaxed_fake, REDIS_URL};
use time::OffsetDateTime;

const PARTNER_KEY: &str = "sandbox_partner_fedcba9876543210fedcba9876543210fedcba98765432";
/// Budget 5/s × a credential's 10–30 s ≈ 100 served in time; ten times that.
const BACKLOG: usize = 1000;

fn stand_in() -> FakeConfig {
    FakeConfig {
        partner_api_key: Some(PARTNER_KEY.to_owned()),
        token_reset_delay: Duration::from_millis(500),
        credential_ttl: Some(Duration::from_secs(20)),
        session_server_limit: (5, Duration::from_secs(1)),
        other_post_limit: (100, Duration::from_secs(1)),
        put_limit: (10, Duration::from_secs(1)),
        get_limit: (20, Duration::from_secs(1)),
        ..relaxed_fake()
    }
}

/// The workers' settings: resets on, the stand-in's limits, quick retry-queue trips. The
/// retry queue's largest delay is scaled with the token's life like the rest: a new token
/// is served by half its life, and a parked one comes back no later than the latest wake
/// before it. In production that delay (5 min) is a sixth of a sandbox token's half life
/// (30 min); here 3 s of 10 s. At 10 s a parked token could come back after half its life
/// and expire unused (2–7 second resets in 1,000, runs of stop 23 and 24).
fn resetting(env: &mut Env) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let partner = dir.path().join("partner.key");
    std::fs::write(&partner, PARTNER_KEY).unwrap();
    let seal = dir.path().join("session.key");
    std::fs::write(&seal, hex::encode(rand::random::<[u8; 32]>())).unwrap();
    let vars = [
        ("CREDENTIAL_RESET", "on"),
        ("BUNQ_PARTNER_API_KEY_FILE", partner.to_str().unwrap()),
        ("SESSION_ENCRYPTION_KEY_FILE", seal.to_str().unwrap()),
        ("CREDENTIAL_LIFETIME", "20s"),
        ("RATE_LIMIT_SESSION_SERVER", "5/1s"),
        ("RATE_LIMIT_OTHER_POST", "100/1s"),
        ("RATE_LIMIT_PUT", "10/1s"),
        ("RATE_LIMIT_GET", "20/1s"),
        ("RATE_LIMIT_SCOPE", "global"),
        ("RETRY_QUEUE_DELAY", "1s"),
        ("RETRY_QUEUE_MAX_DELAY", "3s"),
        ("BUNQ_REQUEST_TIMEOUT", "3s"),
    ];
    env.worker_env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    dir
}

/// A provision registered at the stand-in and the event that announces it.
struct Provision {
    id: u64,
    token: String,
    body: Vec<u8>,
}

/// Registers `count` provisions at the stand-in, their credentials expiring `expiry(i)`
/// seconds from now.
fn provisions(env: &Env, count: usize, expiry: impl Fn(usize) -> i64) -> Vec<Provision> {
    (0..count)
        .map(|i| {
            let (id, token) = (random_id(), random_token());
            let at = OffsetDateTime::now_utc() + time::Duration::seconds(expiry(i));
            let credential = env.fake.register_provision(id, &token, at).unwrap();
            let body = ready_body_with(id, credential, &token, &expiry_in(time::Duration::seconds(expiry(i))));
            Provision { id, token, body }
        })
        .collect()
}

/// Session-ready events by provision, until every one of `ids` has one or `timeout`.
async fn announced(env: &Env, ids: &HashSet<u64>, timeout: Duration) -> HashMap<u64, HashSet<u64>> {
    let deadline = Instant::now() + timeout;
    let mut sessions: HashMap<u64, HashSet<u64>> = HashMap::new();
    loop {
        for event in env.take_events().await {
            let id = event["provision_id"].as_u64().unwrap();
            sessions.entry(id).or_default().insert(event["session_id"].as_u64().unwrap());
        }
        let dead = env.take_dead_letters().await;
        assert!(
            dead.is_empty(),
            "dead-lettered: {:?}",
            dead.iter().map(|(_, p)| p.headers().clone()).collect::<Vec<_>>()
        );
        if ids.iter().all(|id| sessions.contains_key(id)) {
            return sessions;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} announced after {timeout:?}; logs in {}",
            sessions.len(),
            ids.len(),
            env.logs.path().display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_backlog_ten_times_the_budget_loses_no_user_to_an_expired_credential() {
    let mut env = Env::new(stand_in(), REDIS_URL).await;
    let _keys = resetting(&mut env);
    let (a, b) = (env.start_worker("a"), env.start_worker("b"));
    a.wait_ready().await;
    b.wait_ready().await;
    let started = Instant::now();
    let provisions = provisions(&env, BACKLOG, |i| 10 + (i % 21) as i64);
    for provision in &provisions {
        env.publish(&provision.body).await;
    }
    let ids: HashSet<u64> = provisions.iter().map(|p| p.id).collect();
    let sessions = announced(&env, &ids, Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = env.take_events().await.len();

    let two: Vec<_> = sessions.iter().filter(|(_, s)| s.len() > 1).map(|(id, _)| *id).collect();
    assert!(two.is_empty(), "announced with two session ids: {two:?}");
    // Served in time: its own token opened the session, and it was never reset. Reset:
    // its own token opened nothing (it expired first), and a new one did.
    let (mut in_time, mut reset_once, mut resets, mut again) = (0, 0, 0, Vec::new());
    for Provision { id, token, .. } in &provisions {
        let own = env.fake.sessions_created_for(token);
        let resets_of = env.fake.token_resets(*id);
        resets += resets_of;
        match own {
            1 => {
                assert_eq!(resets_of, 0, "provision {id}: served in time, yet reset");
                in_time += 1;
            }
            0 => {
                assert!(resets_of >= 1, "provision {id}: no session with its own token and no reset");
                let new = env.fake.current_token(*id).expect("a new token");
                assert_eq!(env.fake.sessions_created_for(&new), 1, "provision {id}: one session with the new token");
                reset_once += usize::from(resets_of == 1);
                if resets_of > 1 {
                    again.push(*id);
                }
            }
            n => panic!("provision {id}: {n} sessions with its own token"),
        }
    }
    let stats = env.fake.stats();
    let limited = stats.calls_per_status.get("429").copied().unwrap_or(0);
    let limited_at: Vec<&str> =
        env.fake.calls().iter().filter(|c| c.status == Some(429)).map(|c| c.endpoint.as_str()).collect();
    println!(
        "LEDGER reset_backlog: {BACKLOG} provisions -> {} sessions in {} s, 0 dead letters; {in_time} served in time (0 resets), \
         {} reset ({reset_once} once), {resets} resets in all ({:.2} per provision); superseded/expired tokens at session-server {}/{}; {limited} x 429 {limited_at:?}; {late} late repeats",
        sessions.len(),
        started.elapsed().as_secs(),
        BACKLOG - in_time,
        resets as f64 / BACKLOG as f64,
        stats.refused_superseded_tokens,
        stats.refused_expired_tokens,
    );
    assert!(in_time > 0 && in_time < BACKLOG, "the budget served some in time and not all: {in_time}");
    assert!(
        resets <= BACKLOG - in_time,
        "{resets} resets for {} provisions that needed one (reset again: {again:?}); logs in {}",
        BACKLOG - in_time,
        env.logs.path().display()
    );
    assert_eq!((stats.refused_superseded_tokens, stats.refused_expired_tokens), (0, 0));
    assert_eq!(limited, 0, "429s at {limited_at:?}");
    a.signal("-TERM");
    b.signal("-TERM");
    env.teardown().await;
}

#[tokio::test]
async fn a_replica_killed_between_a_reset_and_its_session_loses_nothing_and_resets_once() {
    let mut config = stand_in();
    // Long enough to kill a replica while the new tokens are being prepared; new tokens
    // outlive the wait for the dead replica's locks.
    config.token_reset_delay = Duration::from_secs(3);
    config.credential_ttl = Some(Duration::from_secs(120));
    let mut env = Env::new(config, REDIS_URL).await;
    let _keys = resetting(&mut env);
    env.worker_env
        .extend([("CREDENTIAL_LIFETIME", "120s"), ("LOCK_TTL", "5s")].map(|(k, v)| (k.to_owned(), v.to_owned())));
    let mut victim = env.start_worker("victim");
    victim.wait_ready().await;
    let provisions = provisions(&env, 20, |_| -60);
    for provision in &provisions {
        env.publish(&provision.body).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.fake.stats().token_resets < 5 {
        assert!(Instant::now() < deadline, "no resets within 60 s; logs in {}", env.logs.path().display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.signal("-KILL");
    let _ = victim.child.wait().await;
    let reset_before = env.fake.stats().token_resets;
    let survivor = env.start_worker("survivor");
    survivor.wait_ready().await;

    let ids: HashSet<u64> = provisions.iter().map(|p| p.id).collect();
    let sessions = announced(&env, &ids, Duration::from_secs(120)).await;
    let twice: Vec<u64> = ids.iter().copied().filter(|id| env.fake.token_resets(*id) != 1).collect();
    println!(
        "LEDGER reset_kill: 20 expired provisions, replica killed after {reset_before} resets -> {} sessions, 0 dead letters, provisions reset other than once: {twice:?}",
        sessions.len()
    );
    assert!(twice.is_empty(), "reset twice (or never): {twice:?}");
    assert!(sessions.values().all(|s| s.len() == 1), "one session id each");
    survivor.signal("-TERM");
    env.teardown().await;
}
