"""The rate limiter of one worker: every level decided together, then the answer and its headers.

What it owns
    ``RateLimiter``: the concurrency cap (``rate_limits.global.max_concurrent``), the decision
    through the in-process table (backend ``memory``; also the ``local`` fallback of the Redis
    backend), and ``finish``: what any backend's decision does to the exchange (the counters,
    the ``RateLimit-*`` headers, the 429 with ``Retry-After``). ``RateLimitCounts``:
    ``fastgw_ratelimit_total{level,result}`` of this worker.

Invariants
    * One decision per request covers every level (ARCHITECTURE B4); a refusal takes nothing
      from any level (in memory; see ``script.py`` for the Redis backend's one exception).
    * ``RateLimit-Limit``/``-Remaining``/``-Reset`` describe the tightest level (the one with
      the fewest calls left, or the refusing one) and go on every answer of a limited route,
      proxied or refused; a 429 adds ``Retry-After`` (whole seconds, rounded up; a request that
      can never pass, its cost being above the burst or the daily quota, gets a day).
    * ``max_concurrent`` is shared out between the workers like ``max_connections``: each holds
      ``ceil(max_concurrent / workers)`` slots, taken by a request here and given back when its
      exchange ends, however it ends (``Exchange.end_hook``). A full worker answers 503
      ``overloaded`` before any level is charged.
    * The all-local path (memory backend) creates no coroutine, Task or Event: one call into the
      table, under its locks for well under a microsecond.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fastgw.pipeline import CONTINUE, RESPOND
from fastgw.ratelimit.decision import Level
from fastgw.ratelimit.policy import NO_ENDPOINT, NO_QUOTA

if TYPE_CHECKING:
    from fastgw._speedups import LimitTable
    from fastgw.exchange import Exchange
    from fastgw.ratelimit.policy import CustomerLimits, LimitPolicy, RouteLimits
    from fastgw.replies import ReplyTable

__all__ = ["NEVER_RETRY_S", "RateLimitCounts", "RateLimiter"]

NEVER_RETRY_S: Final = 86_400
"""Retry-After of a request no wait will let through (cost above the burst or the quota)."""
LEVEL_LABELS: Final = {
    Level.GLOBAL: "global",
    Level.CUSTOMER: "customer",
    Level.ENDPOINT: "endpoint",
    Level.QUOTA: "quota",
}
RESULTS: Final = ("allowed", "limited")


class RateLimitCounts:
    """``fastgw_ratelimit_total`` of this worker, and the 503s of the concurrency cap.

    The request path bumps one counter per decision, indexed by the mask of the levels it
    covered and the mask of those that would refuse (a shadow level that would have refused
    counts as limited); ``as_dict`` turns those into per-level counts when asked."""

    __slots__ = ("by_masks", "concurrency_refused", "tier_refused")

    def __init__(self) -> None:
        self.by_masks = [0] * 256  # index: active levels << 4 | levels that would refuse
        self.concurrency_refused = 0
        self.tier_refused = 0  # of those, refused by a tier's shed_above with slots still free

    def as_dict(self) -> dict[tuple[str, str], int]:
        """``{(level, result): count}`` with the contract's label values (A4)."""
        totals = dict.fromkeys(
            ((label, result) for label in LEVEL_LABELS.values() for result in RESULTS), 0
        )
        for index, count in enumerate(self.by_masks):
            if count:
                active, refused = index >> 4, index & 15
                for level, label in LEVEL_LABELS.items():
                    if active & level.bit:
                        result = "limited" if refused & level.bit else "allowed"
                        totals[label, result] += count
        return totals


