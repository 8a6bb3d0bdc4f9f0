//! The shared bunq budget seen from two replicas: the check the Redis and Redis Cluster
//! tests both run.

use bunq_protocol::Endpoint;
use bunq_session_worker::ratelimit::RateLimiter;
use std::time::{Duration, Instant};

/// Six session-server calls, alternating between two limiters of a `2/window` budget on
/// connections of their own: no `window` ever holds three. Returns when each call got its
/// slot, sorted, from the start.
pub async fn two_replicas_keep_every_window(a: RateLimiter, b: RateLimiter, window: Duration) -> Vec<Duration> {
    let started = Instant::now();
    let acquire = |limiter: RateLimiter| async move {
        limiter.acquire(Endpoint::SessionServer, 1, Duration::from_secs(10)).await.expect("a slot within 10 s");
        started.elapsed()
    };
    let calls = (0..6).map(|i| acquire(if i % 2 == 0 { a.clone() } else { b.clone() }));
    let mut times = futures_util::future::join_all(calls).await;
    times.sort();
    // Calls i and i+2 are at least a window apart (10 ms for timer slack).
    for three in times.windows(3) {
        assert!(three[2] - three[0] >= window - Duration::from_millis(10), "{times:?}");
    }
    times
}
