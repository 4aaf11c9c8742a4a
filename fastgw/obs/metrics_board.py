"""Prometheus metrics, part 2: the generation's metrics board, a small shared-memory file.

What it owns
    The layout of a memfd that the master makes per generation (``generation.py``; a gateway
    run in one process makes its own) and every worker of that generation maps:

    * a header: magic, layout version, worker slots, cell counts, the length of the layout
      descriptor (``metrics.Layout``, JSON, stored right after the header so that any process
      can read the board whatever config it runs), a fold sequence number, and two flags:
      ``superseded`` (a newer generation is booting: this one's workers cannot see its numbers)
      and ``folded`` (this board's totals were moved into a newer board's retired section);
    * one **section per worker slot**, written only by the worker in that slot: its pid, when
      it last published, its two gauges (open connections, requests in flight) and its
      counters (``Layout`` cells; histogram sums in whole nanoseconds);
    * one **retired section**, written only by the master: totals carried over from boards of
      generations whose workers have all exited (``fold_from``).

Invariants
    * Every cell has one writer, so no cell needs a lock; a reader may see a value a moment old,
      never a torn one (aligned 8-byte stores). A worker publishes counters that only grow, so
      any read is monotonic cell by cell; a histogram's ``_count`` is the sum of its buckets
      when rendered, so it always equals its ``+Inf`` bucket.
    * A worker that replaces a dead one in the same slot starts from the section's values
      (``read_section``) and continues counting from there: counters never go backwards when a
      worker is respawned. What the dead worker counted after its last publication (at most one
      tick, ``HEALTH_REFRESH_INTERVAL_S``) is lost.
    * The master moves totals between boards under a sequence lock: it makes ``seq`` odd on
      both boards, adds the source's totals into the target's retired section, sets the
      source's ``folded``, and makes both even again. A reader (``BoardReader``) reads the
      numbers of its own board and of every older board it holds that is not folded, and
      retries when a ``seq`` was odd or moved meanwhile: it never counts a fold twice or misses
      it.
    * Gauges are never carried, and a section not republished for ``STALE_AFTER_US`` (its
      worker died) adds nothing to them.
"""

from __future__ import annotations

import mmap
import os
import time
from array import array
from collections.abc import Sequence
from operator import add
from typing import Final, NamedTuple

from fastgw.obs.metrics import Layout

MAGIC: Final = 0x6667_6D62  # "fgmb"
VERSION: Final = 1

H_MAGIC, H_VERSION, H_SLOTS, H_CELLS, H_DESCRIPTOR_BYTES = range(5)
H_SEQ, H_SUPERSEDED, H_FOLDED = 5, 6, 7
HEADER_CELLS: Final = 8

S_PID, S_PUBLISHED_AT_US, S_CONNECTIONS, S_INFLIGHT = range(4)
SECTION_HEAD_CELLS: Final = 4

CELL_BYTES: Final = 8
STALE_AFTER_US: Final = 1_000_000
"""A section not republished for this long (10 ticks) belongs to a dead worker: its gauges are
left out (its counters stay: they were counted)."""
READ_DEADLINE_S: Final = 0.05
"""How long a reader retries while the master is folding (microseconds of work); past it the
scrape gets a 503 rather than a wrong total."""


class Totals(NamedTuple):
    """Numbers summed over every worker of every live generation, in one layout."""

    cells: list[int]
    connections: int
    inflight: int