class RateLimiter:
    """One worker's limiter over one plan's policy."""

    __slots__ = (
        "_clock_ns",
        "_global_bit",
        "_global_burst",
        "_global_rate",
        "_global_window_us",
        "_inflight",
        "_max_inflight",
        "_release",
        "_replies",
        "_shadow",
        "_table",
        "counts",
        "policy",
    )

    def __init__(
        self,
        policy: LimitPolicy,
        table: LimitTable,
        replies: ReplyTable,
        *,
        workers: int,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.policy = policy
        self._table = table
        self._replies = replies
        self._clock_ns = clock_ns
        top = policy.global_limits
        self._global_rate = 0.0 if top is None else top.rate_per_s
        self._global_burst = 0 if top is None else top.burst
        self._global_bit = 0 if top is None else Level.GLOBAL.bit
        self._global_window_us = 0 if top is None else top.window_us
        self._shadow = policy.shadow
        limit = policy.max_concurrent
        self._max_inflight = -1 if limit is None else math.ceil(limit / max(1, workers))
        self._inflight = 0
        self._release = self._release_slot  # bound once: the exchange's end hook
        self.counts = RateLimitCounts()

    @property
    def inflight(self) -> int:
        return self._inflight

    # HOT PATH
    def admit(self, ex: Exchange, limits: CustomerLimits | None) -> bool:
        """Take one of this worker's concurrency slots for ``ex``; False (and the 503 set) when
        none is free for its tier: a tier with ``shed_above`` < 1 is refused once that share
        of the slots is in use, so lower tiers are shed first and the last slots stay for the
        higher ones (anonymous traffic ranks with the lowest tier)."""
        cap = self._max_inflight
        if cap < 0:
            return True
        share = self.policy.anonymous_shed_above if limits is None else limits.shed_above
        if share < 1.0:
            cap = max(1, int(cap * share))
        if self._inflight >= cap:
            self.counts.concurrency_refused += 1
            if self._inflight < self._max_inflight:
                self.counts.tier_refused += 1  # fastgw_shed_total{reason="tier"}
            ex.reply = self._replies.overloaded
            return False
        self._inflight += 1
        ex.end_hook = self._release
        return True

    def _release_slot(self) -> None:
        self._inflight -= 1

    # HOT PATH: the memory backend's whole decision.
    def decide_locally(
        self, ex: Exchange, customer: CustomerLimits | None, route: RouteLimits
    ) -> int:
        """Decide every level in the shared table now; CONTINUE or RESPOND (429)."""
        table = self._table
        now_us = self._clock_ns() // 1000
        if customer is None:
            level = table.decide(
                now_us, 0, 1, 1.0, 1, NO_ENDPOINT, 0.0, 0, NO_QUOTA,
                self._global_rate, self._global_burst, self._shadow, self._global_window_us,
            )  # fmt: skip
        else:
            level = table.decide(
                now_us, customer.fingerprint, route.cost, customer.rate_per_s, customer.burst,
                route.bucket_id, route.rate_per_s, route.burst, customer.daily_quota,
                self._global_rate, self._global_burst, self._shadow, self._global_window_us,
            )  # fmt: skip
        return self.finish(
            ex,
            self.active_levels(customer, route),
            level,
            table.would_refuse,
            table.retry_after_ms,
            table.header_level,
            table.limit,
            table.remaining,
            table.reset_ms,
        )

    def active_levels(self, customer: CustomerLimits | None, route: RouteLimits) -> int:
        """Mask of the levels a decision for ``customer`` on ``route`` covers."""
        if customer is None:
            return self._global_bit
        return self._global_bit | customer.levels | route.levels

    # HOT PATH
    def finish(  # noqa: PLR0917 - the reply layout of decision.py, field for field
        self,
        ex: Exchange,
        active: int,
        level: int,
        would_refuse: int,
        retry_after_ms: int,
        header_level: int,
        limit: int,
        remaining: int,
        reset_ms: int,
    ) -> int:
        """Apply a decision (the reply layout of ``decision.py``) to ``ex``."""
        self.counts.by_masks[active << 4 | would_refuse] += 1
        if header_level:
            ex.response_headers += b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\n" \
                b"RateLimit-Reset: %d\r\n" % (limit, remaining, -(-reset_ms // 1000))
        if level == 0:
            return CONTINUE
        retry_s = NEVER_RETRY_S if retry_after_ms < 0 else max(1, -(-retry_after_ms // 1000))
        ex.response_headers += b"Retry-After: %d\r\n" % retry_s
        replies = self._replies
        ex.reply = replies.quota_exceeded if level == Level.QUOTA else replies.rate_limited
        return RESPOND
