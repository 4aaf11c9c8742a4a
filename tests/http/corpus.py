"""The strict-framing corpus as data, and the instruments that check it.

Every case is raw request bytes plus what the gateway must do with them, with the section of
RFC 9112 (HTTP/1.1 messages) or RFC 9110 (HTTP semantics) it comes from in ``why``. Where the
RFC leaves a choice (MAY reject / MAY repair) the case says which one fastgw makes; where
fastgw is stricter than the RFC asks, ``why`` says so.

Two kinds:

- ``Rejected``: answered by the gateway itself (400 mostly; 413/414/431 for limits), JSON
  error body, ``Connection: close``, connection closed, nothing of it forwarded. ``phase``
  says when the defect is seen:
  ``HEAD``: at or before the end of the head. Nothing of the request ever leaves the gateway,
  however its bytes arrive.
  ``BODY``: in the body or the trailer section. When the whole request arrives in one read it
  is rejected before anything was forwarded (chains run after the parser returns). When its
  head arrived first, the head may already be on its way to a backend; then the backend
  connection is aborted before the request ends: the backend never sees a complete request,
  and the client still gets the error (the mock answers only complete requests, so no
  response has started; had one started, the client connection would be cut instead).
- ``Reframed``: odd but legal. Forwarded, but never as received: the gateway writes its own
  request line and framing (``Transfer-Encoding: chunked`` or ``Content-Length``), drops chunk
  extensions, trailers and hop-by-hop fields. ``absent`` lists raw bytes of the client's
  message that must not reach the backend.

The instruments below (``Wire``, ``parse_requests``, ``assert_error``) are shared by
``test_malformed_corpus.py`` and ``test_protocol_splits.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import httptools
import orjson
import pytest

from fastgw.http.upstream import UpstreamProtocol
from fastgw.mock.metald import MetaldProtocol

# The corpus gateway's limits (the 413/414/431 cases are built against them).
MAX_BODY: Final = 1024
MAX_URL: Final = 256
MAX_HEAD: Final = 2048
MAX_HEADERS: Final = 20
CONFIG: Final[dict[str, Any]] = {
    "gateway": {
        "server": {
            "limits": {
                "max_body_size": f"{MAX_BODY}B",
                "max_url_length": MAX_URL,
                "max_header_size": f"{MAX_HEAD}B",
                "max_headers": MAX_HEADERS,
            }
        }
    }
}

HEAD: Final = "HEAD"
BODY: Final = "BODY"


@dataclass(frozen=True)
class Rejected:
    id: str
    raw: bytes
    status: int
    code: str
    phase: str
    why: str


@dataclass(frozen=True)
class Reframed:
    id: str
    raw: bytes
    why: str
    method: bytes = b"POST"
    target: bytes = b"/echo"
    body: bytes = b""
    chunked: bool = False  # how the gateway frames it upstream (else Content-Length or none)
    absent: tuple[bytes, ...] = ()  # client bytes that must not reach the backend
    sent: tuple[tuple[bytes, bytes], ...] = ()  # (lowercase name, value) the backend must get


def post(*fields: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    """``POST /echo`` with ``Host: gw`` and ``fields`` (each without its CRLF), then ``body``."""
    lines = b"".join(f + b"\r\n" for f in fields)
    return b"POST /echo " + version + b"\r\nHost: gw\r\n" + lines + b"\r\n" + body


def get(target: bytes = b"/echo", *fields: bytes, host: bool = True) -> bytes:
    lines = (b"Host: gw\r\n" if host else b"") + b"".join(f + b"\r\n" for f in fields)
    return b"GET " + target + b" HTTP/1.1\r\n" + lines + b"\r\n"


CHUNKED: Final = b"Transfer-Encoding: chunked"
HELLO: Final = b"5\r\nhello\r\n0\r\n\r\n"  # "hello" as a chunked body


def trailer(*fields: bytes) -> bytes:
    """A chunked POST whose body is "hello", then ``fields`` as its trailer section."""
    return post(
        CHUNKED, body=b"5\r\nhello\r\n0\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    )


def bad(
    case_id: str,
    raw: bytes,
    why: str,
    phase: str = HEAD,
    *,
    status: int = 400,
    code: str = "bad_request",
) -> Rejected:
    return Rejected(case_id, raw, status, code, phase, why)


REJECTED: Final[tuple[Rejected, ...]] = (
    # -- Content-Length / Transfer-Encoding together (request smuggling CL.TE, TE.CL) ---------
    bad(
        "cl-then-te",
        post(b"Content-Length: 5", CHUNKED, body=HELLO),
        "RFC 9112 §6.1: CL + TE MAY be rejected and the connection MUST be closed; §6.3 (3)",
    ),
    bad(
        "te-then-cl",
        post(CHUNKED, b"Content-Length: 5", body=HELLO),
        "RFC 9112 §6.1 / §11.2 (smuggling): CL + TE, other order",
    ),
    bad(
        "smuggle-cl-te",
        post(b"Content-Length: 13", CHUNKED, body=b"0\r\n\r\nSMUGGLED"),
        "RFC 9112 §11.2: the CL.TE classic; a CL-reading hop would forward 'SMUGGLED'",
    ),
    bad(
        "smuggle-te-cl",
        post(CHUNKED, b"Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
        "RFC 9112 §11.2: the TE.CL classic",
    ),
    bad(
        "te-gzip-with-cl",
        post(b"Transfer-Encoding: gzip", b"Content-Length: 3", body=b"abc"),
        "RFC 9112 §6.1: TE (any coding) overrides CL; together they are rejected",
    ),
    # -- Content-Length values ---------------------------------------------------------------
    bad(
        "cl-duplicate-same",
        post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
        "RFC 9110 §8.6: repeated identical CL MAY be rejected; fastgw rejects (no repair)",
    ),
    bad(
        "cl-duplicate-different",
        post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
        "RFC 9112 §6.3 (5): differing CLs are an unrecoverable framing error",
    ),
    bad(
        "cl-comma-list",
        post(b"Content-Length: 5, 5", body=b"hello"),
        "RFC 9110 §8.6: a list value MAY be rejected; fastgw rejects",
    ),
    bad(
        "cl-plus-sign",
        post(b"Content-Length: +5", body=b"hello"),
        "RFC 9110 §8.6: Content-Length = 1*DIGIT (no sign)",
    ),
    bad(
        "cl-minus-sign",
        post(b"Content-Length: -5", body=b"hello"),
        "RFC 9110 §8.6: Content-Length = 1*DIGIT (no sign)",
    ),
    bad(
        "cl-inner-space",
        post(b"Content-Length: 5 5", body=b"hello"),
        "RFC 9110 §8.6: 1*DIGIT; RFC 9112 §6.3 (5) invalid CL → 400 and close",
    ),
    bad(
        "cl-hex", post(b"Content-Length: 0x5", body=b"hello"), "RFC 9110 §8.6: decimal digits only"
    ),
    bad(
        "cl-decimal-point",
        post(b"Content-Length: 1.0", body=b"h"),
        "RFC 9110 §8.6: decimal digits only",
    ),
    bad(
        "cl-non-ascii-digit",
        post(b"Content-Length: \xd9\xa5", body=b"hello"),
        "RFC 9110 §8.6: DIGIT is ASCII 0-9 (RFC 5234 B.1); U+0665 is not one",
    ),
    bad(
        "cl-empty", post(b"Content-Length: ", body=b"hello"), "RFC 9110 §8.6: 1*DIGIT, at least one"
    ),
    bad(
        "cl-overflow-u64",
        post(b"Content-Length: 99999999999999999999999", body=b"hello"),
        "RFC 9110 §8.6: recipients MUST prevent integer overflow; rejected, never wrapped",
    ),
    bad(
        "cl-19-digits",
        post(b"Content-Length: 9223372036854775807", body=b"hello"),
        "RFC 9110 §8.6: beyond fastgw's 18-digit bound (int64-safe): rejected as invalid",
    ),
    # -- Transfer-Encoding values ---------------------------------------------------------------
    bad(
        "te-gzip-only",
        post(b"Transfer-Encoding: gzip"),
        "RFC 9112 §6.3 (4): chunked not final in a request → MUST 400 and close",
    ),
    bad(
        "te-chunked-not-last",
        post(b"Transfer-Encoding: chunked, gzip", body=HELLO),
        "RFC 9112 §6.3 (4): chunked not final → MUST 400 and close",
    ),
    bad(
        "te-gzip-then-chunked",
        post(b"Transfer-Encoding: gzip, chunked", body=HELLO),
        "RFC 9112 §6.1: an unknown coding SHOULD get 501; the contract has none: 400",
    ),
    bad(
        "te-duplicate-fields",
        post(CHUNKED, CHUNKED, body=HELLO),
        "RFC 9112 §6.1: chunked MUST NOT be applied more than once",
    ),
    bad(
        "te-chunked-twice-in-list",
        post(b"Transfer-Encoding: chunked, chunked", body=HELLO),
        "RFC 9112 §6.1: chunked MUST NOT be applied more than once",
    ),
    bad(
        "te-http10",
        post(CHUNKED, body=HELLO, version=b"HTTP/1.0"),
        "RFC 9112 §6.1: TE in an HTTP/1.0 message MUST be treated as faulty framing",
    ),
    bad(
        "te-identity",
        post(b"Transfer-Encoding: identity", body=b""),
        "RFC 9112 §7: 'identity' is not a registered transfer coding (removed by RFC 7230)",
    ),
    bad(
        "te-empty",
        post(b"Transfer-Encoding: ", body=b""),
        "RFC 9112 §6.1: Transfer-Encoding = #transfer-coding, at least one",
    ),
    bad(
        "te-quoted",
        post(b'Transfer-Encoding: "chunked"', body=HELLO),
        "RFC 9112 §7: a coding is a token, not a quoted-string",
    ),
    bad(
        "te-with-params",
        post(b"Transfer-Encoding: chunked;q=1", body=HELLO),
        "RFC 9112 §7: chunked has no parameters; an odd spelling two parsers may disagree on",
    ),
    # TE.TE obfuscations (one hop sees chunked, another does not).
    bad(
        "te-space-before-colon",
        post(b"Transfer-Encoding : chunked", body=HELLO),
        "RFC 9112 §5.1: whitespace between name and colon MUST be rejected with 400",
    ),
    bad(
        "te-xchunked",
        post(b"Transfer-Encoding: xchunked", body=HELLO),
        "RFC 9112 §6.3 (4): a coding that is not chunked → 400",
    ),
    bad(
        "te-vertical-tab",
        post(b"Transfer-Encoding: \x0bchunked", body=HELLO),
        "RFC 9110 §5.5: VT is a CTL, not OWS",
    ),
    bad(
        "te-chunked-plus-cow",
        post(CHUNKED, b"Transfer-encoding: cow", body=HELLO),
        "RFC 9112 §6.3 (4): the final coding is 'cow', not chunked",
    ),
    bad(
        "te-underscore-alias",
        post(b"Transfer_Encoding: chunked", body=HELLO),
        "RFC 3875 §4.1.18: CGI maps '-' and '_' to one name; an alias of a framing field is "
        "ambiguous (fastgw policy, like nginx's underscores_in_headers off)",
    ),
    bad(
        "cl-underscore-alias",
        post(b"Content_Length: 5", body=b"hello"),
        "RFC 3875 §4.1.18: alias of Content-Length for CGI-style backends",
    ),
    # -- chunked body (RFC 9112 §7.1) -----------------------------------------------------------
    bad(
        "chunk-size-not-hex",
        post(CHUNKED, body=b"zz\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: chunk-size = 1*HEXDIG",
        BODY,
    ),
    bad(
        "chunk-size-overflow",
        post(CHUNKED, body=b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: recipients MUST anticipate large hex numerals and prevent overflow",
        BODY,
    ),
    bad(
        "chunk-size-negative",
        post(CHUNKED, body=b"-1\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: 1*HEXDIG, no sign",
        BODY,
    ),
    bad(
        "chunk-size-0x-prefix",
        post(CHUNKED, body=b"0x5\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: 1*HEXDIG, no prefix",
        BODY,
    ),
    bad(
        "chunk-size-leading-space",
        post(CHUNKED, body=b" 5\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: nothing before the size",
        BODY,
    ),
    bad(
        "chunk-size-trailing-tab",
        post(CHUNKED, body=b"5\t\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1.1: BWS only before ';' of an extension",
        BODY,
    ),
    bad(
        "chunk-data-longer-than-size",
        post(CHUNKED, body=b"3\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: chunk-data is exactly chunk-size octets, then CRLF",
        BODY,
    ),
    bad(
        "chunk-missing-crlf-after-data",
        post(CHUNKED, body=b"5\r\nhello0\r\n\r\n"),
        "RFC 9112 §7.1: CRLF after chunk-data",
        BODY,
    ),
    bad(
        "chunk-bare-lf-after-size",
        post(CHUNKED, body=b"5\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §2.2 / §7.1: CRLF; a bare LF is a known TE.TE differential",
        BODY,
    ),
    bad(
        "chunk-bare-lf-after-data",
        post(CHUNKED, body=b"5\r\nhello\n0\r\n\r\n"),
        "RFC 9112 §7.1: CRLF after chunk-data",
        BODY,
    ),
    bad(
        "chunk-bare-cr-after-size",
        post(CHUNKED, body=b"5\r\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §2.2: a bare CR MUST be treated as invalid",
        BODY,
    ),
    bad(
        "chunk-empty-line-for-size",
        post(CHUNKED, body=b"5\r\nhello\r\n\r\n0\r\n\r\n"),
        "RFC 9112 §7.1: chunk-size is required",
        BODY,
    ),
    bad(
        "chunk-ext-nul",
        post(CHUNKED, body=b"5;a\x00b\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1.1: chunk-ext-name is a token",
        BODY,
    ),
    bad(
        "chunk-ext-open-quote",
        post(CHUNKED, body=b'5;a="b\r\nhello\r\n0\r\n\r\n'),
        "RFC 9112 §7.1.1: an unterminated quoted-string",
        BODY,
    ),
    bad(
        "chunked-body-over-limit",
        post(CHUNKED, body=b"%x\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1) + b"\r\n0\r\n\r\n"),
        "RFC 9110 §15.5.14: content larger than the server will process → 413",
        BODY,
        status=413,
        code="payload_too_large",
    ),
    # -- trailer section (RFC 9112 §7.1.2, RFC 9110 §6.5.1) ---------------------------------------
    bad(
        "trailer-content-length",
        trailer(b"Content-Length: 5"),
        "RFC 9110 §6.5.1: framing fields cannot be processed as trailers",
        BODY,
    ),
    bad(
        "trailer-transfer-encoding",
        trailer(CHUNKED),
        "RFC 9110 §6.5.1: framing fields in a trailer",
        BODY,
    ),
    bad(
        "trailer-host", trailer(b"Host: evil"), "RFC 9110 §6.5.1: routing fields in a trailer", BODY
    ),
    bad(
        "trailer-authorization",
        trailer(b"Authorization: Bearer dev_customer_1"),
        "RFC 9110 §6.5.1: authentication fields in a trailer",
        BODY,
    ),
    bad(
        "trailer-late-forbidden",
        trailer(b"X-Ok: 1", b"Cookie: a=b"),
        "RFC 9110 §6.5.1: a forbidden field after an allowed one",
        BODY,
    ),
    bad(
        "trailer-obs-fold",
        trailer(b"X-T: a", b" b"),
        "RFC 9112 §5.2: obs-fold (trailers are field lines too)",
        BODY,
    ),
    bad(
        "trailer-nul",
        trailer(b"X-T: a\x00b"),
        "RFC 9110 §5.5: NUL in a field value MUST be rejected or replaced",
        BODY,
    ),
    bad("trailer-bad-name", trailer(b"X y: a"), "RFC 9110 §5.1: field-name = token", BODY),
    bad(
        "trailer-too-many",
        trailer(*(b"X-T%d: v" % i for i in range(33))),
        "RFC 9110 §6.5: fastgw bounds the trailer section to 32 fields",
        BODY,
    ),
    bad(
        "trailer-too-large",
        trailer(b"X-T: " + b"v" * MAX_HEAD),
        "RFC 6585 §5 / RFC 9110 §6.5: trailer fields are held to the head's size limit → 431",
        BODY,
        status=431,
        code="headers_too_large",
    ),
    # -- field syntax (RFC 9112 §5, RFC 9110 §5) ------------------------------------------------
    bad(
        "obs-fold-space",
        get(b"/echo", b"X-Fold: a", b" b"),
        "RFC 9112 §5.2: obs-fold MUST be rejected (400) or replaced by SP; fastgw rejects",
    ),
    bad("obs-fold-tab", get(b"/echo", b"X-Fold: a", b"\tb"), "RFC 9112 §5.2: obs-fold with HTAB"),
    bad(
        "obs-fold-after-te",
        post(b"Transfer-Encoding: gzip", b" chunked", body=HELLO),
        "RFC 9112 §5.2: obs-fold hiding the final coding (TE.TE)",
    ),
    bad(
        "bare-cr-in-value",
        get(b"/echo", b"X-A: a\rb"),
        "RFC 9112 §2.2: a bare CR MUST be considered invalid (or replaced by SP)",
    ),
    bad(
        "bare-cr-after-request-line",
        b"GET /echo HTTP/1.1\rHost: gw\r\n\r\n",
        "RFC 9112 §2.2: bare CR",
    ),
    bad(
        "bare-lf-line-endings",
        b"GET /echo HTTP/1.1\nHost: gw\n\n",
        "RFC 9112 §2.2: a recipient MAY accept bare LF; fastgw does not (contract A3)",
    ),
    bad(
        "bare-lf-one-field",
        b"GET /echo HTTP/1.1\r\nHost: gw\nX-A: 1\r\n\r\n",
        "RFC 9112 §2.2: mixed line endings",
    ),
    bad(
        "nul-in-value",
        get(b"/echo", b"X-A: a\x00b"),
        "RFC 9110 §5.5: NUL in a value MUST be rejected or replaced by SP",
    ),
    bad("ctl-in-value", get(b"/echo", b"X-A: a\x01b"), "RFC 9110 §5.5: field-vchar excludes CTLs"),
    bad(
        "esc-in-value",
        get(b"/echo", b"X-A: a\x1bb"),
        "RFC 9110 §5.5: ESC is a CTL (terminal injection into logs)",
    ),
    bad("del-in-value", get(b"/echo", b"X-A: a\x7fb"), "RFC 9110 §5.5: DEL is a CTL"),
    bad("nul-in-name", get(b"/echo", b"X\x00A: 1"), "RFC 9110 §5.1: field-name = token"),
    bad("space-in-name", get(b"/echo", b"X A: 1"), "RFC 9110 §5.1: field-name = token"),
    bad(
        "non-ascii-name",
        get(b"/echo", b"X-\xe9: 1"),
        "RFC 9110 §5.1: field-name = token (ASCII tchar)",
    ),
    bad(
        "space-before-colon",
        get(b"/echo", b"X-A : 1"),
        "RFC 9112 §5.1: whitespace before the colon MUST be rejected with 400",
    ),
    bad(
        "tab-before-colon",
        get(b"/echo", b"X-A\t: 1"),
        "RFC 9112 §5.1: whitespace before the colon MUST be rejected with 400",
    ),
    bad("empty-name", get(b"/echo", b": 1"), "RFC 9110 §5.1: token is 1*tchar"),
    bad(
        "no-colon",
        get(b"/echo", b"X-A 1"),
        "RFC 9112 §5: field-line = field-name ':' OWS field-value OWS",
    ),
    bad(
        "whitespace-before-first-field",
        b"GET /echo HTTP/1.1\r\n X-A: 1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.2: whitespace after the start line MUST be rejected or the line ignored",
    ),
    # -- Host (RFC 9112 §3.2: MUST 400 when missing, repeated or invalid) -------------------------
    bad(
        "host-missing",
        get(host=False),
        "RFC 9112 §3.2: an HTTP/1.1 request without Host MUST get 400",
    ),
    bad(
        "host-duplicate-same",
        get(b"/echo", b"Host: gw"),
        "RFC 9112 §3.2: more than one Host field line MUST get 400",
    ),
    bad(
        "host-duplicate-case",
        b"GET /echo HTTP/1.1\r\nhost: gw\r\nHOST: other\r\n\r\n",
        "RFC 9112 §3.2 / RFC 9110 §5.1: names are case-insensitive, so this is two Hosts",
    ),
    bad(
        "host-userinfo",
        b"GET /echo HTTP/1.1\r\nHost: user@gw\r\n\r\n",
        "RFC 9110 §7.2: Host = uri-host [':' port], no userinfo",
    ),
    bad(
        "host-userinfo-password",
        b"GET /echo HTTP/1.1\r\nHost: user:pw@gw\r\n\r\n",
        "RFC 9110 §7.2 / §4.2.4: no userinfo",
    ),
    bad(
        "host-space",
        b"GET /echo HTTP/1.1\r\nHost: g w\r\n\r\n",
        "RFC 9112 §3.2: an invalid Host value MUST get 400",
    ),
    bad("host-path", b"GET /echo HTTP/1.1\r\nHost: gw/x\r\n\r\n", "RFC 9110 §7.2: no path in Host"),
    bad(
        "host-backslash",
        b"GET /echo HTTP/1.1\r\nHost: gw\\x\r\n\r\n",
        "RFC 9110 §7.2: reg-name has no backslash",
    ),
    bad(
        "host-empty",
        b"GET /echo HTTP/1.1\r\nHost: \r\n\r\n",
        "RFC 9112 §3.2: empty only for an authority-less target; an origin-form request to a "
        "gateway must name its host (fastgw policy)",
    ),
    bad(
        "host-two-ports",
        b"GET /echo HTTP/1.1\r\nHost: gw:80:80\r\n\r\n",
        "RFC 9110 §7.2: one optional port",
    ),
    bad(
        "host-port-too-long",
        b"GET /echo HTTP/1.1\r\nHost: gw:999999\r\n\r\n",
        "RFC 9110 §7.2: fastgw bounds port to 5 digits",
    ),
    bad(
        "host-list",
        b"GET /echo HTTP/1.1\r\nHost: gw, other\r\n\r\n",
        "RFC 9110 §7.2: Host is a singleton, not a list",
    ),
    # -- request line (RFC 9112 §3) ----------------------------------------------------------------
    bad(
        "request-line-three-spaces",
        b"GET /echo x HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3: method SP request-target SP HTTP-version; SHOULD 400",
    ),
    bad(
        "request-line-no-version",
        b"GET /echo\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.3 / §3: HTTP/0.9 simple requests are not HTTP/1.1",
    ),
    bad(
        "request-line-trailing-space",
        b"GET /echo HTTP/1.1 \r\nHost: gw\r\n\r\n",
        "RFC 9112 §3: the version is followed by CRLF",
    ),
    bad(
        "method-lowercase",
        b"get /echo HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9110 §9.1: methods are case-sensitive; 'get' is no method fastgw knows",
    ),
    bad(
        "method-not-token",
        b"G@T /echo HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9110 §9.1: method = token",
    ),
    bad(
        "version-http2",
        b"GET /echo HTTP/2.0\r\nHost: gw\r\n\r\n",
        "RFC 9110 §15.6.6: a major version fastgw does not speak (505; contract: 400)",
    ),
    bad(
        "version-http12",
        b"GET /echo HTTP/1.2\r\nHost: gw\r\n\r\n",
        "RFC 9110 §2.5 SHOULD treat 1.2 as 1.1; stricter: llhttp knows no 1.2, fastgw rejects",
    ),
    bad(
        "version-http09",
        b"GET /echo HTTP/0.9\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.3: HTTP/0.9 is not supported",
    ),
    bad(
        "version-lowercase",
        b"GET /echo http/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.3: HTTP-name is case-sensitive",
    ),
    bad(
        "version-two-digit-minor",
        b"GET /echo HTTP/1.10\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.3: HTTP-version = HTTP-name '/' DIGIT '.' DIGIT",
    ),
    bad(
        "target-absolute-form",
        b"GET http://gw/echo HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3.2.2 says servers MUST accept it; stricter: fastgw routes origin-form "
        "only, so Host and target can never disagree",
    ),
    bad(
        "target-asterisk-get",
        b"GET * HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3.2.4: asterisk-form is only for OPTIONS",
    ),
    bad(
        "target-authority-connect",
        b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
        "RFC 9112 §3.2.3: authority-form is for CONNECT, which fastgw does not tunnel",
    ),
    bad(
        "target-no-leading-slash",
        b"GET echo HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3.2.1: origin-form = absolute-path, which starts with '/'",
    ),
    bad(
        "target-fragment",
        b"GET /echo#frag HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3.2.1: origin-form has no fragment (RFC 9110 §7.1: never part of a target)",
    ),
    bad(
        "target-fragment-in-query",
        b"GET /echo?a#b HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3.2.1: query ends the target; '#' is not a query character",
    ),
    bad(
        "target-del",
        b"GET /echo/\x7f HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 3986 §3.3: CTLs are not pchar",
    ),
    bad(
        "target-non-ascii",
        b"GET /echo/\xff HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 3986 §2: raw non-ASCII is not allowed (percent-encode it)",
    ),
    bad(
        "target-tab",
        b"GET /echo/\ta HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3: HTAB is no separator in fastgw's request line",
    ),
    # -- paths a backend could read differently from the router (RFC 3986 §5.2.4) -----------------
    bad(
        "path-dot-dot",
        get(b"/echo/../x"),
        "RFC 3986 §5.2.4: '..' escapes the routed prefix after normalization",
    ),
    bad("path-dot-dot-final", get(b"/echo/.."), "RFC 3986 §5.2.4: a final '..'"),
    bad(
        "path-dot",
        get(b"/echo/./x"),
        "RFC 3986 §5.2.4: '.' segments (normalized away by some backends)",
    ),
    bad(
        "path-encoded-dot-dot",
        get(b"/echo/%2e%2e/x"),
        "RFC 3986 §2.3 / §6.2.2.2: %2E is '.' to a decoding backend",
    ),
    bad(
        "path-encoded-dot-dot-upper",
        get(b"/echo/%2E%2E/x"),
        "RFC 3986 §2.1: percent-encoding hex is case-insensitive",
    ),
    bad(
        "path-half-encoded-dot-dot",
        get(b"/echo/.%2e/x"),
        "RFC 3986 §6.2.2.2: mixed raw and encoded dots",
    ),
    bad(
        "path-dot-dot-encoded-slashes",
        get(b"/echo/x%2f..%2f..%2fy"),
        "RFC 3986 §2.2: a backend that decodes %2F first sees /echo/x/../../y",
    ),
    bad(
        "path-dot-dot-with-params",
        get(b"/echo/..;/x"),
        "RFC 3986 §3.3: servlet-style path parameters; Tomcat reads '..;' as '..'",
    ),
    bad(
        "path-backslash",
        get(b"/echo\\..\\x"),
        "RFC 3986 §3.3: '\\' is not pchar; Windows-style backends treat it as '/'",
    ),
    bad("path-encoded-backslash", get(b"/echo/%5c"), "RFC 3986 §3.3: %5C decodes to '\\'"),
    bad(
        "path-encoded-nul",
        get(b"/echo/%00"),
        "RFC 3986 §3.3: %00 truncates paths in C-string backends",
    ),
    # -- limits (RFC 9110 §15.5.14-15, RFC 6585 §5) ---------------------------------------
    bad(
        "uri-too-long",
        get(b"/echo?" + b"a" * MAX_URL),
        "RFC 9110 §15.5.15: a target longer than the server will interpret → 414",
        status=414,
        code="uri_too_long",
    ),
    bad(
        "header-too-large",
        get(b"/echo", b"X-Big: " + b"b" * (MAX_HEAD + 100)),
        "RFC 6585 §5: header fields too large → 431",
        status=431,
        code="headers_too_large",
    ),
    bad(
        "too-many-headers",
        get(b"/echo", *(b"X-%d: v" % i for i in range(MAX_HEADERS + 5))),
        "RFC 6585 §5: too many header fields → 431",
        status=431,
        code="headers_too_large",
    ),
    bad(
        "content-length-over-limit",
        post(b"Content-Length: %d" % (MAX_BODY + 1)),
        "RFC 9110 §15.5.14: declared content too large → 413, before any body byte",
        status=413,
        code="payload_too_large",
    ),
    # -- semantics the gateway refuses to pass on ------------------------------------------------
    bad(
        "upgrade-websocket",
        get(
            b"/echo",
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13",
        ),
        "RFC 9110 §7.8: a server MAY ignore Upgrade; fastgw does not switch and says so (400)",
    ),
    bad(
        "upgrade-h2c",
        get(
            b"/echo",
            b"Upgrade: h2c",
            b"Connection: Upgrade, HTTP2-Settings",
            b"HTTP2-Settings: AAMAAABkAAQAAP__",
        ),
        "RFC 9113 §3.1: h2c upgrade is not supported (and RFC 9113 deprecates it)",
    ),
    bad(
        "http2-preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "RFC 9113 §3.4: the HTTP/2 preface on an HTTP/1.1 port",
    ),
    bad(
        "expect-unknown",
        post(b"Content-Length: 4", b"Expect: 200-ok", body=b"data"),
        "RFC 9110 §10.1.1: an unknown expectation MAY get 417; the contract has 400",
    ),
    bad(
        "expect-list",
        post(b"Content-Length: 4", b"Expect: 100-continue, x", body=b"data"),
        "RFC 9110 §10.1.1: only 100-continue is defined",
    ),
    bad(
        "authorization-duplicate",
        get(b"/echo", b"Authorization: Bearer a", b"Authorization: Bearer b"),
        "RFC 9110 §5.3 / §11.6.2: Authorization is a singleton; which one a backend reads is "
        "undefined",
    ),
    bad(
        "connection-lists-host",
        get(b"/echo", b"Connection: close, Host"),
        "RFC 9110 §7.6.1: a sender MUST NOT list a field meant for all recipients; honouring "
        "it would send the backend an HTTP/1.1 request without Host",
    ),
)


REFRAMED: Final[tuple[Reframed, ...]] = (
    Reframed(
        "te-tab-before-value",
        post(b"Transfer-Encoding:\tchunked", body=HELLO),
        "RFC 9112 §5.1 / RFC 9110 §5.6.3: HTAB is OWS before a value",
        body=b"hello",
        chunked=True,
        absent=(b"\tchunked",),
    ),
    Reframed(
        "te-uppercase-coding",
        post(b"Transfer-Encoding: Chunked", body=HELLO),
        "RFC 9112 §7: transfer-coding names are case-insensitive",
        body=b"hello",
        chunked=True,
        absent=(b"Chunked",),
    ),
    Reframed(
        "te-trailing-ows",
        post(b"Transfer-Encoding: chunked  ", body=HELLO),
        "RFC 9110 §5.5: trailing OWS is not part of the value",
        body=b"hello",
        chunked=True,
        absent=(b"chunked  ",),
    ),
    Reframed(
        "chunk-extensions",
        post(CHUNKED, body=b'5;a=b;c="d e"\r\nhello\r\n0;last\r\n\r\n'),
        "RFC 9112 §7.1.1: extensions MUST be ignored when not understood; never forwarded",
        body=b"hello",
        chunked=True,
        absent=(b";a=b", b"d e", b";last"),
    ),
    Reframed(
        "chunk-extension-long",
        post(CHUNKED, body=b"5;" + b"e" * 3000 + b"\r\nhello\r\n0\r\n\r\n"),
        "RFC 9112 §7.1.1: extensions are dropped; a long one costs fastgw no memory",
        body=b"hello",
        chunked=True,
        absent=(b"eeee",),
    ),
    Reframed(
        "chunk-size-leading-zeros",
        post(CHUNKED, body=b"0005\r\nhello\r\n000\r\n\r\n"),
        "RFC 9112 §7.1: 1*HEXDIG allows leading zeros; re-chunked canonically",
        body=b"hello",
        chunked=True,
        absent=(b"0005",),
    ),
    Reframed(
        "trailer-allowed-dropped",
        trailer(b"X-Checksum: abc"),
        "RFC 9112 §7.1.2: trailers MAY be discarded when de-chunking; fastgw never forwards them",
        body=b"hello",
        chunked=True,
        absent=(b"X-Checksum",),
    ),
    Reframed(
        "cl-ows",
        post(b"Content-Length:   5  ", body=b"hello"),
        "RFC 9110 §5.5: OWS around a value is not part of it",
        body=b"hello",
        absent=(b"Content-Length:   5",),
        sent=((b"content-length", b"5"),),
    ),
    Reframed(
        "cl-leading-zeros",
        post(b"Content-Length: 0005", body=b"hello"),
        "RFC 9110 §8.6: 1*DIGIT allows leading zeros; re-sent as the plain number",
        body=b"hello",
        absent=(b"0005",),
        sent=((b"content-length", b"5"),),
    ),
    Reframed(
        "request-line-double-space",
        b"GET  /echo  HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §3: recipients MAY split on whitespace runs; the backend gets one SP",
        method=b"GET",
        absent=(b"  ",),
    ),
    Reframed(
        "leading-empty-line",
        b"\r\nGET /echo HTTP/1.1\r\nHost: gw\r\n\r\n",
        "RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request",
        method=b"GET",
    ),
    Reframed(
        "upgrade-without-connection",
        get(b"/echo", b"Upgrade: websocket"),
        "RFC 9110 §7.8: Upgrade is hop-by-hop; without Connection: upgrade no switch is "
        "asked for, and the field is dropped",
        method=b"GET",
        absent=(b"websocket",),
    ),
    Reframed(
        "x-customer-underscore-alias",
        get(b"/echo", b"X_Customer_ID: evil", b"X_Forwarded_For: 6.6.6.6"),
        "RFC 3875 §4.1.18: X_Customer_ID is X-Customer-ID to a CGI-style backend; dropped "
        "like it (contract A3), as is X_Forwarded_For",
        method=b"GET",
        absent=(b"evil", b"6.6.6.6", b"X_"),
    ),
    Reframed(
        "obs-text-value",
        get(b"/echo", b"X-Name: caf\xc3\xa9"),
        "RFC 9110 §5.5: obs-text is allowed in values and passed as bytes",
        method=b"GET",
        sent=((b"x-name", b"caf\xc3\xa9"),),
    ),
    Reframed(
        "http10-without-host",
        b"GET /echo HTTP/1.0\r\n\r\n",
        "RFC 9112 §3.2: only HTTP/1.1 requires Host; the gateway adds the backend's",
        method=b"GET",
    ),
    Reframed(
        "connection-lists-framing",
        get(b"/echo", b"Connection: Content-Length", b"Content-Length: 0"),
        "RFC 9110 §7.6.1: listed fields are dropped; framing is the gateway's own anyway",
        method=b"GET",
        sent=((b"content-length", b"0"),),
    ),
)

# Cases that the split tests run at every split position (a cross-section of both phases).
SPLIT_SUBSET: Final = frozenset(
    {
        "cl-then-te",
        "te-then-cl",
        "cl-duplicate-different",
        "cl-comma-list",
        "te-http10",
        "te-space-before-colon",
        "te-xchunked",
        "te-underscore-alias",
        "chunk-size-not-hex",
        "chunk-data-longer-than-size",
        "chunk-missing-crlf-after-data",
        "chunk-bare-lf-after-size",
        "trailer-host",
        "trailer-content-length",
        "trailer-authorization",
        "obs-fold-space",
        "bare-cr-in-value",
        "bare-lf-line-endings",
        "nul-in-value",
        "space-before-colon",
        "host-missing",
        "host-duplicate-same",
        "host-userinfo",
        "request-line-three-spaces",
        "version-http2",
        "target-fragment",
        "path-encoded-dot-dot",
        "upgrade-websocket",
        "uri-too-long",
        "content-length-over-limit",
        "expect-unknown",
        "connection-lists-host",
    }
)


def by_id(case_id: str) -> Rejected:
    for case in REJECTED:
        if case.id == case_id:
            return case
    raise KeyError(case_id)


# -- instruments ------------------------------------------------------------------------------


@dataclass
class Sent:
    """One gateway→backend connection, as the gateway wrote it."""

    data: bytearray = field(default_factory=bytearray)
    aborted: bool = False


class _RecordingTransport:
    """Wraps an upstream transport: records what the gateway writes, delegates the rest."""

    def __init__(self, inner: Any, record: Sent) -> None:
        self._inner = inner
        self._record = record

    def write(self, data: bytes) -> None:
        self._record.data += data
        self._inner.write(data)

    def writelines(self, parts: Any) -> None:
        parts = list(parts)
        for part in parts:
            self._record.data += part
        self._inner.writelines(parts)

    def abort(self) -> None:
        self._record.aborted = True
        self._inner.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


HEALTH_PROBE: Final = b"GET /health HTTP/1.1\r\n"


class Wire:
    """What crossed the gateway→backend hop: written by the gateway (``sent``, one entry per
    upstream connection) and received by the mock backends (``received``)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.received: dict[int, bytearray] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Wire:
        wire = self
        made = UpstreamProtocol.connection_made
        data_received = MetaldProtocol.data_received

        def recording_made(protocol: UpstreamProtocol, transport: Any) -> None:
            record = Sent()
            wire.sent.append(record)
            made(protocol, cast(asyncio.BaseTransport, _RecordingTransport(transport, record)))

        def recording_received(protocol: MetaldProtocol, data: bytes) -> None:
            # The gateway's active health checks are not client traffic: a probe's connection
            # carries only its one GET of the check path (a path the gateway answers itself,
            # so never a forwarded request).
            if id(protocol) not in wire.received and data.startswith(HEALTH_PROBE):
                data_received(protocol, data)
                return
            wire.received.setdefault(id(protocol), bytearray()).extend(data)
            data_received(protocol, data)

        monkeypatch.setattr(UpstreamProtocol, "connection_made", recording_made)
        monkeypatch.setattr(MetaldProtocol, "data_received", recording_received)
        return self

    def sent_bytes(self) -> bytes:
        return b"".join(bytes(record.data) for record in self.sent)

    def received_bytes(self) -> int:
        return sum(map(len, self.received.values()))

    def requests_sent(self) -> tuple[list[Request], bool]:
        """Every request the gateway wrote upstream, and whether any connection ends with an
        unfinished one."""
        requests: list[Request] = []
        unfinished = False
        for record in self.sent:
            complete, partial = parse_requests(bytes(record.data))
            requests += complete
            unfinished = unfinished or partial
        return requests, unfinished

    def reset(self) -> None:
        self.sent.clear()
        self.received.clear()


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    version: str

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


class _RequestCollector:
    def __init__(self) -> None:
        self.done: list[Request] = []
        self.current: Request | None = None
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.current = Request(b"", b"", [], b"", "")

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


def parse_requests(data: bytes) -> tuple[list[Request], bool]:
    """The complete requests in ``data`` (what the gateway wrote to one backend connection)
    and whether an unfinished one follows them. The gateway's own output must always parse."""
    collector = _RequestCollector()
    collector.parser.feed_data(data)
    return collector.done, collector.current is not None


def error_of(response: Any) -> dict[str, Any]:
    """The checked ``error`` object of a gateway-made JSON error response."""
    assert response.header("content-type") == b"application/json", response.headers
    body = orjson.loads(response.body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "request_id"}, error
    assert all(isinstance(value, str) and value for value in error.values()), error
    assert error["request_id"].encode() == response.header("x-request-id")
    return error


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status == status, (response.status, response.body)
    assert error_of(response)["code"] == code


async def settle(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (bounded) until ``predicate()`` holds, polling every loop turn, then every ms."""
    async with asyncio.timeout(timeout_s):
        for _ in range(20):
            if predicate():
                return
            await asyncio.sleep(0)
        while not predicate():
            await asyncio.sleep(0.001)
