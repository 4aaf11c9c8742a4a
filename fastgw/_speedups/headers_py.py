"""Header-field kernel: validate, classify and re-serialize the fields of one HTTP/1.x head.

What it owns
    Everything the data plane decides from the header *fields* of a request or response head
    (the request line and status line belong to httptools): message framing (Content-Length,
    Transfer-Encoding, Expect), Host syntax, the fields the gateway consumes or re-adds itself
    (Authorization, X-Request-ID, traceparent, tracestate, X-Forwarded-For), the Cookie field
    (read for the token sources and still forwarded) and the block of fields that is forwarded
    as received.
    Plus two small helpers: ``lower_ascii`` and ``extract_bearer``.

Invariants
    * bytes in, bytes out: no field is decoded to str, so no charset question arises.
    * Nothing ambiguous passes (ARCHITECTURE A3): framing that two parsers could read differently
      (duplicate or malformed Content-Length, Transfer-Encoding other than ``chunked``, both at
      once), a duplicate Host or Authorization, a bad field name, a CTL in a value, a name that
      is a consumed field's with ``_`` for ``-`` (``Transfer_Encoding``: CGI-style backends read
      both alike), a Connection option naming Host: all raise ``HeaderError``, which the caller
      turns into 400 + close. The ``_`` twins of the dropped ``X-Customer-*`` / ``X-Forwarded-*``
      names are dropped like them.
    * ``forward_block`` is every kept field as ``Name: value\\r\\n``, in original order and case.
      A dropped field never appears in it; the caller re-frames the body and re-adds the fields
      it owns, so Content-Length, X-Request-ID, traceparent, tracestate and X-Forwarded-* are
      always dropped (the trace headers are re-added by fastgw/obs/tracing.py).
    * ``HeaderError.reason`` is one of a few constant strings: wire bytes are never echoed into a
      log line or a reply.

Why like this
    This file is the spec *and* the pure-Python fallback (``FASTGW_NO_EXTENSIONS=1``). Cython
    compiles the very same source a second time as ``headers_c`` (``headers_c.py`` is a symlink
    to this file; ``headers_c.pxd`` adds the C types), so the source only uses operations that
    are fast both ways. Per-byte checks go through ``bytes.translate`` with a 256-entry table,
    which runs at C speed even when interpreted, instead of a Python loop over the bytes; one
    translate both lowercases a name and flags its non-token bytes (they map to NUL, which is
    never a token character, so a single ``0 in lname`` finds them).
"""

from __future__ import annotations

import re
from itertools import product
from typing import Final

__all__ = [
    "HeaderError",
    "RequestHead",
    "ResponseHead",
    "extract_bearer",
    "lower_ascii",
    "scan_request_head",
    "scan_response_head",
]


class HeaderError(ValueError):
    """A head the gateway refuses to forward (400 + close); ``reason`` is short constant text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestHead:
    """What ``scan_request_head`` found in a request's fields. Built only by the scanner."""

    __slots__ = (
        "authorization",
        "chunked",
        "close",
        "content_length",
        "cookie",
        "expect_continue",
        "forward_block",
        "forwarded_for",
        "host",
        "request_id",
        "traceparent",
        "tracestate",
    )

    def __init__(self) -> None:
        self.host: bytes | None = None
        self.content_length: int = -1  # -1: no Content-Length field
        self.chunked: bool = False  # Transfer-Encoding: chunked
        self.expect_continue: bool = False  # Expect: 100-continue
        self.authorization: bytes | None = None
        # Every Cookie field, joined with "; " (RFC 6265 5.4, RFC 9113 8.2.3), not the ", " of
        # RFC 9110 5.3 list fields; still forwarded as received: the backend may own cookies.
        self.cookie: bytes | None = None
        self.request_id: bytes | None = None  # X-Request-ID (first one)
        # W3C Trace Context: a second traceparent makes it ambiguous, so b"" (invalid) then;
        # every tracestate field, joined with "," (a list field).
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None
        self.forwarded_for: bytes | None = None  # every X-Forwarded-For, joined with ", "
        self.close: bool = False  # Connection lists "close"
        self.forward_block: bytes = b""


