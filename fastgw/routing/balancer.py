"""Target selection strategies. Each returns an ordered tuple of instance indexes: the first is
the pick, the rest the failover order (the forward stage walks it on connect failures).

``WeightedRoundRobin`` is nginx's smooth weighted round robin, precomputed: the pick sequence
of one full cycle (length = sum of weights / their gcd, capped) is built once, so a pick is a
counter bump and a tuple index, and the failover order after each pick is precomputed too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce
from math import gcd
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fastgw.exchange import Exchange

MAX_CYCLE: Final = 10_000
"""Longest precomputed pick cycle; weights are scaled down to fit (ratios kept approximately)."""


def smooth_wrr_cycle(weights: list[int]) -> list[int]:
    """One full cycle of smooth weighted round robin over instances with weight > 0."""
    live = [w for w in weights if w > 0]
    if not live:
        return []
    divisor = reduce(gcd, live)
    scaled = [w // divisor if w > 0 else 0 for w in weights]
    total = sum(scaled)
    if total > MAX_CYCLE:
        factor = total / MAX_CYCLE
        scaled = [max(1, round(w / factor)) if w > 0 else 0 for w in scaled]
        total = sum(scaled)
    current = [0] * len(scaled)
    cycle: list[int] = []
    for _ in range(total):
        best = -1
        for index, weight in enumerate(scaled):
            if weight == 0:
                continue
            current[index] += weight
            if best < 0 or current[index] > current[best]:
                best = index
        current[best] -= total
        cycle.append(best)
    return cycle


def rotations(
    weights: Sequence[int], members: Sequence[int] | None = None, tail: tuple[int, ...] = ()
) -> tuple[tuple[int, ...], ...]:
    """For each position ``i``, the failover order when ``i`` is picked: ``i``, then the other
    instances of weight > 0 in index order after it (wrapping), then ``tail``; ``members`` maps
    positions to the instance indexes the orders name (default: the positions themselves)."""
    names = list(range(len(weights))) if members is None else list(members)
    live = [i for i, weight in enumerate(weights) if weight > 0]
    orders: list[tuple[int, ...]] = []
    for i in range(len(weights)):
        if i not in live:
            orders.append(())
            continue
        at = live.index(i)
        ring = [i, *live[at + 1 :], *live[:at]]
        named = tuple(names[j] for j in ring)
        orders.append(named + tuple(t for t in tail if t not in named))
    return tuple(orders)


class WeightedRoundRobin:
    __slots__ = ("_cycle", "_next", "_orders")

    def __init__(
        self,
        weights: list[int],
        members: Sequence[int] | None = None,
        tail: tuple[int, ...] = (),
    ) -> None:
        self._cycle = smooth_wrr_cycle(weights)
        self._orders = rotations(weights, members, tail)
        self._next = 0

    @property
    def orders(self) -> tuple[tuple[int, ...], ...]:
        """The failover order after each pick (``rotations``), by position."""
        return self._orders

    # HOT PATH: a counter bump and two tuple lookups.
    def order(self, ex: Exchange) -> tuple[int, ...]:
        cycle = self._cycle
        if not cycle:
            return ()
        pick = cycle[self._next]
        self._next = (self._next + 1) % len(cycle)
        return self._orders[pick]
