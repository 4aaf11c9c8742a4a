"""Micro benchmarks of the hot-path kernels, pure-Python twin against compiled build.

Run: ``pytest bench/micro_speedups.py --benchmark-only`` (after
``python setup.py build_ext --inplace``; without the extensions the ``c`` cases are skipped).
Each case calls the kernel directly with fixed arguments, so the numbers are per call and
include only the Python -> kernel call overhead, no lambda.
"""

from __future__ import annotations

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


def test_bucket_take(benchmark: Any, build: _speedups.Build) -> None:
    # a known key, always allowed (huge burst): the common path
    table = build.bucket.TokenBucketTable(10_000)
    for i in range(5_000):
        table.take(b"customer-%d" % i, 0.0, 100.0, 1e12, 1.0)
    assert benchmark(table.take, CUSTOMER_KEY, 1000.0, 100.0, 1e12, 1.0) == 0.0
