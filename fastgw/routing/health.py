"""This worker's view of which backend instances may get a request now.

What it owns
    ``HealthView``: for each backend instance (by index), whether it is *usable* (its active
    checks say up, and no breaker holds it open), its circuit breaker, and the numbers the
    admin view shows. The forward stage asks ``first_usable`` for the first candidate of a
    request's order it may send to, and reports each outcome with ``on_success`` /
    ``on_failure``.

Where the verdicts come from
    * Active checks run in one process per gateway instance (worker slot 0, ``ActiveChecks``)
      and land in the shared ``HealthTable``: every worker reads the same verdicts.
    * Passive detection is the breaker: when this worker's breaker for an instance opens, the
      opening is published to the table as an ejection (until when, and its streak), and the
      other workers adopt it on their next refresh, so the whole gateway instance stops
      sending to it for the (growing) cool-down. Each worker then probes on its own when the
      cool-down ends (at most ``half_open_probes`` per worker).
    * ``refresh`` runs every ``HEALTH_REFRESH_INTERVAL_S`` from the worker's loop: it re-reads
      the table only when its change count moved, lets instances whose cool-down ended be
      probed, and publishes this worker's numbers.

Invariants
    * The hot path reads ``all_clear`` (every instance usable, every breaker closed) and in
      that common case asks nothing else.
    * ``usable[i]`` is 0 while the active checks say down, or while a breaker is OPEN before
      its deadline; a breaker past its deadline is asked (``admit``), which lets through only
      its bounded probes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from fastgw.exchange import DONE
from fastgw.routing.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from fastgw.routing.health_table import HealthTable, InstanceStats

if TYPE_CHECKING:
    import asyncio

    from fastgw.exchange import Exchange
    from fastgw.routing.checker import HealthChecker

log = logging.getLogger("fastgw.health")

LATENCY_EWMA_WEIGHT: Final = 0.3
"""Share of the newest tick's mean latency in the admin view's latency EWMA."""

Load = Callable[[int], int]  # instance index -> this worker's requests in flight there


def _now_us(now_s: float) -> int:
    return int(now_s * 1_000_000)


class HealthView:
    __slots__ = (
        "_breakers_on",
        "_changes_seen",
        "_latency_count",
        "_latency_ewma_s",
        "_latency_sum_s",
        "_load",
        "_pid",
        "_probes",
        "_slot",
        "_table",
        "all_clear",
        "breakers",
        "failures",
        "labels",
        "requests",
        "usable",
    )

    def __init__(
        self,
        table: HealthTable | None,
        slot: int,
        labels: Sequence[str],
        breaker: BreakerSettings | None,
        load: Load,
    ) -> None:
        count = len(labels)
        self._table = table
        self._slot = slot
        self._pid = os.getpid()
        self.labels = tuple(labels)
        self._breakers_on = breaker is not None
        settings = breaker if breaker is not None else BreakerSettings()
        self.breakers = [CircuitBreaker(settings) for _ in range(count)]
        self.usable = bytearray(b"\x01" * count)
        self._probes: dict[int, list[Exchange]] = {}  # half-open probes in flight, by instance
        self.all_clear = count > 0
        self._changes_seen = -1
        self._load = load
        self.requests = [0] * count
        self.failures = [0] * count
        self._latency_sum_s = [0.0] * count
        self._latency_count = [0] * count
        self._latency_ewma_s = [0.0] * count
        self.refresh(time.monotonic())

    # -- the forward stage's questions --------------------------------------------------------

    def first_usable(
        self, candidates: tuple[int, ...], start: int, now_s: float, ex: Exchange | None = None
    ) -> int:
        """The position of the first candidate from ``start`` that may get a request now, or
        -1. A half-open breaker's probe slot is taken for ``ex``, and given back by ``refresh``
        if ``ex`` ends with no outcome (its client left)."""
        usable, breakers = self.usable, self.breakers
        for position in range(start, len(candidates)):
            index = candidates[position]
            breaker = breakers[index]
            if usable[index] and breaker.admit(now_s):
                if breaker.state == HALF_OPEN and ex is not None:
                    if breaker.probes_in_flight == 1:  # the first probe, or slots just reset
                        self._probes[index] = [ex]
                    else:
                        self._probes.setdefault(index, []).append(ex)
                return position
        return -1

    def circuit_refused(self, candidates: tuple[int, ...]) -> bool:
        """Whether a breaker, not the health checks, left ``candidates`` without a usable one
        (503 ``circuit_open`` rather than ``no_healthy_upstream``)."""
        table = self._table
        return any(
            self.breakers[i].state != CLOSED and (table is None or table.up(i)) for i in candidates
        )

    # HOT PATH: a few list bumps, the breaker's two compares.
    def on_success(self, index: int, now_s: float, sent_s: float) -> None:
        """A try sent at ``sent_s`` got a response head below 500 at ``now_s``."""
        self.requests[index] += 1
        self._latency_sum_s[index] += now_s - sent_s
        self._latency_count[index] += 1
        if self.breakers[index].on_success(now_s, sent_s):
            log.info("circuit of %s closed", self.labels[index])
            self._probes.pop(index, None)
            self._recompute_clear()

    def on_failure(self, index: int, now_s: float, sent_s: float) -> None:
        """A try sent at ``sent_s`` failed (see ``stages/forward.py`` for what fails)."""
        self.requests[index] += 1
        self.failures[index] += 1
        if not self._breakers_on:
            return
        breaker = self.breakers[index]
        if breaker.on_failure(now_s, sent_s):
            self._probes.pop(index, None)
            self.usable[index] = 0
            self.all_clear = False
            log.warning(
                "circuit of %s opened for %.1fs (opening %d in a row)",
                self.labels[index], breaker.open_until_s - now_s, breaker.streak,
            )  # fmt: skip
            if self._table is not None:
                self._table.publish_ejection(
                    self._slot, index, _now_us(breaker.open_until_s), breaker.streak
                )
        elif breaker.state != CLOSED:
            self.all_clear = False

    def reachable(self) -> int:
        """Instances that may get requests now (for ``/ready`` and ``/health/detailed``)."""
        return sum(self.usable)

    def check_latency_ms(self) -> float:
        """The mean latency of the instances' last active checks (``/health/detailed``)."""
        table = self._table
        if table is None or not self.labels:
            return 0.0
        total_us = sum(table.check_latency_us(i) for i in range(len(self.labels)))
        return round(total_us / len(self.labels) / 1000, 3)

    # -- the worker loop's tick ------------------------------------------------------------------

    def refresh(self, now_s: float) -> None:
        table = self._table
        now_us = _now_us(now_s)
        if table is not None:
            changes = table.changes()
            if changes != self._changes_seen:
                self._changes_seen = changes
                self._adopt(table, now_us)
        if self._probes:
            self._free_abandoned_probes()
        for index, breaker in enumerate(self.breakers):
            if breaker.state == OPEN and breaker.cool_down_over(now_s):
                # The cool-down ended: half-open, its probes may go (if the checks say up).
                self.usable[index] = 1 if table is None or table.up(index) else 0
        self._recompute_clear()
        if table is not None:
            table.publish_stats(self._slot, self._pid, now_us, self._stats())

    def _adopt(self, table: HealthTable, now_us: int) -> None:
        now_s = now_us / 1_000_000
        for index, breaker in enumerate(self.breakers):
            up = table.up(index)
            until_us, streak = table.ejection(index, now_us) if self._breakers_on else (0, 0)
            if until_us:
                breaker.adopt_open(until_us / 1_000_000, streak)
            held = breaker.state == OPEN and now_s < breaker.open_until_s
            self.usable[index] = 1 if up and not held else 0

    def _free_abandoned_probes(self) -> None:
        """A probe whose exchange ended with no outcome (the client left, during the try or
        its back-off) gives its slot back, so the instance is probed again at once."""
        for index, owners in list(self._probes.items()):
            breaker = self.breakers[index]
            if breaker.state != HALF_OPEN:
                del self._probes[index]
                continue
            waiting = [ex for ex in owners if ex.state < DONE]
            for _ in range(len(owners) - len(waiting)):
                breaker.release_probe()
            if waiting:
                self._probes[index] = waiting
            else:
                del self._probes[index]

    def _recompute_clear(self) -> None:
        self.all_clear = (
            bool(self.usable) and all(self.usable) and all(b.state == CLOSED for b in self.breakers)
        )

    def _stats(self) -> list[InstanceStats]:
        stats = []
        for index, breaker in enumerate(self.breakers):
            count = self._latency_count[index]
            if count:
                mean = self._latency_sum_s[index] / count
                ewma = self._latency_ewma_s[index]
                ewma = mean if ewma == 0.0 else ewma + LATENCY_EWMA_WEIGHT * (mean - ewma)
                self._latency_ewma_s[index] = ewma
                self._latency_sum_s[index] = 0.0
                self._latency_count[index] = 0
            stats.append(
                InstanceStats(
                    breaker.state,
                    self._load(index),
                    round(self._latency_ewma_s[index] * 1_000_000),
                    self.requests[index],
                    self.failures[index],
                )
            )
        return stats


