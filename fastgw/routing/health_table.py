"""One view of backend health per gateway instance: a small shared-memory table.

What it owns
    The layout of a memfd that the master makes per generation (its size depends on the
    instance list and the worker count) and every worker of that generation maps:

    * a header (magic, layout version, instance count, worker slots, checker change count);
    * the **checker section**, one row per backend instance, written only by the process that
      runs the active health checks (worker slot 0): up or down, consecutive failed and passed
      checks, the last check's latency and time, checks run;
    * one **worker section** per worker slot, written only by that worker: a change count, its
      pid and last publication time, and per instance the passive ejection it published
      (until when, and the streak that set its length) and its stats for the admin view
      (breaker state, requests in flight, latency EWMA, requests, failures).

Invariants
    * Every cell has exactly one writer, so no cell needs a lock; a reader may see a value a
      moment old, never a torn one (aligned 8-byte stores).
    * A reader notices changes cheaply: each writer bumps its own change count after a change
      that affects routing (a health flip, an ejection); the sum of the counts moves when
      anything did. Stats are rewritten every tick without bumping it.
    * Times are CLOCK_MONOTONIC microseconds (``time.monotonic``), one clock for all processes
      of the machine.
    * A new table starts with every instance up: a gateway serves at once and the first round
      of checks (run at start) corrects it. On reload the master copies the checker rows of
      instances that stay, and the ejections still running (``carry_over``), so a reload
      forgets no verdict.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from typing import Final, NamedTuple

MAGIC: Final = 0x6667_7768  # "fgwh"
VERSION: Final = 1

# Header cells.
H_MAGIC, H_VERSION, H_INSTANCES, H_WORKERS, H_CHECKER_CHANGES = range(5)
HEADER_CELLS: Final = 8

# Checker row cells (per instance).
C_UP, C_FAILS, C_PASSES, C_LATENCY_US, C_CHECKED_AT_US, C_CHECKS = range(6)
CHECK_CELLS: Final = 6

# Worker section: a head, then one row per instance.
W_CHANGES, W_PID, W_PUBLISHED_AT_US = range(3)
WORKER_HEAD_CELLS: Final = 4
R_EJECTED_UNTIL_US, R_STREAK, R_BREAKER, R_INFLIGHT, R_LATENCY_US, R_REQUESTS, R_FAILURES = range(7)
ROW_CELLS: Final = 8

CELL_BYTES: Final = 8
STALE_AFTER_US: Final = 2_000_000
"""A worker section not republished for this long (20 refreshes) belongs to a dead worker:
the admin view leaves it out."""


class InstanceStats(NamedTuple):
    """One worker's numbers for one instance, published every tick."""

    breaker: int
    inflight: int
    latency_us: int
    requests: int
    failures: int


def table_cells(instances: int, workers: int) -> int:
    return (
        HEADER_CELLS
        + instances * CHECK_CELLS
        + workers * (WORKER_HEAD_CELLS + instances * ROW_CELLS)
    )


def create_health_fd(instances: int, workers: int) -> int:
    """A new table for ``instances`` backends and ``workers`` slots, every instance up; the
    caller owns the fd."""
    fd = os.memfd_create("fastgw-health", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, table_cells(instances, workers) * CELL_BYTES)
        with mmap.mmap(fd, 0) as mm:
            cells = memoryview(mm).cast("q")
            cells[H_MAGIC] = MAGIC
            cells[H_VERSION] = VERSION
            cells[H_INSTANCES] = instances
            cells[H_WORKERS] = workers
            for i in range(instances):
                cells[HEADER_CELLS + i * CHECK_CELLS + C_UP] = 1
            cells.release()
    except BaseException:
        os.close(fd)
        raise
    return fd


