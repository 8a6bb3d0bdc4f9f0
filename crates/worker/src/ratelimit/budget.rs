//! The shared session-server budget, served earliest deadline first across replicas
//! (docs/architecture.md §5.6).
//!
//! Every replica behind one egress IP shares bunq's session-server budget, and each
//! waiting call has a deadline: a new session's credential expiry, a renewal's session
//! expiry. Served in arrival order, a backlog larger than the budget loses credentials an
//! earliest-deadline order would have served. So waiters register in Redis by deadline,
//! and a slot goes to the earliest deadline among those who will be there to use it:
//! - *present* waiters are held in a worker and poll;
//! - *parked* waiters went to the retry queue and come back shortly before their slot. One
//!   whose slot arrives while it is away (held up behind a longer delay in the queue)
//!   loses that slot to whoever is present: a slot is never kept for someone not there.
//!
//! A waiter whose slot falls after its deadline hears so at once: whatever it does, the
//! budget serves the earlier deadlines first, so it is dead-lettered without waiting.
//! Slots follow the same sliding-window log and next-slot rule as every other call
//! (`limit.rs`); this module decides
//! who takes the next one.

use super::limit::{Limit, RateLimitError, Reservation, SLOTS};
use crate::metrics::{BudgetLine, Metrics};
use crate::store::Redis;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// KEYS: log, waiting (score: deadline), present (score: lease end), parked (score: wake).
/// ARGV: spacing ms, calls, member, deadline ms, take (0/1), hold ms, present lease ms,
/// max park ms, forget-after ms, log member, lead ms.
/// Returns {kind, ms, ahead}: kind 0 go (ms 0), 1 hold (ms until the slot; also beyond
/// the hold when parking would bring it back too late), 2 parked (ms until it should be
/// back), -1 hopeless (ms until the slot it would get). `ahead`: the
/// waiters served before it. With take 0 nothing is reserved and a waiter that may
/// proceed is not registered: it only asks whether to go on, park or give up.
const ADMIT: &str = r#"
local me = ARGV[3]
local deadline = tonumber(ARGV[4])
local take = ARGV[5] == '1'
local hold = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local max_park = tonumber(ARGV[8])
local forget_after = tonumber(ARGV[9])
local lead = tonumber(ARGV[11])

local function forget(m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZREM', KEYS[4], m)
end
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- Registers `me` as present (held in its worker) for `ms`.
local function stay(ms)
  redis.call('ZADD', KEYS[2], deadline, me)
  redis.call('ZREM', KEYS[4], me)
  redis.call('ZADD', KEYS[3], now + ms, me)
  keep(KEYS[2], deadline - now + window)
  keep(KEYS[3], ms)
end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do forget(m) end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do forget(m) end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - forget_after)) do forget(m) end

local times = recent(KEYS[1])

-- The waiters before `me` in deadline order take their slots first, if they can use
-- them: present, or parked and due back before the slot, and not past their deadline.
local ahead = 0
local before = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. deadline, 'WITHSCORES')
for i = 1, #before, 2 do
  local m = before[i]
  if m ~= me then
    local at = next_slot(times)
    if at <= tonumber(before[i + 1]) - lead then
      local uses = redis.call('ZSCORE', KEYS[3], m)
      if not uses then
        local wake = redis.call('ZSCORE', KEYS[4], m)
        uses = wake and at > now and tonumber(wake) <= at
      end
      if uses then
        times[#times + 1] = at
        ahead = ahead + 1
      end
    end
  end
end

local at = next_slot(times)
if at > deadline - lead then
  forget(me)
  return {-1, at - now, ahead}
end
if at <= now then
  if take then
    forget(me)
    redis.call('ZADD', KEYS[1], now, ARGV[10])
    keep(KEYS[1], window)
  end
  return {0, 0, ahead}
end
local wait = at - now
if wait <= hold then
  if take then stay(lease) end
  return {1, wait, ahead}
end
local park = math.min(wait - math.floor(hold / 2), max_park)
-- The retry queue expires messages from its head only: a copy parked now comes back no
-- sooner than the latest one parked before it. If that is too late for its slot, it
-- stays (held) instead; otherwise it is parked until then, so its wake is true.
local latest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if #latest > 0 and latest[1] ~= me then
  local behind = tonumber(latest[2]) - now
  if behind >= wait - math.floor(hold / 4) then
    -- Its lease outlasts the wait: it sleeps half of it between polls.
    if take then stay(wait + lease) end
    return {1, wait, ahead}
  end
  if behind > park then park = behind end
end
redis.call('ZADD', KEYS[2], deadline, me)
redis.call('ZREM', KEYS[3], me)
redis.call('ZADD', KEYS[4], now + park, me)
keep(KEYS[2], deadline - now + window)
keep(KEYS[4], park + forget_after)
return {2, park, ahead}
"#;

/// KEYS as for ADMIT; ARGV: spacing ms, calls, lead ms, max slots counted.
/// The plan for every live waiter, served in deadline order: {waiting, servable,
/// hopeless, ms until the last servable one's slot, ms the earliest deadline has left
/// (-1: nobody waits), slots free before that deadline, least ms between a servable
/// waiter's slot and its deadline (-1: nobody servable)}. Read only.
const PLAN: &str = r#"
local lead = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])