class ResponseHead:
    """What ``scan_response_head`` found in an upstream response's fields."""

    __slots__ = ("chunked", "close", "content_length", "forward_block")

    def __init__(self) -> None:
        self.content_length: int = -1
        self.chunked: bool = False
        self.close: bool = False
        self.forward_block: bytes = b""


# RFC 9110 tchar. A name byte maps to its lowercase form when it is a tchar, else to NUL.
_TCHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_NAME_TABLE: Final = bytes(
    (byte | 0x20 if 0x41 <= byte <= 0x5A else byte) if byte in _TCHARS else 0 for byte in range(256)
)
# A value byte maps to NUL when it is a CTL other than HTAB (NUL, CR and LF included), else 0x01.
# obs-text (0x80-0xFF) is allowed, as RFC 9110 field-vchar allows it.
_VALUE_TABLE: Final = bytes(
    0 if (byte < 0x20 and byte != 0x09) or byte == 0x7F else 1 for byte in range(256)
)
_OWS: Final = b" \t"
_MAX_CONTENT_LENGTH_DIGITS: Final = 18  # 10**18 - 1 still fits a signed 64-bit integer

# uri-host [ ":" port ] (RFC 3986): IP-literal (IPv6 / IPvFuture, plus an RFC 6874 zone id) or
# reg-name / IPv4address (unreserved / pct-encoded / sub-delims), then an optional port. Space,
# "@", "/", "\", CTLs and non-ASCII are outside every class, so they never match.
_HOST_RE: Final = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]+)(?::[0-9]{0,5})?"
)
# RFC 6750 b64token characters before the "=" padding; extract_bearer deletes them with
# bytes.translate and accepts the token when nothing is left.
_B64TOKEN_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
# "Bearer" in each of its 64 spellings by case, then SP or HTAB: one set lookup of the first
# seven bytes checks scheme and separator, cheaper than lowering a slice and comparing.
_BEARER_PREFIXES: Final = frozenset(
    bytes(prefix) for prefix in product(b"Bb", b"Ee", b"Aa", b"Rr", b"Ee", b"Rr", b" \t")
)

# What a field name means to the scanners; names absent from a table are kept as they are.
_KEEP: Final = 0
_DROP: Final = 1  # hop-by-hop: consumed by this connection, never forwarded
_HOST: Final = 2
_CONTENT_LENGTH: Final = 3
_TRANSFER_ENCODING: Final = 4
_CONNECTION: Final = 5
_EXPECT: Final = 6
_AUTHORIZATION: Final = 7
_REQUEST_ID: Final = 8
_TRACEPARENT: Final = 9
_FORWARDED_FOR: Final = 10
_COOKIE: Final = 11  # read into RequestHead.cookie and forwarded like a _KEEP field
_TRACESTATE: Final = 12

_HOP_BY_HOP: Final = (
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
)
_RESPONSE_ROLES: Final[dict[bytes, int]] = {
    **dict.fromkeys(_HOP_BY_HOP, _DROP),
    b"connection": _CONNECTION,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-length": _CONTENT_LENGTH,
}
_REQUEST_ROLES: Final[dict[bytes, int]] = {
    **_RESPONSE_ROLES,
    b"host": _HOST,
    b"expect": _EXPECT,
    b"authorization": _AUTHORIZATION,
    b"x-request-id": _REQUEST_ID,
    b"traceparent": _TRACEPARENT,
    b"tracestate": _TRACESTATE,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"cookie": _COOKIE,
}
# The gateway sets these itself (ARCHITECTURE A3): a client's copy is never forwarded.
_DROPPED_PREFIXES: Final = (b"x-customer-", b"x-forwarded-")


def lower_ascii(name: bytes) -> bytes:
    """``name`` with A-Z lowered; other bytes (non-ASCII included) unchanged."""
    return name.lower()  # bytes.lower() touches ASCII letters only


