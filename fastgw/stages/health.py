"""The reserved endpoints on the main port (contract A3), answered by the gateway itself:
``/health`` (the process serves), ``/health/detailed`` (components with status and latency)
and ``/ready`` (503 when no backend instance can be reached, when Redis is down and
``on_failure: closed`` refuses every limited request, or when JWT verification is configured
but this worker holds no key yet: every token would be refused).

``/health/detailed`` lists ``http_server`` (the event loop's lag), ``redis_connection`` (a
PING every second through the limiter's client, or the revocation poller's last poll:
``fastgw/obs/health_probes.py``) and ``metald_backend`` (instances reachable, the active
checks' mean latency). Its ``status`` is ``unhealthy`` (HTTP 503) when this worker cannot serve
requests (no instance reachable, or Redis failing under ``on_failure: closed``), ``degraded``
(HTTP 200) when a component is not healthy but requests are still served (some instances down,
Redis failing under ``local`` or ``open``, a lagging loop), else ``healthy`` (HTTP 200). Every
measurement comes from a timer, never from the request: the endpoints answer at once and
cost nothing but a dict and an ``orjson.dumps``, however often a load balancer asks. Each
worker answers with its own view.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from fastgw.pipeline import RESPOND

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fastgw.exchange import Exchange
    from fastgw.obs.health_probes import HealthProbes
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
    __slots__ = ("_probes",)

    def __init__(self, backends: BackendView, probes: HealthProbes) -> None:
        super().__init__(backends)
        self._probes = probes

    def on_request(self, ex: Exchange) -> int:
        probes = self._probes
        reachable = self._backends.reachable()
        total = self._backends.total()
        backend_status = (
            "healthy" if reachable == total else "degraded" if reachable else "unhealthy"
        )
        server = probes.loop_lag.report()
        redis = probes.redis_report()
        components = [
            server,
            redis,
            {
                "name": "metald_backend",
                "status": backend_status,
                "latency_ms": self._backends.check_latency_ms(),
                "instances_reachable": reachable,
                "instances_total": total,
            },
        ]
        if backend_status == "unhealthy" or (
            redis["status"] == "unhealthy" and probes.redis_refuses
        ):
            overall = "unhealthy"
        elif any(c["status"] in ("degraded", "unhealthy") for c in components):
            overall = "degraded"
        else:
            overall = "healthy"
        body = {"status": overall, "timestamp": _timestamp(), "components": components}
        ex.respond_local(503 if overall == "unhealthy" else 200, orjson.dumps(body))
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