local base = recent(KEYS[1])
local function live(m)
  local lease = redis.call('ZSCORE', KEYS[3], m)
  if lease then return tonumber(lease) > now end
  return redis.call('ZSCORE', KEYS[4], m) ~= false
end

local function from_log()
  local copy = {}
  for i, v in ipairs(base) do copy[i] = v end
  return copy
end

local times = from_log()
local waiting, servable, hopeless, last, earliest, slack = 0, 0, 0, 0, -1, -1
local ws = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf', 'WITHSCORES')
for i = 1, #ws, 2 do
  if live(ws[i]) then
    local d = tonumber(ws[i + 1])
    waiting = waiting + 1
    if earliest < 0 then earliest = d end
    local at = next_slot(times)
    if at <= d - lead then
      times[#times + 1] = at
      servable = servable + 1
      last = at - now
      if slack < 0 or d - at < slack then slack = d - at end
    else
      hopeless = hopeless + 1
    end
  end
end

local before = 0
if earliest >= 0 then
  times = from_log()
  while before < cap do
    local at = next_slot(times)
    if at > earliest - lead then break end
    times[#times + 1] = at
    before = before + 1
  end
  earliest = earliest - now
end
return {waiting, servable, hopeless, last, earliest, before, slack}
"#;

/// What a waiter is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is free now (and, when taking, reserved).
    Go,
    /// The slot is this far off: stay and ask again.
    Hold(Duration),
    /// The slot is further off than is worth holding a delivery for: come back after this.
    Park(Duration),
    /// No slot before the deadline: the next one this waiter could get is this far off.
    Hopeless { slot_in: Duration, ahead: u64 },
}

/// Slots counted for [`BudgetLine::servable_before_earliest`] at most: enough for bunq's hours
/// of credential life, bounded for a script that runs every few seconds.
pub(crate) const PLAN_SLOT_CAP: u64 = 20_000;

/// Who waits: one entry per provision and purpose, so a redelivery or a second
/// replica handling the same provision takes its place instead of a second one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    Open(u64),
    Renew(u64),
}

impl Waiter {
    fn member(self) -> String {
        match self {
            Waiter::Open(id) => format!("open:{id}"),
            Waiter::Renew(id) => format!("renew:{id}"),
        }
    }
}

/// The session-server budget's waiting line, in Redis.
#[derive(Clone)]
pub struct Budget {
    conn: Redis,
    log_key: String,
    limit: Limit,
    /// The longest a parked waiter stays away: the retry queue's largest delay.
    max_park: Duration,
    admit: Arc<redis::Script>,
    plan: Arc<redis::Script>,
}

/// How close before its deadline a waiter's call may start at the latest: signing and
/// the trip to bunq fit in it on a loaded machine (tens of milliseconds), and a second
/// of lead would cost 3% of a 30 s credential window.
const LEAD: Duration = Duration::from_millis(250);
/// A parked waiter not back this long after its wake time is forgotten (it comes back
/// and registers again).
const FORGET_AFTER: Duration = Duration::from_secs(600);

impl Budget {
    pub(crate) fn new(conn: Redis, log_key: String, limit: Limit, max_park: Duration) -> Self {
        Self {
            conn,
            log_key,
            limit,
            max_park,
            admit: Arc::new(redis::Script::new(&format!("{SLOTS}{ADMIT}"))),
            plan: Arc::new(redis::Script::new(&format!("{SLOTS}{PLAN}"))),
        }
    }

    /// Time between slots on average: the window spread over its calls.
    fn slot_interval(&self) -> Duration {
        self.limit.spacing() / self.limit.calls
    }

    /// Longest a delivery is held for its slot before it is parked: two slots, at least
    /// 3 s. Parked waiters come back half of it before their slot, which absorbs their
    /// being late behind a longer delay in the retry queue; and the waiters held meanwhile
    /// are who takes a slot a late one misses.
    pub(crate) fn hold_horizon(&self) -> Duration {
        (self.slot_interval() * 2).max(Duration::from_secs(3))
    }

