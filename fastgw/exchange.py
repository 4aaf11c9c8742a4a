"""One request/response exchange, and the legal moves of its state machine.

Theory. A client connection parses requests in order and answers them in the same order
(HTTP/1.1 pipelining). Each parsed request becomes an ``Exchange`` that moves through:

    HEAD ──headers ok──▶ QUEUED ──its turn──▶ IN_CHAIN ──stage PAUSE──▶ PAUSED ─┐
      │                    │                     │  ▲                              │
      │                    │                     │  └──────────resume()────────────┘
      │                    │                     ├──RESPOND────────────────────▶ DONE
      │                    │                     └──forward────▶ PROXYING ─────▶ DONE
      └──bad framing──▶ QUEUED (with a reply: answered in turn, never forwarded)

and ABORTED from any state when the client goes away. Rule: this file owns the moves; the I/O
shell (``http/downstream.py``, ``http/upstream.py``) asks for them through ``move()``, which in
debug builds (``FASTGW_DEBUG=1``) asserts every move against ``NEXT_STATE``.

An Exchange is created per request and carries only values: no sockets, no config objects.
Stages read and write its fields; the connection that owns it does the writing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastgw._speedups import RequestHead
    from fastgw.auth.context import CustomerContext
    from fastgw.http.compress import GzipStream
    from fastgw.http.downstream import DownstreamProtocol
    from fastgw.http.upstream import UpstreamProtocol
    from fastgw.obs.tracing import TraceRecord
    from fastgw.plan import RoutePlan
    from fastgw.replies import ErrorReply

HEAD: Final = 0
QUEUED: Final = 1
IN_CHAIN: Final = 2
PAUSED: Final = 3
PROXYING: Final = 4
DONE: Final = 5
ABORTED: Final = 6

STATE_NAMES: Final = ("HEAD", "QUEUED", "IN_CHAIN", "PAUSED", "PROXYING", "DONE", "ABORTED")

NEXT_STATE: Final[frozenset[tuple[int, int]]] = frozenset(
    {
        (HEAD, QUEUED),
        (QUEUED, IN_CHAIN),
        (QUEUED, DONE),  # a framing error answered in turn
        (IN_CHAIN, PAUSED),
        (IN_CHAIN, PROXYING),
        (IN_CHAIN, DONE),
        (PAUSED, IN_CHAIN),
        (PAUSED, PROXYING),
        (PAUSED, DONE),
        (PROXYING, PROXYING),  # a retry on another instance
        (PROXYING, DONE),
    }
    | {(state, ABORTED) for state in range(ABORTED)}
)

DEBUG: Final = os.environ.get("FASTGW_DEBUG", "") not in ("", "0")


class Exchange:
    __slots__ = (
        "attempt",
        "body_bytes",
        "body_done",
        "body_pending",
        "body_pending_bytes",
        "body_sent",
        "body_sent_bytes",
        "candidates",
        "chunked_out",
        "client",
        "close_after",
        "compressor",
        "conn",
        "continue_sent",
        "customer",
        "end_hook",
        "forwarded_for",
        "gzip_wanted",
        "head",
        "http_minor",
        "keep_alive",
        "local_body",
        "local_status",
        "method",
        "on_body_done",
        "path",
        "query",
        "replay",
        "reply",
        "request_id",
        "response_headers",
        "response_started",
        "retries",
        "route",
        "sent_s",
        "started_s",
        "state",
        "status",
        "step",
        "target",
        "trace",
        "trace_headers",
        "upstream",
    )

    def __init__(self, conn: DownstreamProtocol, started_s: float) -> None:
        self.conn = conn
        self.started_s = started_s
        self.state = HEAD
        self.method = b""
        self.target = b""
        self.path = b""
        self.query = b""
        self.http_minor = 1
        self.keep_alive = True
        self.head: RequestHead | None = None
        self.request_id = b""
        # Who the client is (the peer, or the X-Forwarded-For hop a trusted proxy names), and
        # the X-Forwarded-For value for the backend when it differs from the peer alone.
        self.client = b""
        self.forwarded_for = b""
        self.route: RoutePlan | None = None
        self.step = 0
        # Set by the auth stage: who calls (None on a route without auth).
        self.customer: CustomerContext | None = None
        # Request body bookkeeping.
        self.body_pending: list[bytes] = []
        self.body_pending_bytes = 0
        self.body_bytes = 0
        self.body_done = False
        self.continue_sent = False
        # Called once by the connection when the body is complete, for a stage that PAUSEd to
        # read the whole body first (request validation); meanwhile reading is never paused
        # for the body buffer (max_body_size still bounds it).
        self.on_body_done: Callable[[Exchange], None] | None = None
        # Upstream.
        self.upstream: UpstreamProtocol | None = None
        self.candidates: tuple[int, ...] = ()
        self.attempt = 0  # position in candidates of the instance tried now
        self.retries = 0  # tries after the first
        self.sent_s = 0.0  # monotonic time the current try was sent (upstream latency)
        # May this request be sent again after its bytes reached a backend? Then the body
        # pieces sent are kept (up to MAX_REPLAY_BODY_BYTES) to send them again.
        self.replay = False
        self.body_sent: list[bytes] | None = None
        self.body_sent_bytes = 0
        # Called once when the exchange ends (DONE or ABORTED): a stage that holds something
        # for the exchange's lifetime (a concurrency slot) gives it back here.
        self.end_hook: Callable[[], None] | None = None
        # Response.
        self.reply: ErrorReply | None = None
        # Header lines a stage adds to the response, proxied or gateway-made (RateLimit-*).
        self.response_headers = b""
        self.local_status = 0
        self.local_body = b""
        self.status = 0
        self.response_started = False
        self.chunked_out = False
        # Response compression (gateway.server.compression): the client accepts gzip, and the
        # response's compressor once its head said it applies.
        self.gzip_wanted = False
        self.compressor: GzipStream | None = None
        self.close_after = False
        # Tracing (fastgw/obs/tracing.py): the trace header line(s) its backend gets, and the
        # record of a sampled request (None: not sampled, nothing is timed).
        self.trace_headers = b""
        self.trace: TraceRecord | None = None

    def move(self, new_state: int) -> None:
        if DEBUG and (self.state, new_state) not in NEXT_STATE:
            raise AssertionError(
                f"illegal exchange move {STATE_NAMES[self.state]} -> {STATE_NAMES[new_state]}"
            )
        self.state = new_state
        if new_state >= DONE and self.end_hook is not None:
            hook, self.end_hook = self.end_hook, None
            hook()

    def respond_local(self, status: int, body: bytes) -> None:
        """A stage answers with a JSON body of its own (health endpoints)."""
        self.local_status = status
        self.local_body = body

    def resume(self) -> None:
        """Continue the chain after a PAUSE. A stage that returned PAUSE calls this exactly
        once; resuming twice would run later stages twice, so the state is checked."""
        if self.state != PAUSED:
            if self.state == ABORTED:
                return  # the client left while we waited: nothing to continue
            raise AssertionError(f"resume() in state {STATE_NAMES[self.state]}")
        if self.trace is not None:
            self.trace.on_resume(self)  # a timed stage that PAUSEd ends here
        self.conn.run_exchange(self)
