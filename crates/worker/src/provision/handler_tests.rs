//! The retry decision (`after_failure`, `retry_delay`): pure, so tested here.

use super::*;

fn settings() -> HandlerSettings {
    HandlerSettings {
        max_message_bytes: 1024,
        max_attempts: 5,
        retry_queue_delay: Duration::from_secs(5),
        retry_queue_max_delay: Duration::from_secs(60),
        lock_ttl: Duration::from_secs(60),
        invalidation_routing_key: None,
    }
}

const NOW: OffsetDateTime = time::macros::datetime!(2026-01-01 12:00 UTC);

fn transient(reason: Reason, after: Option<Duration>) -> Failure {
    Failure { reason, detail: "d".into(), retry: Retry::Transient { after }, answered: None }
}

#[test]
fn permanent_failures_are_dead_lettered_with_their_own_reason() {
    let outcome = after_failure(&settings(), None, Failure::permanent(Reason::RejectedByBunq, "400"), 1, NOW);
    assert!(matches!(outcome, Outcome::DeadLetter { reason: Reason::RejectedByBunq, .. }));
}

#[test]
fn transient_failures_retry_until_the_attempt_budget_is_spent() {
    let outcome = after_failure(&settings(), None, transient(Reason::BunqUnavailable, None), 4, NOW);
    assert!(matches!(outcome, Outcome::Retry { counts_as_attempt: true, .. }));
    let outcome = after_failure(&settings(), None, transient(Reason::BunqUnavailable, None), 5, NOW);
    match outcome {
        Outcome::DeadLetter { reason: Reason::RetriesExhausted, detail } => {
            assert!(detail.contains("bunq_unavailable"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lock_another_holder_took_over_or_replicas_behind_spend_no_attempt() {
    for reason in [Reason::LockBusy, Reason::NotReplicated] {
        let outcome = after_failure(&settings(), None, transient(reason, None), 5, NOW);
        assert!(matches!(outcome, Outcome::Retry { counts_as_attempt: false, .. }), "{reason:?}: {outcome:?}");
    }
}

#[test]
fn waiting_for_our_own_rate_limit_spends_no_attempt() {
    let wait = Some(Duration::from_secs(45));
    let outcome = after_failure(&settings(), None, transient(Reason::Throttled, wait), 50, NOW);
    match outcome {
        // Attempt 50's doubling does not apply: the budget named the wait.
        Outcome::Retry { counts_as_attempt: false, delay, .. } => assert_eq!(delay, Duration::from_secs(45)),
        other => panic!("{other:?}"),
    }
    let outcome =
        after_failure(&settings(), None, transient(Reason::Throttled, Some(Duration::from_secs(900))), 1, NOW);
    assert!(matches!(outcome, Outcome::Retry { delay, .. } if delay == Duration::from_secs(60)), "capped");
}

#[test]
fn a_credential_that_expires_before_the_next_try_is_dead_lettered() {
    let expires = Some(NOW + time::Duration::seconds(20));
    let outcome =
        after_failure(&settings(), expires, transient(Reason::Throttled, Some(Duration::from_secs(30))), 1, NOW);
    assert!(matches!(outcome, Outcome::DeadLetter { reason: Reason::CredentialExpired, .. }));
    let outcome = after_failure(&settings(), expires, transient(Reason::BunqUnavailable, None), 1, NOW);
    assert!(matches!(outcome, Outcome::Retry { .. }), "5 s retry still fits before expiry");
}

#[test]
fn retry_delay_doubles_up_to_the_cap_and_respects_hints() {
    let s = settings();
    let delays: Vec<u64> = (1..=6).map(|a| retry_delay(&s, a, None).as_secs()).collect();
    assert_eq!(delays, vec![5, 10, 20, 40, 60, 60]);
    assert_eq!(retry_delay(&s, 1, Some(Duration::from_secs(30))), Duration::from_secs(30));
    assert_eq!(retry_delay(&s, 100, None), Duration::from_secs(60));
    assert_eq!(retry_delay(&s, 1, Some(Duration::from_secs(86_400 * 365))), Duration::from_secs(60));
}
