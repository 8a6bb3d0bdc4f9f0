//! The shared session-server budget's waiting line on the real Redis: earliest deadline
//! first across replicas, hopeless waiters told at once, parked waiters that do not come
//! back losing their slot to those present, and the plan operators see.

use bunq_session_worker::metrics::Metrics;
use bunq_session_worker::ratelimit::budget::{Admission, Budget, Waiter};
use bunq_session_worker::ratelimit::limit::{Limit, RateLimitError, Scope};
use bunq_session_worker::ratelimit::RateLimiter;
use std::sync::Arc;
use std::time::Duration;
use test_support::{connect_redis, delete_keys, TestNames, REDIS_URL};
use time::OffsetDateTime;

/// Two replicas' views of one budget.
fn budget(prefix: &str, limit: &str, max_park: Duration) -> Budget {
    let conn = connect_redis(REDIS_URL).unwrap();
    let limit = Limit::parse(limit).unwrap();
    let limiter = RateLimiter::new(conn, prefix, limit, limit, Scope::Global, Arc::new(Metrics::new()));
    limiter.with_max_park(max_park).budget().cloned().expect("a global scope has a budget")
}

fn in_secs(secs: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(secs)
}

const HOLD: Duration = Duration::from_secs(30);

fn hold_ms(admission: Admission) -> u128 {
    match admission {
        Admission::Hold(wait) => wait.as_millis(),
        other => panic!("expected to hold, got {other:?}"),
    }
}

#[tokio::test]
async fn an_earlier_deadline_arriving_later_is_served_first_by_every_replica() {
    let prefix = TestNames::new("budget").key_prefix;
    let (a, b) = (budget(&prefix, "1/1s", Duration::from_secs(300)), budget(&prefix, "1/1s", Duration::from_secs(300)));
    assert_eq!(a.admit(Waiter::Open(1), in_secs(600), true, HOLD).await.unwrap(), Admission::Go);

    // Replica A holds provision 2 (deadline in 10 min) for the next slot.
    let late = hold_ms(a.admit(Waiter::Open(2), in_secs(600), true, HOLD).await.unwrap());
    // Replica B gets provision 3, whose credential expires in 20 s: it goes first, and 2
    // moves a slot back (order, not times: a loaded machine stretches the times).
    let early = hold_ms(b.admit(Waiter::Open(3), in_secs(20), true, HOLD).await.unwrap());
    let pushed = hold_ms(a.admit(Waiter::Open(2), in_secs(600), true, HOLD).await.unwrap());
    assert!(pushed > early && pushed > late, "provision 2 must wait behind 3: {late} {early} {pushed}");

    // Both wait for their slots at once, on two replicas: 3 gets the first, 2 the next.
    let (first, second) = tokio::join!(
        async { (b.acquire(Waiter::Open(3), in_secs(20), HOLD).await.unwrap(), std::time::Instant::now()) },
        async { (a.acquire(Waiter::Open(2), in_secs(600), HOLD).await.unwrap(), std::time::Instant::now()) },
    );
    assert!(first.1 < second.1, "3 was served after 2");
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &prefix).await.unwrap();
}