def extract_bearer(value: bytes, max_len: int) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None when it is not one.

    The scheme is matched in any case and followed by one or more spaces or tabs; the token must
    be an RFC 6750 b64token (``[A-Za-z0-9-._~+/]+=*``) of 1..max_len bytes, with nothing after.
    That is the regex ``(?i:bearer)[ \t]+([A-Za-z0-9._~+/-]+=*)`` (the tests hold it to it),
    done with slices and one translate: the regex took twice as long (811 vs 366 ns, compiled,
    for a 250-byte JWT).
    """
    # HOT PATH: runs for every authenticated request.
    if value[:7] not in _BEARER_PREFIXES:
        return None
    token = value[7:].lstrip(_OWS)
    if not token or len(token) > max_len:
        return None
    # Deleting every b64token character from the unpadded part must leave nothing; a token of
    # "=" only (or starting with "=") has no b64token characters before its padding.
    if token[0] == 0x3D or token.rstrip(b"=").translate(None, _B64TOKEN_CHARS):
        return None
    return token


def scan_request_head(fields: list[bytes], strip: frozenset[bytes]) -> RequestHead:
    """Validate a request's fields and split them into what the gateway reads and forwards.

    ``fields`` is ``[name0, value0, name1, value1, ...]`` as httptools' ``on_header`` gave them;
    ``strip`` holds extra lowercase names never to forward. A missing Host is not an error here
    (HTTP/1.0 has none): the caller decides.
    """
    # HOT PATH: one pass over the fields and one join; a translate per name and per value.
    count = len(fields)
    if count % 2:
        raise HeaderError("odd number of header fields")
    head = RequestHead()
    parts: list[bytes] = []  # 4 per kept field: name, b": ", value, b"\r\n"
    kept: list[bytes] = []  # lowercase name of each kept field
    listed: set[bytes] | None = None  # names listed by Connection, dropped at the end
    for i in range(0, count, 2):
        name = fields[i]
        value = fields[i + 1]
        lname = name.translate(_NAME_TABLE)
        if not lname or 0 in lname:
            raise HeaderError("invalid header name")
        if 0 in value.translate(_VALUE_TABLE):
            raise HeaderError("invalid header value")
        role = _REQUEST_ROLES.get(lname, _KEEP)
        if role == _KEEP:
            # 0x78 is "x": the prefix test only runs for the few names that can match it
            if lname[0] == 0x78 and lname.startswith(_DROPPED_PREFIXES):
                continue
            if 0x5F in lname:  # "_": a CGI-style backend reads it as "-" (HTTP_X_CUSTOMER_ID)
                twin = lname.replace(b"_", b"-")
                if twin.startswith(_DROPPED_PREFIXES):
                    continue
                if twin in _REQUEST_ROLES:
                    raise HeaderError("header name aliases a framing or identity field")
        elif role == _HOST:
            if head.host is not None:
                raise HeaderError("duplicate Host header")
            if not value:
                raise HeaderError("empty Host header")
            if _HOST_RE.fullmatch(value) is None:
                raise HeaderError("invalid Host header")
            head.host = value
        elif role == _AUTHORIZATION:
            if head.authorization is not None:
                raise HeaderError("duplicate Authorization header")
            head.authorization = value
        elif role == _COOKIE:
            # Read for the token sources, then forwarded like a kept field (falls through to the
            # strip test). A role of its own, so _KEEP fields pay nothing for it; only a
            # second Cookie field (HTTP/2 splits cookies; RFC 9113 8.2.3) allocates a join.
            if head.cookie is None:
                head.cookie = value
            else:
                head.cookie = head.cookie + b"; " + value
        else:
            if role == _CONTENT_LENGTH:
                head.content_length = _content_length(value, head.content_length)
            elif role == _TRANSFER_ENCODING:
                head.chunked = _chunked(value, head.chunked)
            elif role == _CONNECTION:
                listed = _connection_tokens(value, listed)
            elif role == _EXPECT:
                if value.strip(_OWS).lower() != b"100-continue":
                    raise HeaderError("unsupported Expect")
                head.expect_continue = True
            elif role == _REQUEST_ID:
                if head.request_id is None:
                    head.request_id = value
            elif role == _TRACEPARENT:
                head.traceparent = value if head.traceparent is None else b""
            elif role == _TRACESTATE:
                if head.tracestate is None:
                    head.tracestate = value
                else:
                    head.tracestate = head.tracestate + b"," + value
            elif role == _FORWARDED_FOR:
                if head.forwarded_for is None:
                    head.forwarded_for = value
                else:
                    head.forwarded_for = head.forwarded_for + b", " + value
            continue  # every other role is consumed here and never forwarded
        if lname in strip:
            continue
        parts += (name, b": ", value, b"\r\n")
        kept.append(lname)
    if head.chunked and head.content_length != -1:
        raise HeaderError("Content-Length with Transfer-Encoding")
    if listed is not None:
        if b"host" in listed:
            raise HeaderError("Connection lists Host")  # the backend would get no Host
        head.close = b"close" in listed
        if not listed.isdisjoint(kept):
            parts = _without_listed(parts, kept, listed)
    head.forward_block = b"".join(parts)
    return head


def scan_response_head(fields: list[bytes]) -> ResponseHead:
    """Validate an upstream response's fields; keep all but framing and hop-by-hop ones."""
    # HOT PATH: the same single pass as scan_request_head, with fewer roles.
    count = len(fields)
    if count % 2:
        raise HeaderError("odd number of header fields")
    head = ResponseHead()
    parts: list[bytes] = []
    kept: list[bytes] = []
    listed: set[bytes] | None = None
    for i in range(0, count, 2):
        name = fields[i]
        value = fields[i + 1]
        lname = name.translate(_NAME_TABLE)
        if not lname or 0 in lname:
            raise HeaderError("invalid header name")
        if 0 in value.translate(_VALUE_TABLE):
            raise HeaderError("invalid header value")
        role = _RESPONSE_ROLES.get(lname, _KEEP)
        if role == _KEEP:
            parts += (name, b": ", value, b"\r\n")
            kept.append(lname)
        elif role == _CONTENT_LENGTH:
            head.content_length = _content_length(value, head.content_length)
        elif role == _TRANSFER_ENCODING:
            head.chunked = _chunked(value, head.chunked)
        elif role == _CONNECTION:
            listed = _connection_tokens(value, listed)
    if head.chunked and head.content_length != -1:
        raise HeaderError("Content-Length with Transfer-Encoding")
    if listed is not None:
        head.close = b"close" in listed
        if not listed.isdisjoint(kept):
            parts = _without_listed(parts, kept, listed)
    head.forward_block = b"".join(parts)
    return head


