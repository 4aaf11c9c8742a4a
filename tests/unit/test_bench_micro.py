"""The micro benchmarks drive real protocol objects; keep them runnable and keep them honest.

They are not in the default test path (``bench/``), so nothing else notices when a change in
the gateway breaks them (micro_pipeline broke silently once), or when a case quietly stops
measuring what its name says (a "proxied" request answered 404 by the gateway is fast).
"""

from __future__ import annotations

import functools
import math

import pytest
import uvloop

import fastgw.auth.sources
import fastgw.http.downstream
from bench.micro_chain import (
    CASES,
    CONFIG,
    Case,
    allocations_per_call,
    check_case,
    measure_all,
    table,
    use_build,
)
from bench.micro_pipeline import Harness, in_loop, measure
from fastgw import _speedups

REQUESTS = 300


def test_micro_pipeline_completes_every_request() -> None:
    cost_us = uvloop.run(measure(200, profile=False))
    assert cost_us > 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_request_of_a_case_gets_its_status(speedups: _speedups.Build, case: Case) -> None:
    def run() -> None:
        # The gateway's modules really run this build's kernels while the case runs.
        assert fastgw.http.downstream.scan_request_head is speedups.headers.scan_request_head
        assert fastgw.auth.sources.extract_bearer is speedups.headers.extract_bearer
        harness = Harness(CONFIG)
        for _ in range(REQUESTS):
            check_case(harness, case)  # status, and forwarded to the backend or not
        assert harness.ctx.requests_done == REQUESTS
        answer = harness.client_transport.last_bytes()
        forwarded = harness.upstream_transport.last_bytes()
        if case.name == "get_dev_token":
            assert b"\r\nX-Customer-ID: 42\r\n" in forwarded
            assert b"Authorization: Bearer dev_customer_42\r\n" in forwarded
        elif case.name == "get_jwt_cached":
            assert b"\r\nX-Customer-ID: acme-42\r\nX-Customer-Tier: pro\r\n" in forwarded
            assert b"X-Customer-Permissions: vm:read\r\n" in forwarded
        elif case.name == "post_small_body":
            assert forwarded.startswith(b"POST /echo/items HTTP/1.1\r\n")
            body = case.request.partition(b"\r\n\r\n")[2]
            assert forwarded.endswith(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        elif case.name == "reject_no_route":
            assert b'"code":"no_route"' in answer
        elif case.name == "reject_no_token":
            assert b'"code":"unauthorized"' in answer

    with use_build(speedups.name):
        in_loop(run)


def test_use_build_puts_the_chosen_build_back() -> None:
    before = fastgw.http.downstream.scan_request_head
    other = "py" if _speedups.IMPLEMENTATION == "c" else "c"
    try:
        with use_build(other) as build:
            assert fastgw.http.downstream.scan_request_head is build.headers.scan_request_head
    except ImportError:
        pytest.skip("only one build of the kernels is available")
    assert fastgw.http.downstream.scan_request_head is before


def test_allocation_counter_counts_allocations() -> None:
    """The hook counts allocator calls (freed ones too), nothing when nothing is allocated."""
    assert allocations_per_call(lambda: None, 100).allocations == 0
    # Three bytearrays (no free list: object + buffer each), freed at once: six blocks at
    # least (the tuple may come from its free list), none retained.
    counted = allocations_per_call(lambda: (bytearray(64), bytearray(64), bytearray(64)), 100)
    assert 6 <= counted.allocations <= 7
    assert counted.bytes >= 3 * 64
    assert abs(counted.retained_blocks) < 0.5


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_allocations_per_request_are_counted(case: Case) -> None:
    def run() -> None:
        harness = Harness(CONFIG)
        one = functools.partial(harness.exchange, case.request, case.response)
        for _ in range(REQUESTS):
            one()
        counted = allocations_per_call(one, REQUESTS)
        assert math.isfinite(counted.allocations) and counted.allocations > 10
        assert math.isfinite(counted.bytes) and counted.bytes > 0
        # A request that keeps a block alive per request is a leak, not a cost.
        assert counted.retained_blocks < 0.5

    in_loop(run)


def test_table_names_every_case() -> None:
    rows = measure_all(REQUESTS, builds=("py",))
    text = table(rows)
    for case in CASES:
        assert f"| {case.name} | py |" in text
    assert all(row.us_per_request > 0 and row.allocations.allocations > 0 for row in rows)
