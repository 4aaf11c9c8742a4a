"""Rate limits of one route: the concurrency cap, then every limit level in one decision.

Runs after authentication (ARCHITECTURE B2), so ``ex.customer`` is the caller, or None on a
route without authentication, which only the global level and the concurrency cap cover.
Development tokens have no limits at all (A2). The decision itself belongs to the backend:
``RateLimiter.decide_locally`` (memory: answers at once) or the Redis backend's ``check``
(PAUSEs, then resumes the exchange or answers it when Redis replied).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastgw.pipeline import CONTINUE, RESPOND

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.ratelimit.limiter import RateLimiter
    from fastgw.ratelimit.policy import CustomerLimits, RouteLimits

Check = Callable[["Exchange", "CustomerLimits | None", "RouteLimits"], int]


class RateLimit:
    __slots__ = ("_check", "_limiter", "_policy", "_route")

    def __init__(self, limiter: RateLimiter, route: RouteLimits, check: Check) -> None:
        self._limiter = limiter
        self._policy = limiter.policy
        self._route = route
        self._check = check

    # HOT PATH
    def on_request(self, ex: Exchange) -> int:
        customer = ex.customer
        limits = None
        if customer is not None:
            limits = self._policy.customer_limits(customer)
            if limits.unlimited:
                return CONTINUE  # development tokens: no limit, the concurrency cap included
        if not self._limiter.admit(ex, limits):
            return RESPOND
        return self._check(ex, limits, self._route)
