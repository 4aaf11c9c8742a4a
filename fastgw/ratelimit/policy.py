"""Config → the numbers one rate-limit decision needs, resolved once per plan and per customer.

What it owns
    ``LimitPolicy``: the tiers, the per-endpoint limits, the global bucket and the shadow mask
    as plain numbers (ARCHITECTURE A2 ``rate_limits``), and ``customer_limits``: a customer
    context's numbers with its token's ``quotas`` claim applied, cached on the context.

Invariants
    * The ``quotas`` claim overrides its tier's numbers by the tier's own key names:
      ``requests_per_second``, ``burst_size``, ``requests_per_day`` (other names are business
      quotas for the backends and ignored here). A claim's value outside what a tier may hold
      makes the token invalid (``check_overrides``, called by the auth layer), so the limiter
      never meets a number it cannot use.
    * A customer's numbers are resolved on its first request and kept on its context (one
      object per verified token, shared by cache hits): no dict lookup per request.
    * Development tokens (tier ``dev``) have no limits at all (ARCHITECTURE A2: "no limits"),
      the global level included; they are for development only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fastgw._speedups import customer_fingerprint, hash64
from fastgw.auth.context import DEV_TIER
from fastgw.ratelimit.decision import (
    Level,
    endpoint_burst,
    window_limit,
)

if TYPE_CHECKING:
    from fastgw.auth.context import CustomerContext
    from fastgw.config.model import RateLimitsConfig, TierConfig

__all__ = [
    "CustomerLimits",
    "GlobalLimits",
    "LimitPolicy",
    "RouteLimits",
    "endpoint_bucket_id",
]

LEVEL_NAMES: Final = {
    "customer": Level.CUSTOMER,
    "endpoint": Level.ENDPOINT,
    "quota": Level.QUOTA,
    "global": Level.GLOBAL,
}
_DEV_TIER: Final = DEV_TIER.encode("ascii")
NO_QUOTA: Final = -1  # daily_quota of a customer without one (the kernel's "level off")
NO_ENDPOINT: Final = -1


@dataclass(frozen=True, slots=True)
class CustomerLimits:
    """One customer's numbers: its fingerprint for the shared table, and its tier's limits
    with its ``quotas`` claim applied. ``unlimited``: a development token."""

    customer_id: bytes
    fingerprint: int
    rate_per_s: float
    burst: int
    daily_quota: int  # NO_QUOTA: none
    unlimited: bool = False
    #: share of the concurrency cap in use above which this customer's requests are shed
    shed_above: float = 1.0
    #: mask of the levels this customer's decisions cover (the route adds its own)
    levels: int = field(init=False)

    def __post_init__(self) -> None:
        quota = 0 if self.daily_quota == NO_QUOTA else Level.QUOTA.bit
        object.__setattr__(self, "levels", Level.CUSTOMER.bit | quota)


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """One route's part: its endpoint's cost and its per-customer endpoint bucket, if any."""

    endpoint: bytes
    bucket_id: int  # names the endpoint's bucket in the shared table; NO_ENDPOINT: no bucket
    cost: int
    rate_per_s: float
    burst: int
    #: mask of the levels this route adds to a customer's decision
    levels: int = field(init=False)

    def __post_init__(self) -> None:
        levels = 0 if self.bucket_id == NO_ENDPOINT else Level.ENDPOINT.bit
        object.__setattr__(self, "levels", levels)


@dataclass(frozen=True, slots=True)
class GlobalLimits:
    """The global level: a token bucket, or with ``window_us`` > 0 a sliding window admitting
    ``burst`` requests per window."""

    rate_per_s: float
    burst: int
    window_us: int = 0


def endpoint_bucket_id(name: str) -> int:
    """The id of an endpoint's bucket in the shared table: from its name, not its place in the
    config, so a reload that adds or removes endpoints keeps every bucket where it was (the
    table outlives reloads). 40 bits of ``hash64``; a collision would only mix two endpoints'
    salts, and the customer fingerprint still separates customers."""
    return hash64(b"endpoint:" + name.encode("ascii")) & ((1 << 40) - 1)


class _Tier:
    __slots__ = ("burst", "daily_quota", "rate_per_s", "shed_above")

    def __init__(self, tier: TierConfig) -> None:
        self.shed_above = tier.shed_above
        self.rate_per_s = float(tier.requests_per_second)
        self.burst = tier.effective_burst_size
        quota = tier.requests_per_day
        self.daily_quota = NO_QUOTA if quota is None else quota


class LimitPolicy:
    """``rate_limits`` as numbers; built once per plan."""

    __slots__ = (
        "_default", "_routes", "_tiers", "anonymous_shed_above", "global_limits",
        "max_concurrent", "shadow",
    )  # fmt: skip

    def __init__(self, config: RateLimitsConfig) -> None:
        self._tiers = {
            name.encode("ascii"): _Tier(tier) for name, tier in config.customer_tiers.items()
        }
        self._default = self._tiers[config.default_tier.encode("ascii")]
        # Routes without authentication have no tier: their traffic is shed first.
        self.anonymous_shed_above = min(t.shed_above for t in self._tiers.values())
        self._routes: dict[str, RouteLimits] = {}
        for name, endpoint in config.endpoints.items():
            rate = endpoint.requests_per_second
            self._routes[name] = RouteLimits(
                name.encode("ascii"),
                NO_ENDPOINT if rate is None else endpoint_bucket_id(name),
                endpoint.cost_weight,
                0.0 if rate is None else float(rate),
                0 if rate is None else endpoint_burst(rate),
            )
        top = config.global_limit
        burst = top.effective_burst_size
        rate = top.requests_per_second
        self.global_limits: GlobalLimits | None = None
        if rate is not None and top.algorithm == "sliding_window":
            self.global_limits = GlobalLimits(
                float(rate),
                window_limit(rate, top.window_size_s),
                round(top.window_size_s * 1_000_000),
            )
        elif rate is not None and burst is not None:
            self.global_limits = GlobalLimits(float(rate), burst)
        self.max_concurrent = top.max_concurrent
        self.shadow = 0
        for name in config.shadow:
            self.shadow |= LEVEL_NAMES[name].bit

    def route_limits(self, endpoint: str) -> RouteLimits:
        """The limits of a route whose endpoint is ``endpoint`` (cost 1, no bucket if unnamed)."""
        limits = self._routes.get(endpoint)
        if limits is None:
            return RouteLimits(endpoint.encode("ascii"), NO_ENDPOINT, 1, 0.0, 0)
        return limits

    # HOT PATH: one attribute read after a customer's first request.
    def customer_limits(self, customer: CustomerContext) -> CustomerLimits:
        limits = customer.rate_limits
        if limits is None:
            limits = self._resolve(customer)
            customer.rate_limits = limits
        return limits

    def _resolve(self, customer: CustomerContext) -> CustomerLimits:
        fingerprint = customer_fingerprint(hash64(customer.customer_id))
        if customer.tier == _DEV_TIER:
            return CustomerLimits(customer.customer_id, fingerprint, 1.0, 1, NO_QUOTA, True)
        tier = self._tiers.get(customer.tier, self._default)
        rate, burst, quota = tier.rate_per_s, tier.burst, tier.daily_quota
        overrides = customer.quotas
        if overrides:
            rate = float(overrides.get("requests_per_second", rate))
            burst = int(overrides.get("burst_size", burst))
            quota = int(overrides.get("requests_per_day", quota))
        return CustomerLimits(
            customer.customer_id, fingerprint, rate, burst, quota, shed_above=tier.shed_above
        )
