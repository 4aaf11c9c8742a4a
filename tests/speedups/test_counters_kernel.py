"""The metrics counters kernel, on both builds: rows, codes, Prometheus ``le`` buckets,
nanosecond sums, indexes out of range ignored; and the two builds agree on any input."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._speedups import Build
from fastgw.obs.metrics import BOUNDS_S, CODE_INDEX, CODES, OTHER_CODE, UPSTREAM_CODES

ENDPOINTS = {"(unrouted)": 0, "health": 1, "Echo": 2}
INSTANCES = 2
BUCKETS = len(BOUNDS_S) + 1


def counters(build: Build) -> Any:
    return build.counters.MetricCounters(
        "layout",
        endpoints=ENDPOINTS,
        codes=len(CODES),
        upstream_codes=len(UPSTREAM_CODES),
        instances=INSTANCES,
        code_index=bytes(CODE_INDEX),
        other_code=OTHER_CODE,
        bounds=BOUNDS_S,
    )


def test_a_request_counts_by_endpoint_and_code_with_its_duration(speedups: Build) -> None:
    c = counters(speedups)
    assert c.layout == "layout"
    started = time.monotonic() - 10.0  # 10 s ago: the bucket of bound 30.0
    c.on_request_done("Echo", 200, started)
    c.on_request_done(None, 404, time.monotonic())
    c.on_request_done("Nope", 1234, time.monotonic())
    requests = list(c.requests)
    assert requests[2 * len(CODES) + CODES.index("200")] == 1
    assert requests[0 * len(CODES) + CODES.index("404")] == 1  # no route: row 0
    assert requests[0 * len(CODES) + OTHER_CODE] == 1  # unknown endpoint: row 0; 1234: other
    assert sum(requests) == 3
    buckets = list(c.request_buckets)
    assert buckets[2 * BUCKETS + BOUNDS_S.index(30.0)] == 1
    assert buckets[0] == 2  # the two quick ones, in the first bucket (<= 0.5 ms)
    sums = list(c.request_sums)
    assert 10_000_000_000 <= sums[2] < 12_000_000_000  # whole nanoseconds


@pytest.mark.parametrize(
    ("elapsed_s", "bucket"),
    [
        (0.0, 0),
        (0.0005, 0),  # le: a value equal to a bound is in that bound's bucket
        (0.00050001, 1),
        (0.001, 1),
        (30.0, len(BOUNDS_S) - 1),
        (30.000001, len(BOUNDS_S)),  # +Inf
        (1e6, len(BOUNDS_S)),
        (-1.0, 0),  # never negative: counted as 0
    ],
)
def test_upstream_buckets_are_prometheus_le(speedups: Build, elapsed_s: float, bucket: int) -> None:
    c = counters(speedups)
    c.on_upstream_status(1, 503, elapsed_s)
    buckets = list(c.upstream_buckets)
    assert buckets[BUCKETS + bucket] == 1 and sum(buckets) == 1
    upstream = list(c.upstream)
    assert upstream[len(UPSTREAM_CODES) + CODES.index("503")] == 1
    assert list(c.upstream_sums) == [0, int(max(0.0, elapsed_s) * 1e9)]


def test_upstream_failures_and_out_of_range_indexes(speedups: Build) -> None:
    c = counters(speedups)
    timeout = UPSTREAM_CODES.index("timeout")
    c.on_upstream_failure(0, timeout, 0.2)
    c.on_upstream_failure(0, CODES.index("200"), 0.2)  # not a failure code: ignored
    c.on_upstream_status(INSTANCES, 200, 0.1)
    c.on_upstream_status(-1, 200, 0.1)
    c.on_upstream_failure(INSTANCES, timeout, 0.1)
    upstream = list(c.upstream)
    assert upstream[timeout] == 1 and sum(upstream) == 1
    assert sum(c.upstream_buckets) == 1


def test_bad_construction_is_refused(speedups: Build) -> None:
    with pytest.raises(ValueError, match="code_index"):
        speedups.counters.MetricCounters(
            None, endpoints=ENDPOINTS, codes=2, upstream_codes=5, instances=1,
            code_index=bytes(CODE_INDEX), other_code=1, bounds=BOUNDS_S,
        )  # fmt: skip


@settings(deadline=None, max_examples=300)
@given(
    tries=st.lists(
        st.tuples(
            st.integers(-2, INSTANCES + 1),
            st.integers(-5, 1200),
            st.floats(-1.0, 100.0, allow_nan=False),
        ),
        max_size=30,
    )
)
def test_both_builds_count_the_same(
    speedups_pair: tuple[Build, Build], tries: list[tuple[int, int, float]]
) -> None:
    py, c = (counters(build) for build in speedups_pair)
    for index, status, elapsed_s in tries:
        for each in (py, c):
            each.on_upstream_status(index, status, elapsed_s)
    for name in ("upstream", "upstream_buckets", "upstream_sums"):
        assert list(getattr(py, name)) == list(getattr(c, name)), name
