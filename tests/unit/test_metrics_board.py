"""``fastgw.obs.metrics_board`` and ``metrics_keeper``: the generation's shared metrics board.

Layout and validation, one writer per slot (a forked child publishes its slot; the parent reads
after ``waitpid``, no sleeps), a respawned writer continuing its slot's counts, gauges of
stale sections left out, the fold of a finished generation into a newer board by label
(a dropped endpoint goes, a renumbered one follows its name), the reader's chain over older
boards with no double count across a fold, its retry while a fold is in progress, and the
master's ``BoardKeeper`` (chain, superseded flag, fold, close).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fastgw.obs import metrics_board
from fastgw.obs.metrics import AUTH_RESULTS, CODES, Layout
from fastgw.obs.metrics_board import (
    H_MAGIC,
    H_SEQ,
    STALE_AFTER_US,
    BoardReader,
    MetricsBoard,
    create_metrics_fd,
)
from fastgw.obs.metrics_keeper import BoardKeeper

NOW_US = 7_000_000_000
OLD = Layout(["(unrouted)", "health", "Gone", "Echo"], ["10.0.0.1:80", "10.0.0.2:80"])
NEW = Layout(["(unrouted)", "health", "Echo", "Added"], ["10.0.0.2:80", "10.0.0.3:80"])


@contextmanager
def board_of(layout: Layout, slots: int) -> Iterator[tuple[MetricsBoard, int]]:
    fd = create_metrics_fd(layout, slots)
    board = MetricsBoard(fd)
    try:
        yield board, fd
    finally:
        board.close()
        os.close(fd)


def counters(layout: Layout, **cells: int) -> array[int]:
    """A section's counters with ``cells`` set (``name`` → cell by the helpers below)."""
    values = array("q", bytes(8 * layout.cells))
    for name, value in cells.items():
        values[cell(layout, name)] = value
    return values


def cell(layout: Layout, name: str) -> int:
    """``req:<endpoint>:<code>``, ``up:<instance>:<code>``, ``auth:<result>``, ``rsum:<ep>``."""
    kind, _, rest = name.partition(":")
    if kind == "req":
        endpoint, code = rest.rsplit(":", 1)
        return layout.endpoints.index(endpoint) * len(layout.codes) + layout.codes.index(code)
    if kind == "up":
        instance, code = rest.rsplit(":", 1)
        row = layout.instances.index(instance) * len(layout.upstream_codes)
        return layout.upstream_at + row + layout.upstream_codes.index(code)
    if kind == "auth":
        return layout.auth_at + AUTH_RESULTS.index(rest)
    if kind == "rsum":
        return layout.request_sums_at + layout.endpoints.index(rest)
    raise AssertionError(name)


def publish(board: MetricsBoard, slot: int, values: array[int], now_us: int = NOW_US, *,
            connections: int = 0, inflight: int = 0) -> None:  # fmt: skip
    board.publish(slot, 1000 + slot, now_us, values, connections=connections, inflight=inflight)


# -------------------------------------------------------------------------- create and open


def test_a_new_board_reads_back_its_layout_and_is_zero() -> None:
    with board_of(OLD, 3) as (board, _):
        assert board.slots == 3
        assert board.layout.descriptor() == OLD.descriptor()
        assert board.own_totals() == [0] * OLD.cells
        assert (board.seq, board.folded, board.superseded) == (0, False, False)
        assert board.gauges(NOW_US) == (0, 0)


