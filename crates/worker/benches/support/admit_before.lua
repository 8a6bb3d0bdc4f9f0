-- The budget's ADMIT script as it was before it read the line by rank (every earlier
-- deadline read on every poll), after SLOTS: the budget-cost bench's baseline only.
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
