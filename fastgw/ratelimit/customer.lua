--[[ customer.lua: every per-customer rate-limit level of one request, decided atomically, and
the global level too when the caller passes its key (a standalone Redis: one script, one
decision; a Cluster keeps the global key in a slot of its own and sends global.lua beside).

Levels, in code order: 1 customer token bucket (takes cost), 2 per-customer-per-endpoint token
bucket (takes 1 per call), 3 daily quota per customer per UTC day (takes cost), 4 the global
bucket (takes 1). A level whose numbers are absent (empty ARGV) is off. Only when every
enforced level allows does the script take anything; a refusal writes nothing at all.

KEYS (all under the hash tag {c:<id>}, so one Cluster slot; built by fastgw/ratelimit/script.py)
  1 {c:<id>}:b             customer bucket        (hash: t = micro-tokens, ts = last µs)
  2 {c:<id>}:e:<endpoint>  endpoint bucket        (same)
  3 {c:<id>}:q:            quota key PREFIX: the script appends the UTC day number, read from
                           the clock (a string counter of units used that day). The derived key
                           is not in KEYS; it hashes to KEYS[3]'s slot, which is what Cluster
                           requires.
  4 (optional) the global bucket key, {g}:b: standalone Redis only (another slot)
ARGV
  1 cost          integer >= 1
  2 rate          customer refill, tokens/s (decimal)      3 burst    integer tokens
  4 endpoint rate tokens/s, or empty: no endpoint level    5 endpoint burst, integer
  6 daily quota   integer units, or empty: no quota
  7 shadow        mask of level bits (customer 1, endpoint 2, quota 4, global 8)
  8 now_us        TEST HOOK: 0 in production (the clock is Redis TIME); > 0 replaces TIME
  9 global rate   tokens/s, or empty/absent: no global level here   10 global burst, integer
 11 global window µs of its sliding window, or empty/absent/0: a token bucket (window.lua)
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
local QUOTA_TTL_MARGIN_MS = 60000   -- the day's key outlives 00:00 UTC by this much

local cost = tonumber(ARGV[1])
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local endpoint_rate, endpoint_burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local quota = tonumber(ARGV[6])
local shadow = tonumber(ARGV[7])
local now_us = clock(ARGV[8])

local levels = {bucket_level(1, KEYS[1], rate, burst, cost, now_us)}
if endpoint_rate ~= nil then
  levels[#levels + 1] = bucket_level(2, KEYS[2], endpoint_rate, endpoint_burst, 1, now_us)
end
if quota ~= nil then
  local day = math.floor(now_us / DAY_US)
  local key = KEYS[3] .. int(day)
  local used = tonumber(redis.call('GET', key)) or 0
  local to_midnight_ms = ceil_ms((day + 1) * DAY_US - now_us)
  local wait = 0
  if cost > quota then
    wait = -1
  elseif used + cost > quota then
    wait = to_midnight_ms
  end
  levels[#levels + 1] = {code = 3, key = key, limit = quota, have = used, take = cost,
                         wait = wait, reset = to_midnight_ms, bucket = false}
end
local global_rate = tonumber(ARGV[9] or '')
if global_rate ~= nil and KEYS[4] ~= nil then
  local window_us = tonumber(ARGV[11] or '')
  if window_us ~= nil and window_us > 0 then
    levels[#levels + 1] = window_level(4, KEYS[4], tonumber(ARGV[10]), window_us, 1, now_us)
  else
    levels[#levels + 1] = bucket_level(4, KEYS[4], global_rate, tonumber(ARGV[10]), 1, now_us)
  end
end

local function take(l)
  if l.bucket then
    return bucket_take(l)
  end
  if l.sliding then
    return window_take(l)
  end
  l.have = l.have + l.take
  redis.call('SET', l.key, int(l.have), 'PX', int(l.reset + QUOTA_TTL_MARGIN_MS))
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

return decide(levels, shadow, now_us, {take = take, show = show})