#[tokio::test]
async fn a_waiter_the_budget_cannot_reach_before_its_deadline_is_told_at_once() {
    let prefix = TestNames::new("budget").key_prefix;
    let budget = budget(&prefix, "1/2s", Duration::from_secs(300));
    // Three present waiters expiring in 7 s hold the next three slots (~2, 4, 6 s).
    assert_eq!(budget.admit(Waiter::Open(1), in_secs(60), true, HOLD).await.unwrap(), Admission::Go);
    let holds: Vec<u128> =
        futures_util::future::join_all((2..=4).map(|id| budget.admit(Waiter::Open(id), in_secs(7), true, HOLD)))
            .await
            .into_iter()
            .map(|admitted| hold_ms(admitted.unwrap()))
            .collect();
    let third = *holds.iter().max().unwrap();
    // A credential expiring in 8 s would get the slot after the three: hopeless, told
    // without waiting for it (the slot is seconds away; the answer comes well inside).
    let told = tokio::time::timeout(Duration::from_secs(5), budget.acquire(Waiter::Open(5), in_secs(8), HOLD));
    match told.await.expect("told at once, not at its slot") {
        Err(RateLimitError::NoSlotBeforeDeadline { slot_in, ahead, .. }) => {
            assert_eq!(ahead, 3);
            assert!(slot_in.as_millis() > third, "{slot_in:?} after {third}");
        }
        other => panic!("expected no slot before the deadline, got {other:?}"),
    }
    // It took nothing and is not in the line: a credential with room is still planned
    // after the three.
    let plan = budget.plan().await.unwrap();
    assert_eq!((plan.waiting, plan.servable, plan.hopeless), (3, 3, 0), "{plan:?}");
    let next = hold_ms(budget.admit(Waiter::Open(6), in_secs(600), true, HOLD).await.unwrap());
    assert!(next > third, "{next} is not after the three ({third})");
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &prefix).await.unwrap();
}

/// At 2 calls/s, a slot taken now and four present waiters (due in 30 s) ahead put
/// provision 9's slot (due in 40 s) ~2.5 s away: beyond the 1 s it would be held for, so
/// it is parked, to be back 0.5 s before its slot. How long it is parked for.
async fn four_present_and_nine_parked(budget: &Budget) -> Duration {
    assert_eq!(budget.admit(Waiter::Open(1), in_secs(60), true, HOLD).await.unwrap(), Admission::Go);
    for id in 2..=5 {
        hold_ms(budget.admit(Waiter::Open(id), in_secs(30), true, HOLD).await.unwrap());
    }
    let parked = budget.admit(Waiter::Open(9), in_secs(40), true, Duration::from_secs(1)).await.unwrap();
    let Admission::Park(after) = parked else { panic!("expected to park, got {parked:?}") };
    after
}

#[tokio::test]
async fn a_parked_waiter_keeps_its_slot_only_if_it_is_back_in_time() {
    let prefix = TestNames::new("budget").key_prefix;
    let budget = budget(&prefix, "1/500ms", Duration::from_secs(300));
    let after = four_present_and_nine_parked(&budget).await;
    assert!(after > Duration::from_secs(1), "parked for less than it would be held: {after:?}");
    // Its slot is kept: a later deadline present now is planned after it.
    let behind = hold_ms(budget.admit(Waiter::Open(10), in_secs(50), true, HOLD).await.unwrap());
    assert!(behind > after.as_millis(), "{behind} is not after 9's slot ({after:?} away, minus its lead)");
    let plan = budget.plan().await.unwrap();
    assert_eq!((plan.waiting, plan.servable), (6, 6), "{plan:?}");
    assert!(plan.earliest_deadline_in.unwrap() > Duration::from_secs(25), "{plan:?}");
    assert!(plan.servable_before_earliest >= 50, "30 s at 2/s: {plan:?}");

    // The four ahead give up (their leases run out) and 9 is still away: the slots come
    // now, 9's is not kept for it, and 10 takes the next one.
    for id in 2..=5 {
        let gone = budget.admit(Waiter::Open(id), in_secs(0), false, HOLD).await.unwrap();
        assert!(matches!(gone, Admission::Hopeless { .. }), "{gone:?}");
    }
    let waited = budget.acquire(Waiter::Open(10), in_secs(50), HOLD).await.unwrap().waited;
    assert!(waited < after, "10 waited for an absent waiter's slot: {waited:?}");
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &prefix).await.unwrap();
}

