"""What this build of fastgw can do, by name.

The benchmark suite reads this to decide which scenarios it can run: a scenario whose feature
is missing is reported as skipped, never measured with a stand-in. Each feature is named here
in the same change that makes it work end to end (config, stage, tests), and nowhere else.
"""

from __future__ import annotations

from typing import Final

#: Features that work end to end in this build.
AVAILABLE: Final = frozenset(
    {
        "proxy",  # HTTP/1.1 reverse proxy: pools, streaming, strict framing, timeouts
        "health",  # /health, /health/detailed, /ready
        "dev-tokens",  # development bearer tokens (gateway.authentication.development)
        "jwt",  # JWT verification, verified-token cache, revocation (gateway.authentication)
        "round-robin",  # weighted round robin over routing.metald_instances
        "memory-limits",  # every rate-limit level, shared by the workers (backend: memory)
        "redis-limits",  # the same levels in Redis (Lua, one round trip, Cluster, on_failure)
        "consistent-hash",  # routing.strategy consistent_hash (pools, failover, health, breakers)
        "metrics",  # Prometheus text on the metrics port, summed over workers (obs/metrics*)
        "tracing",  # W3C traceparent propagation, sampled spans over OTLP/HTTP (obs/tracing*)
    }
)

#: Every feature a scenario or a config may ask for, with what it is, for messages.
KNOWN: Final = {
    "proxy": "the HTTP/1.1 reverse proxy",
    "health": "health endpoints",
    "dev-tokens": "development tokens",
    "round-robin": "round-robin load balancing",
    "jwt": "JWT authentication",
    "memory-limits": "in-process rate limits",
    "redis-limits": "rate limits in Redis",
    "consistent-hash": "consistent-hash routing",
    "metrics": "Prometheus metrics",
    "tracing": "OpenTelemetry tracing",
}


def missing(wanted: tuple[str, ...]) -> list[str]:
    """The names in ``wanted`` that this build lacks, in order."""
    unknown = [name for name in wanted if name not in KNOWN]
    if unknown:
        raise ValueError(f"unknown feature name(s): {', '.join(unknown)}")
    return [name for name in wanted if name not in AVAILABLE]
