"""The ``gateway`` section of the model: listener, auth, limiter backend, forwarding, ops.

This module owns the meaning of every key under ``gateway:`` (ARCHITECTURE A2); ``model.py``
owns the other top-level sections and re-exports these classes. Field rules are described in
``fields.py``. Cross-field rules (TLS files when enabled, one JWT key source, HS secrets,
``gateway.routing`` agreeing with ``routing``) are in ``validate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from fastgw.config.fields import (
    BEARER_CHARS,
    HTTP_TOKEN,
    TOKEN_SOURCE,
    meta,
    seconds,
    section,
    setting,
)

JWT_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    "HS256", "HS384", "HS512",
)  # fmt: skip
STRATEGIES: Final = ("consistent_hash", "round_robin", "least_connections")

# --------------------------------------------------------------------------- gateway.server


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """``gateway.server.tls``: HTTPS on the main port."""

    enabled: bool = setting(False, "Serve HTTPS instead of plain HTTP.")
    cert_file: str | None = setting(
        None, "PEM certificate chain; required (and must exist) when enabled.", kind="file"
    )
    key_file: str | None = setting(
        None, "PEM private key; required (and must exist) when enabled.", kind="file"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    """``gateway.server.timeouts``: client-side deadlines."""

    read_s: float = seconds(
        30.0, "Longest wait between two chunks of a request body.", "read", positive=True
    )
    write_s: float = seconds(
        30.0, "Longest wait for the client to accept response bytes.", "write", positive=True
    )
    idle_s: float = seconds(
        120.0, "Keep-alive connection idle time before it is closed.", "idle", positive=True
    )
    header_s: float = seconds(
        10.0, "Time allowed to receive a whole request head.", "header", positive=True
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """``gateway.server.limits``: request and connection bounds."""

    max_header_size_bytes: int = setting(
        64 * 1024,
        "Largest request head (request line + headers); more is 431.",
        key="max_header_size",
        kind="size",
        range=(1024, 16 * 1024**2),
    )
    max_body_size_bytes: int = setting(
        10 * 1024**2,
        "Largest request body; more is 413.",
        key="max_body_size",
        kind="size",
        range=(0, None),
    )
    max_connections: int = setting(
        10000, "Open client connections per gateway instance; more are shed.", range=(1, None)
    )
    max_headers: int = setting(
        100, "Most header fields in a request; more is 431.", range=(1, 1000)
    )
    max_url_length: int = setting(
        8192, "Longest request target in bytes; longer is 414.", range=(64, 1024**2)
    )
    max_requests_per_connection: int = setting(
        10000,
        "Requests served on one client connection; the last is answered with Connection: "
        "close (spreads long-lived clients over workers and instances).",
        range=(1, None),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionConfig:
    """``gateway.server.compression``: gzip of proxied responses (off by default)."""

    enabled: bool = setting(False, "Compress responses the client accepts gzip for.")
    level: int = setting(5, "zlib level: 1 fastest .. 9 smallest.", range=(1, 9))
    min_size_bytes: int = setting(
        1024,
        "Responses with a shorter Content-Length are sent as they are.",
        key="min_size",
        kind="size",
        range=(0, None),
    )
    types: tuple[str, ...] = setting(
        (
            "text/*",
            "application/json",
            "application/problem+json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
        ),
        "Content types compressed ('type/*' matches a whole type).",
        unique=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """``gateway.server``: the client-facing listener."""

    host: str = setting("0.0.0.0", "Address to listen on.")
    port: int = setting(
        8080, "Port to listen on (0 = any free port, printed at start).", range=(0, 65535)
    )
    workers: int | None = setting(None, "Worker processes; null means one per CPU.", range=(1, 256))
    tls: TlsConfig = field(default_factory=TlsConfig, metadata=meta("TLS."))
    timeouts: TimeoutsConfig = field(
        default_factory=TimeoutsConfig, metadata=meta("Client-side timeouts.")
    )
    limits: LimitsConfig = field(
        default_factory=LimitsConfig, metadata=meta("Request and connection limits.")
    )
    compression: CompressionConfig = field(
        default_factory=CompressionConfig, metadata=meta("Response compression.")
    )


# ------------------------------------------------------------------- gateway.authentication


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimNamesConfig:
    """``gateway.authentication.jwt.claims``: which JWT claim carries each customer attribute."""

    customer_id: str = setting("customer_id", "Claim with the customer id (always required).")
    tier: str = setting("tier", "Claim with the customer's rate-limit tier.")
    permissions: str = setting("permissions", "Claim with the customer's permission list.")
    features: str = setting("features", "Claim with feature flags.")
    quotas: str = setting("quotas", "Claim with per-customer quota overrides.")
    pool: str = setting("pool", "Claim naming the customer's backend pool.")


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtConfig:
    """``gateway.authentication.jwt``: bearer-token verification (one key source at most)."""

    public_key_file: str | None = setting(
        None, "PEM public key that verifies tokens (must exist when set).", kind="file"
    )
    jwks_file: str | None = setting(
        None, "JWKS file; the token's kid picks the key (must exist when set).", kind="file"
    )
    jwks_url: str | None = setting(None, "JWKS URL, refreshed in the background.", kind="url")
    algorithms: tuple[str, ...] = setting(
        ("RS256",),
        "Accepted signature algorithms (a name or a list); 'none' is never allowed.",
        key="algorithm",
        choices=JWT_ALGORITHMS,
        scalar_ok=True,
        min_items=1,
        unique=True,
        refuse=(("none",), "the 'none' algorithm is never allowed"),
    )
    hs_secret: str | None = setting(
        None,
        'Shared secret for HS* algorithms, usually "${JWT_SECRET}" (at least as many '
        "bytes as the hash: 32/48/64); empty means unset.",
        secret=True,
        allow_empty=True,
    )
    cache_ttl_s: float = seconds(
        300.0,
        "Verified-token cache lifetime (an entry never outlives the token's exp).",
        "cache_ttl",
    )
    issuer: str | None = setting(None, "Required 'iss' claim value; null: not checked.")
    audience: tuple[str, ...] | None = setting(
        None,
        "Accepted 'aud' values (a string or a list); null: not checked.",
        scalar_ok=True,
        min_items=1,
        unique=True,
    )
    leeway_s: float = seconds(0.0, "Clock skew allowed on exp/nbf/iat.", "leeway", range=(0, 300))
    required_claims: tuple[str, ...] = setting(
        ("exp",),
        "Claims every token must carry; the customer id claim is always added.",
        unique=True,
    )
    claims: ClaimNamesConfig = field(
        default_factory=ClaimNamesConfig, metadata=meta("Claim names.")
    )
    key_refresh_interval_s: float = seconds(
        300.0,
        "How often jwks_url is refetched (jwks_file is checked every second); an unknown "
        "kid refetches at most once per interval.",
        "refresh_interval",
        positive=True,
    )
    cache_max_entries: int = setting(
        10_000,
        "Verified tokens kept per worker (least recently used evicted first; ~1.2 KB "
        "each); 0: no cache.",
        key="cache_size",
        range=(0, 10_000_000),
    )
    max_token_bytes: int = setting(
        8 * 1024,
        "Longest token accepted; a longer one is 401 before any decoding.",
        key="max_token_size",
        kind="size",
        range=(256, 64 * 1024),
    )

    @property
    def effective_required_claims(self) -> tuple[str, ...]:
        """``required_claims`` plus the customer id claim."""
        if self.claims.customer_id in self.required_claims:
            return self.required_claims
        return (*self.required_claims, self.claims.customer_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class DevelopmentAuthConfig:
    """``gateway.authentication.development``: unsigned dev tokens (never in production)."""

    enabled: bool = setting(False, "Accept '<token_prefix><customer id>' as a token.")
    token_prefix: str = setting(
        "dev_customer_", "Prefix of development tokens.", pattern=BEARER_CHARS
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationConfig:
    """``gateway.authentication.revocation``: revoked tokens, kept in Redis for every instance."""

    enabled: bool = setting(
        False,
        "Honour the revocation list in Redis (gateway.rate_limiting.redis); fill it with "
        "'fastgw revoke'.",
    )
    poll_interval_s: float = seconds(
        0.5,
        "How often each worker checks the list for changes; a revocation is honoured within "
        "this time plus one Redis round trip (at most 0.9 s, so always within one second).",
        "poll_interval",
        range=(0.05, 0.9),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationConfig:
    """``gateway.authentication``."""

    jwt: JwtConfig = field(default_factory=JwtConfig, metadata=meta("JWT verification."))
    development: DevelopmentAuthConfig = field(
        default_factory=DevelopmentAuthConfig, metadata=meta("Development tokens.")
    )
    revocation: RevocationConfig = field(
        default_factory=RevocationConfig, metadata=meta("Token revocation list.")
    )
    token_sources: tuple[str, ...] = setting(
        ("header",),
        "Where the token may be: header (Bearer), query:<name>, cookie:<name>; a request "
        "carrying it in two of them is refused.",
        pattern=TOKEN_SOURCE,
        min_items=1,
        unique=True,
    )


# -------------------------------------------------------------------- gateway.rate_limiting


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """``gateway.rate_limiting.redis``."""

    address: str = setting(
        "localhost:6379", "'host:port' or 'unix:///path/to/socket'.", kind="address"
    )
    password: str = setting("", "Password; empty for none.", allow_empty=True, secret=True)
    db: int = setting(0, "Database number.", range=(0, 15))
    pool_size: int = setting(10, "Connections per worker.", range=(1, 1000))
    cluster: bool = setting(False, "Speak the Redis Cluster protocol.")
    timeout_s: float = seconds(
        0.02,
        "Deadline of one limiter call; past it on_failure applies.",
        "timeout",
        positive=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitingConfig:
    """``gateway.rate_limiting``: where limiter state lives."""

    backend: str = setting(
        "memory",
        "'memory' (this machine) or 'redis' (shared by every instance).",
        choices=("memory", "redis"),
    )
    redis: RedisConfig = field(
        default_factory=RedisConfig, metadata=meta("Redis connection (backend redis).")
    )
    on_failure: str = setting(
        "local",
        "When Redis fails: local (in-process limits), open (allow) or closed (reject).",
        choices=("local", "open", "closed"),
    )
    max_keys: int = setting(
        262_144,
        "Keys of the in-process limiter shared by the workers (backend memory, and on_failure "
        "local): about 33 bytes each; a full table forgets the key closest to refilling.",
        range=(1024, 1 << 28),
    )


# -------------------------------------------------------------------------- gateway.routing


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """``gateway.routing.circuit_breaker``: one breaker per backend instance."""

    enabled: bool = setting(True, "Use circuit breakers.")
    failure_threshold: int = setting(
        5, "Consecutive failures that open the circuit.", range=(1, None)
    )
    error_rate: float = setting(
        0.5,
        "Error share (once min_requests are seen) that opens the circuit.",
        range=(0, 1),
        positive=True,
    )
    min_requests: int = setting(20, "Requests seen before error_rate applies.", range=(1, None))
    cooldown_s: float = seconds(
        10.0,
        "Time open before half-open probes; doubles with each opening in a row.",
        "cooldown",
        positive=True,
    )
    max_cooldown_s: float = seconds(
        300.0, "Longest cool-down the doubling reaches.", "max_cooldown", positive=True
    )
    half_open_probes: int = setting(
        1, "Trial requests let through when half-open.", range=(1, 1000)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayRoutingConfig:
    """``gateway.routing``: forwarding policy (the instance list is in top-level ``routing``)."""

    strategy: str | None = setting(
        None,
        "If set, must equal routing.strategy (sets it when that is absent).",
        choices=STRATEGIES,
    )
    health_check_interval_s: float | None = seconds(
        None,
        "If set, must equal routing.health_check_interval (sets it when absent).",
        "health_check_interval",
        positive=True,
    )
    backend_timeout_s: float = seconds(
        30.0,
        "Per try: from the whole request sent to the response head, and between body reads.",
        "backend_timeout",
        positive=True,
    )
    connect_timeout_s: float = seconds(
        2.0,
        "Deadline to connect to a backend (the last try timing out: 504).",
        "connect_timeout",
        positive=True,
    )
    retry_attempts: int = setting(3, "Retries on another instance after a failure.", range=(0, 10))
    retry_backoff_s: float = seconds(
        0.1, "Base of the exponential retry back-off.", "retry_backoff"
    )
    retry_budget: float = setting(
        0.2,
        "Retries after a request reached a backend: at most this share of requests (+10 per "
        "10 s window), per worker.",
        range=(0, 1),
    )
    circuit_breaker: CircuitBreakerConfig = field(
        default_factory=CircuitBreakerConfig, metadata=meta("Circuit breaker.")
    )


# -------------------------------------------------------------------- gateway.observability


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """``gateway.observability.metrics``: the Prometheus endpoint."""

    enabled: bool = setting(True, "Serve metrics.")
    host: str | None = setting(
        None,
        "Address of the metrics and admin port (GET /admin/upstreams shows backend addresses: "
        "keep it private); null: gateway.server.host.",
    )
    port: int = setting(
        9090,
        "Metrics and admin port (must differ from the server port; 0 = any free port).",
        range=(0, 65535),
    )
    path: str = setting("/metrics", "Metrics path.", kind="path")


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """``gateway.observability.tracing``: OTLP/HTTP trace export."""

    enabled: bool = setting(
        False,
        "Record and export spans. Off, backends still get a traceparent: the client's, passed "
        "through unchanged, or a new unsampled one.",
    )
    endpoint: str | None = setting(
        None,
        "OTLP/HTTP traces URL of the collector (protobuf), like http://collector:4318/v1/traces; "
        "without a path, /v1/traces. Required when enabled.",
        kind="url",
    )
    sample_rate: float = setting(
        0.1,
        "Share of new traces sampled (by trace id); a client's traceparent decides for its "
        "own trace (parent-based), for at most 100 requests a second per worker.",
        range=(0, 1),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    """``gateway.observability.logging``."""

    level: str = setting(
        "info", "Lowest level logged.", choices=("debug", "info", "warning", "error")
    )
    format: str = setting(
        "json",
        "Line format: one JSON object per line, or text for people.",
        choices=("json", "text"),
    )
    output: str = setting(
        "stderr",
        "'stdout', 'stderr' or a file path (relative to the config file; reopened when "
        "rotated away). stderr by default: stdout carries the commands' own output.",
        kind="output",
    )
    access_log: bool = setting(
        False,
        "Log one line per request (request id, client, method, path without the query string, "
        "endpoint, status, customer id, durations, upstream instance), whatever the level.",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservabilityConfig:
    """``gateway.observability``."""

    metrics: MetricsConfig = field(default_factory=MetricsConfig, metadata=meta("Metrics."))
    tracing: TracingConfig = field(default_factory=TracingConfig, metadata=meta("Tracing."))
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata=meta("Logging."))


# ------------------------------------------------------------------------- gateway.security


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoBanConfig:
    """``gateway.security.auto_ban``: temporary bans for abusive client IPs."""

    enabled: bool = setting(False, "Ban client IPs automatically.")
    threshold: int = setting(
        50, "Auth failures or 429s within the window that trigger a ban.", range=(1, None)
    )
    window_s: float = seconds(60.0, "Counting window.", "window", positive=True)
    ban_s: float = seconds(600.0, "Ban length.", "ban", positive=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsConfig:
    """``gateway.security.cors``."""

    enabled: bool = setting(False, "Answer CORS preflights and add CORS headers.")
    allow_origins: tuple[str, ...] = setting(
        (), "Allowed origins: '*' or 'scheme://host[:port]'.", kind="origin", unique=True
    )
    allow_methods: tuple[str, ...] = setting(
        ("GET", "POST", "PUT", "DELETE", "OPTIONS"),
        "Allowed methods (uppercased).",
        pattern=HTTP_TOKEN,
        upper=True,
        unique=True,
    )
    allow_headers: tuple[str, ...] = setting(
        ("Authorization", "Content-Type"),
        "Allowed request headers.",
        pattern=HTTP_TOKEN,
        unique=True,
    )
    allow_credentials: bool = setting(False, "Allow credentials (not with origin '*').")
    max_age_s: float = seconds(600.0, "Preflight cache time (whole seconds).", "max_age")


@dataclass(frozen=True, slots=True, kw_only=True)
class HstsConfig:
    """``gateway.security.hsts``: Strict-Transport-Security, sent only over TLS."""

    enabled: bool = setting(True, "Send HSTS on TLS responses.")
    max_age_s: float = seconds(31536000.0, "max-age (whole seconds).", "max_age")
    include_subdomains: bool = setting(True, "Add includeSubDomains.")


def _default_response_headers() -> Mapping[str, str]:
    return MappingProxyType({"X-Content-Type-Options": "nosniff"})


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """``gateway.security``: IP rules, bans, CORS, response headers."""

    ip_allow: tuple[str, ...] = setting(
        (), "If non-empty, only these CIDRs may connect.", kind="cidr"
    )
    ip_deny: tuple[str, ...] = setting((), "CIDRs refused with 403 ip_blocked.", kind="cidr")
    trusted_proxies: tuple[str, ...] = setting(
        (), "CIDRs whose X-Forwarded-For is believed.", kind="cidr"
    )
    auto_ban: AutoBanConfig = field(default_factory=AutoBanConfig, metadata=meta("Auto-ban."))
    cors: CorsConfig = field(default_factory=CorsConfig, metadata=meta("CORS."))
    response_headers: Mapping[str, str] = section(
        _default_response_headers,
        "Headers added to every response (name: value).",
        key_pattern=HTTP_TOKEN,
        kind="header_value",
        allow_empty=True,
    )
    hsts: HstsConfig = field(default_factory=HstsConfig, metadata=meta("HSTS."))


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """``gateway``."""

    server: ServerConfig = field(default_factory=ServerConfig, metadata=meta("Listener."))
    authentication: AuthenticationConfig = field(
        default_factory=AuthenticationConfig, metadata=meta("Authentication.")
    )
    rate_limiting: RateLimitingConfig = field(
        default_factory=RateLimitingConfig, metadata=meta("Rate-limiter backend.")
    )
    routing: GatewayRoutingConfig = field(
        default_factory=GatewayRoutingConfig, metadata=meta("Forwarding policy.")
    )
    observability: ObservabilityConfig = field(
        default_factory=ObservabilityConfig, metadata=meta("Metrics, tracing, logs.")
    )
    security: SecurityConfig = field(
        default_factory=SecurityConfig, metadata=meta("IP rules, CORS, response headers.")
    )
