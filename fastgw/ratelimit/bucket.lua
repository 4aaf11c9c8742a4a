-- bucket.lua: the token-bucket code customer.lua and global.lua share. Not a script of its
-- own: fastgw/ratelimit/script.py (INCLUDE) puts it where a script includes it, before
-- hashing, so EVALSHA names the whole text Redis runs.
-- State: micro-tokens and the µs of the last write, both integers below 2**53, so exact in a
-- Lua double; arithmetic is done in doubles in a fixed order, mirrored by model.py.
local UT = 1000000                  -- micro-tokens per token, and µs per second
local BUCKET_TTL_MARGIN_MS = 5000   -- a key outlives the time to refill to full by this much

local function int(x)               -- an integer as a decimal string (never 1.7e+15)
  return string.format('%d', x)
end

local function ceil_ms(us)
  return math.ceil(us / 1000)
end

-- Tokens at now_us and the stamp to write: a missing key is full; refill floor(elapsed * rate)
-- micro-tokens, at most the burst; a clock going backwards adds nothing and keeps the stamp.
-- The bucket is the hash fields <prefix>t and <prefix>ts of key.
local function bucket_read(key, prefix, rate, burst_ut, now_us)
  local state = redis.call('HMGET', key, prefix .. 't', prefix .. 'ts')
  local tokens, last = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or last == nil then
    return burst_ut, now_us
  end
  if now_us > last then
    tokens = tokens + math.floor((now_us - last) * rate)
    last = now_us
  end
  if tokens > burst_ut then
    tokens = burst_ut
  end
  return tokens, last
end

-- ms from now until need_ut micro-tokens have refilled; lag_us = stamp - now (> 0 when the
-- clock went back: refill restarts only once the clock passes the stamp again)
local function refill_ms(need_ut, rate, lag_us)
  return ceil_ms(lag_us + math.ceil(need_ut / rate))
end

-- A bucket level: wait 0 (allows), -1 (never: take above burst), else ms until it allows.
local function bucket_level(code, key, prefix, rate, burst, take, now_us)
  local burst_ut, take_ut = burst * UT, take * UT
  local tokens, stamp = bucket_read(key, prefix, rate, burst_ut, now_us)
  local lag = stamp - now_us
  local wait = 0
  if take_ut > burst_ut then
    wait = -1
  elseif tokens < take_ut then
    wait = refill_ms(take_ut - tokens, rate, lag)
  end
  return {code = code, key = key, prefix = prefix, rate = rate, burst = burst,
          burst_ut = burst_ut, take = take_ut, have = tokens, stamp = stamp, lag = lag,
          wait = wait, bucket = true}
end

-- Take the level's cost and write it back; returns the TTL (ms) its key needs: until the
-- bucket is full again (then it reads like a missing one) plus a margin. The caller expires.
local function bucket_take(l)
  local tokens = l.have - l.take
  redis.call('HSET', l.key, l.prefix .. 't', int(tokens), l.prefix .. 'ts', int(l.stamp))
  l.have = tokens
  return refill_ms(l.burst_ut - tokens, l.rate, l.lag) + BUCKET_TTL_MARGIN_MS
end

-- What the headers show of a level after the decision: limit, remaining, reset_ms, calls left.
local function bucket_view(l)
  return l.burst, math.floor(l.have / UT), refill_ms(l.burst_ut - l.have, l.rate, l.lag),
         math.floor(l.have / l.take)
end

-- a's wait is strictly longer than b's (-1 = never is the longest)
local function longer(a, b)
  if b == -1 then return false end
  return a == -1 or a > b
end

local function is_shadow(mask, code)
  return math.floor(mask / 2 ^ (code - 1)) % 2 == 1
end

-- Decide over the levels (in code order) and take; returns the 8-integer reply.
local function decide(levels, shadow, now_us, view)
  local refused, refused_wait, mask, shadow_wait = 0, 0, 0, 0
  for _, l in ipairs(levels) do
    if l.wait ~= 0 then
      mask = mask + 2 ^ (l.code - 1)
      if is_shadow(shadow, l.code) then
        if shadow_wait == 0 or longer(l.wait, shadow_wait) then shadow_wait = l.wait end
      elseif refused == 0 or longer(l.wait, refused_wait) then
        refused, refused_wait = l.code, l.wait
      end
    end
  end
  local header, limit, remaining, reset, best_calls, best_reset = 0, 0, 0, 0, -1, -1
  for _, l in ipairs(levels) do
    if refused == 0 and (mask == 0 or not is_shadow(shadow, l.code)) then
      view.take(l)
    end
    if not is_shadow(shadow, l.code) then
      local lim, rem, res, calls = view.show(l)
      -- refused: the refusing level; else the fewest calls left, then the longest reset
      if (refused ~= 0 and l.code == refused)
          or (refused == 0 and (best_calls < 0 or calls < best_calls
                                or (calls == best_calls and res > best_reset))) then
        header, limit, remaining, reset, best_calls, best_reset = l.code, lim, rem, res, calls, res
      end
    end
  end
  local retry = refused_wait
  if refused == 0 then retry = shadow_wait end
  return {refused, mask, retry, header, limit, remaining, reset, now_us}
end

local function clock(hook)
  local now_us = tonumber(hook)
  if now_us ~= nil and now_us > 0 then
    return now_us
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * UT + tonumber(t[2])
end
