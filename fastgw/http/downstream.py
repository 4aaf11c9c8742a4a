"""One client connection: parse requests, run their chains in order, write the answers.

Theory.
- ``asyncio.BufferedProtocol`` reads into one buffer shared by every connection of the worker:
  httptools copies what it hands us, so the buffer never outlives ``buffer_updated`` and an
  idle keep-alive connection costs no buffer at all.
- Parsing only records: heads are validated and queued in the parser callbacks, and their
  chains run after ``feed_data`` returns. So when one read holds a head followed by a bad
  chunk, the whole request is rejected before anything was sent to a backend.
- Requests are answered strictly in order (HTTP/1.1 pipelining). One exchange is ``active``;
  later ones wait in ``_queue`` (bounded: reading pauses when it is full).
- A framing or limit error becomes an exchange carrying its reply, queued like any other, so
  earlier pipelined requests are answered first; then the connection closes and nothing more is
  parsed. A close while the client may still be sending lingers (FIN first, then what arrives
  is read and dropped for a moment), so that a reset cannot destroy the answer in flight.
- Reading is paused for several independent reasons (bit flags); it resumes only when none is
  left. The client's write buffer pauses the backend's reading and the backend's write buffer
  pauses ours: backpressure is coupled both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from fastgw._speedups import HeaderError, scan_request_head
from fastgw.exchange import ABORTED, DONE, HEAD, IN_CHAIN, QUEUED, Exchange
from fastgw.http.compress import GzipStream
from fastgw.http.deadline import Deadline
from fastgw.http.pool import set_nodelay
from fastgw.limits import (
    BODY_BUFFER_HIGH_WATER_BYTES,
    LINGER_S,
    MAX_PIPELINED_REQUESTS,
    MAX_TRAILER_FIELDS,
    RAW_SLACK_BYTES,
)
from fastgw.obs.logging_errors import report_upstream_failure
from fastgw.pipeline import RESPOND, run_chain
from fastgw.replies import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    ErrorReply,
    json_reply,
    status_line,
)

if TYPE_CHECKING:
    from fastgw._speedups import ResponseHead
    from fastgw.plan import Plan
    from fastgw.worker_context import WorkerContext

# Why reading is paused (bit flags).
PAUSED_PIPELINE: Final = 1
PAUSED_BODY_BUFFER: Final = 2
PAUSED_UPSTREAM: Final = 4
PAUSED_STOPPED: Final = 8  # no more requests will be read on this connection

# What the client-side deadline is waiting for.
WAIT_HEAD: Final = 1
WAIT_BODY: Final = 2
WAIT_IDLE: Final = 3
WAIT_WRITE: Final = 4
WAIT_LINGER: Final = 5

CHUNK_END: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"
CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
TE_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
BAN_STATUSES: Final = frozenset({401, 429})  # what gateway.security.auto_ban counts
GZIP_HEADERS: Final = b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n"

# Trailer fields that would change framing, routing or identity if anyone merged them.
FORBIDDEN_TRAILERS: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"authorization",
        b"cookie",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"expect",
        b"x-request-id",
        b"traceparent",
        b"proxy-authorization",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    }
)


def _now_us() -> int:
    return time.monotonic_ns() // 1000  # one clock for every worker (bans are shared)


class _AfterFinalRequest(Exception):
    """Raised when a message begins after the connection's final request (its request quota
    was reached) in the same read: parsing stops there, nothing more is read."""


class RejectRequest(Exception):
    """Raised inside a parser callback to stop parsing; carries the reply to send."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.spec.code)
        self.reply = reply


