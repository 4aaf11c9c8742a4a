"""Prometheus metrics, part 1: what is counted, under which labels, and the request path's side.

What it owns
    * ``Layout``: every series this gateway can export, decided from the config once (A4 names;
      docs/observability.md "Metrics"): the label values (endpoints, instances, status codes,
      histogram bounds) and where each number sits in one flat list of integer cells
      (histogram sums in nanoseconds). A layout encodes itself as a small JSON descriptor,
      so that a process can read numbers written under another config (a reload's previous
      generation, ``metrics_board.py``) and carry them over by label, never by position.
    * ``request_metrics``: one worker's own request and upstream counters (a ``MetricCounters``
      of the counters kernel), bumped on the request path.

Invariants
    * Cardinality is bounded by the config, never by traffic: ``endpoint`` is a route's
      endpoint name, ``health`` (the reserved health paths) or ``UNROUTED`` (no route matched,
      or the request was refused before routing); ``code`` is one of ``CODES`` (each standard
      HTTP status has its own value; another status counts under its class, ``5xx``, or
      ``other``); ``instance`` is a configured ``host:port``. No customer id is ever a label.
    * The request path only bumps numbers in this worker's buffers at indexes the plan fixed:
      no string is built, no dict is keyed per request (the endpoint's row is one lookup of the
      route's interned name). Publishing to shared memory happens on the worker's tick.
    * Durations are ``time.monotonic`` differences (the exchange's ``started_s``, the try's
      ``sent_s``); bucket ``i`` counts the values ``<= BOUNDS_S[i]`` not counted by a lower one
      (rendered cumulatively), the last one the rest (``+Inf``).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import orjson

from fastgw._speedups import MetricCounters

if TYPE_CHECKING:
    from fastgw.config import Config

UNROUTED: Final = "(unrouted)"
"""The endpoint label of requests no route took (404 ``no_route``, framing errors, bans): the
parentheses cannot appear in a route's endpoint name, so it never merges with one."""
HEALTH: Final = "health"
"""The endpoint label of ``/health``, ``/health/detailed`` and ``/ready`` (the plan's name)."""

BOUNDS_S: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip
"""Histogram bucket bounds (seconds), for request and upstream durations alike: a gateway's
own work is sub-millisecond, a backend's answer up to its timeout."""
BUCKETS: Final = len(BOUNDS_S) + 1  # the last one is +Inf

_STANDARD: Final = tuple(sorted(s.value for s in HTTPStatus if 100 <= s.value <= 599))
CODES: Final = ("0", *map(str, _STANDARD), "1xx", "2xx", "3xx", "4xx", "5xx", "other")
"""``code`` label values: "0" when no status was sent, each standard status, the class of a
non-standard one (``5xx``), and ``other`` (600-999)."""


