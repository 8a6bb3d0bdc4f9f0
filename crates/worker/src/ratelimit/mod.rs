//! bunq's rate limits, shared by every replica through Redis (docs/architecture.md §5).
//!
//! bunq counts calls in a rolling window ("5 within any 3 consecutive seconds"), so the
//! limiter is a sliding-window log rather than a token bucket, whose bursts could exceed
//! such a window. Each caller *reserves* the earliest slot that keeps every window within
//! the limit, in one atomic script, then sleeps until that slot: callers are served in
//! order and no replica polls.

use crate::metrics::Metrics;
use crate::store::Redis;
use budget::{Budget, Waiter};
use bunq_protocol::error::Endpoint;
use limit::{Limit, RateLimitError, Reservation, Scope, SLOTS};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

pub mod budget;
pub mod limit;
mod line;

/// The longest a far slot's waiter is parked at a time unless configured: the default
/// `RETRY_QUEUE_MAX_DELAY`.
const DEFAULT_MAX_PARK: Duration = Duration::from_secs(300);

/// KEYS[1] the log; ARGV: window ms, limit, max wait ms, unique member.
/// Returns the wait in ms (>= 0) after reserving, or -(wait) when it exceeds max wait.
/// Runs after [`SLOTS`]: the server's clock, the one next-slot rule.
const RESERVE: &str = r#"
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local at = next_slot(recent(KEYS[1]))
local wait = at - now
if wait > max_wait then return -wait end
redis.call('ZADD', KEYS[1], at, ARGV[4])
redis.call('PEXPIRE', KEYS[1], wait + window)
return wait
"#;

/// KEYS[1] the log; ARGV: shift ms, limit, window ms. Fills the log with `limit` calls
/// at now + shift, so the next slot for every replica is `shift + window` away: bunq
/// said we are over its limit, and for how long.
const FILL: &str = r#"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local at = now + tonumber(ARGV[1])
for i = 1, tonumber(ARGV[2]) do
  redis.call('ZADD', KEYS[1], at, 'penalty:' .. at .. ':' .. i)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]))
return 0
"#;

/// KEYS[1] the log; ARGV: the reserved call's member, window ms. Moves the call to now
/// (never earlier) once bunq has answered it: bunq counted the call at some moment before
/// answering, so from here on the log holds a time no earlier than bunq's, and a slot
/// reserved after this is a full window after bunq's count of the call, however late the
/// call was on its way (a worker descheduled between its slot and the send, a slow
/// network). A call reserved before the answer still relies on the spacing margin.
const STAMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'XX', 'GT', 'CH', now, ARGV[1]) == 1 then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return 0
"#;

#[derive(Debug, Clone)]
/// The rate-limit side of the worker's settings.
pub(crate) struct RateLimits {
    pub(crate) session_server: Limit,
    pub(crate) other_post: Limit,
    /// The partner's calls (token resets): `PUT` and `GET /partner-user-provision`.
    pub(crate) put: Limit,
    pub(crate) get: Limit,
    pub(crate) scope: Scope,
    /// The retry queue's largest delay: how long a waiter for a far slot is parked at most.
    pub(crate) max_park: Duration,
}

impl RateLimits {
    /// The limiter every replica with the same Redis and prefix shares.
    pub(crate) fn limiter(&self, conn: Redis, key_prefix: &str, metrics: Arc<Metrics>) -> RateLimiter {
        RateLimiter::new(conn, key_prefix, self.session_server, self.other_post, self.scope, metrics)
            .with_partner_limits(self.put, self.get)
            .with_max_park(self.max_park)
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    conn: Redis,
    prefix: String,
    session_server: Limit,
    other_post: Limit,
    /// The partner's calls: `PUT` and `GET /partner-user-provision`.
    put: Limit,
    get: Limit,
    scope: Scope,
    script: Arc<redis::Script>,
    fill: Arc<redis::Script>,
    stamp: Arc<redis::Script>,
    metrics: Arc<Metrics>,
    /// Session-server calls with a deadline, when one budget is shared by all.
    budget: Option<Budget>,
}

impl RateLimiter {
    pub fn new(
        conn: impl Into<Redis>,
        prefix: &str,
        session_server: Limit,
        other_post: Limit,
        scope: Scope,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            conn: conn.into(),
            prefix: prefix.to_owned(),
            session_server,
            other_post,
            put: Limit { calls: 2, per: Duration::from_secs(3) },
            get: Limit { calls: 3, per: Duration::from_secs(3) },
            scope,
            script: Arc::new(redis::Script::new(&format!("{SLOTS}{RESERVE}"))),
            fill: Arc::new(redis::Script::new(FILL)),
            stamp: Arc::new(redis::Script::new(STAMP)),
            metrics,
            budget: None,
        }
        .with_max_park(DEFAULT_MAX_PARK)
    }

    /// The limits of the partner's `PUT` and `GET` (bunq: 2 and 3 per 3 s).
    pub fn with_partner_limits(mut self, put: Limit, get: Limit) -> Self {
        (self.put, self.get) = (put, get);
        self
    }

    /// The longest a waiter for a far slot is parked in the retry queue at a time (the
    /// queue's largest delay).
    pub fn with_max_park(mut self, max_park: Duration) -> Self {
        // Per credential, each provision has a budget of its own: nobody to order.
        self.budget = (self.scope == Scope::Global).then(|| {
            let log = self.key(Endpoint::SessionServer, 0);
            Budget::new(self.conn.clone(), log, self.session_server, max_park)
        });
        self
    }