class DownstreamProtocol(asyncio.BufferedProtocol):
    __slots__ = (
        "_active",
        "_blocked",
        "_ctx",
        "_deadline",
        "_fields",
        "_head_bytes",
        "_in_head",
        "_out",
        "_parser",
        "_parsing",
        "_pumping",
        "_queue",
        "_read_paused",
        "_served",
        "_stopped",
        "_trailer_bytes",
        "_trailer_count",
        "_url",
        "_via_proxy",
        "_write_deadline",
        "_write_paused",
        "peer",
        "transport",
    )

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._fields: list[bytes] = []
        self._url = b""
        self._head_bytes = 0
        self._in_head = False
        self._trailer_count = 0
        self._trailer_bytes = 0
        self._read_paused = 0
        self._write_paused = False
        self._stopped = False
        self._served = 0  # requests parsed on this connection
        self._via_proxy = False  # the peer is a trusted proxy (gateway.security.trusted_proxies)
        self._blocked = False  # the peer is refused by the IP rules
        self._pumping = False
        self._out: list[bytes] = []  # response bytes held until the backend read ends
        self._deadline = Deadline(ctx.loop, self._on_deadline)  # what reading waits for
        # Writing has its own deadline: a client that stops reading must be cut off whatever
        # the read side is waiting for (a pipelined head, a body, idleness), and after close().
        self._write_deadline = Deadline(ctx.loop, self._on_deadline)
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        handshakes = ctx.tls_handshakes
        if handshakes is not None:
            handshakes[self] = ctx.loop.time()

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        ctx = self._ctx
        if ctx.tls_handshakes is not None:
            ctx.tls_handshakes.pop(self, None)
        if not ctx.admit(self):
            transport.writelines(ctx.plan.overloaded_reply(ctx.date.get()))
            transport.close()
            self._stopped = True
            return
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode("ascii") if isinstance(peer, tuple) else b"unix"
        # IP rules, decided once per connection; a trusted proxy's requests are decided one by
        # one, for the client its X-Forwarded-For names.
        plan = ctx.plan
        trusted = plan.client_address.trusted
        self._via_proxy = bool(trusted) and trusted.contains(self.peer)
        rules = plan.ip_rules
        self._blocked = not self._via_proxy and rules.active and not rules.allowed(self.peer)
        self._deadline.set(WAIT_HEAD, ctx.plan.settings.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ctx.tls_handshakes is not None:
            self._ctx.tls_handshakes.pop(self, None)
        self._ctx.release(self)
        self._deadline.cancel()
        self._write_deadline.cancel()
        self._stopped = True
        ctx = self._ctx
        for ex in (self._active, self._parsing, *self._queue):
            # _parsing may be _active or queued too: each exchange ends once (state < DONE).
            if ex is not None and ex.state < DONE:
                received = ex.state != HEAD  # a head cut off midway is no request
                ex.move(ABORTED)
                if received:
                    # The client left first: counted, logged and its trace exported like any
                    # ending, under the status its answer began with, or 0 when none had. One
                    # still queued (never routed) is counted under the route it would take.
                    if ex.route is None and ex.reply is None:
                        ex.route = ctx.plan.router.match(ex.method, ex.path)
                    ctx.on_exchange_done(ex)
                upstream = ex.upstream
                if upstream is not None:
                    ex.upstream = None
                    upstream.abort()
        self._active = None
        self._parsing = None
        self._queue.clear()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._ctx.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._stopped:
            return  # after an error or a final request: the rest is ignored, never parsed
        before = self._parsing  # the message this read continues, if any
        was_in_head = self._in_head
        body_before = 0 if before is None else before.body_bytes
        try:
            self._parser.feed_data(memoryview(self._ctx.read_buffer)[:nbytes])
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _AfterFinalRequest):
                pass  # pipelined bytes after the final request: dropped, as a close would
            elif isinstance(cause, RejectRequest):
                self._reject(cause.reply)
            elif isinstance(cause, HeaderError):
                self._reject(self._ctx.plan.bad_request(cause.reason))
            else:
                self._reject(self._ctx.plan.replies.bad_request)
        except httptools.HttpParserUpgrade:
            self._reject(self._ctx.plan.bad_request("protocol upgrade is not supported"))
        except httptools.HttpParserError as error:
            self._on_parser_error(error)
        else:
            if self._parsing is not None:
                self._bound_unfinished(before, was_in_head, body_before, nbytes)
        if self._active is None and self._queue:
            self._pump()

    def _bound_unfinished(
        self, before: Exchange | None, was_in_head: bool, body_before: int, nbytes: int
    ) -> None:
        """A read left a message unfinished: bound what httptools may hold for it (a partial
        head or trailer field, kept in memory until it ends) and the run of bytes that carry no
        body (chunk-size lines, extensions, trailers); more is 431.

        These are raw bytes, which exceed the parsed size checked at the end of a head or
        trailer field by the syntax around it (request line, CRLFs, OWS, chunk-size lines), so
        the bound is ``max_head_bytes + RAW_SLACK_BYTES``: a message that passes the exact
        checks passes this one however its bytes are split across reads (short of kilobytes of
        OWS or chunk extensions in a row).
        """
        ex = self._parsing
        assert ex is not None
        if self._in_head:
            if ex is before:
                self._head_bytes += nbytes  # a head already open owns the whole read
            else:
                # Began in this read, maybe after earlier messages' bytes: count what it parsed
                # (its partial field is at most this one read).
                self._head_bytes = len(self._url) + sum(map(len, self._fields))
        elif ex is before and not was_in_head and ex.body_bytes == body_before:
            self._head_bytes += nbytes  # a whole read in the body without one body byte
        else:
            self._head_bytes = 0
        if self._head_bytes > self._ctx.plan.settings.max_head_bytes + RAW_SLACK_BYTES:
            self._reject(self._ctx.plan.replies.headers_too_large)

    def eof_received(self) -> bool:
        # The client closed its side. As nginx does, a client that stops sending is taken to
        # have given up: in-flight exchanges are aborted (their backend connections too, so a
        # backend stops working for nobody) rather than answered into a half-closed socket.
        self._stop_reading()
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        ex = self._active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()
        self._write_deadline.set(WAIT_WRITE, self._ctx.plan.settings.write_timeout_s)

    def resume_writing(self) -> None:
        self._write_paused = False
        ex = self._active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()
        self._write_deadline.clear()

    def _close(self, transport: asyncio.Transport) -> None:
        """close() waits for the write buffer to drain; a client that never reads would hold
        the connection forever, so what is still buffered gets the write timeout, then abort."""
        transport.close()
        if transport.get_write_buffer_size():
            self._write_deadline.set(WAIT_WRITE, self._ctx.plan.settings.write_timeout_s)

    # -- httptools callbacks (recording only: chains run after feed_data) -----------------

    def on_message_begin(self) -> None:
        if self._stopped:
            raise _AfterFinalRequest
        ctx = self._ctx
        # time.monotonic, not loop.time(): uvloop's is whole milliseconds (request durations).
        self._parsing = Exchange(self, time.monotonic())
        self._fields = []
        self._url = b""
        self._head_bytes = 0
        self._trailer_count = 0
        self._trailer_bytes = 0
        self._in_head = True
        if self._deadline.kind != WAIT_HEAD:
            self._deadline.set(WAIT_HEAD, ctx.plan.settings.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._ctx.plan.settings.max_url_bytes:
            raise RejectRequest(self._ctx.plan.replies.uri_too_long)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            self._on_trailer(name, value)
            return
        fields = self._fields
        fields.append(name)
        fields.append(value)
        settings = self._ctx.plan.settings
        if len(fields) > settings.max_header_fields2:
            raise RejectRequest(self._ctx.plan.replies.headers_too_large)

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        self._trailer_count += 1
        if self._trailer_count > MAX_TRAILER_FIELDS or name.lower() in FORBIDDEN_TRAILERS:
            raise RejectRequest(self._ctx.plan.bad_request("forbidden trailer field"))
        # The trailer section is held to the head's size limit, measured the same way.
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self._ctx.plan.settings.max_head_bytes:
            raise RejectRequest(self._ctx.plan.replies.headers_too_large)
        # Other trailer fields are dropped: the backend gets a body without trailers.

    def on_headers_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        self._in_head = False
        plan = self._ctx.plan
        settings = plan.settings
        parser = self._parser
        fields = self._fields
        head_bytes = len(self._url) + sum(map(len, fields)) + 2 * len(fields)
        if head_bytes > settings.max_head_bytes:
            raise RejectRequest(plan.replies.headers_too_large)
        version = parser.get_http_version()
        if version == "1.1":
            ex.http_minor = 1
        elif version == "1.0":
            ex.http_minor = 0
        else:
            raise RejectRequest(plan.bad_request("unsupported HTTP version"))
        if parser.should_upgrade():
            # Upgrade + Connection: upgrade. Rejected here, before it is queued: left to
            # feed_data's HttpParserUpgrade, the request itself would already be forwarded.
            raise RejectRequest(plan.bad_request("protocol upgrade is not supported"))
        head = scan_request_head(fields, plan.strip_request_fields)  # HeaderError → 400
        if head.host is None and ex.http_minor == 1:
            raise RejectRequest(plan.bad_request("missing Host header"))
        if head.chunked and ex.http_minor == 0:
            # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
            raise RejectRequest(plan.bad_request("Transfer-Encoding in an HTTP/1.0 request"))
        url = self._url
        if url[:1] != b"/":
            raise RejectRequest(plan.bad_request("request target must be origin-form"))
        if b"#" in url:
            # RFC 9112 §3.2: no fragment in a request target; backends differ on where it ends.
            raise RejectRequest(plan.bad_request("request target has a fragment"))
        query_at = url.find(b"?")
        path = url if query_at < 0 else url[:query_at]
        if plan.unsafe_path(path):
            raise RejectRequest(plan.bad_request("path has dot-segments or escapes"))
        if head.content_length > settings.max_body_bytes:
            raise RejectRequest(plan.replies.payload_too_large)
        ex.method = parser.get_method()
        ex.target = url
        ex.path = path
        ex.query = b"" if query_at < 0 else url[query_at + 1 :]
        ex.head = head
        ex.keep_alive = parser.should_keep_alive() and not head.close
        self._served += 1
        if self._served >= settings.max_requests_per_connection:
            ex.keep_alive = False  # answered with Connection: close; nothing after it is read
        ex.request_id = self._ctx.ids.accept_or_new(head.request_id)
        if plan.compression is not None:
            ex.gzip_wanted = plan.compression.wanted(head.forward_block)
        ex.client = self.peer
        if self._via_proxy:
            self._resolve_client(ex, plan, fields)
        elif self._blocked:
            ex.reply = plan.replies.ip_blocked  # answered in turn, never forwarded
            ex.keep_alive = False
        bans = plan.bans
        if bans is not None and bans.banned and bans.is_banned(ex.client, _now_us()):
            ex.reply = plan.replies.ip_blocked
        ex.body_done = head.content_length <= 0 and not head.chunked
        if ex.body_done:
            self._deadline.clear()
        else:
            self._deadline.set(WAIT_BODY, settings.read_timeout_s)
        ex.move(QUEUED)
        self._queue.append(ex)
        if len(self._queue) > MAX_PIPELINED_REQUESTS:
            self._pause_reading(PAUSED_PIPELINE)

    # HOT PATH
    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.body_bytes += len(body)
        if ex.body_bytes > self._ctx.plan.settings.max_body_bytes:
            raise RejectRequest(self._ctx.plan.replies.payload_too_large)
        self._deadline.set(WAIT_BODY, self._ctx.plan.settings.read_timeout_s)
        upstream = ex.upstream
        if upstream is not None:
            upstream.send_body(body)
        elif ex.state not in (DONE, ABORTED):
            ex.body_pending.append(body)
            ex.body_pending_bytes += len(body)
            # A stage waiting for the whole body (on_body_done) needs it all: not paused.
            if ex.body_pending_bytes > BODY_BUFFER_HIGH_WATER_BYTES and ex.on_body_done is None:
                self._pause_reading(PAUSED_BODY_BUFFER)

    def on_message_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        self._parsing = None
        ex.body_done = True
        if self._deadline.kind == WAIT_BODY:
            self._deadline.clear()
        upstream = ex.upstream
        if upstream is not None:
            upstream.send_body_end()
        if not ex.keep_alive or self._ctx.draining:
            # Nothing after a final request is read (llhttp would call it an error anyway).
            self._stop_reading()
        hook = ex.on_body_done
        if hook is not None:
            # A stage PAUSEd for the whole body (validation): it decides and resumes now. The
            # message is complete, so no byte of it is left to reject after a forward.
            ex.on_body_done = None
            hook(ex)

    def read_whole_body(self, ex: Exchange) -> None:
        """``ex.on_body_done`` is set: read the whole body before it is called. Reading is not
        paused for the body buffer meanwhile (``max_body_size`` and the read timeout still
        bound it); a client that sent ``Expect: 100-continue`` is told to go on."""
        head = ex.head
        transport = self.transport
        if head is not None and head.expect_continue and not ex.continue_sent and transport:
            ex.continue_sent = True
            transport.write(CONTINUE_100)
        self._resume_reading(PAUSED_BODY_BUFFER)

    # -- running exchanges -------------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued exchanges while none is active."""
        if self._pumping:
            return  # re-entered through _finish: the loop below carries on
        self._pumping = True
        try:
            self._pump_queue()
        finally:
            self._pumping = False

    def _pump_queue(self) -> None:
        queue = self._queue
        while self._active is None and queue and self.transport is not None:
            ex = queue.popleft()
            self._active = ex
            if self._read_paused & PAUSED_PIPELINE and len(queue) <= MAX_PIPELINED_REQUESTS:
                self._resume_reading(PAUSED_PIPELINE)
            if ex.reply is not None:
                self._send_reply(ex)
                continue
            route = self._ctx.plan.router.match(ex.method, ex.path)
            if route is None:
                ex.reply = self._ctx.plan.replies.no_route
                self._send_reply(ex)
                continue
            ex.route = route
            if route.begin_trace is not None:
                route.begin_trace(ex)  # traceparent for the backend; a sampled one is timed
            self.run_exchange(ex)

    # HOT PATH
    def run_exchange(self, ex: Exchange) -> None:
        """Run (or resume) ``ex``'s chain; write the reply if a stage answered."""
        route = ex.route
        assert route is not None
        ex.move(IN_CHAIN)
        # A paused stage that decided to answer sets ex.reply before resuming.
        if ex.reply is not None or run_chain(ex, route.steps) == RESPOND:
            self._send_reply(ex)
        # PAUSE: a stage owns the exchange now (forward, or an async check that resumes it).

    def _send_reply(self, ex: Exchange) -> None:
        transport = self.transport
        if transport is None or ex.state >= DONE:  # ended: answered, cut off or given up
            return
        close = self._must_close_after(ex)
        date = self._ctx.date.get()
        reply = ex.reply
        if reply is not None:
            ex.status = reply.status
            bans = self._ctx.plan.bans
            if bans is not None and reply.status in BAN_STATUSES:
                bans.failure(ex.client, _now_us())
            transport.writelines(
                reply.render(
                    ex.request_id,
                    date,
                    close,
                    ex.response_headers,
                    head_only=ex.method == b"HEAD",
                )
            )
        else:
            ex.status = ex.local_status
            transport.writelines(
                json_reply(
                    ex.local_status,
                    ex.local_body,
                    request_id=ex.request_id,
                    date=date,
                    common_headers=self._ctx.plan.common_headers,
                    close=close,
                    head_only=ex.method == b"HEAD",
                    extra_headers=ex.response_headers,
                )
            )
        self._finish(ex, close)

    def _must_close_after(self, ex: Exchange) -> bool:
        return (
            not ex.keep_alive
            or not ex.body_done  # an unread body: we will not parse past it
            or ex.close_after
            or self._ctx.draining
            or (self._stopped and not self._queue and self._parsing is None)
        )

    def _finish(self, ex: Exchange, close: bool) -> None:
        self.flush_output()
        ex.move(DONE)  # every caller saw it had not ended: on_exchange_done runs once
        self._active = None
        self._ctx.on_exchange_done(ex)
        transport = self.transport
        if transport is None:
            return
        if close:
            self._stopped = True
            self._close_after_answer(ex, transport)
            return
        if self._queue:
            self._pump()
        elif self._parsing is None:
            self._deadline.set(WAIT_IDLE, self._ctx.plan.settings.idle_timeout_s)

    def _close_after_answer(self, ex: Exchange, transport: asyncio.Transport) -> None:
        """Close after ``ex``'s answer. When the client may still be sending (``ex``'s body is
        unread, or it was rejected mid-request), closing at once would have the kernel answer
        its next bytes with a reset, which can destroy the answer before the client reads it
        (a 413 for a large upload would never arrive). So, as nginx's lingering close: FIN
        now, then read and drop what comes for at most LINGER_S (or until the client's EOF)."""
        if ex.body_done or not transport.can_write_eof():
            # Nothing more is read: a deadline left armed (the body's, TLS having no
            # half-close) would fire on the answered exchange and answer or count it again.
            self._deadline.clear()
            self._close(transport)
            return
        transport.write_eof()
        self._read_paused = 0
        transport.resume_reading()  # buffer_updated drops it all: _stopped is set
        self._deadline.set(WAIT_LINGER, LINGER_S)

    # -- called by the upstream side -----------------------------------------------------------

    def _resolve_client(self, ex: Exchange, plan: Plan, fields: list[bytes]) -> None:
        """A trusted proxy's request: the client is the hop its X-Forwarded-For names (right
        to left, past trusted proxies); the backend gets that chain with the proxy appended.
        The IP rules then apply to that client."""
        chain = [
            fields[i + 1]
            for i in range(0, len(fields), 2)
            if fields[i].lower() == b"x-forwarded-for"
        ]
        if chain:
            ex.client = plan.client_address.resolve(self.peer, chain)
            ex.forwarded_for = b", ".join([*chain, self.peer])
        rules = plan.ip_rules
        if rules.active and not rules.allowed(ex.client):
            ex.reply = plan.replies.ip_blocked  # answered in turn; the proxy's connection stays

    # HOT PATH
    def add_forwarded_headers(self, parts: list[bytes], ex: Exchange) -> None:
        """Append X-Request-ID, X-Forwarded-* and the trace headers for the backend to
        ``parts`` (the client's own versions were dropped by the header kernel; a trusted
        proxy's chain is kept)."""
        host = ex.head.host if ex.head is not None else None
        parts += (
            b"X-Request-ID: ",
            ex.request_id,
            b"\r\nX-Forwarded-For: ",
            ex.forwarded_for or self.peer,
            self._ctx.plan.forwarded_proto,
            ex.trace_headers,
        )
        if host is not None:
            parts += (b"X-Forwarded-Host: ", host, CRLF)

    def on_upstream_attached(self, ex: Exchange) -> None:
        head = ex.head
        assert head is not None and self.transport is not None
        if head.expect_continue and not ex.body_done and not ex.continue_sent:
            ex.continue_sent = True
            self.transport.write(CONTINUE_100)
        if self._write_paused and ex.upstream is not None:
            ex.upstream.pause_reading()  # the client is still not reading: carry it over
        if self._read_paused & PAUSED_BODY_BUFFER:
            self._resume_reading(PAUSED_BODY_BUFFER)

    def on_upstream_head(
        self, ex: Exchange, status: int, response: ResponseHead, no_body: bool
    ) -> None:
        transport = self.transport
        if transport is None:
            return
        ex.status = status
        ex.response_started = True
        plan = self._ctx.plan
        close = self._must_close_after(ex)
        encoding = b""
        compression = plan.compression
        if (
            ex.gzip_wanted
            and not no_body
            and compression is not None
            and compression.applies(status, response.content_length, response.forward_block)
        ):
            ex.compressor = GzipStream(compression.level)
            encoding = GZIP_HEADERS
            if ex.http_minor == 1:
                framing = TE_CHUNKED
            else:
                framing = b""  # an HTTP/1.0 client reads the compressed body to EOF
                close = True
        elif no_body:
            framing = (
                b"Content-Length: %d\r\n" % response.content_length
                if response.content_length >= 0 and status != 204
                else b""
            )
        elif response.content_length >= 0:
            framing = b"Content-Length: %d\r\n" % response.content_length
        elif ex.http_minor == 1:
            framing = TE_CHUNKED  # chunked or close-delimited upstream: re-chunk, keep-alive
        else:
            framing = b""  # an HTTP/1.0 client reads to EOF
            close = True
        if close:
            ex.close_after = True
            connection = CONNECTION_CLOSE
        else:
            connection = CONNECTION_KEEP_ALIVE if ex.http_minor == 0 else b""
        ex.chunked_out = framing is TE_CHUNKED
        # Held in _out, not written: the body usually came in the same backend read, and head
        # and body then leave in one writev (one packet, one wake-up for the client).
        self._out += (
            status_line(status),
            response.forward_block,
            plan.common_headers,
            ex.response_headers,
            encoding,
            framing,
            connection,
            CRLF,
        )

    # HOT PATH
    def on_upstream_body(self, ex: Exchange, body: bytes) -> None:
        if self.transport is None:
            return
        if ex.compressor is not None:
            body = ex.compressor.piece(body)
            if not body:
                return
        if ex.chunked_out:
            self._out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self._out.append(body)

    def on_upstream_done(self, ex: Exchange) -> None:
        if ex.state >= DONE or self.transport is None:
            return
        if ex.compressor is not None:
            tail = ex.compressor.end()
            ex.compressor = None
            if tail:
                self.on_upstream_body_raw(ex, tail)
        if ex.chunked_out:
            self._out.append(CHUNK_END)
        self._finish(ex, ex.close_after or self._must_close_after(ex))

    def on_upstream_body_raw(self, ex: Exchange, body: bytes) -> None:
        """Body bytes for the client as they are (already encoded)."""
        if ex.chunked_out:
            self._out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self._out.append(body)

    # HOT PATH
    def flush_output(self) -> None:
        """Write what the backend's last read produced, in one writelines. Called by the
        upstream connection after each read, and before an exchange finishes."""
        out = self._out
        if out:
            self._out = []
            if self.transport is not None:
                self.transport.writelines(out)

    def on_upstream_failed(self, ex: Exchange, reply: ErrorReply) -> None:
        if ex.state >= DONE or self.transport is None:
            return
        report_upstream_failure(ex, reply, self._ctx.plan.health.labels)  # throttled, with context
        if ex.response_started:
            # Half a response was relayed: it cannot be replaced, only cut off (a reset tells
            # the client the response is incomplete).
            self._cut_off(ex)
            return
        ex.reply = reply
        self._send_reply(ex)

    def pause_reading_for_upstream(self) -> None:
        self._pause_reading(PAUSED_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume_reading(PAUSED_UPSTREAM)

    # -- errors, timeouts, flow control ----------------------------------------------------------

    def _on_parser_error(self, error: httptools.HttpParserError) -> None:
        if self._stopped and self._parsing is None:
            return  # bytes after a final request: ignored, never parsed as a request
        self._reject(self._ctx.plan.bad_request(str(error) or "malformed request"))

    def _reject(self, reply: ErrorReply) -> None:
        """Answer the request being parsed with ``reply`` (in turn) and read nothing more."""
        self._stop_reading()
        ex = self._parsing
        self._parsing = None
        self._in_head = False
        self._deadline.clear()
        if ex is None or ex.state in (DONE, ABORTED):
            ex = Exchange(self, time.monotonic())
        ex.reply = reply
        ex.keep_alive = False
        ex.close_after = True
        if not ex.request_id:
            ex.request_id = self._ctx.ids.accept_or_new(None)
        if ex.state == 0:  # HEAD: never queued
            ex.move(QUEUED)
            self._queue.append(ex)
            return
        upstream = ex.upstream
        if upstream is not None:
            # Its head was already forwarded: the backend must never see this request end.
            ex.upstream = None
            upstream.abort()
            if ex.response_started:
                self._cut_off(ex)
                return
            self._send_reply(ex)
        elif ex.state != QUEUED:
            # Active, waiting on an async stage or a connect: those find it aborted and stop.
            ex.move(ABORTED)
            if ex.trace is not None:
                ex.trace.finish(ex)  # its answer is the fresh exchange's: export what it did
            # The same request, answered: counted and logged as it, not as (unrouted).
            fresh = Exchange(self, ex.started_s)
            fresh.reply = reply
            fresh.request_id = ex.request_id
            fresh.route = ex.route
            fresh.method = ex.method
            fresh.path = ex.path
            fresh.client = ex.client
            fresh.customer = ex.customer
            fresh.body_bytes = ex.body_bytes
            fresh.keep_alive = False
            fresh.move(QUEUED)
            self._active = None
            self._queue.appendleft(fresh)
        # QUEUED: it is answered with ``reply`` when its turn comes, never forwarded.

    def _on_deadline(self, kind: int) -> None:
        transport = self.transport
        if transport is None:
            return
        if kind == WAIT_IDLE or (kind == WAIT_HEAD and self._parsing is None and not self._in_head):
            self._stopped = True
            self._close(transport)  # an idle keep-alive or never-used connection: quietly
        elif kind == WAIT_LINGER:
            self._close(transport)
        elif kind == WAIT_WRITE:
            self._stopped = True
            transport.abort()  # the client stopped reading
        else:
            ex = self._parsing
            if ex is not None and ex.response_started:
                self._cut_off(ex)
            else:
                self._reject(self._ctx.plan.replies.request_timeout)
                if self._active is None:
                    self._pump()

    def _cut_off(self, ex: Exchange) -> None:
        if ex.state >= DONE:
            return  # it ended (and was counted) already: a late deadline has nothing to cut
        self._out = []  # half a response: what is still held would only lengthen it
        ex.move(ABORTED)
        self._active = None
        self._stopped = True
        self._ctx.on_exchange_done(ex)
        if self.transport is not None:
            self.transport.abort()

    def _stop_reading(self) -> None:
        self._stopped = True
        self._pause_reading(PAUSED_STOPPED)

    def _pause_reading(self, reason: int) -> None:
        if not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self._read_paused & reason:
            return
        self._read_paused &= ~reason
        if not self._read_paused and self.transport is not None:
            self.transport.resume_reading()

    # -- draining ---------------------------------------------------------------------------------

    def open_requests(self) -> int:
        """Requests being read or answered (``fastgw_requests_inflight``): the one being
        answered, those queued behind it, and a head still arriving."""
        parsing = self._parsing
        head = parsing is not None and parsing.state == HEAD  # else it is queued or active
        return len(self._queue) + (self._active is not None) + head

    def is_idle(self) -> bool:
        return self._active is None and self._parsing is None and not self._queue

    def drain(self) -> None:
        """Answer what was read with ``Connection: close``; read no new request."""
        if self.transport is None:
            return
        if self.is_idle():
            if self._deadline.kind == WAIT_HEAD:
                return  # fresh: its first request is answered with close (or WAIT_HEAD ends it)
            self._stopped = True
            self.transport.close()  # idle keep-alive: nothing to answer
        elif self._parsing is None:
            self._stop_reading()
        # else: a head or body is being read; on_message_complete stops reading after it.
