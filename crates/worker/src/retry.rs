//! In-process retry with exponential backoff and jitter.
//!
//! The only module that knows the `backoff` crate, which RustSec marks unmaintained
//! (RUSTSEC-2025-0012): replacing it means rewriting this file alone.

use bunq_protocol::Retry;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long and how fast to retry one delivery attempt.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub(crate) initial_interval: Duration,
    pub(crate) max_interval: Duration,
    /// Total time this attempt may spend; past it the error is returned to the caller.
    pub(crate) budget: Duration,
}

impl RetryPolicy {
    /// The same pace with what is left of the budget until `deadline`.
    pub(crate) fn until(&self, deadline: Instant) -> Self {
        Self { budget: deadline.saturating_duration_since(Instant::now()), ..self.clone() }
    }
}

/// Runs `op` until it succeeds, `classify` calls its error permanent, or the budget is
/// spent. Each wait is the larger of the exponential backoff and the error's hint; a wait
/// that would end past the budget is not started. `on_retry` hears each error retried
/// and the wait before the next try.
pub(crate) async fn run_with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut op: F,
    classify: impl Fn(&E) -> Retry,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    use backoff::backoff::Backoff as _;
    let started = Instant::now();
    let mut backoff = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial_interval)
        .with_max_interval(policy.max_interval)
        .with_multiplier(2.0)
        .with_randomization_factor(0.5)
        .with_max_elapsed_time(None)
        .build();
    loop {
        let err = match op().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let Retry::Transient { after: hint } = classify(&err) else { return Err(err) };
        let computed = backoff.next_backoff().unwrap_or(policy.max_interval);
        let wait = hint.map_or(computed, |hint| hint.max(computed));
        if started.elapsed() + wait > policy.budget {
            return Err(err);
        }
        on_retry(&err, wait);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum TestError {
        Transient(Option<Duration>),
        Permanent,
    }

    fn classify(err: &TestError) -> Retry {
        match err {
            TestError::Transient(hint) => Retry::Transient { after: *hint },
            TestError::Permanent => Retry::Permanent,
        }
    }

    fn policy(budget_secs: u64) -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            budget: Duration::from_secs(budget_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_growing_waits_until_success() {
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let result = run_with_retries(
            &policy(60),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 4 {
                    Err(TestError::Transient(None))
                } else {
                    Ok(42)
                }
            },
            classify,
            |_, wait| waits.push(wait),
        )
        .await;
        assert_eq!(result, Ok(42));
        assert_eq!(waits.len(), 4);
        // Jitter is ±50 %: the fourth wait (base 800 ms) always exceeds the first (base 100 ms).
        assert!(waits[3] > waits[0], "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = run_with_retries(
            &policy(60),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Permanent)
            },
            classify,
            |_, _| {},
        )
        .await;
        assert_eq!(result, Err(TestError::Permanent));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn server_hint_sets_the_least_wait() {
        let calls = AtomicU32::new(0);
        let mut waits = Vec::new();
        let _ = run_with_retries(
            &policy(60),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(TestError::Transient(Some(Duration::from_secs(30))))
                } else {
                    Ok(())
                }
            },
            classify,
            |_, wait| waits.push(wait),
        )
        .await;
        assert_eq!(waits, vec![Duration::from_secs(30)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_budget_returns_the_error_instead() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = run_with_retries(
            &policy(10),
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(TestError::Transient(Some(Duration::from_secs(30))))
            },
            classify,
            |_, _| {},
        )
        .await;
        assert_eq!(result, Err(TestError::Transient(Some(Duration::from_secs(30)))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
