//! What every rate limit shares: a limit, its scope, the one rule for the next free slot
//! of a sliding-window log (Lua, run by Redis on its own clock), a reservation, and the
//! errors.

use crate::failure::{Failure, Reason, Retry};
use bunq_protocol::error::Endpoint;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

/// Every script of the log starts here: Redis's clock (replicas with skewed clocks agree), the limit
/// from ARGV[1] (spacing ms) and ARGV[2] (calls), and the slot after `times` (reserved
/// call times, ascending): never before now, the last one, or the `limit`-th last plus
/// the window.
pub(crate) const SLOTS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local function next_slot(times)
  local at = now
  local n = #times
  if n > 0 and times[n] > at then at = times[n] end
  if n >= limit then
    local free = times[n - limit + 1] + window
    if free > at then at = free end
  end
  return at
end
-- The last `limit` calls of the log at `key`, ascending: all the rule looks at (older
-- entries, even if not yet removed, cannot move a slot).
local function recent(key)
  local times = {}
  local log = redis.call('ZRANGE', key, -limit, -1, 'WITHSCORES')
  for i = 2, #log, 2 do times[#times + 1] = tonumber(log[i]) end
  return times
end
"#;

/// `calls` per `per`, e.g. 1 per 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub(crate) calls: u32,
    pub(crate) per: Duration,
}

impl Limit {
    /// The window reservations are spaced by: the limit's own plus a margin for the time
    /// between a slot and bunq counting the call (waking up, signing, the network), which
    /// varies from call to call. Spaced by the bare window, a call that happened to be
    /// slow on its way and one `calls` later that was quick arrive less than a window
    /// apart, and bunq answers 429 (the bench's shared-limit run saw 78 in 1,000 calls at
    /// 20/s). 2.5% of the window, at least 25 ms, at most 1 s: 30.75 s for bunq's 1/30 s.
    pub(crate) fn spacing(&self) -> Duration {
        let margin = (self.per / 40).clamp(Duration::from_millis(25), Duration::from_secs(1));
        self.per + margin
    }

    /// The spacing of a class where never hearing 429 matters more than throughput (the
    /// partner's `PUT` and `GET`: a handful of calls per reset, and a 429 there delays
    /// the reset by bunq's window while its slot passes): an eighth of the window, at
    /// least 100 ms. Many resetters reading at once keep these logs full, so every
    /// window meets the variance of the way to bunq, which 2.5% did not always cover on
    /// a loaded machine (5 × 429 in a scale run at 10 and 20 per second).
    pub(crate) fn wide_spacing(&self) -> Duration {
        self.per + (self.per / 8).max(Duration::from_millis(100))
    }

    /// Parses `CALLS/DURATION`, e.g. `1/30s`, `5/3s`, `100/500ms`, `60/1m` (bare numbers are seconds).
    pub fn parse(text: &str) -> Result<Self, String> {
        let problem = || format!("`{text}` is not CALLS/DURATION like 1/30s, 5/3s or 100/500ms");
        let (calls, per) = text.trim().split_once('/').ok_or_else(problem)?;
        let calls: u32 = calls.trim().parse().map_err(|_| problem())?;
        let per = crate::duration::parse(per).map_err(|_| problem())?;
        if calls == 0 || per.is_zero() {
            return Err(format!("`{text}`: calls and duration must be positive"));
        }
        Ok(Self { calls, per })
    }
}

