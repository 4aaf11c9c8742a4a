"""The configuration model: frozen dataclasses, one per YAML section.

This module owns what a fastgw config file *means* at the top level (``routing``,
``rate_limits``, ``routes``, and the ``Config`` that holds them); the ``gateway`` section lives in
``gateway.py`` and is re-exported here, so consumers import every class from this module.
Each field's metadata (vocabulary in ``fields.py``) is the single source for the loader, for
``check-config`` and for ``docs/configuration.md``: nothing else restates a key, a default or a
bound.

Invariants: every instance is immutable (lists are tuples, mappings are ``MappingProxyType``);
durations are ``float`` seconds named ``*_s``; sizes are ``int`` bytes named ``*_bytes``.
Config objects are for start-up; the hot path gets plan objects built from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from fastgw.config.fields import (
    HTTP_TOKEN,
    MEDIA_TYPE,
    NAME,
    PERMISSION,
    meta,
    required,
    seconds,
    section,
    setting,
)
from fastgw.config.gateway import (
    JWT_ALGORITHMS,
    STRATEGIES,
    AuthenticationConfig,
    AutoBanConfig,
    CircuitBreakerConfig,
    ClaimNamesConfig,
    CorsConfig,
    DevelopmentAuthConfig,
    GatewayConfig,
    GatewayRoutingConfig,
    HstsConfig,
    JwtConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    ObservabilityConfig,
    RateLimitingConfig,
    RedisConfig,
    SecurityConfig,
    ServerConfig,
    TimeoutsConfig,
    TlsConfig,
    TracingConfig,
)
from fastgw.ratelimit.decision import MAX_BURST, MAX_DAILY_QUOTA, MAX_RATE_PER_S, MIN_RATE_PER_S

__all__ = [
    "DEFAULT_TIERS",
    "JWT_ALGORITHMS",
    "STRATEGIES",
    "AuthenticationConfig",
    "AutoBanConfig",
    "CircuitBreakerConfig",
    "ClaimNamesConfig",
    "Config",
    "CorsConfig",
    "DevelopmentAuthConfig",
    "EndpointLimitConfig",
    "GatewayConfig",
    "GatewayRoutingConfig",
    "GlobalLimitConfig",
    "HstsConfig",
    "InstanceConfig",
    "JwtConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ObservabilityConfig",
    "RateLimitingConfig",
    "RateLimitsConfig",
    "RedisConfig",
    "RouteConfig",
    "RoutingConfig",
    "SecurityConfig",
    "ServerConfig",
    "TierConfig",
    "TimeoutsConfig",
    "TlsConfig",
    "TracingConfig",
]

# ---------------------------------------------------------------------------------- routing


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceConfig:
    """``routing.metald_instances[]``: one backend instance."""

    host: str = required("Host name or IP address.")
    port: int = required("Port.", range=(1, 65535))
    weight: int = setting(100, "Relative share of traffic; 0 drains it.", range=(0, 10000))
    customer_pools: tuple[str, ...] = setting(
        (), "Pools this instance serves; empty: it serves every customer.", unique=True
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    """``routing``: backend instances and how one is chosen."""

    strategy: str = setting(
        "consistent_hash", "consistent_hash (on customer id), round_robin or least_connections.",
        choices=STRATEGIES,
    )
    health_check_interval_s: float = seconds(
        30.0, "Time between health checks of each instance.", "health_check_interval",
        positive=True,
    )
    unhealthy_threshold: int = setting(
        3, "Failed checks in a row that mark an instance down.", range=(1, None)
    )
    recovery_threshold: int = setting(
        2, "Passed checks in a row that mark it up again.", range=(1, None)
    )
    health_check_path: str = setting("/health", "Path probed with GET.", kind="path")
    bounded_load: float = setting(
        0.0,
        "consistent_hash only: 0 off; c >= 1 skips a customer's instance while its requests "
        "in flight exceed c x the mean of its pool (this worker's view).",
        range=(0, 100),
    )
    metald_instances: tuple[InstanceConfig, ...] = required(
        "Backend instances: at least one; host:port pairs unique.", min_items=1
    )


# ------------------------------------------------------------------------------ rate_limits

# What the limiter counts exactly (fastgw.ratelimit.decision): rejected here with the key path,
# never met as an error on the request path.
RATE_RANGE: Final = (MIN_RATE_PER_S, MAX_RATE_PER_S)



@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalLimitConfig:
    """``rate_limits.global``: one limit across all traffic."""

    requests_per_second: float | None = setting(
        None, "Rate across all traffic; null: no global limit.", range=RATE_RANGE
    )
    burst_size: int | None = setting(
        None, "Token bucket size; null: requests_per_second.", range=(1, MAX_BURST)
    )
    window_size_s: float = seconds(
        60.0, "Window of the sliding_window algorithm.", "window_size", positive=True
    )
    algorithm: str = setting(
        "token_bucket", "token_bucket or sliding_window.",
        choices=("token_bucket", "sliding_window"),
    )
    max_concurrent: int | None = setting(
        None, "Requests in flight at once; null: unbounded.", range=(1, None)
    )

    @property
    def effective_burst_size(self) -> int | None:
        """``burst_size``, or ``requests_per_second`` rounded up when unset."""
        if self.burst_size is not None or self.requests_per_second is None:
            return self.burst_size
        return max(1, math.ceil(self.requests_per_second))


@dataclass(frozen=True, slots=True, kw_only=True)
class TierConfig:
    """``rate_limits.customer_tiers.<tier>``: per-customer limits."""

    requests_per_second: float = required(
        "Token-bucket refill rate per customer.", range=RATE_RANGE
    )
    burst_size: int | None = setting(
        None, "Token bucket size; null: max(1, requests_per_second).", range=(1, MAX_BURST)
    )
    requests_per_day: int | None = setting(
        None, "Quota per customer per UTC day; null: unlimited.", range=(1, MAX_DAILY_QUOTA)
    )
    shed_above: float = setting(
        1.0,
        "Load shedding rank: this tier's new requests get 503 overloaded once this share of "
        "rate_limits.global.max_concurrent is in use (lower: shed earlier).",
        range=(0, 1),
        positive=True,
    )

    @property
    def effective_burst_size(self) -> int:
        """``burst_size``, or ``requests_per_second`` rounded up (at least 1) when unset."""
        if self.burst_size is not None:
            return self.burst_size
        return max(1, math.ceil(self.requests_per_second))


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointLimitConfig:
    """``rate_limits.endpoints.<EndpointName>``: limits of one route endpoint."""

    requests_per_second: float | None = setting(
        None, "Rate per customer on this endpoint; null: none.", range=RATE_RANGE
    )
    cost_weight: int = setting(
        1, "Units one call takes from the customer's bucket and daily quota.",
        range=(1, 1_000_000),
    )


DEFAULT_TIERS: Final[Mapping[str, TierConfig]] = MappingProxyType({
    "free": TierConfig(
        requests_per_second=10.0, burst_size=20, requests_per_day=1000, shed_above=0.8
    ),
    "pro": TierConfig(
        requests_per_second=100.0, burst_size=200, requests_per_day=100_000, shed_above=0.9
    ),
    "enterprise": TierConfig(
        requests_per_second=1000.0, burst_size=2000, requests_per_day=1_000_000
    ),
})  # fmt: skip


def _default_tiers() -> Mapping[str, TierConfig]:
    return DEFAULT_TIERS


def _no_endpoints() -> Mapping[str, EndpointLimitConfig]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitsConfig:
    """``rate_limits``: the limits themselves."""

    global_limit: GlobalLimitConfig = field(
        default_factory=GlobalLimitConfig, metadata=meta("Global limit.", key="global")
    )
    customer_tiers: Mapping[str, TierConfig] = section(
        _default_tiers, "Tiers by name; default: free, pro, enterprise of the reference design.",
        key_pattern=NAME,
    )
    endpoints: Mapping[str, EndpointLimitConfig] = section(
        _no_endpoints, "Limits by route endpoint name (must name a route's endpoint).",
        key_pattern=NAME,
    )
    default_tier: str = setting(
        "free", "Tier of tokens whose tier is missing or unknown (must be in customer_tiers)."
    )
    shadow: tuple[str, ...] = setting(
        (),
        "Levels that only count what they would limit (customer, endpoint, quota, global).",
        choices=("customer", "endpoint", "quota", "global"),
        unique=True,
        scalar_ok=True,
    )


# ----------------------------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """``routes[]``: which requests are served, and under which endpoint name."""

    endpoint: str = required("Name used by limits, permissions and metrics.", pattern=NAME)
    methods: tuple[str, ...] = setting(
        (), "Methods matched (uppercased); empty: any.", pattern=HTTP_TOKEN, upper=True,
        unique=True,
    )
    path: str | None = setting(None, "Exact path (this or path_prefix).", kind="path")
    path_prefix: str | None = setting(None, "Path prefix (this or path).", kind="path")
    permissions: tuple[str, ...] = setting(
        (), "Permissions a customer needs (all of them).", unique=True, pattern=PERMISSION
    )
    features: tuple[str, ...] = setting(
        (), "Feature flags a customer's token must grant (all of them).", unique=True,
        pattern=PERMISSION,
    )
    auth: str = setting("required", "'required' or 'none'.", choices=("required", "none"))
    timeout_s: float | None = seconds(
        None, "Backend timeout for this route; null: gateway.routing.backend_timeout.",
        "timeout", positive=True,
    )
    retryable: bool = setting(
        False,
        "Retry 502/503 answers and timeouts on another instance for every method (idempotent "
        "methods are retried anyway); only for calls the backend can safely receive twice.",
    )
    content_types: tuple[str, ...] = setting(
        (),
        "Media types (type/subtype) a request body may have, compared case-insensitively "
        "without parameters: a body with another Content-Type, or none, gets 415 "
        "unsupported_media_type. Empty: any.",
        pattern=MEDIA_TYPE, unique=True,
    )
    json_schema: str | Mapping[str, object] | None = setting(
        None,
        "JSON Schema the request body must match (inline, or a JSON/YAML file relative to the "
        "config file; compiled at start). The body is read whole (up to max_body_size) after "
        "auth and rate limits, before forwarding; a missing body, invalid JSON or a failed "
        "check gets 400 bad_request naming the failing path ($.config.cpu).",
        kind="json_or_file",
    )


def _default_routes() -> tuple[RouteConfig, ...]:
    # Imported here because defaults.py builds its RouteConfig objects from this module.
    from fastgw.config.defaults import DEFAULT_METALD_ROUTES

    return DEFAULT_METALD_ROUTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration file."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig, metadata=meta("Gateway."))
    routing: RoutingConfig = field(metadata=meta("Backends and their health checks."))
    rate_limits: RateLimitsConfig = field(
        default_factory=RateLimitsConfig, metadata=meta("Rate limits.")
    )
    routes: tuple[RouteConfig, ...] = section(
        _default_routes, "Routes; omitted: the metald VmService routes; []: none."
    )
    source_path: str | None = setting(
        None, "Absolute path of the file loaded, if any.", yaml=False
    )
