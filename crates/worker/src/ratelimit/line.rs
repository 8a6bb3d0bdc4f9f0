//! The session-server budget's line in Redis: the scripts `budget.rs` runs, after
//! [`super::limit::SLOTS`] (the server's clock and the next-slot rule). Each reads the
//! line by rank and skips by rank whoever can no longer be served, so its work follows
//! the slots before a deadline, not the length of the line (docs/architecture.md §5.6).

/// What the scripts that change the line share, after [`super::limit::SLOTS`] (KEYS as
/// for ADMIT): a member leaving it, a key kept alive, a member registered present.
pub(super) const MEMBERS: &str = r#"
local function forget(m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZREM', KEYS[4], m)
end
local function keep(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- Registers `m`, due by `deadline`, as present (held in its worker) for `ms`.
local function stay(m, deadline, ms)
  redis.call('ZADD', KEYS[2], deadline, m)
  redis.call('ZREM', KEYS[4], m)
  redis.call('ZADD', KEYS[3], now + ms, m)
  keep(KEYS[2], deadline - now + window)
  keep(KEYS[3], ms)
end
"#;

/// After [`MEMBERS`]. KEYS: log, waiting (score: deadline), present (score: lease end),
/// parked (score: wake).
/// ARGV: spacing ms, calls, member, deadline ms, take (0/1), hold ms, present lease ms,
/// max park ms, forget-after ms, log member, lead ms, budget ms (what is left of the
/// caller's retry budget: it is never held longer), absent cap (`budget::ABSENT_CAP`).
/// Returns {kind, ms, ahead}: kind 0 go (ms 0), 1 hold (ms until the slot; also beyond
/// the hold, within the budget, when parking would bring it back too late), 2 parked (ms
/// until it should be back), -1 hopeless (ms until the slot it would get). `ahead`: the
/// waiters served before it. With take 0 nothing is reserved and a waiter that may
/// proceed is not registered: it only asks whether to go on, park or give up.
///
/// Its work does not grow with the line (docs/architecture.md §5.6): it reads the line by
/// rank, a page at a time, and skips by rank whoever can no longer be served, so it reads
/// the waiters that take a slot before the caller's deadline (at most the slots in that
/// time), a page after each, and at most `ABSENT_CAP` waiters that will not be there for
/// their slot; expired entries are forgotten `CLEAN` per call.
pub(super) const ADMIT: &str = r#"
local me = ARGV[3]
local deadline = tonumber(ARGV[4])
local take = ARGV[5] == '1'
local hold = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local max_park = tonumber(ARGV[8])
local forget_after = tonumber(ARGV[9])
local lead = tonumber(ARGV[11])
local budget = tonumber(ARGV[12])
local absent_cap = tonumber(ARGV[13])
-- The most waiters read at once; expired entries forgotten per call at most (each is
-- forgotten once, so the next calls catch up, and until then `uses` judges them expired).
local PAGE, CLEAN = 64, 64

-- Whether `m`, ahead in the line, will be there for a slot at `at`: present (its lease
-- not run out), or parked, due back by then and not yet given up on.
local function uses(m, at)
  local lease_end = redis.call('ZSCORE', KEYS[3], m)
  if lease_end then return tonumber(lease_end) > now end
  if at <= now then return false end
  local wake = redis.call('ZSCORE', KEYS[4], m)
  if not wake then return false end
  wake = tonumber(wake)
  return wake <= at and wake > now - forget_after
end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, CLEAN)) do forget(m) end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, CLEAN)) do forget(m) end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - forget_after, 'LIMIT', 0, CLEAN)) do
  forget(m)
end

local times = recent(KEYS[1])

-- The waiters before `me` in deadline order take their slots first, if they can use
-- them: present, or parked and due back before the slot, and not past their deadline.
-- Slots only get later along the line, so whoever's deadline is within a lead of the
-- next slot can no longer be served: at the first such waiter the scan jumps by score
-- past all of them, unread. Once that range reaches `me`, it is hopeless and the scan
-- stops. Past `absent_cap` waiters that will not be there for their slot, the rest ahead
-- count as absent: the slot found is then no later than the true one, so the rate still
-- holds and nobody is told hopeless wrongly; only an earlier deadline beyond them may
-- lose a slot to `me`.
local function page(from, skip, size)
  return redis.call('ZRANGEBYSCORE', KEYS[2], from, '(' .. deadline, 'WITHSCORES', 'LIMIT', skip, size)
