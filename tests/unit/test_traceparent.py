"""W3C Trace Context ``traceparent`` reading and writing (fastgw/obs/traceparent.py).

The invalid cases are those of the W3C test harness (w3c/trace-context test/test.py), which a
service must answer by restarting the trace: here, ``parse_traceparent`` returns None.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.obs.traceparent import TraceIds, format_traceparent, parse_traceparent

TRACE = b"12345678901234567890123456789012"
PARENT = b"1234567890123456"
# No deadline: CI machines are shared and a slow example is not a wrong one.
BASE = settings(deadline=None)
WELL_FORMED = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")


def tp(text: str) -> bytes:
    return text.encode("latin-1")


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        (b"00-12345678901234567890123456789012-1234567890123456-01", 1),
        (b"00-12345678901234567890123456789012-1234567890123456-00", 0),
        (b"00-12345678901234567890123456789012-1234567890123456-ff", 0xFF),
        # OWS around the value is not part of it
        (b" 00-12345678901234567890123456789012-1234567890123456-01", 1),
        (b"\t00-12345678901234567890123456789012-1234567890123456-01 \t", 1),
        # a later version: read as far as version 00 goes
        (b"cc-12345678901234567890123456789012-1234567890123456-01", 1),
        (b"cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be", 1),
        (b"01-12345678901234567890123456789012-1234567890123456-00-", 0),
    ],
)
def test_valid(value: bytes, flags: int) -> None:
    assert parse_traceparent(value) == (TRACE, PARENT, flags)


INVALID = [
    "",
    "00-12345678901234567890123456789012-1234567890123456-01.",  # version 00 is exactly 55
    "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
    "ff-12345678901234567890123456789012-1234567890123456-01",  # version 255 is invalid
    ".0-12345678901234567890123456789012-1234567890123456-01",
    "0.-12345678901234567890123456789012-1234567890123456-01",
    "000-12345678901234567890123456789012-1234567890123456-01",
    "0000-12345678901234567890123456789012-1234567890123456-01",
    "0-12345678901234567890123456789012-1234567890123456-01",
    "00-00000000000000000000000000000000-1234567890123456-01",  # all-zero trace id
    "00-.2345678901234567890123456789012-1234567890123456-01",
    "00-1234567890123456789012345678901.-1234567890123456-01",
    "00-123456789012345678901234567890123-1234567890123456-01",
    "00-1234567890123456789012345678901-1234567890123456-01",
    "00-12345678901234567890123456789012-0000000000000000-01",  # all-zero parent id
    "00-12345678901234567890123456789012-.234567890123456-01",
    "00-12345678901234567890123456789012-123456789012345.-01",
    "00-12345678901234567890123456789012-12345678901234567-01",
    "00-12345678901234567890123456789012-123456789012345-01",
    "00-12345678901234567890123456789012-1234567890123456-.0",
    "00-12345678901234567890123456789012-1234567890123456-0.",
    "00-12345678901234567890123456789012-1234567890123456-001",
    "00-12345678901234567890123456789012-1234567890123456-1",
    "00-1234567890ABCDEF1234567890123456-1234567890123456-01",  # hex is lowercase only
    "00-12345678901234567890123456789012-1234567890ABCDEF-01",
    "00-12345678901234567890123456789012-1234567890123456-0A",
    "00_12345678901234567890123456789012-1234567890123456-01",  # dashes where they belong
    "0012345678901234567890123456789012-1234567890123456-01-",
    "00-12345678901234567890123456789012-1234567890123456-01\x00",
    "cc-12345678901234567890123456789012-1234567890123456",  # a later version, too short
    "00 12345678901234567890123456789012 1234567890123456 01",
]


@pytest.mark.parametrize("value", INVALID)
def test_invalid_is_absent(value: str) -> None:
    assert parse_traceparent(tp(value)) is None


def test_absent() -> None:
    assert parse_traceparent(None) is None


@BASE
@given(
    trace_id=st.integers(1, 2**128 - 1),
    span_id=st.integers(1, 2**64 - 1),
    flags=st.integers(0, 255),
)
def test_format_then_parse_round_trip(trace_id: int, span_id: int, flags: int) -> None:
    value = format_traceparent(trace_id, span_id, flags)
    assert WELL_FORMED.match(value)
    parsed = parse_traceparent(value)
    assert parsed is not None
    trace_hex, parent_hex, parsed_flags = parsed
    assert (int(trace_hex, 16), int(parent_hex, 16), parsed_flags) == (trace_id, span_id, flags)


@BASE
@given(st.binary(max_size=80))
def test_any_bytes_parse_or_none_and_only_well_formed_pass(value: bytes) -> None:
    parsed = parse_traceparent(value)
    if parsed is None:
        return
    trace_hex, parent_hex, flags = parsed
    assert re.fullmatch(rb"[0-9a-f]{32}", trace_hex) and int(trace_hex, 16)
    assert re.fullmatch(rb"[0-9a-f]{16}", parent_hex) and int(parent_hex, 16)
    assert 0 <= flags <= 255
    stripped = value.strip(b" \t")
    assert stripped[3:35] == trace_hex and stripped[36:52] == parent_hex


@BASE
@given(
    version=st.sampled_from([b"00", b"01", b"cc", b"fe"]),
    trace_hex=st.from_regex(rb"\A[0-9a-f]{32}\Z"),
    parent_hex=st.from_regex(rb"\A[0-9a-f]{16}\Z"),
    flags=st.from_regex(rb"\A[0-9a-f]{2}\Z"),
)
def test_well_formed_values_parse_unless_an_id_is_zero(
    version: bytes, trace_hex: bytes, parent_hex: bytes, flags: bytes
) -> None:
    value = b"-".join((version, trace_hex, parent_hex, flags))
    expected = (trace_hex, parent_hex, int(flags, 16))
    valid = int(trace_hex, 16) != 0 and int(parent_hex, 16) != 0
    assert parse_traceparent(value) == (expected if valid else None)


def test_ids_are_random_non_zero_and_in_range() -> None:
    ids = TraceIds()
    traces = {ids.trace_id() for _ in range(1000)}
    spans = {ids.span_id() for _ in range(1000)}
    assert len(traces) == 1000 and len(spans) == 1000
    assert all(0 < t < 2**128 for t in traces) and all(0 < s < 2**64 for s in spans)
    # Both halves vary: a ratio sampler reads the low 64 bits.
    assert len({t & (2**64 - 1) for t in traces}) == 1000 and len({t >> 64 for t in traces}) > 990


def test_two_workers_never_share_a_sequence() -> None:
    assert TraceIds().trace_id() != TraceIds().trace_id()
    assert TraceIds(7).trace_id() == TraceIds(7).trace_id()  # seeded only where a test says so
