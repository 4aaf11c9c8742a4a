"""Target selection by customer pool and strategy (ARCHITECTURE A2 ``routing``).

What it owns
    ``PoolBalancer.order``: for one request, the ordered tuple of backend instance indexes to
    try (the pick first, then the failover order the forward stage walks), built from
    * the customer's candidates: the instances that list its ``pool`` claim plus those that
      list no pool (they serve everyone); every instance when it has no pool claim or the route
      has no customer;
    * the strategy within the candidates: ``consistent_hash`` (the customer id on a weighted
      hash ring, then the ring's fallback order: affinity that survives instance changes),
      ``round_robin`` (smooth weighted, precomputed), ``least_connections`` (of two weighted
      random candidates, the one with fewer connections in use);
    * the ``overflow`` pool's instances last: they take over when the candidates fail.

Invariants
    * Everything that depends only on the config is built once: candidate groups, rings,
      round-robin cycles, and every failover order a pick can lead to. A consistent-hash order
      is computed once per (pool, customer) and kept in a bounded map, so a known customer costs
      two dict lookups and no allocation.
    * An order names an instance at most once, and never one of weight 0.
    * Anonymous requests (routes without authentication) have no key to hash and no pool: they
      go to every instance by smooth weighted round robin (or by load under
      ``least_connections``).
    * Health is not decided here: the forward stage walks the order and skips instances the
      health view holds off (``routing/health.py``), which is how failover and the overflow
      pool take effect. A consistent-hash order is the customer's first ``depth`` ring
      instances (at least ``MIN_FAILOVER_DEPTH``), so it outlives several instances down.
    * ``bounded_load`` (consistent hashing only): the first instance of the order whose
      in-flight requests stay under c x the pool's mean goes first (consistent hashing with
      bounded loads, Mirrokni et al., as Envoy's ``hash_balance_factor`` and HAProxy's
      ``hash-balance-factor``); it reads every member's load, O(members) per request.

Why two random choices for least connections
    Scanning every instance for the least loaded costs O(instances) per request (about 5 µs at
    100 in Python), against a 1 µs budget; the power of two choices (Envoy's default for its
    least-request balancer) picks almost as well in O(1). Load is this worker's view: each worker
    balances the requests it forwards, as nginx's ``least_conn`` does without a shared zone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from fastgw._speedups import HashRing
from fastgw.limits import MAX_CACHED_ROUTES
from fastgw.routing.balancer import WeightedRoundRobin

if TYPE_CHECKING:
    from fastgw.exchange import Exchange

__all__ = ["OVERFLOW_POOL", "STRATEGY_NAMES", "Instance", "Load", "PoolBalancer"]

OVERFLOW_POOL: Final = "overflow"
STRATEGY_NAMES: Final = ("consistent_hash", "round_robin", "least_connections")
Load = Callable[[int], int]  # instance index -> requests it is serving now (this worker)


@dataclass(frozen=True, slots=True)
class Instance:
    """What selection needs of ``routing.metald_instances[i]``."""

    key: bytes  # its identity on the hash ring: b"host:port"
    weight: int
    pools: tuple[str, ...]


class _Group:
    """The candidates of one pool (or of everyone), and each strategy's state for them."""

    __slots__ = (
        "_bound", "_depth", "_draw", "_live", "_load", "_members", "_orders", "_ring",
        "_rotations", "_rr", "_weights", "tail",
    )  # fmt: skip

    def __init__(
        self,
        strategy: str,
        members: tuple[int, ...],
        instances: Sequence[Instance],
        *,
        overflow: tuple[int, ...],
        depth: int,
        load: Load | None,
        bounded_load: float = 0.0,
    ) -> None:
        self._members = members
        self._bound = bounded_load
        self.tail = tuple(i for i in overflow if i not in members)
        weights = [instances[i].weight for i in members]
        self._weights = tuple(weights)
        self._live = tuple(i for i, weight in enumerate(weights) if weight > 0)
        self._rr = WeightedRoundRobin(weights, members, self.tail)
        self._rotations = self._rr.orders  # least connections walks the same orders
        self._ring: HashRing | None = None
        if strategy == "consistent_hash":
            self._ring = HashRing([instances[i].key for i in members], weights)
        self._depth = depth
        self._orders: dict[bytes, tuple[int, ...]] = {}
        self._load = load
        self._draw = random.Random().random  # bound once: a float in [0, 1) per call

    # HOT PATH: a dict lookup once the customer's order is known.
    def by_hash(self, customer_id: bytes) -> tuple[int, ...]:
        order = self._orders.get(customer_id)
        if order is None:
            ring = self._ring
            assert ring is not None
            members = self._members
            picked = ring.fallback_order(customer_id, self._depth)
            order = tuple(members[i] for i in picked) + self.tail
            if len(self._orders) >= MAX_CACHED_ROUTES:
                self._orders.clear()  # refilled by the next requests: O(1) amortized
            self._orders[customer_id] = order
        if self._bound:
            return self._within_bound(order)
        return order

    def full_hash_order(self, customer_id: bytes) -> tuple[int, ...] | None:
        """The customer's whole ring order (then the overflow pool), when the cached one was
        cut at ``depth``; None when it already holds every member. Not cached: asked only
        when every instance of the cached order is unusable."""
        ring = self._ring
        members = self._members
        if ring is None or len(members) <= self._depth:
            return None
        picked = ring.fallback_order(customer_id, len(members))
        return tuple(members[i] for i in picked) + self.tail

    def _within_bound(self, order: tuple[int, ...]) -> tuple[int, ...]:
        """Consistent hashing with bounded loads: the first instance of the customer's order
        whose in-flight requests stay under ``bound`` x its weighted share of the members'
        load (counting this request), moved to the front. O(members): meant for pools of
        tens of instances."""
        load = self._load
        assert load is not None
        members, weights = self._members, self._weights
        total_weight = sum(weights)
        if not total_weight:
            return order
        loads = {i: load(i) for i in members}
        share = self._bound * (sum(loads.values()) + 1) / total_weight
        weight_of = dict(zip(members, weights, strict=True))
        for position, index in enumerate(order):
            # ceil: some member is always under its bound (the least loaded by weight)
            if index in loads and loads[index] + 1 <= math.ceil(share * weight_of[index]):
                if position == 0:
                    return order
                return (index, *order[:position], *order[position + 1 :])
        return order  # every one of its instances is over: the usual order

    def by_round_robin(self, ex: Exchange) -> tuple[int, ...]:
        return self._rr.order(ex) or self.tail

    # HOT PATH: two random draws and two loads.
    def by_load(self, ex: Exchange) -> tuple[int, ...]:
        live = self._live
        if not live:
            return self.tail
        count = len(live)
        pick = live[0]
        if count > 1:
            draw = self._draw
            first = int(draw() * count)
            a = live[first]
            b = live[(first + 1 + int(draw() * (count - 1))) % count]  # never a again
            load = self._load
            assert load is not None
            members, weights = self._members, self._weights
            # weighted: fewer in-flight requests per unit of weight, compared without dividing
            pick = a if load(members[a]) * weights[b] <= load(members[b]) * weights[a] else b
        return self._rotations[pick]


