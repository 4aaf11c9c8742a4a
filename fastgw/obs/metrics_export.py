"""Prometheus metrics, part 4: one worker's side of the board, and ``GET <metrics.path>``.

What it owns
    ``MetricsExport``: gathers this worker's numbers (its ``MetricCounters`` and the counters
    kept where things happen: ``AuthCounts``, ``RateLimitCounts``, ``Backends.retries``, the
    Redis client's errors, refused connections) into its board section on the worker's tick
    (``GatewayServer._refresh``, every ``HEALTH_REFRESH_INTERVAL_S``) and once more when it
    stops; and answers a scrape: publish its own numbers first, then sum every section of
    every live generation (``BoardReader``) and render them (``metrics_text.render``).

Staleness
    A scrape sees the answering worker's numbers as of now and every other worker's as of its
    last tick: at most ``HEALTH_REFRESH_INTERVAL_S`` (100 ms) old.

During a reload
    Until a new generation's workers all serve, the old generation's workers cannot see the
    new one's numbers (its board was made after they forked), so they answer 503 rather than a
    total that a scrape of a new worker may already have exceeded: the
    new workers answer exact totals (theirs plus every older live generation's). After the
    swap the old workers stop serving the metrics port, and the master carries their totals
    into the new board once they have exited (``metrics_board.py``).
"""

from __future__ import annotations

import os
import time
from array import array
from operator import add
from typing import TYPE_CHECKING, Final, cast

import orjson

from fastgw.obs.metrics import Layout
from fastgw.obs.metrics_text import CONTENT_TYPE, render
from fastgw.routing.breaker import CLOSED, HALF_OPEN, OPEN

if TYPE_CHECKING:
    from fastgw._speedups import MetricCounters
    from fastgw.obs.metrics_board import BoardReader
    from fastgw.routing.health_table import HealthTable
    from fastgw.worker_context import WorkerContext

_SEVERITY: Final = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
_UNAVAILABLE: Final = orjson.dumps(
    {"error": {"code": "metrics_unavailable", "message": "a reload is in progress: retry"}}
)


class MetricsExport:
    __slots__ = ("_base", "_ctx", "_metrics", "_pid", "_reader", "_slot", "_table")

    def __init__(
        self, ctx: WorkerContext, reader: BoardReader, slot: int, table: HealthTable | None
    ) -> None:
        metrics = ctx.plan.metrics
        assert metrics is not None, "metrics are on whenever there is a board"
        if cast(Layout, metrics.layout).descriptor() != reader.board.layout.descriptor():
            raise ValueError("the metrics board was made for another config")
        self._ctx = ctx
        self._metrics: MetricCounters = metrics
        self._reader = reader
        self._slot = slot
        self._table = table
        self._pid = os.getpid()
        # A worker respawned into this slot continues its predecessor's counts.
        base = reader.board.read_section(slot)
        self._base = array("q", base) if any(base) else None

    def _counters(self) -> array[int]:
        """This worker's counters in the layout's order, its predecessor's added."""
        metrics, ctx = self._metrics, self._ctx
        plan = ctx.plan
        auth = plan.auth.counts
        limits = plan.limits.limiter.counts
        redis = plan.limits.redis
        counters = (
            metrics.requests + metrics.request_buckets + metrics.request_sums
            + metrics.upstream + metrics.upstream_buckets + metrics.upstream_sums
        )  # fmt: skip
        counters.fromlist(
            [
                auth.ok, auth.cached, auth.dev, auth.missing, auth.invalid, auth.expired,
                auth.forbidden,
                *limits.by_masks,
                plan.backends.retries,
                0 if redis is None else redis.client.errors,
                limits.concurrency_refused - limits.tier_refused,
                limits.tier_refused,
                ctx.refused_connections,
            ]
        )  # fmt: skip
        if self._base is not None:
            counters = array("q", map(add, self._base, counters))
        return counters

    def publish(self, now_us: int, *, final: bool = False) -> None:
        """Copy this worker's numbers into its section (``final``: it stops; gauges 0).
        Costs O(open connections) for the in-flight gauge: a few µs per hundred."""
        counters = self._counters()
        ctx = self._ctx
        connections = inflight = 0
        if not final:
            connections = len(ctx.connections)
            inflight = sum(conn.open_requests() for conn in ctx.connections)
        self._reader.board.publish(
            self._slot, self._pid, now_us, counters, connections=connections, inflight=inflight
        )

    def close(self) -> None:
        """Unmap the boards (after the last ``publish``)."""
        self._reader.close()
        self._reader.board.close()

    def _health(self, now_us: int) -> list[tuple[int, int]]:
        """Per instance: healthy (as ``/admin/upstreams`` says) and the worst breaker state."""
        table = self._table
        count = len(self._reader.board.layout.instances)
        if table is None:
            return [(1, CLOSED)] * count
        gauges = []
        for index in range(count):
            seen = table.snapshot(index, now_us)
            active = seen["active_check"]
            up = isinstance(active, dict) and bool(active["up"])
            healthy = 1 if up and seen["ejected_for_ms"] == 0 else 0
            workers = seen["workers"]
            states = [int(w["breaker"]) for w in workers] if isinstance(workers, list) else []
            gauges.append((healthy, max(states, key=_SEVERITY.__getitem__, default=CLOSED)))
        return gauges

    def __call__(self) -> tuple[int, bytes, bytes]:
        """``GET <metrics.path>`` on the metrics port."""
        board = self._reader.board
        if board.superseded:
            return 503, b"application/json", _UNAVAILABLE
        now_us = time.monotonic_ns() // 1000
        self.publish(now_us)
        totals = self._reader.totals(now_us)
        if totals is None:
            return 503, b"application/json", _UNAVAILABLE
        return 200, CONTENT_TYPE, render(board.layout, totals, self._health(now_us))
