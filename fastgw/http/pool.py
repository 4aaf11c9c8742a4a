"""Keep-alive connections to one backend instance, per worker.

Idle connections are reused last-in first-out (the warmest socket, the one least likely to
have been closed by the backend). A new connection is the only place the proxy path creates a
Task: ``loop.create_connection`` is a coroutine. Idle connections older than
``UPSTREAM_IDLE_TIMEOUT_S`` are closed by one periodic sweep per worker, not a timer each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastgw.limits import MAX_IDLE_UPSTREAM_PER_INSTANCE, UPSTREAM_IDLE_TIMEOUT_S

if TYPE_CHECKING:
    from fastgw.http.upstream import UpstreamProtocol

ConnectDone = Callable[["UpstreamProtocol | None", "BaseException | None"], None]


class UpstreamPool:
    __slots__ = (
        "_buffer",
        "_idle",
        "_loop",
        "connect_timeout_s",
        "host",
        "host_header",
        "label",
        "open_connections",
        "port",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        connect_timeout_s: float,
        read_buffer: bytearray,
    ) -> None:
        self._loop = loop
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self.connect_timeout_s = connect_timeout_s
        self._buffer = read_buffer
        self._idle: list[UpstreamProtocol] = []
        self.host_header = b"Host: %s\r\n" % self.label.encode("ascii")
        self.open_connections = 0

    # HOT PATH: a list pop.
    def acquire(self) -> UpstreamProtocol | None:
        idle = self._idle
        while idle:
            upstream = idle.pop()
            if upstream.usable():
                upstream.reused = True
                return upstream
        return None

    def release(self, upstream: UpstreamProtocol) -> None:
        if len(self._idle) >= MAX_IDLE_UPSTREAM_PER_INSTANCE or not upstream.usable():
            upstream.close()
            return
        upstream.idle_since_s = self._loop.time()
        self._idle.append(upstream)

    def forget(self, upstream: UpstreamProtocol) -> None:
        """Called when a connection closes: it must never be handed out again."""
        with contextlib.suppress(ValueError):
            self._idle.remove(upstream)

    def connect(self, done: ConnectDone) -> None:
        task = self._loop.create_task(self._connect())

        def on_done(finished: asyncio.Task[UpstreamProtocol]) -> None:
            if finished.cancelled():
                done(None, asyncio.CancelledError())
                return
            error = finished.exception()
            if error is not None:
                done(None, error)
            else:
                done(finished.result(), None)

        task.add_done_callback(on_done)

    async def _connect(self) -> UpstreamProtocol:
        from fastgw.http.upstream import UpstreamProtocol

        async with asyncio.timeout(self.connect_timeout_s):
            _, protocol = await self._loop.create_connection(
                lambda: UpstreamProtocol(self, self._buffer), self.host, self.port
            )
        return protocol

    def reap_idle(self, now_s: float) -> None:
        """Close idle connections older than the pool's idle timeout (oldest are first)."""
        idle = self._idle
        cutoff = now_s - UPSTREAM_IDLE_TIMEOUT_S
        stale = 0
        while stale < len(idle) and idle[stale].idle_since_s < cutoff:
            stale += 1
        if stale:
            for upstream in idle[:stale]:
                upstream.close()
            del idle[:stale]

    def close_all(self) -> None:
        for upstream in self._idle:
            upstream.close()
        self._idle.clear()

    @property
    def idle_count(self) -> int:
        return len(self._idle)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
