"""The hot-path Redis client: RESP2 over ``hiredis.Reader``, callbacks instead of coroutines.

What it owns
    ``RespClient`` (one standalone server, a pool of connections) and ``RespCluster`` (Redis
    Cluster: slot map, ``-MOVED``/``-ASK``), both satisfying ``HotRedis``, the surface the
    rate limiter is written against; the errors a command can end in (``errors.py``).

Module map
    ``errors.py`` (exceptions, ``Callback``), ``calls.py`` (argument encoding, error counts,
    the callback-to-Future adapter), ``connection.py`` (one connection: coalesced writes,
    in-order replies, one deadline timer, bounds), ``node.py`` (a reconnecting pool for one
    server), ``client.py`` (``RespClient``), ``slots.py`` (CRC16 key slots, ``CLUSTER SLOTS``
    parsing), ``topology.py`` (the slot map and its node pools), ``cluster.py``
    (``RespCluster``: routing, redirects, map refresh).

Invariants (each module's docstring has its own)
    * ``send`` is the hot path: no coroutine, Future or Task per command; its callback is
      called exactly once, with the reply or an exception *instance*.
    * Nothing waits for Redis to come back: without a connection, commands fail at once.
    * Every queue has a bound in ``fastgw.limits`` (``REDIS_*``).

What it does not do (docs/redis-client.md): RESP3, pub/sub, MULTI/EXEC, reads from replicas,
TLS. redis-py stays the client for everything off the request path.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from fastgw.resp.client import RespClient
from fastgw.resp.cluster import RespCluster
from fastgw.resp.errors import (
    Callback,
    RedisOverloaded,
    RedisTimeout,
    RedisUnavailable,
    ReplyError,
)

__all__ = [
    "Callback",
    "HotRedis",
    "RedisOverloaded",
    "RedisTimeout",
    "RedisUnavailable",
    "ReplyError",
    "RespClient",
    "RespCluster",
]


class HotRedis(Protocol):
    """What the rate limiter needs of a Redis client, standalone or Cluster."""

    def send(self, args: tuple[bytes, ...], callback: Callback, key: bytes | None = None) -> None:
        """Send one command; ``callback`` gets the reply or an exception instance, once.
        ``key`` routes it in Cluster mode (ignored standalone)."""

    def execute(self, *args: bytes | str | int) -> Awaitable[object]:
        """One command as an awaitable, raising its error (off the hot path)."""

    async def start(self, *, wait_s: float = ...) -> bool:
        """Connect; True when ready within ``wait_s``; never raises for an outage."""

    async def aclose(self) -> None:
        """Close; pending callbacks get ``RedisUnavailable``; idempotent."""

    @property
    def connected(self) -> bool:
        """Whether ``send`` can reach a server now."""

    @property
    def errors(self) -> int:
        """Commands that ended in an exception so far."""