    /// How often a held waiter asks again: often enough that a slot a parked waiter did
    /// not come back for is taken within half a slot.
    fn poll_interval(&self) -> Duration {
        (self.slot_interval() / 2).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    fn keys(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let base = &self.log_key;
        invocation
            .key(base)
            .key(format!("{base}:waiting"))
            .key(format!("{base}:present"))
            .key(format!("{base}:parked"));
    }

    /// Asks once. `take`: reserve the slot when it is free now (else only ask whether to
    /// go on, park or give up); `hold`: the longest this caller would stay for its slot.
    pub async fn admit(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        take: bool,
        hold: Duration,
    ) -> Result<Admission, RateLimitError> {
        self.admit_as(waiter, deadline, take, hold, &uuid::Uuid::new_v4().to_string()).await
    }

    /// [`Self::admit`], the call going into the log as `member` when it takes a slot.
    async fn admit_as(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        take: bool,
        hold: Duration,
        member: &str,
    ) -> Result<Admission, RateLimitError> {
        let deadline_ms = (deadline.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        // Outlives the longest sleep between two polls (half the hold horizon).
        let lease = self.hold_horizon() / 2 + self.poll_interval() * 4 + Duration::from_secs(1);
        let mut invocation = self.admit.prepare_invoke();
        self.keys(&mut invocation);
        invocation
            .arg(self.limit.spacing().as_millis() as u64)
            .arg(self.limit.calls)
            .arg(waiter.member())
            .arg(deadline_ms)
            .arg(u8::from(take))
            .arg(hold.as_millis() as u64)
            .arg(lease.as_millis() as u64)
            .arg(self.max_park.as_millis() as u64)
            .arg(FORGET_AFTER.as_millis() as u64)
            .arg(member)
            .arg(LEAD.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (kind, ms, ahead): (i64, i64, u64) = invocation.invoke_async(&mut conn).await?;
        let ms = Duration::from_millis(ms.max(0) as u64);
        Ok(match kind {
            0 => Admission::Go,
            1 => Admission::Hold(ms),
            2 => Admission::Park(ms),
            _ => Admission::Hopeless { slot_in: ms, ahead },
        })
    }

    /// Waits for a slot before `deadline` and reserves it; `max_hold` bounds the stay
    /// (what is left of the caller's retry budget).
    pub async fn acquire(
        &self,
        waiter: Waiter,
        deadline: OffsetDateTime,
        max_hold: Duration,
    ) -> Result<Reservation, RateLimitError> {
        let started = tokio::time::Instant::now();
        let member = uuid::Uuid::new_v4().to_string();
        loop {
            let hold = self.hold_horizon().min(max_hold.saturating_sub(started.elapsed()));
            match self.admit_as(waiter, deadline, true, hold, &member).await? {
                Admission::Go => return Ok(Reservation::new(self.log_key.clone(), member, started.elapsed())),
                // Half the wait at most: a slot that moves earlier (a waiter ahead left or
                // is away) is noticed before it comes.
                Admission::Hold(wait) => tokio::time::sleep(wait.min(self.poll_interval().max(wait / 2))).await,
                Admission::Park(after) => return Err(RateLimitError::Parked { after }),
                Admission::Hopeless { slot_in, ahead } => {
                    return Err(RateLimitError::NoSlotBeforeDeadline { deadline, slot_in, ahead })
                }
            }
        }
    }

    /// Before a handshake starts: whether to go on (the slot is near), park, or give up,
    /// reserving nothing, so no installation or device is spent on a credential the
    /// budget cannot serve in time.
    pub(crate) async fn check(&self, waiter: Waiter, deadline: OffsetDateTime) -> Result<(), RateLimitError> {
        match self.admit(waiter, deadline, false, self.hold_horizon()).await? {
            Admission::Go | Admission::Hold(_) => Ok(()),
            Admission::Park(after) => Err(RateLimitError::Parked { after }),
            Admission::Hopeless { slot_in, ahead } => {
                Err(RateLimitError::NoSlotBeforeDeadline { deadline, slot_in, ahead })
            }
        }
    }

    /// The whole line, planned in deadline order.
    pub async fn plan(&self) -> Result<BudgetLine, RateLimitError> {
        let mut invocation = self.plan.prepare_invoke();
        self.keys(&mut invocation);
        invocation
            .arg(self.limit.spacing().as_millis() as u64)
            .arg(self.limit.calls)
            .arg(LEAD.as_millis() as u64)
            .arg(PLAN_SLOT_CAP);
        let mut conn = self.conn.clone();
        let (waiting, servable, hopeless, last, earliest, before, slack): (u64, u64, u64, i64, i64, u64, i64) =
            invocation.invoke_async(&mut conn).await?;
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        Ok(BudgetLine {
            waiting,
            servable,
            hopeless,
            reserved_ahead: ms(last),
            earliest_deadline_in: (earliest >= 0).then(|| ms(earliest)),
            servable_before_earliest: before,
            least_slack: (slack >= 0).then(|| ms(slack)),
        })
    }

    /// Publishes the plan as gauges every `every` until shutdown; every replica does,
    /// dashboards take the max.
    pub(crate) async fn watch(
        self,
        metrics: Arc<Metrics>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match self.plan().await {
                Ok(line) => metrics.budget_line(&line),
                Err(e) => tracing::debug!(event = "budget_plan_failed", error = %e),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}
