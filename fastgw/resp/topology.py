"""A Redis Cluster's slot map and the connection pools it points at.

What it owns
    ``ClusterMap``: ``slots`` (16,384 references to ``NodePool``s, ``None`` for a slot no
    master serves), the pools by ``(host, port)``, and reading the map from a node
    (``refresh_once``: ``CLUSTER SLOTS`` from a connected master, else the seed, a replica, or
    a master not connected yet, over a connection of its own).

Invariants
    * A pool exists only for a node that was a master in a map read, or the target of a
      redirect (``node()``); never for a replica. It is created connecting (in the background),
      so by the time a command needs it, it is usually up.
    * A pool absent from two maps in a row is closed (its pending commands fail with
      ``RedisUnavailable``). One refresh of grace, because a ``-MOVED`` can name a node before
      the gossip of the node we read the map from knows it.
    * At most ``REDIS_CLUSTER_MAX_NODES`` pools and as many replica addresses.
    * ``slots`` is replaced whole by a refresh and edited one slot at a time by a ``-MOVED``;
      the hot path reads it without a lock (one event loop).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fastgw.limits import REDIS_CLUSTER_MAX_NODES, REDIS_CONNECT_TIMEOUT_S
from fastgw.redis_address import RedisAddress
from fastgw.resp.calls import Counters, future_callback
from fastgw.resp.errors import ReplyError
from fastgw.resp.node import NodePool, open_connection
from fastgw.resp.slots import SLOTS, SlotRange, parse_slots

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["ClusterMap", "Node"]

log = logging.getLogger("fastgw.resp")

Node = tuple[str, int]
CLUSTER_SLOTS: tuple[bytes, ...] = (b"CLUSTER", b"SLOTS")


def address_of(node: Node) -> RedisAddress:
    return RedisAddress(host=node[0], port=node[1])


class ClusterMap:
    """Slots to pools, and the pools; see the module docstring."""

    __slots__ = (
        "_closed",
        "_closing",
        "_loop",
        "_missing",
        "_nodes",
        "_password",
        "_pool_size",
        "_replicas",
        "_seed",
        "_timeout_s",
        "loaded",
        "refreshes",
        "slots",
    )

    def __init__(self, seed: Node, *, password: str, pool_size: int, timeout_s: float) -> None:
        self._seed = seed
        self._password = password
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None  # set by bind()
        self.slots: list[NodePool | None] = [None] * SLOTS
        self._nodes: dict[Node, NodePool] = {}
        self._missing: set[Node] = set()  # pools absent from the last map read
        self._replicas: set[Node] = set()  # refresh candidates when no master answers
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.loaded = False
        self.refreshes = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def pools(self) -> Iterable[NodePool]:
        return self._nodes.values()

    def pool_of(self, node: Node) -> NodePool | None:
        """The pool of ``node`` if there is one (tests, diagnostics); ``node()`` creates."""
        return self._nodes.get(node)

    def any_connected(self) -> NodePool | None:
        for pool in self._nodes.values():
            if pool.connected:
                return pool
        return None

    def node(self, node: Node) -> NodePool | None:
        """The pool of ``node``, created (and connecting) on first use; None past the bound
        or once closed."""
        pool = self._nodes.get(node)
        if pool is None:
            if self._closed or self._loop is None or len(self._nodes) >= REDIS_CLUSTER_MAX_NODES:
                return None
            pool = NodePool(
                address_of(node),
                password=self._password,
                size=self._pool_size,
                timeout_s=self._timeout_s,
                loop=self._loop,
            )
            pool.start_background()
            self._nodes[node] = pool
        return pool

    def apply(self, ranges: list[SlotRange]) -> None:
        """Replace the map with ``ranges`` (a ``CLUSTER SLOTS`` read)."""
        slots: list[NodePool | None] = [None] * SLOTS
        masters: set[Node] = set()
        replicas: set[Node] = set()
        for item in ranges:
            masters.add(item.master)
            replicas.update(item.replicas)
            pool = self.node(item.master)
            slots[item.first : item.last + 1] = [pool] * (item.last - item.first + 1)
        self.slots = slots
        self._replicas = set(list(replicas)[:REDIS_CLUSTER_MAX_NODES])
        absent = {node for node in self._nodes if node not in masters}
        for node in absent & self._missing:
            self._close_later(self._nodes.pop(node))
        self._missing = absent - self._missing
        self.loaded = True
        self.refreshes += 1

    def _close_later(self, pool: NodePool) -> None:
        assert self._loop is not None
        task = self._loop.create_task(pool.aclose())
        self._closing.add(task)  # a reference until it is done
        task.add_done_callback(self._closing.discard)

    async def fetch_slots(self, node: Node) -> list[SlotRange]:
        """The map as ``node`` sees it; raises ``OSError``, ``TimeoutError``, ``ReplyError``
        or ``ValueError`` (a reply of another shape)."""
        pool = self._nodes.get(node)
        if pool is not None and pool.connected:
            reply = await pool.request(CLUSTER_SLOTS, REDIS_CONNECT_TIMEOUT_S)
        else:  # the seed, a replica, a master not up yet: a connection of its own, closed after
            assert self._loop is not None
            connection = await open_connection(
                address_of(node),
                password=self._password,
                db=0,
                timeout_s=REDIS_CONNECT_TIMEOUT_S,
                counters=Counters(),
                loop=self._loop,
            )
            try:
                future: asyncio.Future[object] = self._loop.create_future()
                connection.send(CLUSTER_SLOTS, future_callback(future))
                reply = await future
            finally:
                connection.abort(f"redis {node[0]}:{node[1]}: slot map read")
                await asyncio.wait([connection.closed], timeout=REDIS_CONNECT_TIMEOUT_S)
        return parse_slots(reply, node[0])

    async def refresh_once(self) -> bool:
        """Read the map from the first node that gives it; False (logged) if none does."""
        up = [node for node, pool in self._nodes.items() if pool.connected]
        down = [node for node in self._nodes if node not in up]
        failures = []
        for node in dict.fromkeys([*up, self._seed, *self._replicas, *down]):
            try:
                ranges = await self.fetch_slots(node)
            except (OSError, TimeoutError, ReplyError, ValueError) as exc:
                failures.append(f"{node[0]}:{node[1]}: {exc!r}")
                continue
            if not self._closed:
                self.apply(ranges)
            return True
        log.warning("redis cluster: no node gave its slot map (%s)", "; ".join(failures))
        return False

    async def aclose(self) -> None:
        """Close every pool (pending commands fail with ``RedisUnavailable``); idempotent."""
        self._closed = True
        self.loaded = False
        self.slots = [None] * SLOTS
        pools = list(self._nodes.values())
        self._nodes.clear()
        await asyncio.gather(*(pool.aclose() for pool in pools), *self._closing)
