//! bunq's rolling-window rate limits (docs/bunq-api.md §6.3): at most `calls` admitted
//! requests within any `window`, counted per endpoint and per client identity.
//!
//! Pure and clock-free (callers pass `now`), so tests need no sleeping.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Whose requests share one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Per client IP address, as the classic docs say.
    Ip,
    /// Per device, as the newer docs say: the installation token. `POST /installation`
    /// has no token yet, so there the client public key identifies the device. This is
    /// the default because every provisioned user gets its own key pair, so tests can
    /// onboard many users quickly from one IP.
    #[default]
    Device,
    /// No limits.
    Off,
}

impl std::str::FromStr for RateLimitScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(Self::Ip),
            "device" => Ok(Self::Device),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown rate limit scope `{other}` (expected ip, device or off)")),
        }
    }
}

/// `calls` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub calls: u32,
    pub window: Duration,
}

/// Rolling-window counters keyed by (endpoint, client identity).
#[derive(Debug, Default)]
pub struct RateLimiter {
    admitted: HashMap<(String, String), VecDeque<Instant>>,
}

impl RateLimiter {
    /// Admits and counts the request, or refuses it. Refused requests are not counted:
    /// a client that keeps hammering is held off only by its admitted calls, the usual
    /// sliding-log behaviour.
    pub fn check(&mut self, endpoint: &str, client: &str, limit: Limit, now: Instant) -> bool {
        let log = self.admitted.entry((endpoint.to_owned(), client.to_owned())).or_default();
        while let Some(&oldest) = log.front() {
            if now.saturating_duration_since(oldest) >= limit.window {
                log.pop_front();
            } else {
                break;
            }
        }
        if log.len() >= limit.calls as usize {
            return false;
        }
        log.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_PER_30: Limit = Limit { calls: 1, window: Duration::from_secs(30) };
    const FIVE_PER_3: Limit = Limit { calls: 5, window: Duration::from_secs(3) };

    #[test]
    fn second_call_inside_window_is_refused_and_allowed_after_it() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(rl.check("session-server", "a", ONE_PER_30, t0));
        assert!(!rl.check("session-server", "a", ONE_PER_30, t0 + Duration::from_secs(29)));
        assert!(rl.check("session-server", "a", ONE_PER_30, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn window_rolls_rather_than_resetting() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(rl.check("device-server", "a", FIVE_PER_3, t0 + Duration::from_millis(500 * i)));
        }
        // 2.5 s after the first call, five are still inside the window.
        assert!(!rl.check("device-server", "a", FIVE_PER_3, t0 + Duration::from_millis(2900)));
        // At 3.0 s the first call leaves the window: exactly one more fits.
        assert!(rl.check("device-server", "a", FIVE_PER_3, t0 + Duration::from_millis(3000)));
        assert!(!rl.check("device-server", "a", FIVE_PER_3, t0 + Duration::from_millis(3100)));
    }

    #[test]
    fn clients_and_endpoints_have_separate_budgets() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(rl.check("session-server", "a", ONE_PER_30, t0));
        assert!(rl.check("session-server", "b", ONE_PER_30, t0));
        assert!(rl.check("device-server", "a", ONE_PER_30, t0));
    }

    #[test]
    fn scope_parses_from_cli_words() {
        assert_eq!("device".parse::<RateLimitScope>().unwrap(), RateLimitScope::Device);
        assert!("global".parse::<RateLimitScope>().is_err());
    }
}
