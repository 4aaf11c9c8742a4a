--[[ global.lua: the global rate-limit level (rate_limits.global), one token bucket across all
traffic, on a key of its own (its own Cluster slot). The caller pipelines it with customer.lua,
so both cost one round trip; the two are not atomic together (see fastgw/ratelimit/script.py).

KEYS
  1 the global level's key (bucket: hash t = micro-tokens, ts = last µs; window: w, c, p)
ARGV
  1 cost     integer >= 1 (1 per request)
  2 rate     refill, tokens/s (decimal)      3 burst    integer tokens
  4 shadow   1: count what would be refused, refuse nothing (level bit 8 of the reply's mask)
  5 now_us   TEST HOOK: 0 in production (the clock is Redis TIME); > 0 replaces TIME
  6 window   µs of the sliding window (algorithm: sliding_window; burst is then the limit per
             window, and KEYS[1] the window's hash), or empty/absent: the token bucket
Reply: 8 integers, see fastgw/ratelimit/decision.py (level code 4, mask bit 8).

Clock and shadow: as in customer.lua (effects replication, Redis >= 5; a shadow refusal takes
nothing).
]]

--@include bucket.lua
--@include window.lua

local now_us = clock(ARGV[5])
local shadow = 0
if tonumber(ARGV[4]) == 1 then shadow = 8 end
local window_us = tonumber(ARGV[6] or '')
local level
if window_us ~= nil and window_us > 0 then
  level = window_level(4, KEYS[1], tonumber(ARGV[3]), window_us, tonumber(ARGV[1]), now_us)
  return decide({level}, shadow, now_us, {take = window_take, show = window_view})
end
level = bucket_level(4, KEYS[1], '', tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[1]),
                     now_us)
local function take(l)
  redis.call('PEXPIRE', l.key, int(bucket_take(l)))
end
return decide({level}, shadow, now_us, {take = take, show = bucket_view})
