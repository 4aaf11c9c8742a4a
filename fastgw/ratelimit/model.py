"""Pure-Python reference of ``customer.lua`` and ``global.lua``: same inputs, same decision.

What it owns
    ``ReferenceModel``: the scripts' algorithm over a dict instead of Redis, with the clock
    injected (``now_us``). It is the readable spec; the tests run random call sequences through
    both and require identical decisions (ARCHITECTURE principle 3).

Invariants
    * Every step mirrors the Lua arithmetic operation for operation, on floats where Lua works on
      doubles: IEEE-754 rounds each operation the same way in both, so results agree to the bit
      (``math.floor(elapsed * rate)``, ``math.ceil(need / rate)``, ...). State is integers
      (micro-tokens, µs, units), all below 2**53 by the request types' bounds.
    * The model never forgets state, where Redis expires keys. That changes no decision: a
      customer's hash lives until its longest-lived level would read as new (a bucket full
      again, the quota's day over) plus a margin, and a missing bucket reads as full. A
      customer's quota counts one day, the one it last counted: a new day starts at zero, and so
      does a day the clock went back to across midnight (the Lua and the table do the same).
      (The one difference: a bucket whose burst was raised after its key expired reads full in
      Redis, still refilling here. Tests keep the burst of a key fixed.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from fastgw.ratelimit.decision import (
    CustomerRequest,
    Decision,
    GlobalRequest,
    Level,
    longer_wait,
)

__all__ = ["DAY_US", "UT", "ReferenceModel"]

UT: Final = 1_000_000  # micro-tokens per token, and µs per second
DAY_US: Final = 86_400 * UT


def _ceil_ms(us: float) -> int:
    return math.ceil(us / 1000)


def _refill_ms(need_ut: int, rate: float, lag_us: int) -> int:
    """ms from now until ``need_ut`` micro-tokens have refilled (``lag_us``: stamp - now)."""
    return _ceil_ms(lag_us + float(math.ceil(need_ut / rate)))  # float: a Lua double sum


def _estimate(previous: int, current: int, elapsed_us: int, window_us: int) -> float:
    """Requests in the sliding window ending now: the previous fixed window's count times the
    share of it still inside (a float, computed in the same order as the Lua and the C)."""
    return previous * (float(window_us - elapsed_us) / window_us) + current


@dataclass(slots=True)
class _Level:
    """One level of one decision (the Lua table of the same fields)."""

    code: Level
    take: int  # micro-tokens (bucket) or units (quota) this request takes
    have: int  # micro-tokens in the bucket / units used today, before or after the take
    wait: int  # 0: allows; -1: never; else ms until it allows
    limit: int  # burst (tokens) or daily quota (units)
    key: tuple[object, ...]
    rate: float = 0.0  # buckets only
    stamp: int = 0  # buckets only: the µs to write
    lag_us: int = 0  # buckets only: stamp - now (> 0 after the clock went back)
    reset_ms: int = 0  # quota and window: ms until 00:00 UTC / the window's end
    day: int = 0  # quota only: the UTC day it counts
    window_us: int = 0  # sliding window only (> 0): its length
    window: int = 0  # sliding window only: the current window's number
    previous: int = 0  # sliding window only: the previous window's count
    elapsed_us: int = 0  # sliding window only: µs since the current window began

    @property
    def is_bucket(self) -> bool:
        return self.code is not Level.QUOTA and self.window_us == 0


class ReferenceModel:
    """Buckets as ``key -> (micro-tokens, last µs)``, quotas as ``customer -> (day, units)``,
    sliding windows as ``key -> (window number, its count, the previous window's count)``."""

    __slots__ = ("buckets", "used", "windows")

    def __init__(self) -> None:
        self.buckets: dict[tuple[object, ...], tuple[int, int]] = {}
        self.used: dict[tuple[object, ...], tuple[int, int]] = {}  # day, units that day
        self.windows: dict[tuple[object, ...], tuple[int, int, int]] = {}  # window, count, prev

    def decide(self, request: CustomerRequest, now_us: int) -> Decision:
        """``customer.lua`` at ``now_us``."""
        return self._decide(self._customer_levels(request, now_us), request.shadow, now_us)

    def decide_all(
        self, request: CustomerRequest, global_request: GlobalRequest | None, now_us: int
    ) -> Decision:
        """The memory backend's decision (``fastgw._speedups.LimitTable.decide``): the customer's
        levels and the global bucket decided together, so a refusal by any takes from none."""
        levels = self._customer_levels(request, now_us)
        shadow = request.shadow & ~Level.GLOBAL.bit
        if global_request is not None:
            levels.append(self._global_level(global_request, now_us, b""))
            if global_request.shadow:
                shadow |= Level.GLOBAL.bit
        return self._decide(levels, shadow, now_us)

    def _customer_levels(self, request: CustomerRequest, now_us: int) -> list[_Level]:
        cid = request.customer_id
        key: tuple[object, ...]
        levels = [
            self._bucket(
                Level.CUSTOMER,
                ("b", cid),
                rate=request.rate_per_s,
                burst=request.burst,
                take=request.cost,
                now_us=now_us,
            )
        ]
        endpoint_rate, endpoint_burst = request.endpoint_rate_per_s, request.endpoint_burst
        if endpoint_rate is not None and endpoint_burst is not None:
            key = ("e", cid, request.endpoint)
            levels.append(
                self._bucket(
                    Level.ENDPOINT,
                    key,
                    rate=endpoint_rate,
                    burst=endpoint_burst,
                    take=1,
                    now_us=now_us,
                )
            )
        quota = request.daily_quota
        if quota is not None:
            day = math.floor(now_us / DAY_US)
            key = ("q", cid)
            counted_day, used = self.used.get(key, (day, 0))
            if counted_day != day:  # a new day (or the clock went back across midnight)
                used = 0
            to_midnight_ms = _ceil_ms((day + 1) * DAY_US - now_us)
            cost = request.cost
            wait = -1 if cost > quota else to_midnight_ms if used + cost > quota else 0
            levels.append(
                _Level(Level.QUOTA, cost, used, wait, quota, key, reset_ms=to_midnight_ms, day=day)
            )
        return levels

    def decide_global(self, request: GlobalRequest, now_us: int, name: bytes = b"") -> Decision:
        """``global.lua`` at ``now_us`` (``name`` tells global buckets apart, like their key)."""
        level = self._global_level(request, now_us, name)
        return self._decide([level], Level.GLOBAL.bit if request.shadow else 0, now_us)

    def _global_level(self, request: GlobalRequest, now_us: int, name: bytes) -> _Level:
        if request.window_us:
            return self._window(
                ("w", name),
                limit=request.burst,
                window_us=request.window_us,
                take=request.cost,
                now_us=now_us,
            )
        return self._bucket(
            Level.GLOBAL,
            ("g", name),
            rate=request.rate_per_s,
            burst=request.burst,
            take=request.cost,
            now_us=now_us,
        )

    # -------------------------------------------------------------------------- the Lua, mirrored

    def _bucket(
        self,
        code: Level,
        key: tuple[object, ...],
        *,
        rate: float,
        burst: int,
        take: int,
        now_us: int,
    ) -> _Level:
        burst_ut, take_ut = burst * UT, take * UT
        state = self.buckets.get(key)
        if state is None:
            tokens, stamp = burst_ut, now_us
        else:
            tokens, stamp = state
            if now_us > stamp:
                tokens = tokens + math.floor((now_us - stamp) * rate)
                stamp = now_us
            tokens = min(tokens, burst_ut)
        lag_us = stamp - now_us
        wait = 0
        if take_ut > burst_ut:
            wait = -1
        elif tokens < take_ut:
            wait = _refill_ms(take_ut - tokens, rate, lag_us)
        return _Level(
            code, take_ut, tokens, wait, burst, key, rate=rate, stamp=stamp, lag_us=lag_us
        )

    def _window(
        self, key: tuple[object, ...], *, limit: int, window_us: int, take: int, now_us: int
    ) -> _Level:
        """The sliding-window counter (``window.lua``): the count of the current fixed window
        plus the previous window's count weighted by the share of it still inside the sliding
        window; allowed while that estimate plus this request stays within ``limit``."""
        number = (now_us - now_us % window_us) // window_us
        state = self.windows.get(key)
        if state is None:
            window, current, previous = number, 0, 0
        else:
            window, current, previous = state
            if number == window + 1:
                window, current, previous = number, 0, current
            elif number > window + 1:
                window, current, previous = number, 0, 0
            # number <= window: the same window, or the clock went back (kept as it is)
        elapsed = max(0, now_us - window * window_us)
        estimate = _estimate(previous, current, elapsed, window_us)
        wait = 0
        if take > limit:
            wait = -1
        elif estimate + take > limit:
            if current + take <= limit:  # the previous window's share has to fade enough
                fade_us = window_us - float(limit - current - take) * window_us / previous
                wait_us = fade_us - elapsed
            else:  # this window is full: in the next one its count is the previous one's
                fade_us = window_us - float(limit - take) * window_us / current
                wait_us = (window + 1) * window_us - now_us + max(0.0, fade_us)
            wait = max(1, _ceil_ms(wait_us))
        return _Level(
            Level.GLOBAL, take, current, wait, limit, key,
            reset_ms=_ceil_ms((window + 1) * window_us - now_us),
            window_us=window_us, window=window, previous=previous, elapsed_us=elapsed,
        )  # fmt: skip

    def _take(self, level: _Level) -> None:
        if level.window_us:
            level.have += level.take
            self.windows[level.key] = (level.window, level.have, level.previous)
        elif level.is_bucket:
            level.have -= level.take
            self.buckets[level.key] = (level.have, level.stamp)
        else:
            level.have += level.take
            self.used[level.key] = (level.day, level.have)

    @staticmethod
    def _show(level: _Level) -> tuple[int, int, int, int]:
        """limit, remaining, reset_ms, calls left: what the headers would show of ``level``."""
        if level.is_bucket:
            burst_ut = level.limit * UT
            return (
                level.limit,
                math.floor(level.have / UT),
                _refill_ms(burst_ut - level.have, level.rate, level.lag_us),
                math.floor(level.have / level.take),
            )
        if level.window_us:
            estimate = _estimate(level.previous, level.have, level.elapsed_us, level.window_us)
            left = max(0, math.floor(level.limit - estimate))
            return level.limit, left, level.reset_ms, math.floor(left / level.take)
        left = max(0, level.limit - level.have)
        return level.limit, left, level.reset_ms, math.floor(left / level.take)

    def _decide(self, levels: list[_Level], shadow: int, now_us: int) -> Decision:
        refused, refused_wait, mask, shadow_wait = Level.NONE, 0, 0, 0
        for level in levels:
            if level.wait != 0:
                mask |= level.code.bit
                if shadow & level.code.bit:
                    if shadow_wait == 0 or longer_wait(level.wait, shadow_wait):
                        shadow_wait = level.wait
                elif refused is Level.NONE or longer_wait(level.wait, refused_wait):
                    refused, refused_wait = level.code, level.wait
        header, limit, remaining, reset_ms = Level.NONE, 0, 0, 0
        best_calls, best_reset = -1, -1
        for level in levels:
            shadowed = bool(shadow & level.code.bit)
            if refused is Level.NONE and (mask == 0 or not shadowed):
                self._take(level)
            if shadowed:
                continue
            lim, rem, res, calls = self._show(level)
            # refused: the refusing level; else the fewest calls left, then the longest reset
            if (refused is not Level.NONE and level.code is refused) or (
                refused is Level.NONE
                and (
                    best_calls < 0
                    or calls < best_calls
                    or (calls == best_calls and res > best_reset)
                )
            ):
                header, limit, remaining, reset_ms = level.code, lim, rem, res
                best_calls, best_reset = calls, res
        retry = refused_wait if refused is not Level.NONE else shadow_wait
        return Decision(
            refused,
            mask,
            None if retry < 0 else retry,
            header,
            limit,
            remaining,
            reset_ms,
            now_us,
        )
