"""The reserved endpoints on the main port (contract A3), answered by the gateway itself:
``/health`` (the process serves), ``/health/detailed`` (components with status and latency)
and ``/ready`` (503 when no backend instance can be reached, or when JWT verification is
configured but this worker holds no key yet: every token would be refused)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from fastgw.pipeline import RESPOND

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fastgw.exchange import Exchange
    from fastgw.routing.health import HealthView


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BackendView:
    """What the health endpoints know of the backends: the worker's health view (active
    checks shared by the gateway instance, breakers), counted."""

    __slots__ = ("_view",)

    def __init__(self, view: HealthView) -> None:
        self._view = view

    def reachable(self) -> int:
        return self._view.reachable()

    def total(self) -> int:
        return len(self._view.labels)

    def check_latency_ms(self) -> float:
        return self._view.check_latency_ms()


class Health:
    __slots__ = ("_backends",)

    def __init__(self, backends: BackendView) -> None:
        self._backends = backends

    def on_request(self, ex: Exchange) -> int:
        ex.respond_local(200, orjson.dumps({"status": "healthy", "timestamp": _timestamp()}))
        return RESPOND


class DetailedHealth(Health):
    __slots__ = ()

    def on_request(self, ex: Exchange) -> int:
        started = time.perf_counter()
        reachable = self._backends.reachable()
        total = self._backends.total()
        backend_status = (
            "healthy" if reachable == total else "degraded" if reachable else "unhealthy"
        )
        components = [
            {
                "name": "http_server",
                "status": "healthy",
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
            {"name": "redis_connection", "status": "not_configured", "latency_ms": 0.0},
            {
                "name": "metald_backend",
                "status": backend_status,
                "latency_ms": self._backends.check_latency_ms(),
                "instances_reachable": reachable,
                "instances_total": total,
            },
        ]
        overall = "healthy" if backend_status == "healthy" else "degraded"
        body = {"status": overall, "timestamp": _timestamp(), "components": components}
        ex.respond_local(200, orjson.dumps(body))
        return RESPOND


class Ready(Health):
    """``/ready``: a backend instance is reachable and every other dependency named in
    ``checks`` (``jwt_keys`` when a key source is configured, ``redis`` when a Redis outage
    refuses requests) says it is usable."""

    __slots__ = ("_checks",)

    def __init__(
        self, backends: BackendView, checks: Sequence[tuple[str, Callable[[], bool]]] = ()
    ) -> None:
        super().__init__(backends)
        self._checks = tuple(checks)

    def on_request(self, ex: Exchange) -> int:
        ready = self._backends.reachable() > 0
        dependencies = ["metald"]
        for name, usable in self._checks:
            dependencies.append(name)
            ready = ready and usable()
        body = {"ready": ready, "dependencies": dependencies}
        ex.respond_local(200 if ready else 503, orjson.dumps(body))
        return RESPOND