/// Who shares one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One budget for all replicas: bunq counting per egress IP (classic docs).
    Global,
    /// One budget per credential (per provision): bunq counting per device (newer docs).
    Credential,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "global" => Ok(Scope::Global),
            "credential" => Ok(Scope::Credential),
            other => Err(format!("`{other}` is not `global` or `credential`")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate limit for POST /{endpoint} has no free slot within {max_wait:?} (next in {wait:?})")]
    NoSlot { endpoint: Endpoint, wait: Duration, max_wait: Duration },
    #[error("the session-server budget's next slot for this provision is {after:?} away: parked in the retry queue until then")]
    Parked { after: Duration },
    #[error(
        "the session-server budget cannot serve this call before its deadline {deadline}: {ahead} earlier deadlines \
         are served first and its slot would be {slot_in:?} away (a token reset gives a new credential)"
    )]
    NoSlotBeforeDeadline { deadline: OffsetDateTime, slot_in: Duration, ahead: u64 },
    #[error("rate limiter unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RateLimitError {
    /// For the in-process retry loop. A full budget passes when the wait is over, Redis
    /// when it is back; a parked or hopeless waiter leaves the loop (and the delivery
    /// goes to the retry or dead-letter queue: see `Failure::from`).
    pub(crate) fn retry(&self) -> Retry {
        match self {
            RateLimitError::NoSlot { wait, .. } => Retry::Transient { after: Some(*wait) },
            RateLimitError::Redis(_) => Retry::Transient { after: None },
            RateLimitError::Parked { .. } | RateLimitError::NoSlotBeforeDeadline { .. } => Retry::Permanent,
        }
    }
}

/// A call's place in a rate-limit log: hand it back with [`RateLimiter::answered`] once
/// bunq has answered (or the call failed on its way).
#[derive(Debug)]
pub struct Reservation {
    pub(crate) key: String,
    pub(crate) member: String,
    /// The spacing of the log at `key`: how long the log is kept after the stamp.
    pub(crate) spacing: Duration,
    /// How long the caller waited for the slot.
    pub waited: Duration,
}

impl Reservation {
    pub(crate) fn new(key: String, member: String, spacing: Duration, waited: Duration) -> Self {
        Self { key, member, spacing, waited }
    }
}

/// How the handler classifies a rate-limit error.
impl From<&RateLimitError> for Failure {
    fn from(err: &RateLimitError) -> Self {
        let (reason, retry) = match err {
            RateLimitError::NoSlot { .. } => (Reason::Throttled, err.retry()),
            // Back through the retry queue, to return shortly before its slot.
            RateLimitError::Parked { after } => (Reason::Throttled, Retry::Transient { after: Some(*after) }),
            // Known now: the credential expires before the budget reaches it.
            RateLimitError::NoSlotBeforeDeadline { .. } => (Reason::CredentialExpired, Retry::Permanent),
            RateLimitError::Redis(_) => (Reason::RedisUnavailable, err.retry()),
        };
        Failure { reason, detail: err.to_string(), retry, answered: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits() {
        assert_eq!(Limit::parse("1/30s").unwrap(), Limit { calls: 1, per: Duration::from_secs(30) });
        assert_eq!(Limit::parse(" 5 / 3s ").unwrap(), Limit { calls: 5, per: Duration::from_secs(3) });
        assert_eq!(Limit::parse("100/500ms").unwrap().per, Duration::from_millis(500));
        assert_eq!(Limit::parse("60/1m").unwrap().per, Duration::from_secs(60));
        for bad in ["", "5", "0/3s", "5/0s", "x/3s", "5/3w"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reservations_are_spaced_by_the_window_plus_a_bounded_margin() {
        let spacing = |text: &str| Limit::parse(text).unwrap().spacing();
        assert_eq!(spacing("1/30s"), Duration::from_millis(30_750));
        assert_eq!(spacing("20/1s"), Duration::from_millis(1_025));
        assert_eq!(spacing("100/100ms"), Duration::from_millis(125));
        assert_eq!(spacing("1/1h"), Duration::from_secs(3601));
        let wide = |text: &str| Limit::parse(text).unwrap().wide_spacing();
        assert_eq!(wide("2/3s"), Duration::from_millis(3_375));
        assert_eq!(wide("20/1s"), Duration::from_millis(1_125));
        assert_eq!(wide("10/400ms"), Duration::from_millis(500));
    }
}
