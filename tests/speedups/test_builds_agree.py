"""The two builds of every kernel agree: same results and same exceptions, for any input.

Each test runs one input through the ``py`` and the ``c`` build and compares outcomes: the
returned values (attribute by attribute for head objects, bit for bit for floats) or the
exception's type name and reason. This is what keeps one source honest when Cython compiles it:
a C-typed local that overflows or rounds differently shows up here first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._speedups import Build

Pair = tuple[Build, Build]
# No deadline: CI machines are shared and a slow example is not a wrong one.
BASE = settings(deadline=None)

REQUEST_ATTRS = (
    "host",
    "content_length",
    "chunked",
    "expect_continue",
    "authorization",
    "cookie",
    "request_id",
    "traceparent",
    "tracestate",
    "forwarded_for",
    "close",
    "forward_block",
)
RESPONSE_ATTRS = ("content_length", "chunked", "close", "forward_block")


def outcome(call: Callable[..., Any], *args: Any, attrs: tuple[str, ...] = ()) -> Any:
    """What a call did, in a form two builds can be compared on."""
    try:
        result = call(*args)
    except Exception as exc:  # compared, not swallowed
        return ("raised", type(exc).__name__, getattr(exc, "reason", str(exc)))
    if attrs:
        return ("returned", tuple(_plain(getattr(result, name)) for name in attrs))
    return ("returned", _plain(result))


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return ("float", repr(value))  # tells -0.0 from 0.0 and makes nan equal to nan
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# ------------------------------------------------------------------------------- headers

INTERESTING_NAMES = [
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"transfer-encoding",
    b"Connection",
    b"connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
    b"Expect",
    b"Authorization",
    b"X-Request-ID",
    b"traceparent",
    b"tracestate",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-Customer-ID",
    b"x-customer-",
    b"X-Custom",
    b"Accept",
    b"Cookie",
    b"cookie",
    b"COOKIE",
    b"close",
    b"x",
    b"",
]
INTERESTING_VALUES = [
    b"",
    b"0",
    b"5",
    b" 17 ",
    b"0" * 19,
    b"9" * 18,
    b"-1",
    b"chunked",
    b" Chunked ",
    b"gzip",
    b"close",
    b"keep-alive, close",
    b"cookie, x-custom",
    b"100-continue",
    b"100-Continue",
    b"example.com",
    b"example.com:8080",
    b"[::1]:443",
    b"a b",
    b"Bearer abc",
    b"a=1; access_token=x",
    b'b="q"',
    b"1.2.3.4",
    b"a\x00b",
    b"a\r\nb",
    b"\t",
    b"caf\xc3\xa9",
]
names = st.one_of(st.sampled_from(INTERESTING_NAMES), st.binary(max_size=12))
values = st.one_of(st.sampled_from(INTERESTING_VALUES), st.binary(max_size=24))
field_lists = st.lists(st.tuples(names, values), max_size=12).map(
    lambda pairs: [item for pair in pairs for item in pair]
)
raw_lists = st.lists(st.binary(max_size=8), max_size=9)  # odd lengths, arbitrary names
strip_sets = st.frozensets(
    st.one_of(st.sampled_from([n.lower() for n in INTERESTING_NAMES]), st.binary(max_size=6)),
    max_size=4,
)


@given(fields=st.one_of(field_lists, raw_lists), strip=strip_sets)
@settings(BASE, max_examples=400)
def test_scan_request_head_agrees(
    speedups_pair: Pair, fields: list[bytes], strip: frozenset[bytes]
) -> None:
    py, c = speedups_pair
    expected = outcome(py.headers.scan_request_head, fields, strip, attrs=REQUEST_ATTRS)
    assert outcome(c.headers.scan_request_head, fields, strip, attrs=REQUEST_ATTRS) == expected


@given(fields=st.one_of(field_lists, raw_lists))
@settings(BASE, max_examples=300)
def test_scan_response_head_agrees(speedups_pair: Pair, fields: list[bytes]) -> None:
    py, c = speedups_pair
    expected = outcome(py.headers.scan_response_head, fields, attrs=RESPONSE_ATTRS)
    assert outcome(c.headers.scan_response_head, fields, attrs=RESPONSE_ATTRS) == expected


@given(name=st.binary(max_size=40))
@BASE
def test_lower_ascii_agrees(speedups_pair: Pair, name: bytes) -> None:
    py, c = speedups_pair
    assert outcome(c.headers.lower_ascii, name) == outcome(py.headers.lower_ascii, name)


bearer_values = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda scheme, space, token: scheme + space + token,
        st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Bearerx", b""]),
        st.sampled_from([b" ", b"  ", b"\t", b" \t", b""]),
        st.one_of(
            st.from_regex(rb"\A[A-Za-z0-9._~+/-]{0,20}={0,3}\Z"),
            st.binary(max_size=20),
        ),
    ),
)


@given(value=bearer_values, max_len=st.integers(-3, 30))
@BASE
def test_extract_bearer_agrees(speedups_pair: Pair, value: bytes, max_len: int) -> None:
    py, c = speedups_pair
    expected = outcome(py.headers.extract_bearer, value, max_len)
    assert outcome(c.headers.extract_bearer, value, max_len) == expected


# ------------------------------------------------------------------------------ hashring


@given(data=st.binary(max_size=200))
@BASE
def test_hash64_agrees(speedups_pair: Pair, data: bytes) -> None:
    py, c = speedups_pair
    assert c.hashring.hash64(data) == py.hashring.hash64(data)


rings = st.tuples(
    st.lists(st.binary(max_size=6), max_size=6),
    st.lists(st.integers(-1, 4), max_size=6),
    st.integers(0, 4),
)


@given(
    ring=rings,
    keys=st.lists(st.binary(max_size=16), min_size=1, max_size=10),
    limit=st.integers(-1, 7),
)
@BASE
def test_hash_ring_agrees(
    speedups_pair: Pair, ring: tuple[list[bytes], list[int], int], keys: list[bytes], limit: int
) -> None:
    py, c = speedups_pair
    node_keys, weights, points_per_weight = ring
    py_ring = outcome(py.hashring.HashRing, node_keys, weights, points_per_weight)
    c_ring = outcome(c.hashring.HashRing, node_keys, weights, points_per_weight)
    if py_ring[0] == "raised":
        assert c_ring == py_ring
        return
    assert c_ring[0] == "returned"
    py_obj, c_obj = py_ring[1], c_ring[1]
    assert len(c_obj) == len(py_obj)
    for key in keys:
        assert outcome(c_obj.lookup, key) == outcome(py_obj.lookup, key)
        assert outcome(c_obj.fallback_order, key, limit) == outcome(
            py_obj.fallback_order, key, limit
        )


# -------------------------------------------------------------------------------- bucket

NOW_US = 20_000 * 86_400_000_000 + 43_200_000_000  # noon UTC, day 20000
INT64 = st.integers(-(2**63), 2**63 - 1)  # the C signature's range (beyond it: OverflowError)
NAN, INF = float("nan"), float("inf")

valid_rates = st.one_of(
    st.sampled_from([1e-6, 0.5, 1.0, 3.0, 1e9]), st.floats(1e-6, 1e9), st.integers(1, 100)
)
valid_amounts = st.one_of(st.integers(1, 6), st.just(10**9))
# decide's arguments in range, so that most calls reach a decision and build up state
valid_decide_arguments = st.tuples(
    st.one_of(  # now_us: a few instants around one noon, or any time in the next day
        st.sampled_from([NOW_US, NOW_US + 1, NOW_US + 250_000, NOW_US - 1_000_000]),
        st.integers(NOW_US, NOW_US + 86_400_000_000),
    ),
    st.one_of(
        st.sampled_from([0, 1, 3, 0x1234_5678_9ABC_DEF1, 2**62 - 1]), st.integers(1, 2**62 - 1)
    ),
    valid_amounts,  # cost
    valid_rates,  # rate
    valid_amounts,  # burst
    st.one_of(st.integers(-1, 2), st.sampled_from([-5, 2**61, 2**62 - 1, 2**63 - 1])),
    valid_rates,  # endpoint_rate
    valid_amounts,  # endpoint_burst
    st.one_of(st.integers(-1, 12), st.just(10**15)),  # daily_quota
    valid_rates,  # global_rate
    st.one_of(st.integers(0, 6), st.sampled_from([-1, 10**9])),  # global_burst
    st.integers(0, 15),  # shadow
)
FLOAT_ARGUMENTS = frozenset({3, 6, 9})
any_int = st.one_of(
    st.sampled_from([0, -1, 2**52, 2**62, 10**9 + 1, 10**15 + 1, 16, 2**63 - 1, -(2**63)]),
    INT64,
)
any_float = st.one_of(
    st.sampled_from([0.0, -0.0, 9.99e-7, 1.000001e9, NAN, INF, -INF]),
    st.floats(),
    st.integers(-2, 10**9 + 2),  # an int where a float is expected
)


@st.composite
def decide_arguments(draw: st.DrawFn) -> tuple[Any, ...]:
    """Valid arguments, or valid ones with one or two replaced by anything of their type."""
    args = list(draw(valid_decide_arguments))
    for index in draw(st.lists(st.integers(0, len(args) - 1), max_size=2)):
        args[index] = draw(any_float if index in FLOAT_ARGUMENTS else any_int)
    return tuple(args)


TABLE_ATTRS = (
    "sets",
    "capacity",
    "evictions",
    "would_refuse",
    "retry_after_ms",
    "header_level",
    "limit",
    "remaining",
    "reset_ms",
)
table_operations = st.lists(
    st.one_of(
        st.tuples(st.just("decide"), decide_arguments()),
        st.tuples(
            st.just("release_locks_of"),
            st.tuples(st.one_of(st.integers(-2, 3), st.just(2**31 - 1), INT64)),
        ),
        st.tuples(st.just("read"), st.sampled_from(TABLE_ATTRS)),
    ),
    max_size=30,
)


@given(sets=st.integers(1, 4), ops=table_operations)
@settings(BASE, max_examples=300)
def test_limit_table_agrees(speedups_pair: Pair, sets: int, ops: list[tuple[Any, ...]]) -> None:
    py, c = speedups_pair
    fds = []
    tables = []
    try:
        for build in (py, c):
            fd = os.memfd_create("fastgw-agree")
            fds.append(fd)
            os.ftruncate(fd, build.bucket.table_bytes(sets))
            tables.append(build.bucket.LimitTable(fd, create=True))
        for op, args in ops:
            if op == "read":
                py_result, c_result = (outcome(getattr, table, args) for table in tables)
            else:
                py_result, c_result = (outcome(getattr(table, op), *args) for table in tables)
            assert c_result == py_result, (op, args)
            # after every call, every reply field and counter agrees too
            py_attrs, c_attrs = (outcome(lambda t=table: t, attrs=TABLE_ATTRS) for table in tables)
            assert c_attrs == py_attrs, (op, args)
    finally:
        for table in tables:
            table.close()
        for fd in fds:
            os.close(fd)
