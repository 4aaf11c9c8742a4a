"""Metrics counters kernel: what one finished request and one upstream try add to a worker's
Prometheus numbers (``fastgw/obs/metrics.py`` decides the labels; this file only counts).

What it owns
    ``MetricCounters``: six flat ``array('q')`` buffers: requests by (endpoint row, status
    code), the request-duration histogram by endpoint row (one bucket per bound, then
    ``+Inf``) and its sums; the same three by backend instance for upstream tries. The caller
    copies the buffers to shared memory on its tick.

Invariants
    * Every index is checked before use: an unknown endpoint counts under row 0, a status
      outside 0-999 under ``other_code``, an instance index out of range is not counted. The
      C build runs without bounds checks, so these checks are what keeps it in its buffers.
    * Bucket ``i`` of a duration is the first bound ``>= elapsed_s`` (Prometheus ``le``), the
      last bucket when none is; bounds are few (about 15) and most durations fall in the first
      ones, so a linear scan from the smallest is the fastest search in both builds.
    * Durations are ``time.monotonic`` differences (the exchange's start to now), summed
      in whole nanoseconds: integer sums are exact and do not depend on the order they are
      added in, so totals summed over workers and carried across reloads never go backwards.

Why a kernel
    This is called twice per proxied request. Written as plain Python (lists bumped in a
    method) it cost 0.5-0.8 µs, 3.6-5 % of the whole proxy path (bench/micro_pipeline.py);
    compiled (``counters_c.pxd`` types the buffers as C arrays) it adds 0.9 % of the path's
    instructions. This pure build costs more than that first version (array items are boxed
    one by one): it is the fallback, kept readable.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Mapping, Sequence

__all__ = ["MetricCounters"]

_clock = time.monotonic


class MetricCounters:
    """One worker's request and upstream counts, in the shape ``layout`` (opaque here) says."""

    def __init__(
        self,
        layout: object,
        *,
        endpoints: Mapping[str, int],
        codes: int,
        upstream_codes: int,
        instances: int,
        code_index: bytes,
        other_code: int,
        bounds: Sequence[float],
    ) -> None:
        if len(code_index) != 1000 or max(code_index) >= codes or other_code >= codes:
            raise ValueError("code_index must map each status 0-999 to one of the codes")
        if codes > upstream_codes:
            raise ValueError("the upstream codes start with the request codes")
        rows = max(endpoints.values(), default=0) + 1
        if min(endpoints.values(), default=0) < 0:
            raise ValueError("endpoint rows are >= 0")
        self.layout = layout
        self._endpoints = dict(endpoints)
        self._codes = codes
        self._ucodes = upstream_codes
        self._instances = instances
        self._code_index = bytes(code_index)
        self._other = other_code
        self._bounds = array("d", bounds)
        self._nbounds = len(self._bounds)
        self._buckets = self._nbounds + 1
        self.requests = array("q", bytes(8 * rows * codes))
        self.request_buckets = array("q", bytes(8 * rows * self._buckets))
        self.request_sums = array("q", bytes(8 * rows))  # ns
        self.upstream = array("q", bytes(8 * instances * upstream_codes))
        self.upstream_buckets = array("q", bytes(8 * instances * self._buckets))
        self.upstream_sums = array("q", bytes(8 * instances))  # ns
        # The same buffers under the names the C build types as memoryviews.
        self._requests = self.requests
        self._request_buckets = self.request_buckets
        self._request_sums = self.request_sums
        self._upstream = self.upstream
        self._upstream_buckets = self.upstream_buckets
        self._upstream_sums = self.upstream_sums

    def _bucket(self, elapsed_s: float) -> int:
        i = 0
        while i < self._nbounds and elapsed_s > self._bounds[i]:
            i += 1
        return i

    # HOT PATH: one dict lookup, a clock read, a short scan, three bumps. Written out (no
    # helper calls) for the pure build, where a call costs more than the rest; the caller
    # reads the exchange's fields (bytecode reads a slot faster than a C getattr does).
    def on_request_done(self, endpoint: str | None, status: int, started_s: float) -> None:
        """A finished exchange: its route's endpoint (None: no route), the status sent (0:
        none), and its ``time.monotonic`` start."""
        row = 0
        if endpoint is not None:
            found = self._endpoints.get(endpoint)
            if found is not None:
                row = found
        code = self._code_index[status] if 0 <= status < 1000 else self._other
        elapsed_s = _clock() - started_s
        if elapsed_s < 0.0:  # noqa: PLR1730 - max() is a call in the pure build
            elapsed_s = 0.0
        bucket = 0
        while bucket < self._nbounds and elapsed_s > self._bounds[bucket]:
            bucket += 1
        self._requests[row * self._codes + code] += 1
        self._request_buckets[row * self._buckets + bucket] += 1
        self._request_sums[row] += int(elapsed_s * 1e9)

    # HOT PATH: as above.
    def on_upstream_status(self, index: int, status: int, elapsed_s: float) -> None:
        """A try on instance ``index`` got a response head ``status`` after ``elapsed_s``."""
        if not 0 <= index < self._instances:
            return
        code = self._code_index[status] if 0 <= status < 1000 else self._other
        if elapsed_s < 0.0:  # noqa: PLR1730 - as above
            elapsed_s = 0.0
        bucket = 0
        while bucket < self._nbounds and elapsed_s > self._bounds[bucket]:
            bucket += 1
        self._upstream[index * self._ucodes + code] += 1
        self._upstream_buckets[index * self._buckets + bucket] += 1
        self._upstream_sums[index] += int(elapsed_s * 1e9)

    def on_upstream_failure(self, index: int, code: int, elapsed_s: float) -> None:
        """A try on instance ``index`` got no usable head; ``code`` is the index of the
        failure's label among the upstream codes (those after the request codes)."""
        if not (0 <= index < self._instances and self._codes <= code < self._ucodes):
            return
        elapsed_s = max(0.0, elapsed_s)
        self._upstream[index * self._ucodes + code] += 1
        self._upstream_buckets[index * self._buckets + self._bucket(elapsed_s)] += 1
        self._upstream_sums[index] += int(elapsed_s * 1e9)
