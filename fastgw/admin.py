"""The admin HTTP server: operator endpoints on the metrics port (``/admin/upstreams``, later the
Prometheus path), served by every worker on its own SO_REUSEPORT socket, bound by the caller.

Not the main port's ``DownstreamProtocol``, because trust and traffic differ: nothing here is
authenticated, rate limited or forwarded, and an operator or a scraper calls now and then, so
simplicity wins over speed: one small protocol, one synchronous handler per exact path (GET
and HEAD), and actions (``POST <path>?<query>`` without a body, e.g. lifting a ban). It faces
the network all the same, so it is strict and bounded (constants below). A body is refused, so
the stream is a run of heads, each ending at its first CRLFCRLF, measured raw *before* parsing.
Errors are the gateway's JSON errors, never a traceback. Requests are answered in order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final, cast

import httptools

from fastgw import replies
from fastgw.ids import RequestIds
from fastgw.replies import CONNECTION_CLOSE, DateHeader, ErrorReply, ErrorSpec, status_line

Handler = Callable[[], tuple[int, bytes, bytes]]
"""Answers one admin path: ``(status, content_type, body)``, e.g. ``b"application/json"``."""
Action = Callable[[bytes], tuple[int, bytes, bytes]]
"""Does one operator action (``POST <path>?<query>``, no body): gets the query string."""

MAX_HEAD_BYTES: Final = 8 * 1024
"""Raw bytes of one request head (request line, fields, blank line); more is 431 and close."""
MAX_HEADER_FIELDS: Final = 100
"""Header fields of one request; more is 431 and close."""
HEADER_TIMEOUT_S: Final = 10.0
"""Time to send a whole head, from connect or the last answer (so also the idle timeout): then a
partial head gets 408, an idle connection is closed, one that does not read is aborted."""
MAX_PIPELINED_REQUESTS: Final = 64
"""Parsed requests awaiting their answer (reading pauses while answers wait); a read that brings
more gets those answered, then a close (httptools cannot stop mid-read)."""
MAX_ADMIN_CONNECTIONS: Final = 256
"""Open admin connections per server (so per worker); one more is accepted and closed."""

log = logging.getLogger("fastgw.admin")

_ALLOW: Final = b"Allow: GET, HEAD\r\n"
METHOD_NOT_ALLOWED: Final = ErrorSpec(
    405, "method_not_allowed", "use GET or HEAD (POST for an action)", _ALLOW
)
INTERNAL_ERROR: Final = ErrorSpec(500, "internal_error", "the admin endpoint failed")
_NO_STORE: Final = b"Cache-Control: no-store\r\n"
_HEAD: Final = b"Content-Type: %s\r\n%s%sContent-Length: %d\r\nX-Request-ID: %s\r\n%s\r\n"
_BAD_REQUEST: Final = ErrorReply(replies.BAD_REQUEST, _NO_STORE)
_NO_ROUTE: Final = ErrorReply(replies.NO_ROUTE, _NO_STORE)
_HEADERS_TOO_LARGE: Final = ErrorReply(replies.HEADERS_TOO_LARGE, _NO_STORE)
_REQUEST_TIMEOUT: Final = ErrorReply(replies.REQUEST_TIMEOUT, _NO_STORE)
_NOT_ALLOWED: Final = ErrorReply(METHOD_NOT_ALLOWED, _NO_STORE)
_INTERNAL: Final = ErrorReply(INTERNAL_ERROR, _NO_STORE)


class _Stop(Exception):
    """Parsing ends: queued requests are answered, then the reply in ``args[0]``, then close."""


class AdminServer:
    """Serves ``handlers`` (exact path → handler; the query string is ignored) on one socket."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handlers: Mapping[bytes, Handler],
        *,
        actions: Mapping[bytes, Action] | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.loop, self.handlers, self.header_timeout_s = loop, dict(handlers), header_timeout_s
        self.actions = dict(actions or {})
        self.ids, self.date = RequestIds(), DateHeader()
        self.connections: set[asyncio.Transport] = set()  # the open ones, admitted under the cap
        self.closed = False
        self._server: asyncio.AbstractServer | None = None
        self._port = 0

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (bound, listening, non-blocking); ``aclose`` closes it."""
        self._port = int(sock.getsockname()[1])
        self._server = await self.loop.create_server(lambda: _AdminProtocol(self), sock=sock)

    @property
    def port(self) -> int:
        return self._port

    async def aclose(self) -> None:
        """Stop listening and abort every open admin connection; idempotent."""
        if self.closed:
            return
        self.closed = True
        for transport in list(self.connections):
            transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _AdminProtocol(asyncio.Protocol):
    """One connection: httptools callbacks queue requests, ``_pump`` answers them."""

    _transport: asyncio.Transport

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self._queue: deque[tuple[bytes, bytes, bytes, bytes | None, bool]] = deque()
        self._ending = False  # parsing is over: answer the queue, then ``_end``, then close
        self._end: ErrorReply | None = None
        self._closing = False  # close() was called
        self._write_paused = False
        # The unfinished head's raw size and last bytes (3): a CRLFCRLF may straddle two reads.
        self._head_bytes, self._tail = 0, b""
        self._url, self._fields = b"", 0
        self._request_id: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are only alike
        server = self._server
        if server.closed or len(server.connections) >= MAX_ADMIN_CONNECTIONS:
            self._transport.close()
        else:
            server.connections.add(self._transport)
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self._transport)
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._ending or self._closing:
            return  # nothing after a final request or an error is parsed
        fits = self._measure(data)
        try:
            self._parser.feed_data(data if fits is None else data[:fits])
            if fits is not None:
                raise _Stop(_HEADERS_TOO_LARGE)
        except (_Stop, httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            stop = error if isinstance(error, _Stop) else error.__context__  # from a callback
            self._ending = True
            self._end = stop.args[0] if isinstance(stop, _Stop) else _BAD_REQUEST
        self._pump()

    def pause_writing(self) -> None:  # the client does not read: neither do we
        self._write_paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._transport.resume_reading()  # a no-op once closing
        self._pump()

    def on_message_begin(self) -> None:  # httptools callbacks: record and queue, nothing more
        self._url, self._fields, self._request_id = b"", 0, None

    def on_url(self, url: bytes) -> None:
        self._url += url  # bounded: the raw head was measured before parsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADER_FIELDS:
            raise _Stop(_HEADERS_TOO_LARGE)
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise _Stop(_BAD_REQUEST)  # a body, never read here
        if name == b"x-request-id":
            self._request_id = value

    def on_headers_complete(self) -> None:
        if self._parser.should_upgrade():
            raise _Stop(_BAD_REQUEST)  # Upgrade or CONNECT

    def on_message_complete(self) -> None:
        if len(self._queue) >= MAX_PIPELINED_REQUESTS:
            raise _Stop(None)
        parser = self._parser
        close = not parser.should_keep_alive() or parser.get_http_version() != "1.1"
        path, _, query = self._url.partition(b"?")
        self._queue.append((parser.get_method(), path, query, self._request_id, close))
        if close:
            raise _Stop(None)

    def _measure(self, data: bytes) -> int | None:
        """Raw head sizes, before parsing: None when each head in ``data`` fits, else how many
        bytes of ``data`` come before the first head over ``MAX_HEAD_BYTES``."""
        seen = self._tail + data
        start = len(self._tail) - self._head_bytes  # where the unfinished head began, in seen
        end = seen.find(b"\r\n\r\n")
        while end != -1 and end + 4 - start <= MAX_HEAD_BYTES:
            start = end + 4
            end = seen.find(b"\r\n\r\n", start)
        if end != -1 or len(seen) - start > MAX_HEAD_BYTES:
            return max(0, start - len(self._tail))
        self._head_bytes = len(seen) - start
        self._tail = seen[max(start, len(seen) - 3) :]
        return None

    def _pump(self) -> None:
        """Answer queued requests while the client reads; then end, or wait for the next head."""
        if self._closing:
            return
        answered = bool(self._queue)
        while self._queue and not self._write_paused:
            self._transport.writelines(self._answer(*self._queue.popleft()))
        if self._queue:
            return  # resume_writing() pumps again
        if self._ending:
            if self._end is not None:
                rid, date = self._server.ids.accept_or_new(None), self._server.date.get()
                self._transport.writelines(self._end.render(rid, date, True))
            self._closing = True
            self._transport.close()
            self._arm()  # close() waits for unsent bytes: a client that never reads is aborted
        elif answered:
            self._arm()

    def _answer(
        self, method: bytes, path: bytes, query: bytes, rid: bytes | None, close: bool
    ) -> list[bytes]:
        server = self._server
        request_id, date = server.ids.accept_or_new(rid), server.date.get()
        head_only = method == b"HEAD"
        action = server.actions.get(path) if method == b"POST" else None
        if action is None and not head_only and method != b"GET":
            return _NOT_ALLOWED.render(request_id, date, close)
        handler = server.handlers.get(path)
        if action is None and handler is None:
            return _NO_ROUTE.render(request_id, date, close, head_only=head_only)
        try:
            if action is not None:
                status, content_type, body = action(query)
            else:
                assert handler is not None
                status, content_type, body = handler()
            connection = CONNECTION_CLOSE if close else b""
            fields = (content_type, _NO_STORE, date, len(body), request_id, connection)
            head = status_line(status) + _HEAD % fields
        except Exception:
            log.exception("admin handler for %s failed", path.decode("latin-1"))
            return _INTERNAL.render(request_id, date, close, head_only=head_only)
        return [head] if head_only else [head, body]

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._server.loop.call_later(self._server.header_timeout_s, self._on_timeout)

    def _on_timeout(self) -> None:
        if self._closing or self._queue or self._transport.get_write_buffer_size():
            self._transport.abort()  # the client does not read what it asked for
        elif not self._ending:
            self._ending, self._end = True, _REQUEST_TIMEOUT if self._head_bytes else None
            self._pump()
