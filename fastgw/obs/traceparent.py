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

Ids are random: ``random.Random.getrandbits`` seeded from ``os.urandom`` in each worker (it
is created after fork), not ``os.urandom`` per id. Trace ids only need to be unique, not
secret; a syscall per request would cost more than everything else here (0.06 µs vs ~0.3).
"""

from __future__ import annotations

import random
import re
from typing import Final

__all__ = [
    "ParentContext",
    "TraceIds",
    "format_traceparent",
    "parse_traceparent",
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
    # Every version lays out the fields it shares with version 00 at the same offsets.
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