/// A provision whose reset is requested waits on as `Waiter::Reset` before its new token
/// is there: its old entry, parked with a wake, is no longer counted as coming back, and
/// the new one is counted at once, at its own deadline.
#[tokio::test]
async fn a_waiter_renamed_leaves_its_old_place_and_is_present_under_its_new_name() {
    let prefix = TestNames::new("budget").key_prefix;
    let budget = budget(&prefix, "1/500ms", Duration::from_secs(300));
    four_present_and_nine_parked(&budget).await;
    let plan = budget.plan().await.unwrap();
    assert_eq!((plan.waiting, plan.servable), (5, 5), "4 present, 9 parked: {plan:?}");

    // 9 goes on as a new token due in 20 s, ahead of 2..=5 (due in 30 s).
    budget.rename((Waiter::Open(9), Waiter::Reset(9)), in_secs(20), Duration::from_secs(60)).await.unwrap();
    let plan = budget.plan().await.unwrap();
    assert_eq!((plan.waiting, plan.servable), (5, 5), "one entry for 9, not two: {plan:?}");
    let earliest = plan.earliest_deadline_in.unwrap();
    assert!(
        earliest <= Duration::from_secs(20) && earliest > Duration::from_secs(10),
        "9's new deadline first: {plan:?}"
    );
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &prefix).await.unwrap();
}

/// A delivery's retry budget bounds its stay. The retry queue returns a parked copy no
/// sooner than the latest one parked before it; when that is after a waiter's slot,
/// parking gives the slot away, and the waiter is held instead only while the slot is
/// within what is left of its retry budget. Here the slot is about 6 s off, 1 s of budget
/// is left, and the latest parked waiter is due back about 4 s after the slot: parked
/// until that wake, its delivery released, instead of held for 6 s.
#[tokio::test]
async fn a_waiter_whose_slot_is_beyond_its_retry_budget_is_parked_not_held() {
    let prefix = TestNames::new("budget").key_prefix;
    let budget = budget(&prefix, "1/1s", Duration::from_secs(300));
    assert_eq!(budget.admit(Waiter::Open(1), in_secs(600), true, HOLD).await.unwrap(), Admission::Go);
    // Five present waiters with early deadlines take the next five slots, four with later
    // ones the four after (present: their leases outlast the test's admissions).
    for (ids, expiry) in [(2..=6, 30), (7..=10, 100)] {
        for id in ids {
            hold_ms(budget.admit(Waiter::Open(id), in_secs(expiry), true, HOLD).await.unwrap());
        }
    }
    // Behind all nine, a waiter that will not be held is parked until its slot: the
    // retry queue's latest wake.
    let parked = budget.admit(Waiter::Open(50), in_secs(300), true, Duration::ZERO).await.unwrap();
    let Admission::Park(latest_wake) = parked else { panic!("expected to park, got {parked:?}") };
    // Provision 20 comes after the first five and before the four: its slot is the sixth.
    let slot = hold_ms(budget.admit(Waiter::Open(20), in_secs(60), false, HOLD).await.unwrap());
    assert!(latest_wake.as_millis() > slot, "the latest wake {latest_wake:?} is not after the slot ({slot} ms)");

    match budget.acquire(Waiter::Open(20), in_secs(60), Duration::from_secs(1)).await {
        // Parked until it can really be back (its slot goes to whoever is present then).
        Err(RateLimitError::Parked { after }) => {
            assert!(after.as_millis() > slot, "parked for {after:?}, less than the latest wake; slot {slot} ms");
        }
        other => panic!("expected to be parked with 1 s of retry budget left, got {other:?}"),
    }
    delete_keys(&mut connect_redis(REDIS_URL).unwrap(), &prefix).await.unwrap();
}

