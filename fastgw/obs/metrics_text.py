"""Prometheus metrics, part 3: the text exposition format (0.0.4) of summed totals.

What it owns
    ``render``: every A4 metric family, with ``# HELP`` and ``# TYPE``, from a ``Totals`` in a
    ``Layout`` and the upstream health gauges. Histograms have cumulative ``_bucket{le}``
    samples ending in ``+Inf``, then ``_sum`` and ``_count`` (the ``+Inf`` bucket's value).

Which series appear
    Families with a small fixed label set (auth results, rate-limit levels and results, shed
    reasons) and the per-endpoint and per-instance histograms and gauges are always rendered,
    zeros included, so that a series exists before its first event. The ``code`` dimension is
    rendered only where a count is not zero: most of the possible statuses never happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from fastgw.obs.metrics import AUTH_RESULTS, SCALARS
from fastgw.ratelimit.limiter import RateLimitCounts

if TYPE_CHECKING:
    from fastgw.obs.metrics import Layout
    from fastgw.obs.metrics_board import Totals

CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
LEVELS: Final = ("global", "customer", "endpoint", "quota")
SHED_REASONS: Final = ("concurrency", "tier", "connections")
"""``fastgw_shed_total{reason}``: ``rate_limits.global.max_concurrent`` was full (503
``overloaded``); a tier was shed to keep the last slots for higher tiers (``shed_above``); a
connection was refused at ``gateway.server.limits.max_connections``."""

HealthGauges = Sequence[tuple[int, int]]
"""Per instance, in layout order: (healthy 0/1, circuit state 0 closed, 1 open, 2 half-open)."""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _float(value: float) -> str:
    return repr(float(value))


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _histogram(
    out: list[str],
    name: str,
    *,
    label: str,
    values: Sequence[str],
    totals: Totals,
    buckets_at: int,
    sums_at: int,
    bounds: Sequence[float],
) -> None:
    les = [_float(bound) for bound in bounds] + ["+Inf"]
    width = len(les)
    cells = totals.cells
    for n, value in enumerate(values):
        shown = f'{label}="{_label(value)}"'
        running = 0
        start = buckets_at + n * width
        for le, count in zip(les, cells[start : start + width], strict=True):
            running += count
            out.append(f'{name}_bucket{{{shown},le="{le}"}} {running}')
        out.append(f"{name}_sum{{{shown}}} {_float(cells[sums_at + n] / 1e9)}")
        out.append(f"{name}_count{{{shown}}} {running}")


def _by_code(
    out: list[str],
    name: str,
    *,
    label: str,
    values: Sequence[str],
    codes: Sequence[str],
    ints: Sequence[int],
    at: int,
) -> None:
    width = len(codes)
    for n, value in enumerate(values):
        shown = _label(value)
        row = ints[at + n * width : at + (n + 1) * width]
        for code, count in zip(codes, row, strict=True):
            if count:
                out.append(f'{name}{{{label}="{shown}",code="{code}"}} {count}')


def _ratelimit(ints: Sequence[int], at: int) -> dict[tuple[str, str], int]:
    counts = RateLimitCounts()
    counts.by_masks = list(ints[at : at + len(counts.by_masks)])
    return counts.as_dict()


def render(layout: Layout, totals: Totals, health: HealthGauges) -> bytes:
    ints = totals.cells
    out: list[str] = []
    _family(
        out,
        "fastgw_requests_total",
        "counter",
        "Requests answered, by route endpoint and the status sent.",
    )
    _by_code(
        out, "fastgw_requests_total", label="endpoint", values=layout.endpoints,
        codes=layout.codes, ints=ints, at=0,
    )  # fmt: skip
    _family(
        out,
        "fastgw_request_duration_seconds",
        "histogram",
        "Time from a request's first byte to its answer's end, by route endpoint.",
    )
    _histogram(
        out, "fastgw_request_duration_seconds", label="endpoint", values=layout.endpoints,
        totals=totals, buckets_at=layout.request_buckets_at, sums_at=layout.request_sums_at,
        bounds=layout.bounds,
    )  # fmt: skip
    _family(out, "fastgw_auth_total", "counter", "Authentication decisions, by result.")
    for n, result in enumerate(AUTH_RESULTS):
        out.append(f'fastgw_auth_total{{result="{result}"}} {ints[layout.auth_at + n]}')
    _family(
        out,
        "fastgw_ratelimit_total",
        "counter",
        "Rate-limit decisions, by level and result (a shadow level counts what it would do).",
    )
    for (level, result), count in _ratelimit(ints, layout.ratelimit_at).items():
        out.append(f'fastgw_ratelimit_total{{level="{level}",result="{result}"}} {count}')
    _family(
        out,
        "fastgw_upstream_requests_total",
        "counter",
        "Tries sent to a backend instance, by the response status or how the try failed.",
    )
    _by_code(
        out, "fastgw_upstream_requests_total", label="instance", values=layout.instances,
        codes=layout.upstream_codes, ints=ints, at=layout.upstream_at,
    )  # fmt: skip
    _family(
        out,
        "fastgw_upstream_duration_seconds",
        "histogram",
        "Time from sending a try to its response head (or its failure), by instance.",
    )
    _histogram(
        out, "fastgw_upstream_duration_seconds", label="instance", values=layout.instances,
        totals=totals, buckets_at=layout.upstream_buckets_at, sums_at=layout.upstream_sums_at,
        bounds=layout.bounds,
    )  # fmt: skip
    _family(
        out,
        "fastgw_upstream_healthy",
        "gauge",
        "1 when the instance gets traffic (active checks up, no breaker ejection), else 0.",
    )
    for instance, (healthy, _) in zip(layout.instances, health, strict=True):
        out.append(f'fastgw_upstream_healthy{{instance="{_label(instance)}"}} {healthy}')
    _family(
        out,
        "fastgw_circuit_state",
        "gauge",
        "Circuit breaker state, the worst over the workers: 0 closed, 1 open, 2 half-open.",
    )
    for instance, (_, state) in zip(layout.instances, health, strict=True):
        out.append(f'fastgw_circuit_state{{instance="{_label(instance)}"}} {state}')
    scalars = dict(zip(SCALARS, ints[layout.scalars_at :], strict=False))
    _family(out, "fastgw_retries_total", "counter", "Tries sent after a request's first one.")
    out.append(f"fastgw_retries_total {scalars['retries']}")
    _family(out, "fastgw_connections_active", "gauge", "Open client connections.")
    out.append(f"fastgw_connections_active {totals.connections}")
    _family(
        out, "fastgw_requests_inflight", "gauge", "Requests being read or answered right now."
    )
    out.append(f"fastgw_requests_inflight {totals.inflight}")
    _family(out, "fastgw_shed_total", "counter", "Requests or connections refused for load.")
    for reason in SHED_REASONS:
        out.append(f'fastgw_shed_total{{reason="{reason}"}} {scalars["shed_" + reason]}')
    _family(
        out,
        "fastgw_redis_errors_total",
        "counter",
        "Rate-limiter Redis commands that failed (unreachable, timeout, error reply).",
    )
    out.append(f"fastgw_redis_errors_total {scalars['redis_errors']}")
    out.append("")
    return "\n".join(out).encode("utf-8")