class ActiveChecks:
    """The active health checks of one gateway instance, run by worker slot 0: results go to
    the shared table with the configured thresholds; a flip is logged."""

    __slots__ = ("_checker", "_labels", "_recovery", "_table", "_unhealthy")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: HealthTable,
        targets: Sequence[tuple[str, int]],
        *,
        path: str,
        interval_s: float,
        timeout_s: float,
        unhealthy_threshold: int,
        recovery_threshold: int,
    ) -> None:
        from fastgw.routing.checker import HealthChecker

        self._table = table
        self._labels = [f"{host}:{port}" for host, port in targets]
        self._unhealthy = unhealthy_threshold
        self._recovery = recovery_threshold
        self._checker: HealthChecker = HealthChecker(
            loop, targets, path, interval_s, timeout_s, self._record
        )

    def start(self) -> None:
        self._checker.start()

    async def aclose(self) -> None:
        await self._checker.aclose()

    def _record(self, index: int, passed: bool, latency_s: float) -> None:
        table = self._table
        if table.record_check(
            index,
            passed,
            int(latency_s * 1_000_000),
            _now_us(time.monotonic()),
            unhealthy_threshold=self._unhealthy,
            recovery_threshold=self._recovery,
        ):
            if table.up(index):
                log.warning("backend %s is up again (active checks)", self._labels[index])
            else:
                log.warning("backend %s is down (active checks)", self._labels[index])