def _cells(layout: Layout, descriptor_bytes: int) -> tuple[int, int]:
    """(cells before the first section, cells per section)."""
    section = SECTION_HEAD_CELLS + layout.cells
    return HEADER_CELLS + -(-descriptor_bytes // CELL_BYTES), section


def create_metrics_fd(layout: Layout, slots: int) -> int:
    """A new, zeroed board for ``slots`` workers counting under ``layout``; the caller owns
    the fd."""
    descriptor = layout.descriptor()
    start, section = _cells(layout, len(descriptor))
    fd = os.memfd_create("fastgw-metrics", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, (start + (slots + 1) * section) * CELL_BYTES)
        with mmap.mmap(fd, 0) as mm:
            mm[HEADER_CELLS * CELL_BYTES : HEADER_CELLS * CELL_BYTES + len(descriptor)] = (
                descriptor
            )
            cells = memoryview(mm).cast("q")
            cells[H_VERSION] = VERSION
            cells[H_SLOTS] = slots
            cells[H_CELLS] = layout.cells
            cells[H_DESCRIPTOR_BYTES] = len(descriptor)
            cells[H_MAGIC] = MAGIC
            cells.release()
    except BaseException:
        os.close(fd)
        raise
    return fd


class MetricsBoard:
    """A process's mapping of the board in ``fd`` (see the module docstring)."""

    __slots__ = ("_cells", "_mm", "_section_cells", "_sections_at", "layout", "slots")

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, 0)
        ints = memoryview(self._mm).cast("q")
        try:
            if ints[H_MAGIC] != MAGIC or ints[H_VERSION] != VERSION:
                raise ValueError("not a fastgw metrics board (or another layout version)")
            size = int(ints[H_DESCRIPTOR_BYTES])
            start = HEADER_CELLS * CELL_BYTES
            self.layout = Layout.from_descriptor(self._mm[start : start + size])
            if ints[H_CELLS] != self.layout.cells:
                raise ValueError("metrics board descriptor does not match its cell count")
        except BaseException:
            ints.release()
            self._mm.close()
            raise
        self._cells = ints
        self.slots = int(ints[H_SLOTS])
        self._sections_at, self._section_cells = _cells(self.layout, size)
        if len(self._mm) < self._section(self.slots + 1) * CELL_BYTES:
            self.close()
            raise ValueError("metrics board shorter than its layout")

    def close(self) -> None:
        self._cells.release()
        self._mm.close()

    def _section(self, slot: int) -> int:
        """First cell of ``slot``'s section; slot ``self.slots`` is the retired section."""
        return self._sections_at + slot * self._section_cells

    # -- a worker's side -----------------------------------------------------------------------

    def read_section(self, slot: int) -> list[int]:
        """The counters ``slot``'s section holds (a respawned worker continues from them)."""
        at = self._section(slot) + SECTION_HEAD_CELLS
        return self._cells[at : at + self.layout.cells].tolist()

    def publish(
        self,
        slot: int,
        pid: int,
        now_us: int,
        counters: array[int],
        *,
        connections: int,
        inflight: int,
    ) -> None:
        """Write ``slot``'s counters (``array('q')`` in layout order) and gauges."""
        at = self._section(slot)
        cells = self._cells
        body = at + SECTION_HEAD_CELLS
        cells[body : body + self.layout.cells] = counters
        cells[at + S_CONNECTIONS] = connections
        cells[at + S_INFLIGHT] = inflight
        cells[at + S_PID] = pid
        cells[at + S_PUBLISHED_AT_US] = now_us

    # -- readers -------------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return int(self._cells[H_SEQ])

    @property
    def folded(self) -> bool:
        return self._cells[H_FOLDED] != 0

    @property
    def superseded(self) -> bool:
        return self._cells[H_SUPERSEDED] != 0

    def own_totals(self) -> list[int]:
        """This board's counters: every worker section plus the retired section."""
        count = self.layout.cells
        totals = [0] * count
        for slot in range(self.slots + 1):
            at = self._section(slot) + SECTION_HEAD_CELLS
            totals = list(map(add, totals, self._cells[at : at + count].tolist()))
        return totals

    def gauges(self, now_us: int) -> tuple[int, int]:
        """(open connections, requests in flight) over the workers that published lately."""
        connections = inflight = 0
        cells = self._cells
        for slot in range(self.slots):
            at = self._section(slot)
            if cells[at + S_PID] and now_us - cells[at + S_PUBLISHED_AT_US] <= STALE_AFTER_US:
                connections += int(cells[at + S_CONNECTIONS])
                inflight += int(cells[at + S_INFLIGHT])
        return connections, inflight

    # -- the master's side ---------------------------------------------------------------------

    def set_superseded(self, superseded: bool) -> None:
        self._cells[H_SUPERSEDED] = 1 if superseded else 0

    def fold_from(self, source: MetricsBoard) -> None:
        """Add ``source``'s totals (every section of a generation whose workers have all
        exited) into this board's retired section, by label, and mark ``source`` folded."""
        totals = source.own_totals()
        moves = self.layout.translation(source.layout)
        retired = self._section(self.slots) + SECTION_HEAD_CELLS
        cells = self._cells
        cells[H_SEQ] += 1  # odd: readers retry until both are even again
        source._cells[H_SEQ] += 1
        try:
            for at, value in enumerate(totals):
                if value and moves[at] >= 0:
                    cells[retired + moves[at]] += value
            source._cells[H_FOLDED] = 1
        finally:
            source._cells[H_SEQ] += 1
            cells[H_SEQ] += 1


class BoardReader:
    """What a worker's scrape reads: its own board, plus the older boards it inherited that
    were not folded when it was forked (a reload's previous generations, still draining), their
    numbers carried into its own layout by label."""

    __slots__ = ("_moves", "_older", "board")

    def __init__(self, board: MetricsBoard, older: Sequence[MetricsBoard] = ()) -> None:
        self.board = board
        self._older = tuple(older)
        self._moves = [board.layout.translation(other.layout) for other in self._older]

    def close(self) -> None:
        """Unmap the older boards (the caller closes its own)."""
        for other in self._older:
            other.close()
        self._older = ()
        self._moves = []

    def totals(self, now_us: int) -> Totals | None:
        """Everything summed, or None when the master held a fold past ``READ_DEADLINE_S``."""
        boards = (self.board, *self._older)
        deadline = time.monotonic() + READ_DEADLINE_S
        while True:
            seqs = [b.seq for b in boards]
            if not any(s & 1 for s in seqs):
                totals = self._read(now_us)
                if [b.seq for b in boards] == seqs:
                    return totals
            if time.monotonic() > deadline:
                return None

    def _read(self, now_us: int) -> Totals:
        cells = self.board.own_totals()
        connections, inflight = self.board.gauges(now_us)
        for other, moves in zip(self._older, self._moves, strict=True):
            if other.folded:
                continue  # its totals are in a newer board's retired section now
            for at, value in enumerate(other.own_totals()):
                if value and moves[at] >= 0:
                    cells[moves[at]] += value
            more_connections, more_inflight = other.gauges(now_us)
            connections += more_connections
            inflight += more_inflight
        return Totals(cells, connections, inflight)
