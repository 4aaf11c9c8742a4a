"""W3C Trace Context (``traceparent``, level 1): reading a client's value, writing ours.

What it owns
    ``parse_traceparent`` decides whether a client's ``traceparent`` continues a trace, and
    ``TraceIds`` makes the ids the gateway needs (trace ids for new traces, span ids for its
    own spans). Pure functions on bytes: no clock, no I/O, no config.

Rules (W3C Trace Context, "traceparent Header" and "Versioning of traceparent")
    * ``version-traceid-parentid-flags``, lowercase hex only: 2, 32, 16 and 2 digits.
    * Version ``ff`` is invalid. Version ``00`` is exactly 55 characters. A higher version is
      read as far as version 00 goes: at least 55 characters, and anything after the flags
      must start with ``-`` (later versions may append fields).
    * An all-zero trace id or parent id is invalid.
    * Leading and trailing spaces and tabs (HTTP OWS) are ignored.
    * Invalid means absent: the gateway starts a new trace (and drops ``tracestate``, which
      only means something next to the ``traceparent`` it came with). Two ``traceparent``
      fields are invalid too (the header kernel reports them as ``b""``).

``tracestate`` (W3C "tracestate Limits")
    At most ``TRACESTATE_MAX_MEMBERS`` list-members in ``TRACESTATE_MAX_BYTES``: a longer value
    is truncated by whole entries, those over ``TRACESTATE_MEMBER_MAX_BYTES`` first, then from
    the end (``bounded_tracestate``). Only a re-parented trace may have its ``tracestate``
    changed ("Mutating the traceparent Field": an unchanged ``traceparent`` keeps it as is).

Ids are random: ``random.Random.getrandbits`` seeded from ``os.urandom`` in each worker (it
is created after fork), not ``os.urandom`` per id. Trace ids only need to be unique, not
secret; a syscall per request would cost more than everything else here (0.06 µs vs ~0.3).
"""

from __future__ import annotations

import random
import re
from typing import Final

from fastgw.limits import TRACESTATE_MAX_BYTES, TRACESTATE_MAX_MEMBERS, TRACESTATE_MEMBER_MAX_BYTES

__all__ = [
    "ParentContext",
    "TraceIds",
    "bounded_tracestate",
    "format_traceparent",
    "parse_traceparent",
    "tracestate_fits",
]

ParentContext = tuple[bytes, bytes, int]
"""A valid client ``traceparent``: trace id and parent id as the lowercase hex it carried
(32 and 16 digits), and its flags. A plain tuple: this runs once per request that has one."""

_OWS: Final = b" \t"
_HEX: Final = b"0123456789abcdef"
_DASH: Final = 0x2D
# A later version: the same first fields, then nothing or "-" and whatever that version adds.
_FUTURE: Final = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-|\Z)")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
V00_LENGTH: Final = 55
SAMPLED: Final = 0x01  # the only flag level 1 defines
_FLAG_VALUES: Final = {b"%02x" % flags: flags for flags in range(256)}
_SPAN_ID_BITS: Final = 64
_TRACE_ID_BITS: Final = 128


# HOT PATH for requests that carry a traceparent: one translate, a few compares, three slices.
def parse_traceparent(value: bytes | None) -> ParentContext | None:
    """The trace a client's ``traceparent`` continues, or None when it is absent or invalid."""
    if not value:
        return None
    if len(value) != V00_LENGTH:
        value = value.strip(_OWS)
        if len(value) != V00_LENGTH:
            return _parse_longer(value)
    # 55 bytes: every hex digit deleted must leave exactly the three dashes, where they belong.
    if (
        value.translate(None, _HEX) != b"---"
        or value[2] != _DASH
        or value[35] != _DASH
        or value[52] != _DASH
        or value[:2] == b"ff"
    ):
        return None
    # Every version lays out the fields it shares with version 00 at the same offsets. Inlined
    # here, and repeated in _parse_longer, to spare this path a call (it is over its budget).
    trace_id = value[3:35]
    parent_id = value[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, _FLAG_VALUES[value[53:55]]


def _parse_longer(value: bytes) -> ParentContext | None:
    """A value longer than version 00's: a later version may append ``-`` and more fields."""
    if len(value) < V00_LENGTH or value[:2] in (b"00", b"ff") or _FUTURE.match(value) is None:
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, _FLAG_VALUES[value[53:55]]


def tracestate_fits(value: bytes) -> bool:
    """``value`` (a ``tracestate``, its fields joined) is within the bounds: forward it as is.
    Counts commas, so empty list-members count too (W3C's grammar counts them)."""
    return len(value) <= TRACESTATE_MAX_BYTES and value.count(b",") < TRACESTATE_MAX_MEMBERS


def _members_fit(members: list[bytes]) -> bool:
    size = sum(map(len, members)) + len(members) - 1  # the commas between them
    return len(members) <= TRACESTATE_MAX_MEMBERS and size <= TRACESTATE_MAX_BYTES


def bounded_tracestate(value: bytes) -> bytes:
    """``value`` within the bounds (module docstring): unchanged when it fits; else its
    non-empty list-members, entries over ``TRACESTATE_MEMBER_MAX_BYTES`` removed first (from
    the end), then entries from the end, until the rest fits (``b""``: none left)."""
    if tracestate_fits(value):
        return value
    members = [m for m in (part.strip(_OWS) for part in value.split(b",")) if m]
    for at in range(len(members) - 1, -1, -1):
        if _members_fit(members):
            break
        if len(members[at]) > TRACESTATE_MEMBER_MAX_BYTES:
            del members[at]
    while not _members_fit(members):
        members.pop()
    return b",".join(members)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    """A version 00 ``traceparent`` value for these ids (both non-zero)."""
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags)


class TraceIds:
    """Random non-zero ids for one worker (create it after fork: the seed comes from
    ``os.urandom`` at creation, so two workers never share a sequence)."""

    __slots__ = ("bits",)

    def __init__(self, seed: int | None = None) -> None:
        #: ``bits(k)``: k random bits. The request path calls it directly, as ``bits(128) or
        #: 1``: a zero id is invalid, and one in 2**64 is not worth a loop.
        self.bits = random.Random(seed).getrandbits

    def trace_id(self) -> int:
        return self.bits(_TRACE_ID_BITS) or 1

    def span_id(self) -> int:
        return self.bits(_SPAN_ID_BITS) or 1
