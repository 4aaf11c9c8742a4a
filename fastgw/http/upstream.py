"""One keep-alive connection to a backend instance, speaking HTTP/1.1 as a client.

The connection carries one exchange at a time (no upstream pipelining: a slow response would
hold up unrelated clients). It writes the request head the gateway re-serialized (never the
client's raw bytes: nothing ambiguous is forwarded), streams the request body as the client
sends it, parses the response with httptools and hands head, body pieces and the end to the
client connection that owns the exchange.

Response framing handled here: Content-Length, chunked, close-delimited (ends at EOF), and
responses without a body (HEAD, 1xx, 204, 304). Informational 1xx responses are dropped: the
gateway answers ``Expect: 100-continue`` itself. Failures before any response byte go back to
the forward stage, which may retry; failures after the head was relayed cut the client off,
because a half-sent response cannot be replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

import httptools

from fastgw._speedups import HeaderError, scan_response_head
from fastgw.http.deadline import Deadline
from fastgw.http.pool import set_nodelay
from fastgw.limits import MAX_REPLAY_BODY_BYTES, MAX_UPSTREAM_HEAD_BYTES, MAX_UPSTREAM_HEADERS

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.http.pool import UpstreamPool
    from fastgw.stages.forward import Forward

CHUNK_END: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"
NO_BODY_STATUSES: Final = frozenset({204, 304})
HTTP11: Final = b" HTTP/1.1\r\n"

DEADLINE_BACKEND: Final = 1


def _keep_for_replay(ex: Exchange, pieces: Sequence[bytes]) -> None:
    """Keep the body pieces just sent so a retry can send them again; past
    ``MAX_REPLAY_BODY_BYTES`` the request stops being retryable."""
    size = ex.body_sent_bytes + sum(len(piece) for piece in pieces)
    if size > MAX_REPLAY_BODY_BYTES:
        ex.replay = False
        ex.body_sent = None
        ex.body_sent_bytes = 0
        return
    if ex.body_sent is None:
        ex.body_sent = list(pieces)
    else:
        ex.body_sent.extend(pieces)
    ex.body_sent_bytes = size


class UpstreamHeadTooLarge(Exception):
    """The backend sent a response head beyond our bounds (raised inside the parser)."""


class UpstreamProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "_buffer",
        "_close_delimited",
        "_deadline",
        "_fields",
        "_forward",
        "_head_bytes",
        "_informational",
        "_keep_alive",
        "_parser",
        "_pool",
        "_reading_paused",
        "_timeout_s",
        "ex",
        "idle_since_s",
        "response_bytes",
        "reused",
        "sent_chunked",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, read_buffer: bytearray) -> None:
        self._pool = pool
        self._buffer = read_buffer
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list[bytes] = []
        self._head_bytes = 0
        self._informational = False
        self._close_delimited = False
        self._keep_alive = True
        self._reading_paused = False
        self._forward: Forward | None = None
        self._timeout_s = 0.0
        self._deadline: Deadline | None = None
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.reused = False
        self.response_bytes = 0
        self.sent_chunked = False
        self.idle_since_s = 0.0

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        self._pool.open_connections += 1
        self._deadline = Deadline(asyncio.get_running_loop(), self._on_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.open_connections -= 1
        self._pool.forget(self)
        if self._deadline is not None:
            self._deadline.cancel()
        ex = self._detach()
        if ex is None:
            return
        forward = self._forward
        assert forward is not None
        if self._close_delimited and exc is None:
            forward.on_upstream_done(ex, self)  # EOF ends a close-delimited body; a reset not
        else:
            forward.on_upstream_lost(ex, self)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.ex is None:
            # Bytes on an idle connection: the backend is confused; never reuse it.
            self.close()
            return
        self.response_bytes += nbytes
        conn = self.ex.conn
        try:
            self._parser.feed_data(memoryview(self._buffer)[:nbytes])
        except httptools.HttpParserError:
            self._fail()
        conn.flush_output()  # everything this read produced for the client, in one write

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes a close-delimited body

    def pause_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.conn.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.conn.resume_reading_for_upstream()

    # -- used by the pool and the forward stage -----------------------------------------

    def usable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and self._keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """The client went away: drop the exchange and the connection (its state is unknown)."""
        self.ex = None
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        """The client is not reading: stop reading the backend, and stop its clock too (a
        slow client is the write timeout's business, not a backend timeout)."""
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
            if self._deadline is not None:
                self._deadline.clear()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
            if self._deadline is not None and self.ex is not None and self.ex.body_done:
                self._deadline.set(DEADLINE_BACKEND, self._timeout_s)

    # HOT PATH: one writelines for the head and whatever body already arrived.
    def start(self, ex: Exchange, forward: Forward, timeout_s: float) -> None:
        """Send ``ex``'s request on this connection and wait for the response."""
        transport = self.transport
        assert transport is not None and ex.head is not None
        self.ex = ex
        self._forward = forward
        self._timeout_s = timeout_s
        self._informational = False
        self._close_delimited = False
        self._keep_alive = True
        self.response_bytes = 0
        ex.upstream = self
        head = ex.head
        conn = ex.conn
        parts = [
            ex.method,
            b" ",
            ex.target,
            HTTP11,
            head.forward_block,
            self._pool.host_header if head.host is None else b"",
            b"" if ex.customer is None else ex.customer.headers,
        ]
        conn.add_forwarded_headers(parts, ex)
        if head.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
            self.sent_chunked = True
        else:
            parts.append(
                b"Content-Length: %d\r\n\r\n" % head.content_length
                if head.content_length >= 0
                else CRLF
            )
            self.sent_chunked = False
        if ex.body_pending:
            pending = ex.body_pending
            for piece in pending:
                self._append_body(parts, piece)
            if ex.replay:
                _keep_for_replay(ex, pending)
            ex.body_pending = []
            ex.body_pending_bytes = 0
        if ex.body_done and self.sent_chunked:
            parts.append(CHUNK_END)
        transport.writelines(parts)
        if ex.body_done:
            # The backend's clock starts when it has the whole request: the time a client
            # takes to send its body is the client's read timeout's business, never a failure
            # of the backend (or a slow uploader could open its breaker).
            assert self._deadline is not None
            self._deadline.set(DEADLINE_BACKEND, timeout_s)
        conn.on_upstream_attached(ex)

    def _append_body(self, parts: list[bytes], piece: bytes) -> None:
        if self.sent_chunked:
            parts.append(b"%x\r\n" % len(piece))
            parts.append(piece)
            parts.append(CRLF)
        else:
            parts.append(piece)

    # HOT PATH
    def send_body(self, piece: bytes) -> None:
        transport = self.transport
        assert transport is not None
        ex = self.ex
        if ex is not None and ex.replay:
            _keep_for_replay(ex, (piece,))
        if self.sent_chunked:
            transport.writelines((b"%x\r\n" % len(piece), piece, CRLF))
        else:
            transport.write(piece)

    def send_body_end(self) -> None:
        if self.sent_chunked and self.transport is not None:
            self.transport.write(CHUNK_END)
        if self._deadline is not None and not self._reading_paused:
            self._deadline.set(DEADLINE_BACKEND, self._timeout_s)  # the whole request is sent

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._fields = []
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        fields = self._fields
        fields.append(name)
        fields.append(value)
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_UPSTREAM_HEAD_BYTES or len(fields) > 2 * MAX_UPSTREAM_HEADERS:
            raise UpstreamHeadTooLarge

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise HeaderError("unexpected protocol switch from upstream")
            self._informational = True
            return
        self._informational = False
        ex = self.ex
        assert ex is not None
        response = scan_response_head(self._fields)  # HeaderError stops the parser → 502
        assert self._forward is not None
        if not self._forward.on_upstream_status(ex, status):
            # Not relayed: the request goes to another instance. This connection is dropped
            # (its response body is unread), then the retry is scheduled.
            self._detach()
            self._keep_alive = False
            if self.transport is not None:
                self.transport.abort()
            self._forward.retry_dropped(ex)
            return
        head_only = ex.method == b"HEAD"
        no_body = head_only or status in NO_BODY_STATUSES
        keep_alive = self._parser.should_keep_alive() and not response.close
        close_delimited = not no_body and response.content_length < 0 and not response.chunked
        self._keep_alive = keep_alive and not close_delimited
        self._close_delimited = close_delimited
        assert self._deadline is not None
        self._deadline.set(DEADLINE_BACKEND, self._timeout_s)
        ex.conn.on_upstream_head(ex, status, response, no_body)
        if head_only:
            # llhttp cannot be told the request was HEAD and would wait for Content-Length
            # bytes that never come: finish here and parse the next response afresh.
            self._parser = httptools.HttpResponseParser(self)
            self._complete()

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None:
            return
        assert self._deadline is not None
        self._deadline.set(DEADLINE_BACKEND, self._timeout_s)  # inactivity: usually no re-arm
        ex.conn.on_upstream_body(ex, body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.ex is not None:
            self._complete()

    # -- endings ---------------------------------------------------------------------------

    def _complete(self) -> None:
        ex = self._detach()
        assert ex is not None and self._forward is not None
        self._close_delimited = False
        assert self._deadline is not None
        self._deadline.clear()
        transport = self.transport
        if not ex.body_done or (transport is not None and transport.get_write_buffer_size()):
            # Request bytes not all sent (or still buffered): the stream is unusable.
            self._keep_alive = False
        self.resume_reading()
        # Back to the pool first, so the next pipelined request can reuse this warm socket.
        # (Known limit: bytes a misbehaving backend sends beyond the response in the same read
        # would be parsed as the next exchange's response.)
        if self._keep_alive:
            self._pool.release(self)
        else:
            self.close()
        self._forward.on_upstream_done(ex, self)

    def _detach(self) -> Exchange | None:
        """Let go of the current exchange, and of the client's reading if our full write buffer
        had paused it. Every ending (complete, failed, timed out, lost) goes through here."""
        ex = self.ex
        if ex is not None:
            self.ex = None
            ex.upstream = None
            ex.conn.resume_reading_for_upstream()
        return ex

    def _fail(self) -> None:
        ex = self._detach()
        self._keep_alive = False
        self.close()
        if ex is not None:
            assert self._forward is not None
            self._forward.on_upstream_error(ex, self)

    def _on_deadline(self, kind: int) -> None:
        ex = self._detach()
        if ex is None:
            return
        self._keep_alive = False
        if self.transport is not None:
            self.transport.abort()
        assert self._forward is not None
        self._forward.on_upstream_timeout(ex, self)
