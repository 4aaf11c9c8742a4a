"""Active health checks of backend (metald) instances: probing and reporting, nothing more.

What it owns
    ``probe``: one check of one instance -- connect, ``GET <path>``, read the response head,
    passed when the status is 2xx. ``HealthChecker``: one background Task that probes every
    target at once, a round every ``interval_s``, and hands each result to ``on_result``. What
    the results mean (thresholds, marking instances down) and which process runs the checks
    belong to the caller.

Bounds
    Nothing here blocks the event loop or waits without a limit: a probe's connect, write and
    head share one deadline (``timeout_s``, clamped to ``interval_s`` so rounds never overlap),
    at most ``MAX_HEALTH_RESPONSE_BYTES`` are parsed, reading stops at the end of the head (the
    body is never needed), and the socket is always closed before ``probe`` returns.

Why ``Connection: close``
    A check every few seconds is cheap to open fresh, and a fresh connection proves what the
    forward path needs: that the instance still accepts new connections. A kept-alive one could
    stay healthy while the instance's listener is dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final, cast

import httptools

log = logging.getLogger("fastgw.health")

MAX_HEALTH_RESPONSE_BYTES: Final = 16 * 1024
"""Most response bytes parsed before a probe decides; a head not complete by then fails."""

ProbeResult = Callable[[int, bool, float], None]
"""``on_result(instance index, passed, latency_s)``."""


class _ProbeProtocol(asyncio.Protocol):
    """One probe connection: writes the request, parses the head, settles ``decided``."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.decided: asyncio.Future[bool] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._request = request
        self._parser = httptools.HttpResponseParser(self)
        self._budget = MAX_HEALTH_RESPONSE_BYTES
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.decided.done():
            return
        chunk = data[: self._budget]
        self._budget -= len(chunk)
        try:
            self._parser.feed_data(chunk)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._decide(False)  # junk, or a 101; a no-op when the head was already complete
        if self._budget <= 0:
            self._decide(False)  # the head did not end within the budget
        if self.decided.done() and self._transport is not None:
            self._transport.pause_reading()  # decided: read nothing more

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200:  # a 1xx is interim: the real answer follows
            self._decide(200 <= status <= 299)

    def connection_lost(self, exc: Exception | None) -> None:
        self._decide(False)  # EOF, reset: no head (or no complete one)
        if not self.lost.done():
            self.lost.set_result(None)

    def _decide(self, passed: bool) -> None:
        if not self.decided.done():
            self.decided.set_result(passed)


async def probe(
    host: str, port: int, path: str, timeout_s: float, host_header: bytes
) -> tuple[bool, float]:
    """One check of ``host:port``: ``(passed, latency_s)``; passed when the status is 2xx.

    Connect, request and head all within ``timeout_s``. Network and protocol problems (refused,
    reset, timeout, junk, EOF before the head, a head over ``MAX_HEALTH_RESPONSE_BYTES``) are
    ``(False, latency_s)``, never an exception. The socket is closed (aborted on failure)
    before this returns, also when the caller cancels it.
    """
    loop = asyncio.get_running_loop()
    request = (
        b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: fastgw-health\r\n\r\n"
        % (path.encode("ascii"), host_header)
    )
    started = time.perf_counter()
    passed = False
    transport: asyncio.Transport | None = None
    protocol: _ProbeProtocol | None = None
    try:
        try:
            async with asyncio.timeout(timeout_s):
                transport, protocol = await loop.create_connection(
                    lambda: _ProbeProtocol(request, loop), host, port
                )
                passed = await protocol.decided
        except OSError:  # refused, reset, unreachable, TimeoutError from the deadline
            passed = False
        return passed, time.perf_counter() - started
    finally:
        if transport is not None and protocol is not None:
            if passed and not transport.get_write_buffer_size():
                transport.close()
            else:
                transport.abort()
            await protocol.lost  # the socket is released when connection_lost has run


def _host_header(host: str, port: int) -> bytes:
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


class HealthChecker:
    """Probes every target each ``interval_s`` (see the module docstring); ``start``, ``aclose``."""

    def __init__(  # noqa: PLR0917 - the positional interface its callers use
        self,
        loop: asyncio.AbstractEventLoop,
        targets: Sequence[tuple[str, int]],
        path: str,
        interval_s: float,
        timeout_s: float,
        on_result: ProbeResult,
    ) -> None:
        if not interval_s > 0 or not timeout_s > 0:
            raise ValueError("health check interval and timeout must be > 0")
        if not (path.startswith("/") and path.isascii() and path.isprintable() and " " not in path):
            raise ValueError(f"health check path must be printable ASCII from '/': {path!r}")
        self._loop = loop
        self._targets = tuple((host, port, _host_header(host, port)) for host, port in targets)
        self._path = path
        self._interval_s = interval_s
        self._timeout_s = min(timeout_s, interval_s)  # a round ends before the next is due
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._rounds = 0

    @property
    def rounds(self) -> int:
        """Completed rounds."""
        return self._rounds

    def start(self) -> None:
        """A first round at once, then one every ``interval_s`` from the previous one's start."""
        if self._closed or self._task is not None:
            raise RuntimeError("HealthChecker.start: already started or closed")
        self._task = self._loop.create_task(self._run(), name="fastgw-health-checker")
        self._task.add_done_callback(_log_crash)

    async def aclose(self) -> None:
        """Stop: no probe socket is open and ``on_result`` is not called after this returns."""
        self._closed = True
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))  # every caller waits; the task's CancelledError stays in it

    async def _run(self) -> None:
        loop = self._loop
        interval_s = self._interval_s
        due = loop.time()
        while True:
            await asyncio.gather(
                *(self._check(i, *target) for i, target in enumerate(self._targets))
            )
            self._rounds += 1
            due += interval_s
            now = loop.time()
            if due < now:  # late (a busy loop): start at once, skip whole missed slots
                due += (now - due) // interval_s * interval_s
            await asyncio.sleep(max(0.0, due - now))

    async def _check(self, index: int, host: str, port: int, host_header: bytes) -> None:
        try:  # an exception would end gather early and leave the other probes running
            passed, latency_s = await probe(host, port, self._path, self._timeout_s, host_header)
            self._on_result(index, passed, latency_s)
        except Exception:
            log.exception("health check of instance %d (%s:%d) raised", index, host, port)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("health checker stopped by a bug", exc_info=exc)