def _code_index() -> tuple[int, ...]:
    index = {int(code): i for i, code in enumerate(CODES) if code.isdigit()}
    classes = {CODES[i][0]: i for i in range(len(CODES)) if CODES[i].endswith("xx")}
    other = CODES.index("other")
    return tuple(
        index.get(status, classes.get(str(status // 100), other)) for status in range(1000)
    )


CODE_INDEX: Final = _code_index()
"""Status (0-999) → index in ``CODES`` (the kernel reads it as 1000 bytes)."""
OTHER_CODE: Final = CODES.index("other")

UPSTREAM_FAILURES: Final = ("connect_error", "timeout", "error")
"""``code`` values of upstream tries that got no usable response head: the connection could
not be made (refused, unreachable, connect timeout); no head within the route's timeout; the
connection was lost or the response unparseable."""
UPSTREAM_CODES: Final = (*CODES, *UPSTREAM_FAILURES)
CONNECT_ERROR: Final = len(CODES)
TIMEOUT: Final = len(CODES) + 1
ERROR: Final = len(CODES) + 2

AUTH_RESULTS: Final = ("ok", "cached", "dev", "missing", "invalid", "expired", "forbidden")
RATELIMIT_CELLS: Final = 256  # RateLimitCounts.by_masks, summed as they are
SCALARS: Final = ("retries", "redis_errors", "shed_concurrency", "shed_tier", "shed_connections")
"""Counters without labels (the three ``shed_*`` are ``fastgw_shed_total{reason}``)."""



class Layout:
    """Where every number sits, in one flat list of integer cells: ``[requests | request
    buckets | request sums | upstream | upstream buckets | upstream sums | auth | ratelimit |
    scalars]`` (sums in nanoseconds). Built from the label values only, so that equal
    descriptors mean equal layouts."""

    __slots__ = (
        "auth_at",
        "bounds",
        "cells",
        "codes",
        "endpoints",
        "instances",
        "ratelimit_at",
        "request_buckets_at",
        "request_sums_at",
        "scalars_at",
        "upstream_at",
        "upstream_buckets_at",
        "upstream_codes",
        "upstream_sums_at",
    )

    def __init__(
        self,
        endpoints: Sequence[str],
        instances: Sequence[str],
        *,
        codes: Sequence[str] = CODES,
        upstream_codes: Sequence[str] = UPSTREAM_CODES,
        bounds: Sequence[float] = BOUNDS_S,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.instances = tuple(instances)
        self.codes = tuple(codes)
        self.upstream_codes = tuple(upstream_codes)
        self.bounds = tuple(bounds)
        buckets = len(self.bounds) + 1
        e, i = len(self.endpoints), len(self.instances)
        self.request_buckets_at = e * len(self.codes)
        self.request_sums_at = self.request_buckets_at + e * buckets
        self.upstream_at = self.request_sums_at + e
        self.upstream_buckets_at = self.upstream_at + i * len(self.upstream_codes)
        self.upstream_sums_at = self.upstream_buckets_at + i * buckets
        self.auth_at = self.upstream_sums_at + i
        self.ratelimit_at = self.auth_at + len(AUTH_RESULTS)
        self.scalars_at = self.ratelimit_at + RATELIMIT_CELLS
        self.cells = self.scalars_at + len(SCALARS)

    @classmethod
    def from_config(cls, config: Config) -> Layout:
        endpoints = [UNROUTED, HEALTH]
        for route in config.routes:
            if route.endpoint not in endpoints:
                endpoints.append(route.endpoint)
        instances = [f"{i.host}:{i.port}" for i in config.routing.metald_instances]
        return cls(endpoints, instances)

    def descriptor(self) -> bytes:
        return orjson.dumps(
            {
                "endpoints": self.endpoints,
                "instances": self.instances,
                "codes": self.codes,
                "upstream_codes": self.upstream_codes,
                "bounds": self.bounds,
                "auth": AUTH_RESULTS,
                "ratelimit_cells": RATELIMIT_CELLS,
                "scalars": SCALARS,
            }
        )

    @classmethod
    def from_descriptor(cls, data: bytes) -> Layout:
        spec = orjson.loads(data)
        if (
            spec["auth"] != list(AUTH_RESULTS)
            or spec["ratelimit_cells"] != RATELIMIT_CELLS
            or spec["scalars"] != list(SCALARS)
        ):
            raise ValueError("metrics layout of another version")
        return cls(
            spec["endpoints"],
            spec["instances"],
            codes=spec["codes"],
            upstream_codes=spec["upstream_codes"],
            bounds=spec["bounds"],
        )

    def translation(self, source: Layout) -> list[int]:
        """For each of ``source``'s cells, its cell here (-1: this layout has no such series:
        an endpoint or instance the config dropped, or histograms with other bounds)."""
        cells = [-1] * source.cells
        _rows(cells, source.endpoints, self.endpoints, source.codes, self.codes, 0, 0)
        _rows(
            cells, source.instances, self.instances, source.upstream_codes, self.upstream_codes,
            source.upstream_at, self.upstream_at,
        )  # fmt: skip
        if source.bounds == self.bounds:
            buckets = len(self.bounds) + 1
            for old, new in _moves(source.endpoints, self.endpoints):
                for b in range(buckets):
                    cells[source.request_buckets_at + old * buckets + b] = (
                        self.request_buckets_at + new * buckets + b
                    )
                cells[source.request_sums_at + old] = self.request_sums_at + new
            for old, new in _moves(source.instances, self.instances):
                for b in range(buckets):
                    cells[source.upstream_buckets_at + old * buckets + b] = (
                        self.upstream_buckets_at + new * buckets + b
                    )
                cells[source.upstream_sums_at + old] = self.upstream_sums_at + new
        fixed = len(AUTH_RESULTS) + RATELIMIT_CELLS + len(SCALARS)
        for n in range(fixed):
            cells[source.auth_at + n] = self.auth_at + n
        return cells


def _moves(old: Sequence[str], new: Sequence[str]) -> list[tuple[int, int]]:
    """(old row, new row) of every label value both have."""
    rows = {name: n for n, name in enumerate(new)}
    return [(n, rows[name]) for n, name in enumerate(old) if name in rows]


def _rows(  # noqa: PLR0917 - a table's coordinates in both layouts
    cells: list[int],
    old_rows: Sequence[str],
    new_rows: Sequence[str],
    old_codes: Sequence[str],
    new_codes: Sequence[str],
    old_at: int,
    new_at: int,
) -> None:
    """Map a (row, code) table of counts from one layout to another, by label."""
    codes = {code: n for n, code in enumerate(new_codes)}
    for old, new in _moves(old_rows, new_rows):
        old_row, new_row = old_at + old * len(old_codes), new_at + new * len(new_codes)
        for c, code in enumerate(old_codes):
            if code in codes:
                cells[old_row + c] = new_row + codes[code]


def request_metrics(layout: Layout) -> MetricCounters:
    """One worker's own request and upstream counters (the plan makes them when metrics are
    on), bumped on the request path by the counters kernel (``_speedups/counters_py.py``).
    Everything else exported is counted where it happens (``AuthCounts``, ``RateLimitCounts``,
    ``Backends.retries``, the Redis client) and read when publishing."""
    return MetricCounters(
        layout,
        endpoints={name: row for row, name in enumerate(layout.endpoints)},
        codes=len(layout.codes),
        upstream_codes=len(layout.upstream_codes),
        instances=len(layout.instances),
        code_index=bytes(CODE_INDEX),
        other_code=OTHER_CODE,
        bounds=layout.bounds,
    )
