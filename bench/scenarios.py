"""The suite's scenarios: each is a gateway config plus a traffic shape.

A scenario names the fastgw features it needs (:mod:`fastgw.features`). When one has not
landed, the scenario is reported as *skipped* with that reason: it is never run on a stand-in
config, so a figure in a report always measures what its name says.

- ``passthrough``: the proxy path alone (no auth, no limits) against nginx and HAProxy as plain
  reverse proxies in front of the same backend.
- ``jwt-cached`` / ``jwt-uncached``: RS256 tokens reused (the verified-token cache answers) or
  a fresh token per request (every request verifies a signature); limits in memory.
- ``redis-limits``: every request checked against rate limits held in a real Redis.
- ``full``: JWT + Redis limits + consistent hashing over 3 instances + metrics + tracing
  sampled at 10 %; its HAProxy peer is to get ``jwt_verify`` and stick-table limits when the
  scenario lands (until a peer has a config doing the same work, it is not run).
- ``idle-10k``: 10,000 open keep-alive connections: memory, and latency of traffic beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from fastgw import features

Shape = Literal["load", "idle"]
ConfigBuilder = Callable[[list[int], int], dict[str, Any]]  # (backend ports, port) -> config


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requires: tuple[str, ...]
    shape: Shape = "load"
    backends: int = 1
    path: str = "/echo/x"
    #: peers with a config doing the same work; none until one is written, so that a peer
    #: doing less (a plain proxy against fastgw verifying JWTs) is never compared
    peers: tuple[str, ...] = ()
    #: fastgw's config; None while the scenario's features have not landed (nothing to build)
    gateway_config: ConfigBuilder | None = None

    def skip_reason(self) -> str | None:
        """Why this scenario cannot run in this build, or None when it can."""
        lacking = features.missing(self.requires)
        if lacking:
            names = ", ".join(features.KNOWN[name] for name in lacking)
            return f"needs {names}: not in this build of fastgw yet"
        if self.gateway_config is None:
            return "no gateway config written for it yet"
        return None


HOST: Final = "127.0.0.1"


def passthrough_config(backend_ports: list[int], port: int, *, max_connections: int = 10000,
                       idle_timeout: str = "2m") -> dict[str, Any]:
    """One route ``/`` without auth or limits: only the proxy path is measured."""
    return {
        "gateway": {
            "server": {
                "host": HOST, "port": port,
                "timeouts": {"idle": idle_timeout},
                "limits": {"max_connections": max_connections},
            },
            "observability": {
                "metrics": {"enabled": False},
                "logging": {"level": "warning", "format": "text", "output": "stderr"},
            },
        },
        "routing": {"metald_instances": [{"host": HOST, "port": p} for p in backend_ports]},
        "routes": [{"endpoint": "Passthrough", "path_prefix": "/", "auth": "none"}],
    }


def idle_config(backend_ports: list[int], port: int, *,
                max_connections: int = 20000) -> dict[str, Any]:
    """Passthrough with room for every idle connection and an idle timeout longer than the
    scenario holds them."""
    return passthrough_config(backend_ports, port, max_connections=max_connections,
                              idle_timeout="30m")


SCENARIOS: Final = {
    s.name: s for s in (
        Scenario("passthrough", "the proxy path alone (no auth, no limits) vs nginx and "
                 "HAProxy as plain reverse proxies", requires=("proxy",),
                 peers=("nginx", "haproxy"), gateway_config=passthrough_config),
        Scenario("jwt-cached", "RS256 JWT on every request, tokens reused (verified-token "
                 "cache), limits in memory", requires=("proxy", "jwt", "memory-limits")),
        Scenario("jwt-uncached", "RS256 JWT, a fresh token per request (a signature verified "
                 "every time), limits in memory", requires=("proxy", "jwt", "memory-limits")),
        Scenario("redis-limits", "layered rate limits checked atomically in a real Redis",
                 requires=("proxy", "dev-tokens", "redis-limits")),
        Scenario("full", "JWT + Redis limits + consistent hash over 3 instances + metrics + "
                 "tracing sampled at 10%", backends=3,
                 requires=("proxy", "jwt", "redis-limits", "consistent-hash", "metrics",
                           "tracing")),
        Scenario("idle-10k", "10,000 open keep-alive connections: memory, and latency of "
                 "active traffic beside them", requires=("proxy",), shape="idle",
                 path="/echo/idle", gateway_config=idle_config),
    )
}

ALIASES: Final = {"idle": "idle-10k"}


def resolve(text: str) -> list[Scenario]:
    """``a,b`` (in that order, duplicates dropped) or ``all`` (the suite's order) -> scenarios;
    ValueError names unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(SCENARIOS.values())
    names = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown) or '(none)'} "
                         f"(known: {', '.join(SCENARIOS)}, all)")
    return [SCENARIOS[n] for n in dict.fromkeys(names)]
