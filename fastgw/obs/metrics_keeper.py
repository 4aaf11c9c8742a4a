"""Prometheus metrics, part 5: the master's side of the metrics boards, across reloads.

What it owns
    ``BoardKeeper``: the fd of every generation's metrics board (``metrics_board.py``) that
    has not been folded yet, by generation number, and the three moves the supervisor asks for:

    * ``chain(n)`` / ``newer(n)``: what a worker of generation ``n`` inherits (the older boards
      not folded yet, so its scrapes add their numbers) and what it must not (newer ones);
    * ``supersede(n, flag)``: generation ``n``'s workers answer 503 on the metrics path while a
      newer generation they cannot see is booting (``metrics_export.py`` says why);
    * ``fold(n, into)``: once every worker of generation ``n`` has exited, carry its totals
      into the serving generation's board (by label) and close its fd.

Invariants
    * Every scrape-answering worker maps the serving generation's board, so a fold into it is
      seen by every reader that was counting the folded board (the fold is under the boards'
      sequence lock, so never seen twice or not at all).
    * Only the master writes here, and only between polls (no thread, no loop); a fold that
      fails (a bug) is logged and its board dropped: the master must keep supervising.
"""

from __future__ import annotations

import logging
import os

from fastgw.obs.metrics_board import MetricsBoard

log = logging.getLogger("fastgw.metrics")


class BoardKeeper:
    __slots__ = ("_fds",)

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}  # generation number -> board fd, not folded yet

    def __contains__(self, number: object) -> bool:
        return number in self._fds

    def add(self, number: int, fd: int) -> None:
        """Keep generation ``number``'s board (``fd`` -1: metrics off, nothing kept)."""
        if fd >= 0:
            self._fds[number] = fd

    def chain(self, number: int) -> tuple[int, ...]:
        """Boards of older generations not folded yet, newest first."""
        return tuple(self._fds[n] for n in sorted(self._fds, reverse=True) if n < number)

    def newer(self, number: int) -> set[int]:
        return {fd for n, fd in self._fds.items() if n > number}

    def supersede(self, number: int, superseded: bool) -> None:
        fd = self._fds.get(number)
        if fd is None:
            return
        board = MetricsBoard(fd)
        try:
            board.set_superseded(superseded)
        finally:
            board.close()

    def fold(self, number: int, into: int) -> None:
        """Carry generation ``number``'s totals into generation ``into``'s board; close it."""
        fd = self._fds.pop(number, None)
        if fd is None:
            return
        target_fd = self._fds.get(into)
        try:
            if target_fd is not None:
                source, target = MetricsBoard(fd), MetricsBoard(target_fd)
                try:
                    target.fold_from(source)
                finally:
                    source.close()
                    target.close()
        except Exception:  # never let a metrics bug stop the supervisor
            log.exception("carrying generation %d's metrics into %d failed", number, into)
        finally:
            os.close(fd)

    def close_all(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
