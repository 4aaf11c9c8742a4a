"""One worker's gateway: its plan, its listener, its connections, and how it drains.

``GatewayServer`` is what a worker process runs (and what in-process tests start): build the
plan for this process, serve on a listening socket, and on ``drain()`` stop accepting, let
in-flight requests finish with ``Connection: close`` within a deadline, then cut the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar, cast

from fastgw.admin import Action, AdminServer, Handler
from fastgw.http.downstream import DownstreamProtocol
from fastgw.limits import HEALTH_CHECK_TIMEOUT_S, HEALTH_REFRESH_INTERVAL_S
from fastgw.listen import admin_address, bind_listener
from fastgw.obs.logging_access import AccessLog
from fastgw.obs.metrics import Layout
from fastgw.obs.metrics_board import BoardReader, MetricsBoard, create_metrics_fd
from fastgw.obs.metrics_export import MetricsExport
from fastgw.plan import Plan, make_pools
from fastgw.routing.admin_view import UpstreamsReport
from fastgw.routing.health import ActiveChecks
from fastgw.routing.health_table import HealthTable, create_health_fd
from fastgw.security.ban_sync import BanSync
from fastgw.security.bans import BanBoard, BansReport, create_ban_fd
from fastgw.tls import listen_options
from fastgw.worker_context import WorkerContext

if TYPE_CHECKING:
    from fastgw.config import Config

log = logging.getLogger("fastgw.server")

REAP_INTERVAL_S: Final = 5.0
T = TypeVar("T")


class GatewayServer:
    """``health_fd``: the generation's shared health table (-1: make one for this process);
    ``slot``: this worker's place in it (slot 0 runs the active health checks);
    ``admin_sock``: a listening socket for the metrics port (None: bind the configured one
    when metrics are enabled); ``metrics_fd``: the generation's metrics board (-1: make one
    when metrics are on); ``metrics_chain``: older generations' boards not yet carried over
    (a reload's draining predecessors: a scrape adds their numbers)."""

    def __init__(
        self,
        config: Config,
        workers: int = 1,
        limits_fd: int = -1,
        *,
        health_fd: int = -1,
        bans_fd: int = -1,
        slot: int = 0,
        admin_sock: socket.socket | None = None,
        metrics_fd: int = -1,
        metrics_chain: tuple[int, ...] = (),
    ) -> None:
        self._config = config
        self._workers = workers
        self._limits_fd = limits_fd  # the master's shared limit table; -1: make one
        self._health_fd = health_fd
        self._bans_fd = bans_fd
        self._board: BanBoard | None = None
        self._slot = slot
        self._admin_sock = admin_sock
        self._server: asyncio.Server | None = None
        self._ctx: WorkerContext | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._refresher: asyncio.TimerHandle | None = None
        self._refresh_failed = False
        self._table: HealthTable | None = None
        self._checks: ActiveChecks | None = None
        self._admin: AdminServer | None = None
        self._metrics_fd = metrics_fd
        self._metrics_chain = metrics_chain
        self._export: MetricsExport | None = None
        self._ban_sync: BanSync | None = None
        self._access_log: AccessLog | None = None

    @property
    def admin_port(self) -> int:
        assert self._admin is not None, "metrics port not served"
        return self._admin.port

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
        if self._config.gateway.server.tls.enabled:
            ctx.tls_handshakes = {}
        pools = make_pools(self._config, loop, ctx.read_buffer)
        self._table = table = self._open_health_table()
        self._board = board = self._open_ban_board()
        ctx.plan = Plan(
            self._config,
            pools,
            self._workers,
            self._limits_fd,
            health_table=table,
            slot=self._slot,
            ban_board=board,
        )
        self._ctx = ctx
        server = self._config.gateway.server
        try:
            self._export = self._open_metrics(ctx, table)
            await ctx.plan.auth.start()
            await ctx.plan.limits.start()
            ctx.plan.probes.start(loop)
            ctx.plan.tracing.start("https" if server.tls.enabled else "http")  # its thread
            self._start_access_log(ctx)
            await self._start_admin(loop, table)
            if self._slot == 0:
                self._start_checks(loop, table)
                self._start_ban_sync(board)
            if sock is None:
                self._server = await loop.create_server(
                    lambda: DownstreamProtocol(ctx),
                    server.host,
                    server.port,
                    backlog=2048,
                    **listen_options(server),
                )
            else:
                self._server = await loop.create_server(
                    lambda: DownstreamProtocol(ctx), sock=sock, **listen_options(server)
                )
        except BaseException:
            await ctx.plan.auth.aclose()  # no background task outlives a failed start
            await ctx.plan.limits.aclose()
            self._stop_probes_and_access_log(ctx)
            await ctx.plan.tracing.aclose()
            await self._stop_health()
            if self._admin_sock is not None:
                self._admin_sock.close()  # closing twice is harmless
            table.close()
            self._table = None
            if board is not None:
                board.close()
                self._board = None
            self._close_metrics(final=False)
            raise
        self._schedule_reap()
        self._refresher = loop.call_later(HEALTH_REFRESH_INTERVAL_S, self._refresh)

    def _open_ban_board(self) -> BanBoard | None:
        if not self._config.gateway.security.auto_ban.enabled:
            return None
        return _mapped(self._bans_fd, lambda: create_ban_fd(1), BanBoard)

    def _open_metrics(self, ctx: WorkerContext, table: HealthTable) -> MetricsExport | None:
        if ctx.plan.metrics is None:
            return None
        layout = cast(Layout, ctx.plan.metrics.layout)
        board = _mapped(self._metrics_fd, lambda: create_metrics_fd(layout, 1), MetricsBoard)
        older: list[MetricsBoard] = []
        try:
            older.extend(MetricsBoard(fd) for fd in self._metrics_chain)
            return MetricsExport(ctx, BoardReader(board, older), self._slot, table)
        except BaseException:
            for each in (board, *older):
                each.close()
            raise

    def _close_metrics(self, *, final: bool) -> None:
        """Publish the last numbers (``final``: after a start that served), unmap the boards."""
        export, self._export = self._export, None
        if export is None:
            return
        if final:
            export.publish(time.monotonic_ns() // 1000, final=True)
        export.close()

    def _start_access_log(self, ctx: WorkerContext) -> None:
        access = AccessLog.from_config(self._config, ctx.plan.health.labels, self._slot)
        if access is not None:
            access.start()  # its writer thread: in the worker, after fork
        ctx.access_log = self._access_log = access

    def _stop_probes_and_access_log(self, ctx: WorkerContext) -> None:
        ctx.plan.probes.close()
        access, self._access_log = self._access_log, None
        ctx.access_log = None
        if access is not None:
            access.close()  # writes the last lines, joins the writer thread (bounded)

    def _open_health_table(self) -> HealthTable:
        instances = len(self._config.routing.metald_instances)
        return _mapped(self._health_fd, lambda: create_health_fd(instances, 1), HealthTable)

    async def _start_admin(self, loop: asyncio.AbstractEventLoop, table: HealthTable) -> None:
        address = admin_address(self._config)
        if address is None:
            return
        sock = self._admin_sock if self._admin_sock is not None else bind_listener(*address)
        handlers: dict[bytes, Handler] = {b"/admin/upstreams": UpstreamsReport(self._config, table)}
        actions: dict[bytes, Action] = {}
        if self._export is not None:
            path = self._config.gateway.observability.metrics.path.encode("utf-8")
            handlers[path] = self._export
        bans = self.context.plan.bans
        if bans is not None:
            report = BansReport(bans)
            handlers[b"/admin/bans"] = report
            actions[b"/admin/bans/lift"] = report.lift
        admin = AdminServer(loop, handlers, actions=actions)
        await admin.start(sock)
        self._admin = admin

    def _start_checks(self, loop: asyncio.AbstractEventLoop, table: HealthTable) -> None:
        routing = self._config.routing
        self._checks = ActiveChecks(
            loop,
            table,
            [(i.host, i.port) for i in routing.metald_instances],
            path=routing.health_check_path,
            interval_s=routing.health_check_interval_s,
            timeout_s=min(HEALTH_CHECK_TIMEOUT_S, routing.health_check_interval_s),
            unhealthy_threshold=routing.unhealthy_threshold,
            recovery_threshold=routing.recovery_threshold,
        )
        self._checks.start()

    def _start_ban_sync(self, board: BanBoard | None) -> None:
        """Bans shared between gateway instances: one syncer per instance, in slot 0."""
        limiting = self._config.gateway.rate_limiting
        if board is not None and limiting.backend == "redis":
            self._ban_sync = BanSync(board, limiting.redis)
            self._ban_sync.start()

    def _refresh(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        try:
            now_s = time.monotonic()
            ctx.plan.health.refresh(now_s)
            if ctx.plan.bans is not None:
                ctx.plan.bans.refresh(int(now_s * 1_000_000))
            ctx.plan.backends.budget.rotate(now_s)
            if self._export is not None:
                self._export.publish(int(now_s * 1_000_000))
        except Exception:  # a bug here must not stop the refreshes for good: log, go on
            if not self._refresh_failed:
                log.exception("health refresh failed (logged once; refreshes go on)")
            self._refresh_failed = True
        finally:
            self._refresher = ctx.loop.call_later(HEALTH_REFRESH_INTERVAL_S, self._refresh)

    async def _stop_health(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self._checks is not None:
            await self._checks.aclose()
            self._checks = None
        if self._ban_sync is not None:
            await self._ban_sync.aclose()
            self._ban_sync = None
        await self._stop_admin()

    async def _stop_admin(self) -> None:
        if self._admin is not None:
            await self._admin.aclose()
            self._admin = None

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
        await self._stop_admin()  # the generation that replaces us answers the admin port
        await asyncio.sleep(0)  # connections accepted before the close: connection_made admits
        await self._await_handshakes(ctx)
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

    async def _await_handshakes(self, ctx: WorkerContext) -> None:
        """TLS connections accepted before the listener closed are still handshaking (their
        connection_made comes after it): wait for them, up to the handshake timeout, so that
        they are served instead of reset when the worker exits."""
        handshakes = ctx.tls_handshakes
        limit_s = self._config.gateway.server.timeouts.header_s
        while handshakes:
            oldest_allowed = ctx.loop.time() - limit_s
            for conn, began in list(handshakes.items()):
                if began < oldest_allowed:  # failed without telling us: forget it
                    del handshakes[conn]
            if handshakes:
                await asyncio.sleep(0.005)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        await self._stop_health()
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
            self._stop_probes_and_access_log(ctx)  # after the last exchange has ended
            await ctx.plan.tracing.aclose()  # flushes the last spans (TRACE_FLUSH_TIMEOUT_S)
        self._close_metrics(final=True)
        if self._table is not None:
            self._table.close()
            self._table = None
        if self._board is not None:
            self._board.close()
            self._board = None


def _mapped(fd: int, make: Callable[[], int], open_file: Callable[[int], T]) -> T:
    """``open_file(fd)``: this process's mapping of a file the master shares with its workers;
    a gateway run in one process (``fd`` -1: tests, a one-worker demo) makes its own with
    ``make`` (the mapping keeps the memory once that fd is closed)."""
    if fd >= 0:
        return open_file(fd)
    own = make()
    try:
        return open_file(own)
    finally:
        os.close(own)
