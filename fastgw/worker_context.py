"""Everything one worker's connections share: the plan, the read buffer, ids, the clock
header, the set of open connections, and the drain switch. One per worker process (per
generation), created after fork."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastgw.ids import RequestIds
from fastgw.limits import READ_BUFFER_BYTES
from fastgw.replies import DateHeader

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastgw.exchange import Exchange
    from fastgw.http.downstream import DownstreamProtocol
    from fastgw.plan import Plan


class WorkerContext:
    __slots__ = (
        "access_log",
        "connections",
        "date",
        "draining",
        "emptied",
        "ids",
        "loop",
        "plan",
        "read_buffer",
        "refused_connections",
        "requests_done",
        "tls_handshakes",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.read_buffer = bytearray(READ_BUFFER_BYTES)
        self.ids = RequestIds()
        self.date = DateHeader()
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        self.emptied: asyncio.Future[None] | None = None  # set while draining waits
        self.requests_done = 0
        self.refused_connections = 0  # at max_connections (fastgw_shed_total{reason=...})
        # With TLS: connections whose handshake is in flight (made, not yet connection_made),
        # with when they began; a drain waits for them (see GatewayServer.drain). None: no TLS.
        self.tls_handshakes: dict[DownstreamProtocol, float] | None = None
        self.plan: Plan  # set by the server once built (the plan needs this context's buffer)
        # The access log (gateway.observability.logging.access_log), set by the server; None: off.
        self.access_log: Callable[[Exchange], None] | None = None

    def admit(self, conn: DownstreamProtocol) -> bool:
        # Not refused while draining: a connection accepted before the listener closed (a TLS
        # one finishes its handshake later) is served, its answer saying Connection: close.
        if len(self.connections) >= self.plan.settings.max_connections:
            self.refused_connections += 1
            return False
        self.connections.add(conn)
        return True

    def release(self, conn: DownstreamProtocol) -> None:
        self.connections.discard(conn)
        emptied = self.emptied
        if emptied is not None and not self.connections and not emptied.done():
            emptied.set_result(None)

    # HOT PATH: called once per request received (its head whole) when it ends: DONE, or
    # ABORTED (cut off midway, or the client left: ex.status 0 when no answer had begun).
    def on_exchange_done(self, ex: Exchange) -> None:
        self.requests_done += 1
        metrics = self.plan.metrics
        if metrics is not None:
            route = ex.route
            metrics.on_request_done(
                None if route is None else route.endpoint, ex.status, ex.started_s
            )
        if self.access_log is not None:
            self.access_log(ex)
        if ex.trace is not None:  # sampled (fastgw/obs/tracing.py): its spans are exported
            ex.trace.finish(ex)