def _content_length(value: bytes, previous: int) -> int:
    """The length a Content-Length value gives; ``previous`` is -1 unless one was seen."""
    if previous != -1:
        raise HeaderError("duplicate Content-Length")
    digits = value.strip(_OWS)
    # bytes.isdigit() is ASCII-only; the length cap keeps int() small and the result in int64
    if not digits or len(digits) > _MAX_CONTENT_LENGTH_DIGITS or not digits.isdigit():
        raise HeaderError("invalid Content-Length")
    return int(digits)


def _chunked(value: bytes, seen: bool) -> bool:
    """Accept exactly one ``Transfer-Encoding: chunked``: any other coding is ambiguous to us."""
    if seen:
        raise HeaderError("duplicate Transfer-Encoding")
    if value.strip(_OWS).lower() != b"chunked":
        raise HeaderError("unsupported Transfer-Encoding")
    return True


def _connection_tokens(value: bytes, listed: set[bytes] | None) -> set[bytes]:
    """Add the lowercase options of one Connection value to ``listed`` (created on first use)."""
    if listed is None:
        listed = set()
    for token in value.split(b","):
        option = token.strip(_OWS).lower()
        if option:
            listed.add(option)
    return listed


def _without_listed(parts: list[bytes], kept: list[bytes], listed: set[bytes]) -> list[bytes]:
    """``parts`` less the fields whose names Connection listed (rare: a second pass is fine)."""
    out: list[bytes] = []
    for index, lname in enumerate(kept):
        if lname not in listed:
            out += parts[4 * index : 4 * index + 4]
    return out
