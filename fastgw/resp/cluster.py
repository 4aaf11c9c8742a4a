"""``RespCluster``: the hot-path client of a Redis Cluster.

What it owns
    Routing each command by its key's slot through the map (``topology.ClusterMap``: the slots,
    the node pools), following redirects (``_Routed``), and the background task that refreshes
    the map when something says it is stale.

Invariants
    * ``send`` routes by ``key_slot(key)`` and never waits. With no map yet, no pool for the
      slot or no connection up to its node, the callback gets ``RedisUnavailable`` at once.
    * ``-MOVED slot host:port``: the slot now points at that node, a refresh is requested and
      the command is sent again there; ``-ASK``: ``ASKING`` + the command on one connection of
      that node, the map unchanged. Both keep the command's first deadline and count towards
      ``REDIS_CLUSTER_MAX_REDIRECTS``; past it the redirect is the command's ``ReplyError``.
      A redirect never re-runs a command: the node that redirected it did not execute it.
    * ``-TRYAGAIN``, ``-CLUSTERDOWN``, a lost or timed-out node: a refresh is requested and the
      command gets its error. No blind retry: the caller's failure policy decides.
    * Refreshes: one task; at most one ``CLUSTER SLOTS`` in flight and one per
      ``REDIS_CLUSTER_REFRESH_INTERVAL_S``; on failure it retries with the reconnect back-off.
      Requests while one runs fold into the next.
    * Only masters are connected to (``topology.py`` has the pools' rules and bounds).

Why a small object per command here (and not in ``RespClient``)
    A redirect needs the command's arguments, callback, deadline and redirect count when its
    ``-MOVED`` arrives; ``_Routed`` carries them and is the callback the connection sees. A
    plain reply costs one ``isinstance`` on top of the standalone path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastgw.limits import (
    REDIS_CLUSTER_MAX_REDIRECTS,
    REDIS_CLUSTER_REFRESH_INTERVAL_S,
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_RECONNECT_BACKOFF_MAX_S,
    REDIS_RECONNECT_BACKOFF_MIN_S,
)
from fastgw.redis_address import RedisAddress, parse_address
from fastgw.resp.calls import Args, future_callback
from fastgw.resp.errors import (
    Callback,
    RedisOverloaded,
    RedisTimeout,
    RedisUnavailable,
    ReplyError,
)
from fastgw.resp.node import NodePool, jittered
from fastgw.resp.slots import SLOTS, key_slot
from fastgw.resp.topology import ClusterMap

__all__ = ["RespCluster"]

log = logging.getLogger("fastgw.resp")

REFRESH_ON: frozenset[str] = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})


class _Routed:
    """One command on its way: the callback its connection calls (see the module docstring)."""

    __slots__ = ("args", "callback", "cluster", "deadline", "pool", "redirects")

    def __init__(
        self,
        cluster: RespCluster,
        pool: NodePool,
        args: Args,
        callback: Callback,
        deadline: float,
    ) -> None:
        self.cluster = cluster
        self.pool = pool
        self.args = args
        self.callback = callback
        self.deadline = deadline
        self.redirects = 0

    def __call__(self, reply: object) -> None:
        # HOT PATH: a plain reply goes straight to the caller.
        if isinstance(reply, BaseException):
            self.cluster._on_failure(self, reply)
        else:
            self.callback(reply)


class RespCluster:
    """A Redis Cluster client; same surface as ``RespClient`` (``resp.HotRedis``)."""

    __slots__ = (
        "_closed",
        "_loop",
        "_map",
        "_ready",
        "_refresh_wanted",
        "_refresher",
        "_timeout_s",
        "asked",
        "errors",
        "moved",
    )

    def __init__(
        self,
        seed: RedisAddress,
        *,
        password: str = "",
        pool_size: int = 1,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if seed.unix_path is not None or seed.host is None or seed.port is None:
            raise ValueError(f"a Redis Cluster seed needs 'host:port', got {seed}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._map = ClusterMap(
            (seed.host, seed.port), password=password, pool_size=pool_size, timeout_s=timeout_s
        )
        self._timeout_s = timeout_s
        self._loop = loop
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_wanted: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None  # set by the first map read
        self._closed = False
        self.errors = 0
        """Commands that ended in an exception (after redirects were followed)."""
        self.moved = 0  # redirects followed (debug accounting for tests and metrics)
        self.asked = 0

    @classmethod
    def from_address(
        cls,
        address: str,
        *,
        password: str = "",
        pool_size: int = 1,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RespCluster:
        """A client seeded with one node's ``'host:port'`` (Cluster has database 0 only)."""
        return cls(
            parse_address(address),
            password=password,
            pool_size=pool_size,
            timeout_s=timeout_s,
            loop=loop,
        )

    # -- the hot path -----------------------------------------------------------------------

    def send(self, args: Args, callback: Callback, key: bytes | None = None) -> None:
        """Send ``args`` to the master of ``key``'s slot (any node when ``key`` is None)."""
        # HOT PATH: a slot lookup, one _Routed, then the node pool's send.
        pool = self._map.slots[key_slot(key)] if key is not None else self._map.any_connected()
        loop = self._loop
        if pool is None or loop is None:
            self._want_refresh()
            self.errors += 1
            callback(RedisUnavailable(f"redis cluster: no node for key {key!r:.60}"))
            return
        deadline = loop.time() + self._timeout_s
        pool.send_until(args, _Routed(self, pool, args, callback, deadline), deadline)

    def _on_failure(self, routed: _Routed, reply: BaseException) -> None:
        if type(reply) is ReplyError:
            kind, _, rest = str(reply).partition(" ")
            if kind in REFRESH_ON:
                if (
                    kind in ("MOVED", "ASK")
                    and routed.redirects < REDIS_CLUSTER_MAX_REDIRECTS
                    and self._redirect(routed, kind == "MOVED", rest)
                ):
                    return
                self._want_refresh()
        elif isinstance(reply, RedisUnavailable | RedisTimeout) and not isinstance(
            reply, RedisOverloaded
        ):
            self._want_refresh()
        self.errors += 1
        routed.callback(reply)

    def _redirect(self, routed: _Routed, moved: bool, where: str) -> bool:
        slot_text, _, target = where.partition(" ")
        host, _, port_text = target.rpartition(":")
        try:
            slot, port = int(slot_text), int(port_text)
        except ValueError:
            return False
        pool = self._map.node((host or routed.pool.address.host or "", port))
        if pool is None:
            return False
        routed.redirects += 1
        routed.pool = pool
        if moved:
            self.moved += 1
            if 0 <= slot < SLOTS:
                self._map.slots[slot] = pool
            self._want_refresh()
            pool.send_until(routed.args, routed, routed.deadline)
        else:
            self.asked += 1
            pool.send_asking(routed.args, routed, routed.deadline)
        return True

    def execute(self, *args: bytes | str | int, key: bytes | None = None) -> asyncio.Future[object]:
        """One command as an awaitable, routed by ``key`` (any node without one)."""
        future: asyncio.Future[object] = (self._loop or asyncio.get_running_loop()).create_future()
        self.send(args, future_callback(future), key)
        return future

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The slot map is loaded and at least one node has a connection up."""
        return self._map.loaded and self._map.any_connected() is not None

    @property
    def in_flight(self) -> int:
        return sum(pool.in_flight for pool in self._map.pools())

    @property
    def refreshes(self) -> int:
        """Slot maps read so far."""
        return self._map.refreshes

    def node_of(self, key: bytes) -> RedisAddress | None:
        """Where ``key`` is sent now (tests, diagnostics)."""
        pool = self._map.slots[key_slot(key)]
        return None if pool is None else pool.address

    def pool_of(self, host: str, port: int) -> NodePool | None:
        """The connection pool of a node, if there is one (tests, diagnostics)."""
        return self._map.pool_of((host, port))

    # -- the map's refresh ------------------------------------------------------------------

    def _want_refresh(self) -> None:
        if self._refresh_wanted is not None:
            self._refresh_wanted.set()

    async def _refresh_loop(self) -> None:
        wanted = self._refresh_wanted
        assert wanted is not None
        delay = REDIS_RECONNECT_BACKOFF_MIN_S
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                refreshed = await self._map.refresh_once()
            except Exception:  # a bug must not end the refreshes (nor reach the loop's handler)
                log.exception("redis cluster: slot map refresh failed")
                refreshed = False
            if refreshed:
                if self._ready is not None:
                    self._ready.set()
                delay = REDIS_RECONNECT_BACKOFF_MIN_S
                await asyncio.sleep(REDIS_CLUSTER_REFRESH_INTERVAL_S)
            else:
                wanted.set()
                await asyncio.sleep(jittered(delay))
                delay = min(2 * delay, REDIS_RECONNECT_BACKOFF_MAX_S)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, wait_s: float = REDIS_CONNECT_TIMEOUT_S) -> bool:
        """Load the slot map and connect to every master; True if both happened within
        ``wait_s``. Never raises for an unreachable cluster; it keeps trying in the background."""
        if self._closed:
            return False
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._map.bind(loop)
        deadline = loop.time() + wait_s
        if self._refresher is None:
            self._ready = asyncio.Event()
            self._refresh_wanted = asyncio.Event()
            self._refresh_wanted.set()
            self._refresher = loop.create_task(self._refresh_loop(), name="redis cluster map")
        assert self._ready is not None
        try:
            async with asyncio.timeout(wait_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        masters = {id(pool): pool for pool in self._map.slots if pool is not None}
        remaining = max(0.0, deadline - loop.time())
        results = await asyncio.gather(*(p.start(wait_s=remaining) for p in masters.values()))
        return bool(results) and all(results)

    async def aclose(self) -> None:
        """Close every node; pending callbacks get ``RedisUnavailable``. Idempotent."""
        self._closed = True
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await self._map.aclose()
