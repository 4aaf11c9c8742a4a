"""Fetching a JWKS document over HTTP(S) with one deadline for the whole exchange.

Blocking (urllib); ``refresh.KeySource`` runs it in the loop's executor. Every connect and every
socket read waits at most what is left of one overall deadline, so a host that drips bytes is
cut off and the executor thread ends by itself (a stuck thread would block the worker's exit).
Redirects go only to http(s), and never from https to plain http: a downgrade would let a
network attacker serve keys. The TLS handshake is bounded per socket operation only (urllib
offers no hook inside it); the event loop stops waiting at the deadline regardless.
"""

from __future__ import annotations

import functools
import http.client
import io
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, TYPE_CHECKING, Any, Final, cast

from fastgw.auth.keyring import MAX_KEY_DOCUMENT_BYTES, KeyConfigError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

FETCH_TIMEOUT_S: Final = 5.0
"""Socket timeout of one JWKS fetch (connect, and each read)."""
FETCH_DEADLINE_S: Final = 10.0
"""Longest a whole JWKS fetch may take (head, body, redirects), however slowly bytes arrive."""
FETCH_CHUNK_BYTES: Final = 16 * 1024
"""Most bytes of a JWKS body read at once (the deadline is checked between reads)."""


def late_message() -> str:
    return f"no complete answer within {FETCH_DEADLINE_S:g}s"


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https to plain http."""

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(newurl).scheme
        if new != "https" and (old == "https" or new != "http"):
            return None  # urllib then raises HTTPError with the 3xx status
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _wait_left_s(deadline: float) -> float:
    """How long the next socket operation may wait: what is left, at most FETCH_TIMEOUT_S."""
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        raise TimeoutError(late_message())
    return min(FETCH_TIMEOUT_S, left_s)


class _DeadlineReader(io.RawIOBase):
    """A response's socket reads; each one waits at most what is left until ``deadline``.

    Because http.client reads the status line and headers through the same buffered reader,
    a host that drips its head one byte at a time is cut off as surely as one dripping the body.
    """

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw = raw  # the socket's own reader: it holds the socket open for the response
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.settimeout(_wait_left_s(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: float,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    """Connects within the deadline, and reads its response through ``_DeadlineReader``."""

    def __init__(self, host: str, *, deadline: float = math.inf, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._deadline = deadline
        # getresponse() calls response_class(sock, [debuglevel,] method=...), nothing else.
        self.response_class = cast(
            "type[http.client.HTTPResponse]",
            functools.partial(_DeadlineResponse, deadline=deadline),
        )

    def connect(self) -> None:
        self.timeout = _wait_left_s(self._deadline)
        super().connect()


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPConnection, req, deadline=self._deadline)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # No context given: HTTPSConnection's default one, which verifies host and chain.
        return self.do_open(_DeadlineHTTPSConnection, req, deadline=self._deadline)


def fetch_jwks(url: str, deadline: float | None = None) -> bytes:
    """GET a JWKS document: 200 and at most ``MAX_KEY_DOCUMENT_BYTES``, else KeyConfigError.

    Blocking; runs in an executor thread. ``deadline`` (``time.monotonic()``; by default
    ``FETCH_DEADLINE_S`` from now) bounds the whole fetch, redirects included: past it the
    fetch raises instead of waiting for more bytes, so the thread ends by itself.
    """
    if deadline is None:
        deadline = time.monotonic() + FETCH_DEADLINE_S
    opener = urllib.request.build_opener(  # per fetch: its handlers carry the deadline
        _NoDowngradeRedirect(), _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
    )
    request = urllib.request.Request(
        url,
        headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "fastgw"},
    )
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_S) as response:
            status: int = response.status
            body = _read_body(response) if status == 200 else b""
    except urllib.error.HTTPError as error:
        error.close()  # it holds the response; an unclosed one warns at garbage collection
        raise KeyConfigError(f"HTTP {error.code}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError) and time.monotonic() >= deadline:
            raise KeyConfigError(late_message()) from None  # what the loop side says, too: one line
        raise KeyConfigError(f"cannot fetch: {reason or type(reason).__name__}") from None
    if status != 200:
        raise KeyConfigError(f"HTTP {status}")
    if len(body) > MAX_KEY_DOCUMENT_BYTES:
        raise KeyConfigError(f"larger than {MAX_KEY_DOCUMENT_BYTES} bytes")
    return body


def _read_body(response: http.client.HTTPResponse) -> bytes:
    """At most ``MAX_KEY_DOCUMENT_BYTES + 1`` bytes, one socket read at a time (see above)."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_KEY_DOCUMENT_BYTES:
        chunk = response.read1(min(FETCH_CHUNK_BYTES, MAX_KEY_DOCUMENT_BYTES + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
