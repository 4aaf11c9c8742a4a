"""The request and decision types shared by every rate-limit backend, and the reply decoder.

What it owns
    ``CustomerRequest`` (the numbers of one request's per-customer levels), ``GlobalRequest``,
    ``Level`` (the level codes and their mask bits), ``Decision`` (what a backend decided), and
    ``decode_reply``: the one place that reads the scripts' reply (layout below).

Invariants
    * Requests carry numbers, never tier names: the caller has already resolved the tier and
      applied the token's ``quotas`` claim, so a backend has nothing left to look up.
    * A request's numbers are checked when it is built (finite, in range), so that a script
      never sees a value that would make Redis arithmetic inexact: every bucket stays below
      2**53 micro-tokens (``MAX_BURST`` tokens), where a Lua double is still an exact integer.
    * ``Decision.level`` is ``Level.NONE`` exactly when the request is allowed. Shadow levels
      never refuse; what they would have refused shows in ``would_refuse`` only.

Reply layout (both scripts; a flat array of integers, the cheapest reply to parse)
    1. ``level``         0 allowed, else the code of the enforced level that refused (the one
                         with the longest wait; ties go to the lower code)
    2. ``would_refuse``  mask of every level that would refuse, enforced or shadow
    3. ``retry_after_ms``  refused: ms until the refusing levels would all allow; allowed with
                         a shadow refusal: the same for the shadow levels; else 0. -1: never
                         (the cost exceeds the level's burst or daily quota)
    4. ``header_level``  the level the RateLimit-* headers describe (0: none)
    5. ``limit``         that level's limit: bucket burst (tokens) or daily quota (units)
    6. ``remaining``     its whole tokens/units left after this decision
    7. ``reset_ms``      ms until it is full again (bucket) or until 00:00 UTC (quota)
    8. ``now_us``        the clock the script used (Redis ``TIME``, or the test hook), in µs
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, cast

__all__ = [
    "MAX_BURST",
    "MAX_COST",
    "MAX_DAILY_QUOTA",
    "MAX_RATE_PER_S",
    "MAX_WINDOW_US",
    "MIN_RATE_PER_S",
    "REPLY_LENGTH",
    "SHADOW_ALL",
    "CustomerRequest",
    "Decision",
    "GlobalRequest",
    "Level",
    "check_overrides",
    "decode_reply",
    "endpoint_burst",
    "longer_wait",
    "window_limit",
]

MAX_BURST: Final = 1_000_000_000
"""Largest bucket, in tokens: 1e15 micro-tokens, under 2**53 (exact in a Lua double)."""
MAX_COST: Final = MAX_BURST
MAX_DAILY_QUOTA: Final = 10**15
MAX_WINDOW_US: Final = 86_400 * 1_000_000
"""Longest sliding window: a day (so window arithmetic stays well inside a double's integers)."""
MIN_RATE_PER_S: Final = 1e-6
"""Slowest refill: one token in about 11.6 days (keeps bucket TTLs in PEXPIRE's range)."""
MAX_RATE_PER_S: Final = 1e9
REPLY_LENGTH: Final = 8
_Reply = tuple[int, int, int, int, int, int, int, int]


class Level(IntEnum):
    """A rate-limit level, as coded in the scripts' replies; ``bit`` is its mask bit."""

    NONE = 0
    CUSTOMER = 1
    ENDPOINT = 2
    QUOTA = 3
    GLOBAL = 4

    @property
    def bit(self) -> int:
        return 0 if self == 0 else 1 << (self - 1)


SHADOW_ALL: Final = 0b1111
"""A ``shadow`` mask naming every level: count what would be limited, limit nothing."""
_LEVELS: Final = (Level.CUSTOMER, Level.ENDPOINT, Level.QUOTA, Level.GLOBAL)


def endpoint_burst(rate_per_s: float) -> int:
    """The per-customer-per-endpoint bucket size: one second of the rate, at least 1 (the same
    rule as ``burst_size`` left unset in ``rate_limits.customer_tiers``)."""
    return max(1, math.ceil(rate_per_s))


def window_limit(rate_per_s: float, window_s: float) -> int:
    """Requests a sliding window of ``window_s`` admits at ``rate_per_s``: the product rounded
    up, after rounding away float noise (10/s over 100 ms is 1, not 2)."""
    return math.ceil(round(rate_per_s * window_s, 6))


def longer_wait(a: int, b: int) -> bool:
    """Wait ``a`` (ms) is strictly longer than ``b``; -1 (never) is the longest."""
    if b == -1:
        return False
    return a == -1 or a > b


def check_overrides(quotas: Mapping[str, float]) -> None:
    """ValueError when a ``quotas`` claim sets a limit to a value no tier could hold."""
    rate = quotas.get("requests_per_second")
    if rate is not None and not MIN_RATE_PER_S <= rate <= MAX_RATE_PER_S:
        raise ValueError(f"requests_per_second must be in {MIN_RATE_PER_S}..{MAX_RATE_PER_S}")
    burst = quotas.get("burst_size")
    if burst is not None and not _whole_in(burst, 1, MAX_BURST):
        raise ValueError(f"burst_size must be an integer in 1..{MAX_BURST}")
    day = quotas.get("requests_per_day")
    if day is not None and not _whole_in(day, 0, MAX_DAILY_QUOTA):
        raise ValueError(f"requests_per_day must be an integer in 0..{MAX_DAILY_QUOTA}")


def _whole_in(value: float, low: int, high: int) -> bool:
    """``value`` is a whole number in ``low..high`` (NaN and infinities are not)."""
    return low <= value <= high and value == int(value)


def _check_rate(name: str, rate_per_s: float) -> None:
    if not MIN_RATE_PER_S <= rate_per_s <= MAX_RATE_PER_S:  # NaN fails too
        raise ValueError(f"{name} must be in {MIN_RATE_PER_S}..{MAX_RATE_PER_S}, got {rate_per_s}")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomerRequest:
    """One request's per-customer levels, as numbers (tier and ``quotas`` claim resolved).

    ``cost`` (the endpoint's ``cost_weight``) is taken from the customer bucket and the daily
    quota; the endpoint bucket takes 1 per call, because ``requests_per_second`` of an endpoint
    counts calls (ARCHITECTURE A2 gives ``cost_weight`` to the bucket and the quota only).
    ``shadow`` is a mask of ``Level.bit``: those levels count what they would refuse but
    refuse nothing (see ``customer.lua`` for exactly what they take).
    """

    customer_id: bytes
    endpoint: bytes
    cost: int = 1
    rate_per_s: float
    burst: int
    endpoint_rate_per_s: float | None = None
    daily_quota: int | None = None
    shadow: int = 0

    def __post_init__(self) -> None:
        _check_int("cost", self.cost, 1, MAX_COST)
        _check_rate("rate_per_s", self.rate_per_s)
        _check_int("burst", self.burst, 1, MAX_BURST)
        if self.endpoint_rate_per_s is not None:
            _check_rate("endpoint_rate_per_s", self.endpoint_rate_per_s)
        if self.daily_quota is not None:
            _check_int("daily_quota", self.daily_quota, 0, MAX_DAILY_QUOTA)
        _check_int("shadow", self.shadow, 0, SHADOW_ALL)

    @property
    def endpoint_burst(self) -> int | None:
        rate = self.endpoint_rate_per_s
        return None if rate is None else endpoint_burst(rate)


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalRequest:
    """The global level (``rate_limits.global``): one token bucket across all traffic, or with
    ``window_us`` > 0 a sliding window admitting at most ``burst`` requests in any window of
    ``window_us`` (the previous fixed window's count weighted by its overlap, see model.py)."""

    rate_per_s: float
    burst: int
    cost: int = 1
    shadow: bool = False
    window_us: int = 0

    def __post_init__(self) -> None:
        _check_rate("rate_per_s", self.rate_per_s)
        _check_int("burst", self.burst, 1, MAX_BURST)
        _check_int("cost", self.cost, 1, MAX_COST)
        _check_int("window_us", self.window_us, 0, MAX_WINDOW_US)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a backend decided for one request (fields: the reply layout above)."""

    level: Level
    would_refuse: int
    retry_after_ms: int | None  # None: never allowed (cost above the burst or quota)
    header_level: Level
    limit: int
    remaining: int
    reset_ms: int
    now_us: int

    @property
    def allowed(self) -> bool:
        return self.level is Level.NONE

    @property
    def refusing_levels(self) -> tuple[Level, ...]:
        """Every level that would refuse, enforced or shadow (for the limited counters)."""
        return tuple(level for level in _LEVELS if self.would_refuse & level.bit)

    @property
    def error_code(self) -> str | None:
        """The 429 body's code (ARCHITECTURE A3), None when allowed."""
        if self.level is Level.NONE:
            return None
        return "quota_exceeded" if self.level is Level.QUOTA else "rate_limited"

    @property
    def retry_after_s(self) -> int | None:
        """``Retry-After`` in whole seconds, rounded up; None: never."""
        ms = self.retry_after_ms
        return None if ms is None else -(-ms // 1000)

    @property
    def reset_s(self) -> int:
        """``RateLimit-Reset`` in whole seconds, rounded up."""
        return -(-self.reset_ms // 1000)


def decode_reply(reply: object) -> Decision:
    """A script's reply (a client's raw answer) as a ``Decision``; ValueError when it is not the
    layout above."""
    if (
        not isinstance(reply, list | tuple)
        or len(reply) != REPLY_LENGTH
        or any(type(item) is not int for item in reply)
    ):
        raise ValueError(f"rate-limit script reply is not {REPLY_LENGTH} integers: {reply!r}")
    level, mask, retry_ms, header, limit, remaining, reset_ms, now_us = cast(_Reply, tuple(reply))
    return Decision(
        Level(level),
        mask,
        None if retry_ms < 0 else retry_ms,
        Level(header),
        limit,
        remaining,
        reset_ms,
        now_us,
    )
