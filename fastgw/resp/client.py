"""``RespClient``: the hot-path client of one standalone Redis server.

What it owns
    The public constructor (``from_address``: the config's address, password, database, pool
    size and deadline); everything else is ``node.NodePool``: the callback ``send`` (hot path),
    the awaitable ``execute``, ``start``, ``connected``, ``errors`` and ``aclose``.

Invariants
    * ``send`` never waits: with no connection up it calls back ``RedisUnavailable`` before it
      returns, and the caller applies its failure policy. The pool reconnects in the
      background; recovery needs no restart.
    * Every command gets its callback within ``timeout_s`` plus the loop's scheduling delay.

Why not redis-py here
    redis-py's asyncio client costs 39-70 CPU-µs per ``EVALSHA`` on the project's 2-core VM (a
    coroutine, a Future and a lock round per command); this client costs a few µs (numbers and
    the command that measured them: docs/redis-client.md). redis-py stays for everything off
    the request path (CLI, revocation poller).
"""

from __future__ import annotations

import asyncio

from fastgw.redis_address import parse_address
from fastgw.resp.node import NodePool

__all__ = ["RespClient"]


class RespClient(NodePool):
    """A pool of ``pool_size`` connections to one Redis server (see ``node.NodePool``)."""

    __slots__ = ()

    @classmethod
    def from_address(
        cls,
        address: str,
        *,
        password: str = "",
        db: int = 0,
        pool_size: int = 1,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RespClient:
        """``address`` is ``'host:port'``, ``'[v6]:port'`` or ``'unix:///path'``.

        Nothing connects until ``await start()``; ``loop`` defaults to the running loop then."""
        return cls(
            parse_address(address),
            password=password,
            db=db,
            size=pool_size,
            timeout_s=timeout_s,
            loop=loop,
        )