    /// The session-server limit: calls per window.
    pub fn session_server_limit(&self) -> Limit {
        self.session_server
    }

    /// The shared session-server budget's waiting line, when there is one.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    fn key(&self, endpoint: Endpoint, provision_id: u64) -> String {
        let class = match endpoint {
            Endpoint::SessionServer => "session-server",
            Endpoint::PartnerUserProvisionUpdate => "put",
            Endpoint::PartnerUserProvisionRead => "get",
            // Every other call (ending a session is the only other the worker makes)
            // shares the smaller calls' budget.
            _ => "post",
        };
        match self.scope {
            Scope::Global => format!("{}ratelimit:{class}:{{global}}", self.prefix),
            Scope::Credential => format!("{}ratelimit:{class}:{{{provision_id}}}", self.prefix),
        }
    }

    fn limit(&self, endpoint: Endpoint) -> Limit {
        match endpoint {
            Endpoint::SessionServer => self.session_server,
            Endpoint::PartnerUserProvisionUpdate => self.put,
            Endpoint::PartnerUserProvisionRead => self.get,
            _ => self.other_post,
        }
    }

    /// bunq answered 429: no replica sharing this budget calls the endpoint again until
    /// bunq's window (or, when it named none, the configured one) has passed.
    pub async fn penalize(
        &self,
        endpoint: Endpoint,
        provision_id: u64,
        window: Option<Duration>,
    ) -> Result<(), RateLimitError> {
        let limit = self.limit(endpoint);
        let shift = window.unwrap_or(limit.per).saturating_sub(limit.per);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .fill
            .key(self.key(endpoint, provision_id))
            .arg(shift.as_millis() as u64)
            .arg(limit.calls)
            .arg(self.spacing(endpoint).as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A session-server call for `waiter`, due before `deadline`: served earliest deadline
    /// first when the budget is shared ([`Budget::acquire`]), else like any other call.
    pub async fn acquire_session_server(
        &self,
        waiter: Waiter,
        provision_id: u64,
        deadline: OffsetDateTime,
        max_wait: Duration,
    ) -> Result<Reservation, RateLimitError> {
        let Some(budget) = &self.budget else {
            return self.acquire(Endpoint::SessionServer, provision_id, max_wait).await;
        };
        let reservation = budget.acquire(waiter, deadline, max_wait).await?;
        self.metrics.observe_rate_limit_wait(Endpoint::SessionServer.path(), reservation.waited);
        Ok(reservation)
    }

    /// bunq answered the reserved call (or it failed on its way): its log entry moves to
    /// now, in the background (the next call that could depend on it is a slot away).
    pub fn answered(&self, reservation: Reservation) {
        let (conn, stamp, window) = (self.conn.clone(), self.stamp.clone(), reservation.spacing.as_millis() as u64);
        tokio::spawn(async move {
            let mut conn = conn;
            let stamped: Result<i64, _> =
                stamp.key(&reservation.key).arg(&reservation.member).arg(window).invoke_async(&mut conn).await;
            if let Err(e) = stamped {
                // The entry keeps its slot time: the spacing margin still covers it.
                tracing::debug!(event = "rate_limit_stamp_failed", error = %e);
            }
        });
    }

    /// How far apart reservations of `endpoint` are spaced: the partner's calls wider.
    fn spacing(&self, endpoint: Endpoint) -> Duration {
        let limit = self.limit(endpoint);
        match endpoint {
            Endpoint::PartnerUserProvisionUpdate | Endpoint::PartnerUserProvisionRead => limit.wide_spacing(),
            _ => limit.spacing(),
        }
    }

    /// `from` goes on as `to` in the shared budget's line ([`Budget::rename`]).
    pub(crate) async fn rename_session_server_waiter(
        &self,
        waiters: (Waiter, Waiter),
        deadline: OffsetDateTime,
        lease: Duration,
    ) -> Result<(), RateLimitError> {
        match &self.budget {
            Some(budget) => budget.rename(waiters, deadline, lease).await,
            None => Ok(()),
        }
    }

    /// Before a handshake: whether the shared budget can serve `waiter` before `deadline`
    /// within `max_wait` (else it parks or gives up now, before spending an installation
    /// and a device).
    pub(crate) async fn check_session_server(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        max_wait: Duration,
    ) -> Result<(), RateLimitError> {
        match &self.budget {
            Some(budget) => budget.check(waiter, deadline, max_wait).await,
            None => Ok(()),
        }
    }

    /// Reserves a slot for one call and sleeps until it; fails without reserving when
    /// the slot is further away than `max_wait`.
    pub async fn acquire(
        &self,
        endpoint: Endpoint,
        provision_id: u64,
        max_wait: Duration,
    ) -> Result<Reservation, RateLimitError> {
        let (limit, spacing) = (self.limit(endpoint), self.spacing(endpoint));
        let mut conn = self.conn.clone();
        let (key, member) = (self.key(endpoint, provision_id), uuid::Uuid::new_v4().to_string());
        let wait_ms: i64 = self
            .script
            .key(&key)
            .arg(spacing.as_millis() as u64)
            .arg(limit.calls)
            .arg(max_wait.as_millis() as u64)
            .arg(&member)
            .invoke_async(&mut conn)
            .await?;
        if wait_ms < 0 {
            return Err(RateLimitError::NoSlot {
                endpoint,
                wait: Duration::from_millis(wait_ms.unsigned_abs()),
                max_wait,
            });
        }
        let wait = Duration::from_millis(wait_ms as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.metrics.observe_rate_limit_wait(endpoint.path(), wait);
        Ok(Reservation::new(key, member, spacing, wait))
    }
}
