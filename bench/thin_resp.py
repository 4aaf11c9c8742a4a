"""A prototype thin Redis client: one asyncio Protocol, RESP out, ``hiredis.Reader`` in.

Used only by ``bench/micro_redis.py`` for now, to measure what the rate-limit hot path could
cost with a client that does nothing but the wire work. It owns one connection and:

- encodes each command with ``hiredis.pack_command`` into a list and, on the first command of
  an event-loop iteration, schedules one ``loop.call_soon(self._flush)``; the flush hands the
  whole list to the transport in a single ``write`` (so 16 commands issued in one iteration are
  one ``send()`` syscall, like a redis-py pipeline, without the caller batching them);
- parses replies with ``hiredis.Reader`` and resolves the pending callbacks strictly in order
  (RESP2 replies come back in command order on one connection; that is the invariant the
  ``_pending`` deque relies on);
- gives each callback the reply value, or a ``hiredis.ReplyError`` instance for an error reply
  (``-NOSCRIPT ...``), or a ``ConnectionError`` when the connection was lost: the callback
  decides, no exception crosses ``data_received``.

API: ``await ThinRedis.connect_unix(path)`` / ``connect_tcp(host, port)``; ``client.send(args,
callback)`` (the callback hot path, no coroutine, no future); ``await client.execute(*args)``
(a future per command: raises ``ReplyError``/``ConnectionError``); ``client.close()``.

Not here yet (needed before it can run the gateway's hot path): reconnects, timeouts,
a bound on ``_pending`` / the write buffer, pausing on transport back-pressure, AUTH/SELECT,
Cluster redirects (MOVED/ASK), RESP3.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis

Callback = Callable[[Any], None]
ReplyError = hiredis.ReplyError
_pack_command = hiredis.pack_command


class RespProtocol(asyncio.Protocol):
    """One Redis connection: coalesced writes, in-order replies to callbacks."""

    __slots__ = (
        "_closed_exc",
        "_flush_pending",
        "_loop",
        "_out",
        "_pending",
        "_reader",
        "_transport",
        "closed",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self._pending: deque[Callback] = deque()
        self._out: list[bytes] = []
        self._flush_pending = False
        self._transport: asyncio.Transport | None = None
        self._closed_exc: BaseException | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        # HOT PATH: no await; one feed, then every complete reply to its callback in order.
        reader = self._reader
        pending = self._pending
        reader.feed(data)
        reply = reader.gets()
        while reply is not False:
            pending.popleft()(reply)
            reply = reader.gets()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_exc = exc or ConnectionError("redis connection closed")
        self._transport = None
        self._out.clear()
        pending, self._pending = self._pending, deque()
        for callback in pending:
            callback(ConnectionError(f"redis connection lost: {self._closed_exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- commands ---------------------------------------------------------------------------

    def send(self, args: tuple[Any, ...], callback: Callback) -> None:
        """Queue one command; ``callback(reply)`` runs from ``data_received``, in order."""
        # HOT PATH: no await; at most one call_soon per loop iteration.
        if self._transport is None:
            callback(ConnectionError(f"redis connection closed: {self._closed_exc}"))
            return
        self._out.append(_pack_command(args))
        self._pending.append(callback)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        if self._transport is None or not out:
            return
        if len(out) == 1:
            self._transport.write(out[0])
        else:
            self._transport.write(b"".join(out))
        out.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # cancelled by the caller: the reply is dropped, order is kept
        return
    if isinstance(reply, (ReplyError, ConnectionError)):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class ThinRedis:
    """The client object: a ``RespProtocol`` and the two ways to call it."""

    __slots__ = ("_loop", "protocol", "send")

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: RespProtocol) -> None:
        self._loop = loop
        self.protocol = protocol
        self.send = protocol.send  # bound once (STYLE 1)

    @classmethod
    async def connect_unix(cls, path: str) -> ThinRedis:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_unix_connection(lambda: RespProtocol(loop), path)
        return cls(loop, protocol)

    @classmethod
    async def connect_tcp(cls, host: str, port: int) -> ThinRedis:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: RespProtocol(loop), host, port)
        return cls(loop, protocol)

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        """One command as an awaitable: the reply, or ``ReplyError``/``ConnectionError``."""
        future = self._loop.create_future()
        self.protocol.send(args, lambda reply: _resolve(future, reply))
        return future

    async def aclose(self) -> None:
        self.protocol.close()
        await self.protocol.closed
