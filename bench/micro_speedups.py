"""Micro benchmarks of the hot-path kernels, pure-Python twin against compiled build.

Run: ``pytest bench/micro_speedups.py --benchmark-only`` (after
``python setup.py build_ext --inplace``; without the extensions the ``c`` cases are skipped).
Each case calls the kernel directly with fixed arguments, so the numbers are per call and
include only the Python -> kernel call overhead, no lambda.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from fastgw import _speedups

# A typical browser-like API request: 8 fields, ~450 bytes, one JWT.
BROWSER_FIELDS = [
    b"Host", b"api.example.com",
    b"User-Agent",
    b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36",
    b"Accept", b"application/json, text/plain, */*",
    b"Accept-Language", b"en-US,en;q=0.9",
    b"Accept-Encoding", b"gzip, deflate, br",
    b"Authorization",
    b"Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjdXN0XzEyMyIsInRpZXIiOiJwcm8i"
    b"LCJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU",
    b"Connection", b"keep-alive",
    b"Content-Type", b"application/json",
]  # fmt: skip
NO_STRIP: frozenset[bytes] = frozenset()
CUSTOMER_KEY = b"customer-000123"
NOW_US = 20_000 * 86_400_000_000 + 43_200_000_000  # noon UTC: the clock never moves


@pytest.fixture(scope="module", params=["py", "c"])
def build(request: pytest.FixtureRequest) -> _speedups.Build:
    try:
        return _speedups.load_build(request.param)
    except ImportError as exc:
        pytest.skip(str(exc))


def test_scan_request_head(benchmark: Any, build: _speedups.Build) -> None:
    head = benchmark(build.headers.scan_request_head, BROWSER_FIELDS, NO_STRIP)
    assert head.host == b"api.example.com"


def test_hash_ring_lookup(benchmark: Any, build: _speedups.Build) -> None:
    # 8 instances of weight 25: 800 points, a realistic ring
    nodes = [b"metald-%d:9000" % i for i in range(8)]
    ring = build.hashring.HashRing(nodes, [25] * 8)
    assert 0 <= benchmark(ring.lookup, CUSTOMER_KEY) < 8


def test_bucket_decide(benchmark: Any, build: _speedups.Build) -> None:
    # a known customer with every level on, always allowed (huge bursts and quota): the
    # common path, in a table that holds 2,000 other customers
    fd = os.memfd_create("fastgw-bench-limits")
    try:
        os.ftruncate(fd, build.bucket.table_bytes(4096))
        table = build.bucket.LimitTable(fd, create=True)
        big = 10**9

        def args(customer: bytes) -> tuple[Any, ...]:
            fp = build.bucket.customer_fingerprint(build.hashring.hash64(customer))
            # now_us, fp, cost, rate, burst, endpoint, its rate and burst, quota, global, shadow
            return (NOW_US, fp, 1, 1e9, big, 3, 1e9, big, 10**15, 1e9, big, 0)

        for i in range(2_000):
            assert table.decide(*args(b"customer-%d" % i)) == 0
        known = args(CUSTOMER_KEY)
        assert table.decide(*known) == 0
        assert benchmark(table.decide, *known) == 0
        assert table.header_level != 0
        table.close()
    finally:
        os.close(fd)
