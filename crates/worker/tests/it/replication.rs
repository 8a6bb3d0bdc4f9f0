//! Durable before announced (`REDIS_MIN_REPLICAS`): on a primary with one replica the
//! test starts for itself, a session is announced only once the replica has it. With the
//! replica paused (`SIGSTOP`), the session is opened and written on the primary but not
//! announced: the delivery goes round the retry queue as `not_replicated`, spending no
//! attempt, and is announced (the same session, bunq not asked again) once the replica
//! runs again.

use crate::helpers::*;
use std::time::Duration;
use test_support::redis_pair::RedisPair;
use test_support::{random_id, random_token, ready_body};

#[tokio::test]
async fn a_session_is_announced_only_once_a_replica_has_it() {
    let pair = tokio::task::spawn_blocking(RedisPair::start).await.unwrap();
    let flags = vec![
        format!("--redis-url={}", pair.url()),
        "--redis-min-replicas=1".to_owned(),
        "--redis-replica-timeout=200ms".to_owned(),
        // Every try of the paused phase would spend one otherwise.
        "--max-attempts=2".to_owned(),
    ];
    let app = spawn_app_with(AppOptions { flags, ..Default::default() }).await;

    let (id, token) = (random_id(), random_token());
    app.publish(&ready_body(id, &token)).await;
    let (event, _) = app.next_event(WAIT).await.expect("announced with the replica up");
    assert_eq!(event.provision_id, id);

    pair.pause_replica(true);
    let (paused_id, paused_token) = (random_id(), random_token());
    app.publish(&ready_body(paused_id, &paused_token)).await;
    // Several tries while paused: none announces, none spends an attempt (max 2).
    let deadline = std::time::Instant::now() + WAIT;
    while not_replicated(&app.metrics().await) < 3 {
        assert!(std::time::Instant::now() < deadline, "never retried as not_replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.next_event(Duration::from_millis(300)).await.is_none(), "announced without the replica");
    assert!(app.next_dead_letter(Duration::from_millis(100)).await.is_none(), "tries while paused spent attempts");

    pair.pause_replica(false);
    let (event, _) = app.next_event(WAIT).await.expect("announced once the replica has it");
    assert_eq!(event.provision_id, paused_id);
    assert_eq!(app.fake.sessions_created_for(&paused_token), 1, "the retries reused the written session");
    assert!(app.next_event(Duration::from_millis(500)).await.is_none(), "announced twice");
    app.teardown().await;
}

const WAIT: Duration = Duration::from_secs(30);

/// Deliveries retried because the replica did not confirm.
fn not_replicated(metrics: &str) -> u64 {
    let line = metrics.lines().find(|l| l.contains(r#"outcome="retried",reason="not_replicated""#));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}