/// End to end through the worker: bunq's budget at one session-server call per second for
/// the fleet (the stand-in enforcing it too), six credentials with ten minutes left, then
/// five that expire 4 s after they are published. Served in arrival order the short ones
/// would all expire behind the long ones; earliest deadline first, three of them get the
/// next three slots, and the two the budget cannot reach in time are dead-lettered
/// `credential_expired` at once, not when they expire.
#[tokio::test]
async fn the_worker_serves_the_earliest_expiry_first_and_gives_up_early_on_what_cannot_fit() {
    use crate::helpers::{header_str, spawn_app_with, AppOptions};
    use std::collections::{HashMap, HashSet};
    use test_support::{expiry_in, provision_body, random_id, random_token, relaxed_fake};

    let fake = fake_bunq::FakeConfig {
        rate_limit_scope: fake_bunq::RateLimitScope::Ip,
        session_server_limit: (1, Duration::from_secs(1)),
        ..relaxed_fake()
    };
    let flags = vec!["--rate-limit-scope=global".into(), "--rate-limit-session-server=1/1s".into()];
    let app = spawn_app_with(AppOptions { fake, flags, ..Default::default() }).await;
    let body = |id: u64, token: &str, life: time::Duration| {
        provision_body(id, "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(token), &expiry_in(life), true)
    };
    let long: Vec<u64> = (0..6).map(|_| random_id()).collect();
    for id in &long {
        app.publish(&body(*id, &random_token(), time::Duration::minutes(10))).await;
    }
    let mut short = Vec::new();
    let mut expires = HashMap::new();
    let published = std::time::Instant::now();
    for _ in 0..5 {
        let (id, token) = (random_id(), random_token());
        app.publish(&body(id, &token, time::Duration::seconds(4))).await;
        expires.insert(fake_bunq::secret::SecretDigest::of(&token).short(), published + Duration::from_secs(4));
        short.push(id);
    }

    // Two dead letters, well before the credentials expire.
    let mut given_up = HashSet::new();
    for _ in 0..2 {
        let (letter, properties) =
            app.next_dead_letter(Duration::from_secs(4)).await.expect("the two that cannot fit, early");
        assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("credential_expired"));
        let detail = header_str(&properties, "x-dead-letter-detail").unwrap();
        assert!(detail.contains("cannot serve this call before its deadline"), "{detail}");
        let value: serde_json::Value = serde_json::from_slice(&letter).unwrap();
        given_up.insert(value["NotificationUrl"]["object"]["PartnerUserProvision"]["id"].as_u64().unwrap());
    }
    // Given up because the budget cannot reach them in time, not because they expired.
    assert_eq!(given_up, short[3..].iter().copied().collect::<HashSet<_>>(), "the latest deadlines give up");

    // Everything else gets its session, the short ones before their expiry.
    let mut announced = HashSet::new();
    while announced.len() < 9 {
        let (event, _) = app.next_event(Duration::from_secs(20)).await.expect("a session for every other provision");
        announced.insert(event.provision_id);
    }
    let expected: HashSet<u64> = long.iter().chain(&short[..3]).copied().collect();
    assert_eq!(announced, expected);
    let calls: Vec<_> =
        app.fake.calls().into_iter().filter(|c| c.endpoint == fake_bunq::Endpoint::SessionServer).collect();
    assert!(
        calls.iter().all(|c| c.status == Some(200)),
        "no 429: {:?}",
        calls.iter().map(|c| c.status).collect::<Vec<_>>()
    );
    let in_time = calls
        .iter()
        .filter(|c| c.secret_hash.as_ref().and_then(|h| expires.get(h)).is_some_and(|expiry| c.received < *expiry))
        .count();
    assert_eq!(in_time, 3, "the three short credentials that fit were served before they expired");
    app.teardown().await;
}

/// 700 ms left: more than the session-server call's own 250 ms lead, less than the second
/// installation and device-server may take before it. Sent, the credential would reach
/// bunq expired (a scale run saw it at device-server); the budget's check tells it
/// expired at once, with a free slot and before any call.
#[tokio::test]
async fn a_credential_with_less_than_a_handshake_left_is_never_sent() {
    use crate::helpers::{header_str, spawn_app_with, AppOptions};
    use test_support::{expiry_in, provision_body, random_id, random_token};

    let flags = vec!["--rate-limit-scope=global".into(), "--rate-limit-session-server=1/1s".into()];
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;
    let soon = expiry_in(time::Duration::milliseconds(700));
    let token = random_token();
    let body = provision_body(random_id(), "CREATED", "PENDING_PROCESS_USER_ONBOARDING", Some(&token), &soon, true);
    app.publish(&body).await;

    let (_, properties) = app.next_dead_letter(Duration::from_secs(15)).await.expect("dead letter");
    assert_eq!(header_str(&properties, "x-dead-letter-reason").as_deref(), Some("credential_expired"));
    assert!(app.fake.calls().is_empty(), "bunq was called: {:?}", app.fake.calls());
    app.teardown().await;
}
