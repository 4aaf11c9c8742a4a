"""``GET /admin/upstreams`` on the metrics port: every backend instance as this gateway
instance sees it, read from the shared health table (so any worker answers the same).

Per instance: its address, weight and pools; ``healthy`` (active checks up and no breaker
ejection running: it gets traffic); the active checks' counters; the breaker state, the worst
over the workers (open > half_open > closed) with each worker's own; requests in flight and
totals summed over the workers; the latency EWMA averaged over the workers that measured one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from fastgw.routing.breaker import CLOSED, HALF_OPEN, OPEN, STATE_NAMES

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.routing.health_table import HealthTable

_SEVERITY = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class UpstreamsReport:
    __slots__ = ("_instances", "_strategy", "_table")

    def __init__(self, config: Config, table: HealthTable) -> None:
        self._table = table
        self._strategy = config.routing.strategy
        self._instances = [
            (f"{i.host}:{i.port}", i.weight, list(i.customer_pools))
            for i in config.routing.metald_instances
        ]

    def __call__(self) -> tuple[int, bytes, bytes]:
        now_us = int(time.monotonic() * 1_000_000)
        body = {
            "strategy": self._strategy,
            "instances": [
                self._instance(index, address, weight, pools, now_us)
                for index, (address, weight, pools) in enumerate(self._instances)
            ],
        }
        return 200, b"application/json", orjson.dumps(body)

    def _instance(
        self, index: int, address: str, weight: int, pools: Sequence[str], now_us: int
    ) -> dict[str, Any]:
        seen = self._table.snapshot(index, now_us)
        workers: list[dict[str, Any]] = seen["workers"]  # type: ignore[assignment]
        for worker in workers:
            worker["breaker"] = STATE_NAMES[worker["breaker"]]
        states = [STATE_NAMES.index(w["breaker"]) for w in workers]
        worst = max(states, key=_SEVERITY.__getitem__, default=CLOSED)
        latencies = [w["latency_ewma_ms"] for w in workers if w["latency_ewma_ms"] > 0]
        active: dict[str, Any] = seen["active_check"]  # type: ignore[assignment]
        return {
            "instance": address,
            "index": index,
            "weight": weight,
            "pools": list(pools),
            "healthy": bool(active["up"]) and seen["ejected_for_ms"] == 0,
            "active_check": active,
            "breaker": STATE_NAMES[worst],
            "ejected_for_ms": seen["ejected_for_ms"],
            "ejection_streak": seen["ejection_streak"],
            "inflight": sum(w["inflight"] for w in workers),
            "latency_ewma_ms": round(sum(latencies) / len(latencies), 3) if latencies else None,
            "requests": sum(w["requests"] for w in workers),
            "failures": sum(w["failures"] for w in workers),
            "workers": workers,
        }