class HealthTable:
    """A process's mapping of the table in ``fd`` (see the module docstring)."""

    __slots__ = ("_cells", "_mm", "instances", "workers")

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, 0)
        cells = memoryview(self._mm).cast("q")
        if cells[H_MAGIC] != MAGIC or cells[H_VERSION] != VERSION:
            cells.release()
            self._mm.close()
            raise ValueError("not a fastgw health table (or another layout version)")
        self._cells = cells
        self.instances = int(cells[H_INSTANCES])
        self.workers = int(cells[H_WORKERS])

    def close(self) -> None:
        self._cells.release()
        self._mm.close()

    # -- cell addresses ------------------------------------------------------------------------

    @staticmethod
    def _check_row(index: int) -> int:
        return HEADER_CELLS + index * CHECK_CELLS

    def _worker_head(self, slot: int) -> int:
        return (
            HEADER_CELLS
            + self.instances * CHECK_CELLS
            + slot * (WORKER_HEAD_CELLS + self.instances * ROW_CELLS)
        )

    def _row(self, slot: int, index: int) -> int:
        return self._worker_head(slot) + WORKER_HEAD_CELLS + index * ROW_CELLS

    # -- the checker's side ----------------------------------------------------------------------

    def record_check(
        self,
        index: int,
        passed: bool,
        latency_us: int,
        now_us: int,
        *,
        unhealthy_threshold: int,
        recovery_threshold: int,
    ) -> bool:
        """Count one active check; True when it flipped the instance up or down."""
        cells = self._cells
        row = self._check_row(index)
        cells[row + C_LATENCY_US] = latency_us
        cells[row + C_CHECKED_AT_US] = now_us
        cells[row + C_CHECKS] += 1
        up = cells[row + C_UP] == 1
        if passed:
            cells[row + C_FAILS] = 0
            passes = cells[row + C_PASSES] + 1
            cells[row + C_PASSES] = passes
            flipped = not up and passes >= recovery_threshold
        else:
            cells[row + C_PASSES] = 0
            fails = cells[row + C_FAILS] + 1
            cells[row + C_FAILS] = fails
            flipped = up and fails >= unhealthy_threshold
        if flipped:
            cells[row + C_UP] = 0 if up else 1
            cells[H_CHECKER_CHANGES] += 1
        return flipped

    def up(self, index: int) -> bool:
        return self._cells[self._check_row(index) + C_UP] == 1

    def check_latency_us(self, index: int) -> int:
        """The latency of the last active check of ``index`` (0 before the first)."""
        return int(self._cells[self._check_row(index) + C_LATENCY_US])

    def carry_over(
        self, source: HealthTable, mapping: Sequence[tuple[int, int]], now_us: int
    ) -> None:
        """Before a new generation's workers start (the master is then the only writer):
        copy the checker rows ``source[old] -> self[new]`` and the ejections still running,
        which land in slot 0's section (its worker overwrites them with its own later)."""
        cells = self._cells
        for old, new in mapping:
            start, row = source._check_row(old), self._check_row(new)
            cells[row : row + CHECK_CELLS] = source._cells[start : start + CHECK_CELLS]
            until_us, streak = source.ejection(old, now_us)
            if until_us:
                self.publish_ejection(0, new, until_us, streak)
        cells[H_CHECKER_CHANGES] += 1

    # -- a worker's side -------------------------------------------------------------------------

    def publish_ejection(self, slot: int, index: int, until_us: int, streak: int) -> None:
        cells = self._cells
        row = self._row(slot, index)
        cells[row + R_EJECTED_UNTIL_US] = until_us
        cells[row + R_STREAK] = streak
        cells[self._worker_head(slot) + W_CHANGES] += 1

    def publish_stats(
        self, slot: int, pid: int, now_us: int, stats: Sequence[InstanceStats]
    ) -> None:
        cells = self._cells
        head = self._worker_head(slot)
        cells[head + W_PID] = pid
        cells[head + W_PUBLISHED_AT_US] = now_us
        for index, numbers in enumerate(stats):
            row = self._row(slot, index)
            cells[row + R_BREAKER] = numbers.breaker
            cells[row + R_INFLIGHT] = numbers.inflight
            cells[row + R_LATENCY_US] = numbers.latency_us
            cells[row + R_REQUESTS] = numbers.requests
            cells[row + R_FAILURES] = numbers.failures

    # -- readers ---------------------------------------------------------------------------------

    def changes(self) -> int:
        """Moves whenever anything that affects routing changed."""
        cells = self._cells
        total = int(cells[H_CHECKER_CHANGES])
        for slot in range(self.workers):
            total += int(cells[self._worker_head(slot) + W_CHANGES])
        return total

    def ejection(self, index: int, now_us: int) -> tuple[int, int]:
        """The latest ejection of ``index`` still running at ``now_us``, over every worker:
        ``(until_us, streak)``, or ``(0, 0)``."""
        cells = self._cells
        until, streak = 0, 0
        for slot in range(self.workers):
            row = self._row(slot, index)
            slot_until = int(cells[row + R_EJECTED_UNTIL_US])
            if slot_until > now_us and slot_until > until:
                until, streak = slot_until, int(cells[row + R_STREAK])
        return until, streak

    def snapshot(self, index: int, now_us: int) -> dict[str, object]:
        """Everything known of instance ``index``, for ``GET /admin/upstreams``."""
        cells = self._cells
        check = self._check_row(index)
        workers: list[dict[str, object]] = []
        for slot in range(self.workers):
            head = self._worker_head(slot)
            published_us = int(cells[head + W_PUBLISHED_AT_US])
            if cells[head + W_PID] == 0 or now_us - published_us > STALE_AFTER_US:
                continue  # not published yet, or its worker is gone (respawning)
            row = self._row(slot, index)
            workers.append(
                {
                    "slot": slot,
                    "pid": int(cells[head + W_PID]),
                    "breaker": int(cells[row + R_BREAKER]),
                    "inflight": int(cells[row + R_INFLIGHT]),
                    "latency_ewma_ms": int(cells[row + R_LATENCY_US]) / 1000,
                    "requests": int(cells[row + R_REQUESTS]),
                    "failures": int(cells[row + R_FAILURES]),
                    "published_ms_ago": max(0, now_us - int(cells[head + W_PUBLISHED_AT_US]))
                    // 1000,
                }
            )
        until, streak = self.ejection(index, now_us)
        checked_at = int(cells[check + C_CHECKED_AT_US])
        return {
            "active_check": {
                "up": cells[check + C_UP] == 1,
                "consecutive_failures": int(cells[check + C_FAILS]),
                "consecutive_passes": int(cells[check + C_PASSES]),
                "checks": int(cells[check + C_CHECKS]),
                "last_latency_ms": int(cells[check + C_LATENCY_US]) / 1000,
                "last_check_ms_ago": None if checked_at == 0 else (now_us - checked_at) // 1000,
            },
            "ejected_for_ms": max(0, until - now_us) // 1000,
            "ejection_streak": streak,
            "workers": workers,
        }