end
local ahead, absent = 0, 0
local at = next_slot(times)
-- Pages start small after a jump (in a line denser than the slots, the next waiter is
-- usually the only one to read) and double while every waiter read is still servable.
local size, last, ties = 2, nil, 0
local rows = page(at + lead, 0, size)
while #rows > 0 do
  local jump = false
  for i = 1, #rows, 2 do
    local d = tonumber(rows[i + 1])
    if at > d - lead then
      jump = true
      break
    end
    if d == last then ties = ties + 1 else last, ties = d, 1 end
    if rows[i] ~= me then
      if uses(rows[i], at) then
        times[#times + 1] = at
        ahead = ahead + 1
        at = next_slot(times)
      else
        absent = absent + 1
      end
    end
    if at > deadline - lead or absent >= absent_cap then break end
  end
  if at > deadline - lead or absent >= absent_cap then break end
  if jump then
    -- Everything read so far is due before the one that cannot be served.
    size = 2
    rows = page(at + lead, 0, size)
  elseif #rows < 2 * size then
    break
  else
    size = math.min(size * 2, PAGE)
    rows = page(last, ties, size)
  end
end

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
  if take then stay(me, deadline, lease) end
  return {1, wait, ahead}
end
local park = math.min(wait - math.floor(hold / 2), max_park)
-- The retry queue expires messages from its head only: a copy parked now comes back no
-- sooner than the latest one parked before it, so it is parked until then and its wake
-- is true. If that is too late for its slot, it stays (held) instead, but only while the
-- slot is within its retry budget: beyond it, it is parked all the same and its delivery,
-- lock and prefetch slot are released. Back after its slot (which went to whoever was
-- present), it is planned again by deadline: only earlier deadlines come before it, so
-- it is not starved; each such return costs a retry trip, and its deadline bounds them.
local latest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if #latest > 0 and latest[1] ~= me then
  local behind = tonumber(latest[2]) - now
  if behind >= wait - math.floor(hold / 4) and wait <= budget then
    -- Its lease outlasts the wait: it sleeps half of it between polls.
    if take then stay(me, deadline, wait + lease) end
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

/// After [`MEMBERS`]. KEYS as for ADMIT; ARGV: spacing ms, calls, old member, new member,
/// deadline ms, lease ms. A waiter going on under another name: the old entry leaves the
/// line, the new one is registered present (held in its worker) with its deadline for
/// `lease`, taking no slot. Returns 0.
pub(super) const RENAME: &str = r#"
forget(ARGV[3])
stay(ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
return 0
"#;

/// KEYS as for ADMIT; ARGV: spacing ms, calls, lead ms, max slots counted.
/// The plan for every live waiter, served in deadline order: {waiting, servable,
/// hopeless, ms until the last servable one's slot, ms the earliest deadline has left
/// (-1: nobody waits), slots free before that deadline, least ms between a servable
/// waiter's slot and its deadline (-1: nobody servable)}. Read only.
///
/// Like ADMIT it reads by rank and counts whoever can no longer be served by rank,
/// unread: those are counted waiting and hopeless even if their lease ran out since the
/// last admission (the next one forgets them). It stops planning after `cap` servable
/// waiters; the rest are counted waiting only.
pub(super) const PLAN: &str = r#"
local lead = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local PAGE = 16

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
local rank = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. now)
local total = redis.call('ZCARD', KEYS[2])
while rank < total and servable < cap do
  local at = next_slot(times)
  local lost = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. (at + lead))
  if lost > rank then
    if earliest < 0 then earliest = tonumber(redis.call('ZRANGE', KEYS[2], rank, rank, 'WITHSCORES')[2]) end
    waiting = waiting + lost - rank
    hopeless = hopeless + lost - rank
    rank = lost
  end
  local page = redis.call('ZRANGE', KEYS[2], rank, rank + PAGE - 1, 'WITHSCORES')
  for i = 1, #page, 2 do
    local d = tonumber(page[i + 1])
    if servable >= cap or at > d - lead then break end
    rank = rank + 1
    if live(page[i]) then
      waiting = waiting + 1
      if earliest < 0 then earliest = d end
      times[#times + 1] = at
      servable = servable + 1
      last = at - now
      if slack < 0 or d - at < slack then slack = d - at end
      at = next_slot(times)
    end
  end
end
waiting = waiting + total - rank

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