def test_a_file_that_is_no_board_is_refused() -> None:
    fd = os.memfd_create("not-a-board", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(ValueError, match="not a fastgw metrics board"):
            MetricsBoard(fd)
    finally:
        os.close(fd)
    with board_of(OLD, 1) as (board, fd):
        board._cells[H_MAGIC] = 0
        with pytest.raises(ValueError, match="not a fastgw metrics board"):
            MetricsBoard(fd)


# -------------------------------------------------------------------------- writers and readers


def test_slots_sum_and_a_forked_writer_publishes_its_own_slot() -> None:
    with board_of(OLD, 2) as (board, fd):
        publish(board, 0, counters(OLD, **{"req:Echo:200": 5, "auth:ok": 2}))
        pid = os.fork()
        if pid == 0:  # the child: its own mapping of the inherited fd, its own slot
            code = 1
            try:
                child = MetricsBoard(fd)
                publish(child, 1, counters(OLD, **{"req:Echo:200": 7, "req:Echo:503": 1}))
                child.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        totals = board.own_totals()
        assert totals[cell(OLD, "req:Echo:200")] == 12
        assert totals[cell(OLD, "req:Echo:503")] == 1
        assert totals[cell(OLD, "auth:ok")] == 2
        assert sum(totals) == 15


def test_a_respawned_worker_starts_from_its_slots_counts() -> None:
    with board_of(OLD, 2) as (board, _):
        published = counters(OLD, **{"req:Echo:200": 41, "rsum:Echo": 123_456})
        publish(board, 1, published)
        assert board.read_section(1) == published.tolist()
        assert board.read_section(0) == [0] * OLD.cells


def test_gauges_count_only_sections_published_lately() -> None:
    with board_of(OLD, 3) as (board, _):
        publish(board, 0, counters(OLD), NOW_US, connections=4, inflight=2)
        stale_us = NOW_US - STALE_AFTER_US - 1
        publish(board, 1, counters(OLD), stale_us, connections=50, inflight=9)
        # slot 2 never published
        assert board.gauges(NOW_US) == (4, 2)


# -------------------------------------------------------------------------- folds and chains


def test_fold_carries_totals_by_label_into_the_retired_section() -> None:
    with board_of(OLD, 2) as (old, _), board_of(NEW, 2) as (new, _):
        publish(old, 0, counters(OLD, **{
            "req:Echo:200": 3, "req:Gone:200": 9, "up:10.0.0.2:80:200": 3,
            "up:10.0.0.1:80:timeout": 2, "auth:missing": 6, "rsum:Echo": 1_500_000,
        }))  # fmt: skip
        publish(old, 1, counters(OLD, **{"req:Echo:200": 4, "req:(unrouted):404": 1}))
        publish(new, 0, counters(NEW, **{"req:Echo:200": 10}))
        new.fold_from(old)
        assert old.folded and old.seq % 2 == 0 and new.seq % 2 == 0 and new.seq > 0
        totals = new.own_totals()
        assert totals[cell(NEW, "req:Echo:200")] == 17  # 3 + 4 carried, 10 its own
        assert totals[cell(NEW, "req:(unrouted):404")] == 1
        assert totals[cell(NEW, "up:10.0.0.2:80:200")] == 3  # instance 1 there, 0 here
        assert totals[cell(NEW, "auth:missing")] == 6
        assert totals[cell(NEW, "rsum:Echo")] == 1_500_000
        assert totals[cell(NEW, "req:Added:200")] == 0
        # "Gone" and 10.0.0.1 are not in the new config: their series end with the reload.
        assert sum(totals) == 17 + 1 + 3 + 6 + 1_500_000


def test_reader_adds_older_boards_until_they_are_folded_never_twice() -> None:
    with board_of(OLD, 1) as (old, old_fd), board_of(NEW, 2) as (new, _):
        publish(old, 0, counters(OLD, **{"req:Echo:200": 5}), connections=3)
        publish(new, 0, counters(NEW, **{"req:Echo:200": 2}), connections=1)
        reader = BoardReader(new, [MetricsBoard(old_fd)])
        try:
            before = reader.totals(NOW_US)
            assert before is not None
            assert before.cells[cell(NEW, "req:Echo:200")] == 7
            assert before.connections == 4  # the old generation's connections still count
            new.fold_from(old)  # the master, once the old workers have exited
            after = reader.totals(NOW_US)
            assert after is not None
            assert after.cells == before.cells  # carried, not doubled, not lost
            assert after.connections == 1  # a folded generation's gauges are gone
        finally:
            reader.close()


def test_reader_gives_up_while_a_fold_holds_the_sequence_odd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_board, "READ_DEADLINE_S", 0.01)
    with board_of(NEW, 1) as (board, _):
        reader = BoardReader(board)
        board._cells[H_SEQ] = 1  # a master stopped in the middle of a fold
        assert reader.totals(NOW_US) is None
        board._cells[H_SEQ] = 2
        assert reader.totals(NOW_US) is not None


# -------------------------------------------------------------------------- the master's keeper


def test_keeper_chains_supersedes_folds_and_closes() -> None:
    keeper = BoardKeeper()
    first, second, third = (create_metrics_fd(layout, 1) for layout in (OLD, NEW, NEW))
    keeper.add(1, first)
    keeper.add(2, second)
    keeper.add(3, third)
    keeper.add(4, -1)  # metrics off in that generation: nothing kept
    assert 4 not in keeper
    assert keeper.chain(3) == (second, first)
    assert keeper.newer(1) == {second, third}
    view = MetricsBoard(second)
    try:
        keeper.supersede(2, True)
        assert view.superseded
        keeper.supersede(2, False)
        assert not view.superseded
        older = MetricsBoard(first)
        publish(older, 0, counters(OLD, **{"req:Echo:200": 8}))
        older.close()
        keeper.fold(1, into=2)
        assert 1 not in keeper
        assert keeper.chain(3) == (second,)
        assert view.own_totals()[cell(NEW, "req:Echo:200")] == 8
        with pytest.raises(OSError):
            os.fstat(first)  # closed once carried
    finally:
        view.close()
        keeper.close_all()
    for fd in (second, third):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_codes_table_starts_with_no_status() -> None:
    assert CODES[0] == "0" and "200" in CODES and CODES[-1] == "other"
