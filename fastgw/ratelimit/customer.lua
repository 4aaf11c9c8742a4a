--[[ customer.lua: every per-customer rate-limit level of one request, decided atomically, and
the global level too when the caller passes its key (a standalone Redis: one script, one
decision; a Cluster keeps the global key in a slot of its own and sends global.lua beside).

Levels, in code order: 1 customer token bucket (takes cost), 2 per-customer-per-endpoint token
bucket (takes 1 per call), 3 daily quota per customer per UTC day (takes cost), 4 the global
bucket (takes 1). A level whose numbers are absent (empty ARGV) is off. Only when every
enforced level allows does the script take anything; a refusal writes nothing at all.

KEYS (built by fastgw/ratelimit/script.py)
  1 {c:<id>}   the customer's hash, every per-customer level in it:
                 t, ts                  customer bucket: micro-tokens, last µs
                 e:<endpoint>:t, :ts    endpoint bucket, one pair per limited endpoint
                 qd, qu                 quota: the UTC day number and the units used that day
               ONE key per customer, and not one per level, for Redis Cluster: while a slot
               migrates, a script whose declared keys are partly missing on the source gets
               TRYAGAIN, and a customer's levels are never all there at once. One key is
               either there (served by the source) or not (ASK: served by the target).
               Its TTL is the longest any of its levels needs (never shortened here).
  2 (optional) the global level's key ({g}:b, or {g}:w:<µs> for a sliding window):
               standalone Redis only (another slot)
ARGV
  1 cost          integer >= 1
  2 rate          customer refill, tokens/s (decimal)      3 burst    integer tokens
  4 endpoint      the endpoint's name (its fields' prefix)
  5 endpoint rate tokens/s, or empty: no endpoint level    6 endpoint burst, integer
  7 daily quota   integer units, or empty: no quota
  8 shadow        mask of level bits (customer 1, endpoint 2, quota 4, global 8)
  9 now_us        TEST HOOK: 0 in production (the clock is Redis TIME); > 0 replaces TIME
 10 global rate   tokens/s, or empty/absent: no global level here   11 global burst, integer
 12 global window µs of its sliding window, or empty/absent/0: a token bucket (window.lua)
Reply: 8 integers, see fastgw/ratelimit/decision.py.

Clock: redis.call('TIME') before writing is allowed because scripts replicate their effects
(the default since Redis 5, the only mode since 7): replicas and the AOF get the HSET/PEXPIRE/
SET the script made, not the script. Requires Redis >= 5.

Shadow: a shadow level never refuses. If every level allows, every level takes. If an enforced
level refuses, nothing is taken. If only shadow levels refuse, the request is allowed, the
enforced levels take, and the shadow levels take nothing: their state stays what it would be
had they been enforced (an allowed request takes, a refused one does not), so with every level
shadowed the counters evolve exactly as when enforcing.
]]

--@include bucket.lua
--@include window.lua

local DAY_US = 86400 * UT
local QUOTA_TTL_MARGIN_MS = 60000   -- the day's count outlives 00:00 UTC by this much

local key = KEYS[1]
local cost = tonumber(ARGV[1])
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local endpoint_rate, endpoint_burst = tonumber(ARGV[5]), tonumber(ARGV[6])
local quota = tonumber(ARGV[7])
local shadow = tonumber(ARGV[8])
local now_us = clock(ARGV[9])

local levels = {bucket_level(1, key, '', rate, burst, cost, now_us)}
if endpoint_rate ~= nil then
  local prefix = 'e:' .. ARGV[4] .. ':'
  levels[#levels + 1] = bucket_level(2, key, prefix, endpoint_rate, endpoint_burst, 1, now_us)
end
if quota ~= nil then
  local day = math.floor(now_us / DAY_US)
  local state = redis.call('HMGET', key, 'qd', 'qu')
  local used = 0
  if tonumber(state[1]) == day then used = tonumber(state[2]) or 0 end
  local to_midnight_ms = ceil_ms((day + 1) * DAY_US - now_us)
  local wait = 0
  if cost > quota then
    wait = -1
  elseif used + cost > quota then
    wait = to_midnight_ms
  end
  levels[#levels + 1] = {code = 3, key = key, limit = quota, have = used, take = cost,
                         wait = wait, reset = to_midnight_ms, day = day, bucket = false}
end
local global_rate = tonumber(ARGV[10] or '')
if global_rate ~= nil and KEYS[2] ~= nil then
  local window_us = tonumber(ARGV[12] or '')
  if window_us ~= nil and window_us > 0 then
    levels[#levels + 1] = window_level(4, KEYS[2], tonumber(ARGV[11]), window_us, 1, now_us)
  else
    levels[#levels + 1] = bucket_level(4, KEYS[2], '', global_rate, tonumber(ARGV[11]), 1,
                                       now_us)
  end
end

local ttl_ms = 0  -- the longest the customer's hash must live for what this call wrote

local function take(l)
  if l.sliding then
    return window_take(l)
  end
  local need
  if l.bucket then
    need = bucket_take(l)
  else
    l.have = l.have + l.take
    redis.call('HSET', l.key, 'qd', int(l.day), 'qu', int(l.have))
    need = l.reset + QUOTA_TTL_MARGIN_MS
  end
  if l.key ~= key then
    redis.call('PEXPIRE', l.key, int(need))  -- the global bucket: a key of its own
  elseif need > ttl_ms then
    ttl_ms = need
  end
end

local function show(l)
  if l.bucket then
    return bucket_view(l)
  end
  if l.sliding then
    return window_view(l)
  end
  local left = l.limit - l.have
  if left < 0 then left = 0 end
  return l.limit, left, l.reset, math.floor(left / l.take)
end

local reply = decide(levels, shadow, now_us, {take = take, show = show})
if ttl_ms > 0 and redis.call('PTTL', key) < ttl_ms then
  redis.call('PEXPIRE', key, int(ttl_ms))
end
return reply