class PoolBalancer:
    """One plan's target selection: ``order(ex)`` for the forward stage."""

    __slots__ = ("_by_pool", "_everyone", "_pick", "_unknown_pool")

    def __init__(
        self,
        strategy: str,
        instances: Sequence[Instance],
        *,
        depth: int,
        load: Load | None = None,
        bounded_load: float = 0.0,
    ) -> None:
        if strategy not in STRATEGY_NAMES:
            raise ValueError(f"unknown routing strategy {strategy!r}")
        if (strategy == "least_connections" or bounded_load) and load is None:
            raise ValueError("least_connections and bounded loads need the instances' load")
        overflow = tuple(i for i, inst in enumerate(instances) if OVERFLOW_POOL in inst.pools)
        serve_all = tuple(i for i, inst in enumerate(instances) if not inst.pools)

        def group(members: tuple[int, ...]) -> _Group:
            return _Group(
                strategy, members, instances, overflow=overflow, depth=depth, load=load,
                bounded_load=bounded_load,
            )  # fmt: skip

        self._everyone = group(tuple(range(len(instances))))
        pools = sorted({pool for inst in instances for pool in inst.pools})
        self._by_pool: dict[bytes, _Group] = {
            pool.encode("ascii"): group(
                tuple(i for i, inst in enumerate(instances) if pool in inst.pools or not inst.pools)
            )
            for pool in pools
        }
        # A pool no instance lists: the instances that serve everyone, then the overflow pool.
        self._unknown_pool = group(serve_all)
        self._pick = strategy

    def full_order(self, ex: Exchange) -> tuple[int, ...] | None:
        """For the forward stage when no instance of ``order(ex)`` is usable: the customer's
        whole consistent-hash order, or None when ``order`` already names every candidate."""
        customer = ex.customer
        if self._pick != "consistent_hash" or customer is None:
            return None
        pool = customer.pool
        group = self._everyone if pool is None else self._by_pool.get(pool, self._unknown_pool)
        return group.full_hash_order(customer.customer_id)

    # HOT PATH
    def order(self, ex: Exchange) -> tuple[int, ...]:
        customer = ex.customer
        if customer is None:  # an anonymous route: no key to hash, no pool
            if self._pick == "least_connections":
                return self._everyone.by_load(ex)
            return self._everyone.by_round_robin(ex)
        pool = customer.pool
        group = self._everyone if pool is None else self._by_pool.get(pool, self._unknown_pool)
        strategy = self._pick
        if strategy == "consistent_hash":
            return group.by_hash(customer.customer_id)
        if strategy == "round_robin":
            return group.by_round_robin(ex)
        return group.by_load(ex)
