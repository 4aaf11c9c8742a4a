"""Config → plan: everything decided once per worker, before the first request.

The plan holds what the hot path reads: the router with each route's stage chain as a tuple
of bound methods, pre-encoded replies and header blocks, numeric limits, the backend pools.
Config objects never reach the hot path; plan objects do. A plan is built in each worker
after fork (pools and buffers belong to one process), and once in the master to prove the
config compiles before any worker starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from fastgw.auth.service import AuthService
from fastgw.http.compress import Compression
from fastgw.limits import MIN_FAILOVER_DEPTH
from fastgw.obs.health_probes import HealthProbes
from fastgw.obs.metrics import Layout, request_metrics
from fastgw.obs.tracing import Tracing
from fastgw.ratelimit.service import LimitService
from fastgw.replies import ErrorReply, ReplyTable
from fastgw.router import Router
from fastgw.routing.breaker import BreakerSettings
from fastgw.routing.health import HealthView
from fastgw.routing.strategies import Instance, PoolBalancer
from fastgw.security.bans import Bans
from fastgw.security.ipset import ClientAddress, IpRules, IpSet
from fastgw.stages.cors import Cors, cors_routes
from fastgw.stages.forward import Backends, Forward
from fastgw.stages.health import BackendView, DetailedHealth, Health, Ready
from fastgw.stages.permissions import RequireGrants
from fastgw.stages.validate import ValidateBody, load_schema
from fastgw.tls import check_tls, hsts_field

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.exchange import Exchange
    from fastgw.http.pool import UpstreamPool
    from fastgw.pipeline import Step
    from fastgw.routing.health_table import HealthTable
    from fastgw.security.bans import BanBoard

HEALTH_METHODS: Final = frozenset({b"GET", b"HEAD"})
MAX_CACHED_BAD_REQUESTS: Final = 64


@dataclass(frozen=True, slots=True)
class Settings:
    """Numeric limits and timeouts the connections read, per worker."""

    header_timeout_s: float
    read_timeout_s: float
    write_timeout_s: float
    idle_timeout_s: float
    max_head_bytes: int
    max_header_fields2: int  # twice the header count: names and values sit in one flat list
    max_url_bytes: int
    max_body_bytes: int
    max_connections: int  # this worker's share of the instance's limit
    max_requests_per_connection: int


@dataclass(frozen=True, slots=True)
class RoutePlan:
    endpoint: str
    methods: frozenset[bytes] | None
    steps: tuple[Step, ...]
    # Called by the connection once routed, before the chain (fastgw/obs/tracing.py): the
    # trace decision and headers; a sampled request then runs a traced twin of this route.
    # None on routes that do not forward (nothing to propagate).
    begin_trace: Callable[[Exchange], None] | None = None


class Plan:
    __slots__ = (
        "_bad_requests",
        "auth",
        "backend_view",
        "backends",
        "bans",
        "client_address",
        "common_headers",
        "compression",
        "forwarded_proto",
        "health",
        "ip_rules",
        "limits",
        "metrics",
        "pools",
        "probes",
        "replies",
        "router",
        "settings",
        "strip_request_fields",
        "tracing",
    )

    def __init__(
        self,
        config: Config,
        pools: list[UpstreamPool],
        workers: int,
        limits_fd: int = -1,
        *,
        health_table: HealthTable | None = None,
        slot: int = 0,
        ban_board: BanBoard | None = None,
    ) -> None:
        server = config.gateway.server
        self.settings = Settings(
            header_timeout_s=server.timeouts.header_s,
            read_timeout_s=server.timeouts.read_s,
            write_timeout_s=server.timeouts.write_s,
            idle_timeout_s=server.timeouts.idle_s,
            max_head_bytes=server.limits.max_header_size_bytes,
            max_header_fields2=2 * server.limits.max_headers,
            max_url_bytes=server.limits.max_url_length,
            max_body_bytes=server.limits.max_body_size_bytes,
            max_connections=max(1, server.limits.max_connections // max(1, workers)),
            max_requests_per_connection=server.limits.max_requests_per_connection,
        )
        self.common_headers = b"".join(
            b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in config.gateway.security.response_headers.items()
        ) + hsts_field(config.gateway)  # empty unless TLS and HSTS are on
        self.replies = ReplyTable(self.common_headers)
        self._bad_requests: dict[str, ErrorReply] = {}
        scheme = b"https" if server.tls.enabled else b"http"
        self.forwarded_proto = b"\r\nX-Forwarded-Proto: " + scheme + b"\r\n"
        # Gateway-owned identity headers are dropped from client requests (x-customer-* and
        # x-forwarded-* by prefix in the kernel); nothing more is stripped by default.
        self.strip_request_fields: frozenset[bytes] = frozenset()
        compression = server.compression
        self.compression = Compression(compression) if compression.enabled else None
        security = config.gateway.security
        self.ip_rules = IpRules(security.ip_allow, security.ip_deny)
        self.client_address = ClientAddress(IpSet(security.trusted_proxies))
        ban = security.auto_ban
        self.bans = (
            Bans(ban_board, slot, ban.threshold, ban.window_s, ban.ban_s) if ban.enabled else None
        )
        self.pools = pools
        # This worker's request and upstream counters (None: metrics off, nothing counted).
        self.metrics = (
            request_metrics(Layout.from_config(config))
            if config.gateway.observability.metrics.enabled
            else None
        )
        self.health = self._health_view(config, health_table, slot)
        self.backends = self._backends(config)
        self.backend_view = BackendView(self.health)
        self.auth = AuthService(config, self.replies)
        self.limits = LimitService(config, self.replies, workers=workers, table_fd=limits_fd)
        # Loop lag and Redis, for /health/detailed and /ready (timers start with the server).
        self.probes = HealthProbes(self.limits, self.auth.revocations)
        # Trace decisions and propagation; spans are exported once the server starts them.
        self.tracing = Tracing(config)
        self.router = self._build_router(config)

    def _build_router(self, config: Config) -> Router[RoutePlan]:
        routing = config.gateway.routing
        keys = self.auth.keys
        checks: list[tuple[str, Callable[[], bool]]] = []
        if keys is not None:
            checks.append(("jwt_keys", lambda: len(keys.ring) > 0))
        limits_ready = self.limits.readiness
        redis_probe = self.probes.redis
        if limits_ready is not None and redis_probe is not None:
            checks.append(("redis", lambda: limits_ready() and redis_probe.usable))
        elif limits_ready is not None:
            checks.append(("redis", limits_ready))
        ready = Ready(self.backend_view, checks)
        exact: list[tuple[bytes, RoutePlan]] = [
            (
                b"/health",
                RoutePlan("health", HEALTH_METHODS, (Health(self.backend_view).on_request,)),
            ),
            (
                b"/health/detailed",
                RoutePlan(
                    "health",
                    HEALTH_METHODS,
                    (DetailedHealth(self.backend_view, self.probes).on_request,),
                ),
            ),
            (b"/ready", RoutePlan("health", HEALTH_METHODS, (ready.on_request,))),
        ]
        prefixes: list[tuple[bytes, RoutePlan]] = []
        for route in config.routes:
            timeout_s = (
                route.timeout_s if route.timeout_s is not None else routing.backend_timeout_s
            )
            forward = Forward(self.backends, timeout_s, route.retryable)
            steps: list[Step] = []
            if route.auth == "required":
                steps.append(self.auth.stage.on_request)
                steps.append(self.limits.stage(route.endpoint).on_request)
                if route.permissions or route.features:
                    grants = RequireGrants(
                        frozenset(p.encode("ascii") for p in route.permissions),
                        frozenset(f.encode("ascii") for f in route.features),
                        self.replies,
                        self.auth.counts,
                    )
                    steps.append(grants.on_request)
            elif self.limits.covers_anonymous:
                steps.append(self.limits.stage(route.endpoint).on_request)
            if route.content_types or route.json_schema is not None:
                # After auth and limits (nothing is buffered for a refused request), before
                # forward; the schema compiled once here (check-config compiled it too).
                schema = None if route.json_schema is None else load_schema(route.json_schema)
                validate = ValidateBody(
                    self.replies, self.common_headers, route.content_types, schema
                )
                steps.append(validate.on_request)
            steps.append(forward.on_request)
            methods = frozenset(m.encode("ascii") for m in route.methods) or None
            plan = RoutePlan(route.endpoint, methods, tuple(steps))
            if route.path is not None:
                exact.append((route.path.encode("utf-8"), plan))
            elif route.path_prefix is not None:
                prefixes.append((route.path_prefix.encode("utf-8"), plan))
        # CORS first in every chain (before auth: preflights carry no credentials), and
        # OPTIONS-only routes so that preflights reach method-restricted paths too.
        cors = Cors.from_config(config.gateway.security.cors, self.replies.no_route)
        if cors is not None:
            exact, prefixes = cors_routes(cors, exact, prefixes)
        # Last, so that the traced twins hold every step (CORS included).
        traced = self.tracing.route
        exact = [(path, traced(route)) for path, route in exact]
        prefixes = [(path, traced(route)) for path, route in prefixes]
        return Router(exact, prefixes)

    def _health_view(self, config: Config, table: HealthTable | None, slot: int) -> HealthView:
        routing = config.gateway.routing
        breaker = routing.circuit_breaker
        longest_route_s = max(
            [routing.backend_timeout_s, *(r.timeout_s or 0.0 for r in config.routes)]
        )
        settings = BreakerSettings(
            failure_threshold=breaker.failure_threshold,
            error_rate=breaker.error_rate,
            min_requests=breaker.min_requests,
            cooldown_s=breaker.cooldown_s,
            max_cooldown_s=breaker.max_cooldown_s,
            half_open_probes=breaker.half_open_probes,
            probe_timeout_s=routing.connect_timeout_s + longest_route_s,
        )
        labels = [f"{i.host}:{i.port}" for i in config.routing.metald_instances]
        return HealthView(table, slot, labels, settings if breaker.enabled else None, self._load)

    def _load(self, index: int) -> int:
        """This worker's requests in flight on instance ``index``."""
        if index >= len(self.pools):
            return 0  # the master's throwaway plan has no pools
        pool = self.pools[index]
        return pool.open_connections - pool.idle_count

    def _backends(self, config: Config) -> Backends:
        routing = config.gateway.routing
        return Backends(
            self._balancer(config),
            self.pools,
            self.health,
            self.replies,
            retry_attempts=routing.retry_attempts,
            backoff_base_s=routing.retry_backoff_s,
            retry_budget=routing.retry_budget,
            metrics=self.metrics,
        )

    def _balancer(self, config: Config) -> PoolBalancer:
        """Target selection for every route (``routing.strategy``, pools, overflow). A
        consistent-hash order holds enough instances to fail over past unhealthy ones."""
        instances = [
            Instance(f"{i.host}:{i.port}".encode("ascii"), i.weight, i.customer_pools)
            for i in config.routing.metald_instances
        ]
        return PoolBalancer(
            config.routing.strategy,
            instances,
            depth=max(config.gateway.routing.retry_attempts + 1, MIN_FAILOVER_DEPTH),
            load=self._load,
            bounded_load=config.routing.bounded_load,
        )

    def bad_request(self, reason: str) -> ErrorReply:
        """A 400 naming ``reason``; encoded once per distinct reason (a bounded set)."""
        reply = self._bad_requests.get(reason)
        if reply is None:
            reply = self.replies.bad_request_because(reason, self.common_headers)
            if len(self._bad_requests) < MAX_CACHED_BAD_REQUESTS:
                self._bad_requests[reason] = reply
        return reply

    @staticmethod
    def unsafe_path(path: bytes) -> bool:
        """Paths a backend could read differently from our router: dot-segments (raw or
        percent-encoded, also between encoded slashes ``%2F..%2F`` or with path parameters
        ``..;x``), backslashes, encoded NUL. Rejected rather than normalized."""
        if b"." not in path and b"%" not in path and b"\\" not in path:
            return False
        lowered = path.lower()
        if b"\\" in path or b"%2e" in lowered or b"%00" in lowered or b"%5c" in lowered:
            return True
        return any(
            segment.partition(b";")[0] in {b".", b".."}
            for segment in lowered.replace(b"%2f", b"/").split(b"/")
        )

    def overloaded_reply(self, date: bytes) -> list[bytes]:
        return self.replies.overloaded.render(b"-", date, True)


def make_pools(
    config: Config, loop: asyncio.AbstractEventLoop, read_buffer: bytearray
) -> list[UpstreamPool]:
    from fastgw.http.pool import UpstreamPool

    connect_timeout_s = config.gateway.routing.connect_timeout_s
    return [
        UpstreamPool(loop, instance.host, instance.port, connect_timeout_s, read_buffer)
        for instance in config.routing.metald_instances
    ]


def check_plan(config: Config) -> None:
    """Build a throwaway plan (no loop, no sockets) to prove ``config`` compiles.

    The master calls this before forking, so a config that cannot become a plan fails once,
    loudly, instead of in every worker. The TLS certificate and key are loaded too: a pair
    that does not load refuses the start or the reload (the old generation keeps serving).
    """
    check_tls(config.gateway.server.tls)
    Plan(config, [], workers=1).limits.close()
