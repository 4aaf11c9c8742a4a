"""A pool of connections to one Redis server, kept open in the background.

What it owns
    ``open_connection`` (connect, then AUTH / SELECT / PING before the connection is used, all
    under ``REDIS_CONNECT_TIMEOUT_S``) and ``NodePool``: ``size`` slots, each a task that opens
    a connection, waits for its end and opens the next one after an exponential, jittered
    back-off. ``RespClient`` is a ``NodePool`` with a public constructor; a Cluster's
    ``topology.ClusterMap`` holds one per master.

Invariants
    * ``_up`` holds exactly the connections that finished their handshake and have not been
      lost: a connection leaves it synchronously (``on_lost``) when it fails its pending
      commands, so no command is ever given to a dead connection, and ``send`` with ``_up``
      empty fails at once with ``RedisUnavailable``: nothing waits for a reconnect.
    * Round-robin over ``_up``, one command at a time. Replies stay in order per connection,
      which is all a command's callback relies on. ``_only`` is ``_up[0].send`` exactly when
      one connection is up (the common ``pool_size=1`` case skips the round-robin), kept in
      step with ``_up`` wherever it changes.
    * Outages are logged on the transition (unreachable, connected again, last connection
      lost), not per attempt or per command.
    * ``aclose()`` stops the slot tasks, fails every pending command with ``RedisUnavailable``,
      waits (bounded) for the transports to close; later sends fail fast. It is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Final

from fastgw.limits import (
    REDIS_CLOSE_TIMEOUT_S,
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_RECONNECT_BACKOFF_MAX_S,
    REDIS_RECONNECT_BACKOFF_MIN_S,
)
from fastgw.redis_address import RedisAddress
from fastgw.resp.calls import Args, Counters, future_callback
from fastgw.resp.connection import RespConnection
from fastgw.resp.errors import Callback, RedisUnavailable, ReplyError

__all__ = ["NodePool", "jittered", "open_connection"]

log = logging.getLogger("fastgw.resp")

PING: Final = (b"PING",)


def jittered(delay_s: float) -> float:
    """A pause drawn in ``[delay_s / 2, delay_s]``, so that workers do not retry in step."""
    return delay_s * (0.5 + random.random() / 2)  # jitter, not cryptography


async def open_connection(
    address: RedisAddress,
    *,
    password: str,
    db: int,
    timeout_s: float,
    counters: Counters,
    loop: asyncio.AbstractEventLoop,
) -> RespConnection:
    """A connection that answered its handshake; raises ``OSError``, ``TimeoutError`` or
    ``ReplyError`` (a wrong password, a bad database) otherwise, leaving nothing open."""
    name = str(address)

    def factory() -> RespConnection:
        return RespConnection(loop, name=name, timeout_s=timeout_s, counters=counters)

    async with asyncio.timeout(REDIS_CONNECT_TIMEOUT_S):
        if address.unix_path is not None:
            _, connection = await loop.create_unix_connection(factory, address.unix_path)
        else:
            host, port = address.host or "localhost", address.port or 6379
            _, connection = await loop.create_connection(factory, host, port)
        commands: list[Args] = []
        if password:
            commands.append((b"AUTH", password))
        if db:
            commands.append((b"SELECT", db))
        commands.append(PING)  # also proves a server answers (not just a kernel backlog)
        futures: list[asyncio.Future[object]] = [loop.create_future() for _ in commands]
        try:
            deadline = loop.time() + REDIS_CONNECT_TIMEOUT_S
            for command, future in zip(commands, futures, strict=True):
                connection.send_until(command, future_callback(future), deadline)
            for future in futures:
                await future
        except BaseException:
            connection.abort(f"redis {name}: handshake failed")
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: the first one is the one raised
            raise
    return connection


class NodePool:
    """``size`` connections to one server; see the module docstring."""

    __slots__ = (
        "_changed",
        "_closed",
        "_counters",
        "_db",
        "_loop",
        "_only",
        "_open",
        "_password",
        "_reachable",
        "_size",
        "_tasks",
        "_timeout_s",
        "_turn",
        "_up",
        "address",
    )

    def __init__(
        self,
        address: RedisAddress,
        *,
        password: str = "",
        db: int = 0,
        size: int = 1,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.address = address
        self._password = password
        self._db = db
        self._size = size
        self._timeout_s = timeout_s
        self._loop = loop
        self._counters = Counters()
        self._up: list[RespConnection] = []
        self._only: Callable[[Args, Callback], None] | None = None  # _up[0].send when alone
        self._open: set[RespConnection] = set()  # handshake done, transport not closed yet
        self._turn = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: asyncio.Event | None = None
        self._closed = False
        self._reachable: bool | None = None  # for logging transitions only

    # -- the hot path -----------------------------------------------------------------------

    def send(self, args: Args, callback: Callback, key: bytes | None = None) -> None:
        """Send ``args`` on the next connection up; ``callback`` gets the reply or the error.

        ``key`` is ignored (the Cluster client's routing hint; same signature)."""
        # HOT PATH: no await, no Future; round-robin only when the pool has several up.
        only = self._only
        if only is not None:
            only(args, callback)
            return
        up = self._up
        count = len(up)
        if count:
            turn = self._turn + 1
            if turn >= count:
                turn = 0
            self._turn = turn
            up[turn].send(args, callback)
        else:
            self._refuse(callback)

    def send_until(self, args: Args, callback: Callback, deadline: float) -> None:
        """``send`` with the caller's deadline (Cluster: a redirect keeps its first one)."""
        connection = self._pick()
        if connection is None:
            self._refuse(callback)
        else:
            connection.send_until(args, callback, deadline)

    def send_asking(self, args: Args, callback: Callback, deadline: float) -> None:
        """``ASKING`` + ``args`` on one connection (Cluster ``-ASK``)."""
        connection = self._pick()
        if connection is None:
            self._refuse(callback)
        else:
            connection.send_asking(args, callback, deadline)

    def _refuse(self, callback: Callback) -> None:
        """No connection is up: the command fails at once (the caller's policy decides)."""
        self._counters.errors += 1
        callback(RedisUnavailable(f"redis {self.address}: not connected"))

    def _pick(self) -> RespConnection | None:
        up = self._up
        if not up:
            return None
        self._turn = turn = (self._turn + 1) % len(up)
        return up[turn]

    def execute(self, *args: bytes | str | int, key: bytes | None = None) -> asyncio.Future[object]:
        """One command as an awaitable (startup, SCRIPT LOAD, tests): the reply, or the error
        (``ReplyError``, ``RedisUnavailable``, ``RedisTimeout``) raised."""
        future: asyncio.Future[object] = (self._loop or asyncio.get_running_loop()).create_future()
        self.send(args, future_callback(future))
        return future

    def request(self, args: Args, timeout_s: float) -> asyncio.Future[object]:
        """``execute`` with a deadline of the caller's (background jobs: slot-map refresh)."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self.send_until(args, future_callback(future), loop.time() + timeout_s)
        return future

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """At least one connection is up (``send`` would not fail fast)."""
        return bool(self._up)

    @property
    def errors(self) -> int:
        """Commands that ended in an exception (error reply, timeout, refused, unavailable)."""
        return self._counters.errors

    @property
    def in_flight(self) -> int:
        """Pending entries over every open connection (timed-out ones awaiting a reply too)."""
        return sum(connection.in_flight for connection in self._open)

    # -- lifecycle --------------------------------------------------------------------------

    def start_background(self) -> None:
        """Start the slot tasks (once): connections come up in the background."""
        if self._tasks or self._closed:
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._tasks = [
            loop.create_task(self._keep_connected(), name=f"redis {self.address} #{index}")
            for index in range(self._size)
        ]

    async def start(self, *, wait_s: float = REDIS_CONNECT_TIMEOUT_S) -> bool:
        """Connect every slot; True if at least one connection is up within ``wait_s``.

        Never raises for an unreachable server (it is logged); the slots keep reconnecting."""
        self.start_background()
        changed = self._changed
        if changed is None or self._closed:  # closed: it never connects again
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                while len(self._up) < self._size:
                    changed.clear()
                    await changed.wait()
        return bool(self._up)

    async def aclose(self) -> None:
        """Close everything; pending callbacks get ``RedisUnavailable``. Idempotent."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        self._up.clear()
        self._only = None
        connections = list(self._open)
        for connection in connections:
            connection.abort(f"redis {self.address}: client closed")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=REDIS_CLOSE_TIMEOUT_S)

    async def _keep_connected(self) -> None:
        loop = self._loop
        assert loop is not None
        delay = REDIS_RECONNECT_BACKOFF_MIN_S
        while not self._closed:
            try:
                connection = await open_connection(
                    self.address,
                    password=self._password,
                    db=self._db,
                    timeout_s=self._timeout_s,
                    counters=self._counters,
                    loop=loop,
                )
            except Exception as exc:  # OSError, TimeoutError, ReplyError: logged, retried
                self._on_connect_failed(exc)
                await asyncio.sleep(jittered(delay))
                delay = min(2 * delay, REDIS_RECONNECT_BACKOFF_MAX_S)
                continue
            up_since = loop.time()
            self._on_connected(connection)
            await asyncio.shield(connection.closed)  # aclose cancels us, not the future
            self._open.discard(connection)
            if loop.time() - up_since >= REDIS_RECONNECT_BACKOFF_MAX_S:
                delay = REDIS_RECONNECT_BACKOFF_MIN_S  # it was stable: start the back-off over
            await asyncio.sleep(jittered(delay))
            delay = min(2 * delay, REDIS_RECONNECT_BACKOFF_MAX_S)

    def _on_connected(self, connection: RespConnection) -> None:
        connection.set_on_lost(self._on_lost)
        self._open.add(connection)
        self._up.append(connection)
        self._only = self._up[0].send if len(self._up) == 1 else None
        if self._reachable is False:
            log.info("redis %s: connected again", self.address)
        self._reachable = True
        if self._changed is not None:
            self._changed.set()

    def _on_lost(self, connection: RespConnection) -> None:
        with contextlib.suppress(ValueError):
            self._up.remove(connection)
        self._only = self._up[0].send if len(self._up) == 1 else None
        if not self._up and not self._closed and self._reachable:
            log.warning(
                "redis %s: connection lost, none up; failing fast and reconnecting",
                self.address,
            )

    def _on_connect_failed(self, exc: Exception) -> None:
        if self._reachable is False:
            return
        self._reachable = False
        if isinstance(exc, ReplyError):
            log.error("redis %s: handshake refused (%s); retrying", self.address, exc)
        else:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            log.warning(
                "redis %s: cannot connect (%s); failing fast, retrying in the background",
                self.address,
                reason,
            )
