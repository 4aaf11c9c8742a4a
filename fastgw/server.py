"""One worker's gateway: its plan, its listener, its connections, and how it drains.

``GatewayServer`` is what a worker process runs (and what in-process tests start): build the
plan for this process, serve on a listening socket, and on ``drain()`` stop accepting, let
in-flight requests finish with ``Connection: close`` within a deadline, then cut the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Final

from fastgw.http.downstream import DownstreamProtocol
from fastgw.plan import Plan, make_pools
from fastgw.worker_context import WorkerContext

if TYPE_CHECKING:
    from fastgw.config import Config

REAP_INTERVAL_S: Final = 5.0


class GatewayServer:
    def __init__(self, config: Config, workers: int = 1, limits_fd: int = -1) -> None:
        self._config = config
        self._workers = workers
        self._limits_fd = limits_fd  # the master's shared limit table; -1: make one
        self._server: asyncio.Server | None = None
        self._ctx: WorkerContext | None = None
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def context(self) -> WorkerContext:
        assert self._ctx is not None, "server not started"
        return self._ctx

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        """Build the plan and serve on ``sock`` (or on the configured host and port)."""
        loop = asyncio.get_running_loop()
        ctx = WorkerContext(loop)
        pools = make_pools(self._config, loop, ctx.read_buffer)
        ctx.plan = Plan(self._config, pools, self._workers, self._limits_fd)
        self._ctx = ctx
        server = self._config.gateway.server
        try:
            await ctx.plan.auth.start()
            await ctx.plan.limits.start()
            if sock is None:
                self._server = await loop.create_server(
                    lambda: DownstreamProtocol(ctx), server.host, server.port, backlog=2048
                )
            else:
                self._server = await loop.create_server(
                    lambda: DownstreamProtocol(ctx), sock=sock
                )
        except BaseException:
            await ctx.plan.auth.aclose()  # no background task outlives a failed start
            await ctx.plan.limits.aclose()
            raise
        self._schedule_reap()

    def _schedule_reap(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        self._reaper = ctx.loop.call_later(REAP_INTERVAL_S, self._reap)

    def _reap(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        now = ctx.loop.time()
        for pool in ctx.plan.pools:
            pool.reap_idle(now)
        self._schedule_reap()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting; finish in-flight requests within ``timeout_s``; close everything.
        Returns True when every connection ended by itself before the deadline."""
        ctx = self.context
        if self._server is not None:
            self._server.close()  # with tcp_migrate_req=1 its accept queue moves to a sibling
        await asyncio.sleep(0)  # connections accepted before the close: connection_made admits
        ctx.draining = True
        for conn in list(ctx.connections):
            conn.drain()
        if ctx.connections:
            ctx.emptied = ctx.loop.create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ctx.emptied), timeout_s)
        clean = not ctx.connections
        for conn in list(ctx.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await self.close()
        return clean

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        ctx = self._ctx
        if ctx is not None:
            await ctx.plan.auth.aclose()
            for conn in list(ctx.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            for pool in ctx.plan.pools:
                pool.close_all()
            # One loop turn first: an aborted transport reports connection_lost on the next
            # one, and only then are its exchanges ABORTED; a Redis callback failed by aclose
            # before that would resume them and forward into the pools just closed.
            await asyncio.sleep(0)
            await ctx.plan.limits.aclose()
