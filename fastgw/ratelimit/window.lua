-- window.lua: the sliding-window counter of the global level (rate_limits.global with
-- algorithm: sliding_window). Included after bucket.lua (it uses ceil_ms); mirrored operation
-- for operation by model.py (_window, _estimate) and fastgw/_speedups/bucket_py.py.
-- State (a hash): w = the current fixed window's number, c = its count, p = the previous
-- window's count. The estimate of the sliding window ending now is p weighted by the share of
-- the previous window still inside it, plus c.
local WINDOW_TTL_MARGIN_MS = 5000   -- the key outlives the next window by this much

local function window_estimate(previous, current, elapsed, window_us)
  return previous * ((window_us - elapsed) / window_us) + current
end

-- A window level: wait 0 (allows), -1 (never: take above limit), else ms until it allows.
local function window_level(code, key, limit, window_us, take, now_us)
  local number = (now_us - math.fmod(now_us, window_us)) / window_us
  local state = redis.call('HMGET', key, 'w', 'c', 'p')
  local window, current, previous = tonumber(state[1]), tonumber(state[2]), tonumber(state[3])
  if window == nil or current == nil or previous == nil then
    window, current, previous = number, 0, 0
  elseif number == window + 1 then
    window, current, previous = number, 0, current
  elseif number > window + 1 then
    window, current, previous = number, 0, 0
  end  -- number <= window: the same window, or the clock went back: kept as it is
  local elapsed = now_us - window * window_us
  if elapsed < 0 then elapsed = 0 end
  local wait = 0
  if take > limit then
    wait = -1
  elseif window_estimate(previous, current, elapsed, window_us) + take > limit then
    local wait_us
    if current + take <= limit then  -- the previous window's share has to fade enough
      wait_us = (window_us - (limit - current - take) * window_us / previous) - elapsed
    else  -- this window is full: in the next one its count is the previous one's
      local fade = window_us - (limit - take) * window_us / current
      if fade < 0 then fade = 0 end
      wait_us = (window + 1) * window_us - now_us + fade
    end
    wait = ceil_ms(wait_us)
    if wait < 1 then wait = 1 end
  end
  return {code = code, key = key, limit = limit, take = take, have = current,
          previous = previous, window = window, window_us = window_us, elapsed = elapsed,
          wait = wait, reset = ceil_ms((window + 1) * window_us - now_us),
          bucket = false, sliding = true}
end

-- Take, and keep the key until the state is worthless: past the next window it reads as empty.
local function window_take(l)
  l.have = l.have + l.take
  redis.call('HSET', l.key, 'w', int(l.window), 'c', int(l.have), 'p', int(l.previous))
  local ttl_ms = l.reset + ceil_ms(l.window_us) + WINDOW_TTL_MARGIN_MS
  redis.call('PEXPIRE', l.key, int(ttl_ms))
end

local function window_view(l)
  local left = math.floor(l.limit - window_estimate(l.previous, l.have, l.elapsed, l.window_us))
  if left < 0 then left = 0 end
  return l.limit, left, l.reset, math.floor(left / l.take)
end
