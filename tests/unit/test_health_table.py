"""``fastgw.routing.health_table``: the shared-memory health table of one generation.

Layout and validation, the checker's thresholds, the change count (moves on flips and
ejections, not on stats), the ejection read over every worker slot, ``carry_over`` and the
admin snapshot. The cross-process test forks a real child that maps the same memfd, writes
its slot and exits; the parent reads what it wrote after ``waitpid`` (no sleeps).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fastgw.routing.breaker import OPEN
from fastgw.routing.health_table import (
    CELL_BYTES,
    H_MAGIC,
    H_VERSION,
    MAGIC,
    STALE_AFTER_US,
    VERSION,
    HealthTable,
    InstanceStats,
    create_health_fd,
    table_cells,
)

NOW_US = 5_000_000_000  # a CLOCK_MONOTONIC time in µs, well past 0


@contextmanager
def table_of(instances: int, workers: int) -> Iterator[tuple[HealthTable, int]]:
    fd = create_health_fd(instances, workers)
    table = HealthTable(fd)
    try:
        yield table, fd
    finally:
        table.close()
        os.close(fd)


def check(
    table: HealthTable,
    index: int,
    passed: bool,
    now_us: int = NOW_US,
    *,
    unhealthy: int = 3,
    recovery: int = 2,
) -> bool:
    return table.record_check(
        index,
        passed,
        1_500,
        now_us,
        unhealthy_threshold=unhealthy,
        recovery_threshold=recovery,
    )


def stats(breaker: int = 0, inflight: int = 0, latency_us: int = 0, requests: int = 0,
          failures: int = 0) -> InstanceStats:  # fmt: skip
    return InstanceStats(breaker, inflight, latency_us, requests, failures)


# --------------------------------------------------------------------- create / open


def test_create_sizes_the_table_and_open_reads_the_header() -> None:
    with table_of(3, 4) as (table, fd):
        assert os.fstat(fd).st_size == table_cells(3, 4) * CELL_BYTES
        assert (table.instances, table.workers) == (3, 4)
        assert table.changes() == 0


def test_every_instance_starts_up() -> None:
    with table_of(5, 2) as (table, _fd):
        assert [table.up(i) for i in range(5)] == [True] * 5
        assert [table.ejection(i, NOW_US) for i in range(5)] == [(0, 0)] * 5


def test_a_second_mapping_of_the_fd_sees_the_same_cells() -> None:
    with table_of(2, 2) as (table, fd):
        other = HealthTable(fd)
        try:
            for _ in range(3):
                check(table, 1, passed=False)
            assert other.up(1) is False
            other.publish_ejection(1, 0, NOW_US + 1000, 2)
            assert table.ejection(0, NOW_US) == (NOW_US + 1000, 2)
        finally:
            other.close()


@pytest.mark.parametrize(("cell", "value"), [(H_MAGIC, MAGIC + 1), (H_VERSION, VERSION + 1)])
def test_a_bad_magic_or_version_is_refused(cell: int, value: int) -> None:
    fd = create_health_fd(1, 1)
    try:
        with mmap.mmap(fd, 0) as mm:
            cells = memoryview(mm).cast("q")
            cells[cell] = value
            cells.release()
        with pytest.raises(ValueError, match="not a fastgw health table"):
            HealthTable(fd)
    finally:
        os.close(fd)


def test_a_zeroed_memfd_is_refused() -> None:
    fd = os.memfd_create("not-a-table")
    try:
        os.ftruncate(fd, table_cells(1, 1) * CELL_BYTES)
        with pytest.raises(ValueError):
            HealthTable(fd)
    finally:
        os.close(fd)


# -------------------------------------------------------------------- record_check


def test_down_after_exactly_unhealthy_threshold_failures_in_a_row() -> None:
    with table_of(2, 1) as (table, _fd):
        assert [check(table, 0, passed=False) for _ in range(2)] == [False, False]
        assert table.up(0) is True
        assert check(table, 0, passed=False) is True  # the third
        assert table.up(0) is False
        assert table.up(1) is True  # only that row
        assert check(table, 0, passed=False) is False  # already down: no flip
        snap = table.snapshot(0, NOW_US)["active_check"]
        assert snap["consecutive_failures"] == 4  # type: ignore[index]
        assert snap["checks"] == 4  # type: ignore[index]


def test_a_pass_between_failures_resets_the_failure_count() -> None:
    with table_of(1, 1) as (table, _fd):
        assert [check(table, 0, passed=False) for _ in range(2)] == [False, False]
        assert check(table, 0, passed=True) is False
        assert [check(table, 0, passed=False) for _ in range(2)] == [False, False]
        assert table.up(0) is True
        assert check(table, 0, passed=False) is True


def test_up_after_exactly_recovery_threshold_passes_in_a_row() -> None:
    with table_of(1, 1) as (table, _fd):
        for _ in range(3):
            check(table, 0, passed=False)
        assert table.up(0) is False
        assert check(table, 0, passed=True) is False
        assert check(table, 0, passed=False) is False  # resets the passes
        assert check(table, 0, passed=True) is False
        assert table.up(0) is False
        assert check(table, 0, passed=True) is True  # the second in a row
        assert table.up(0) is True
        active = table.snapshot(0, NOW_US)["active_check"]
        assert active["consecutive_failures"] == 0  # type: ignore[index]
        assert active["consecutive_passes"] == 2  # type: ignore[index]
        # and it takes the whole failure streak again to go down
        assert [check(table, 0, passed=False) for _ in range(3)] == [False, False, True]


def test_thresholds_of_one_flip_on_every_change_of_verdict() -> None:
    with table_of(1, 1) as (table, _fd):
        flips = [check(table, 0, p, unhealthy=1, recovery=1) for p in (True, False, False, True)]
        assert flips == [False, True, False, True]


def test_record_check_keeps_latency_time_and_count() -> None:
    with table_of(1, 1) as (table, _fd):
        assert table.snapshot(0, NOW_US)["active_check"] == {
            "up": True,
            "consecutive_failures": 0,
            "consecutive_passes": 0,
            "checks": 0,
            "last_latency_ms": 0.0,
            "last_check_ms_ago": None,
        }
        assert table.check_latency_us(0) == 0
        table.record_check(0, True, 2_500, NOW_US, unhealthy_threshold=3, recovery_threshold=2)
        assert table.check_latency_us(0) == 2_500
        active = table.snapshot(0, NOW_US + 40_000)["active_check"]
        assert active == {
            "up": True,
            "consecutive_failures": 0,
            "consecutive_passes": 1,
            "checks": 1,
            "last_latency_ms": 2.5,
            "last_check_ms_ago": 40,
        }


# ------------------------------------------------------------------------- changes()


def test_changes_move_on_flips_and_ejections_but_not_on_stats() -> None:
    with table_of(2, 3) as (table, _fd):
        seen = table.changes()
        check(table, 0, passed=False)
        check(table, 0, passed=True)
        assert table.changes() == seen  # no flip
        table.publish_stats(1, 4242, NOW_US, [stats(requests=5), stats(failures=2)])
        table.publish_stats(2, 4243, NOW_US, [stats(), stats(breaker=OPEN)])
        assert table.changes() == seen  # stats: every tick, no bump
        for _ in range(3):
            check(table, 1, passed=False)
        assert table.changes() == seen + 1  # the flip down
        table.publish_ejection(2, 0, NOW_US + 10, 1)
        assert table.changes() == seen + 2
        table.publish_ejection(0, 1, NOW_US + 10, 1)
        assert table.changes() == seen + 3  # any slot's ejection counts
        for _ in range(2):
            check(table, 1, passed=True)
        assert table.changes() == seen + 4  # the flip up


# ------------------------------------------------------------------------- ejection()


def test_ejection_is_the_latest_running_one_over_the_slots() -> None:
    with table_of(2, 3) as (table, _fd):
        table.publish_ejection(0, 1, NOW_US + 5_000_000, 1)
        table.publish_ejection(1, 1, NOW_US + 9_000_000, 3)
        table.publish_ejection(2, 1, NOW_US + 7_000_000, 2)
        assert table.ejection(1, NOW_US) == (NOW_US + 9_000_000, 3)
        assert table.ejection(0, NOW_US) == (0, 0)  # other instances untouched


def test_ejection_ignores_expired_ones() -> None:
    with table_of(1, 3) as (table, _fd):
        table.publish_ejection(0, 0, NOW_US + 5_000_000, 1)
        table.publish_ejection(1, 0, NOW_US + 9_000_000, 4)
        table.publish_ejection(2, 0, NOW_US - 1, 7)  # already over
        assert table.ejection(0, NOW_US + 6_000_000) == (NOW_US + 9_000_000, 4)
        assert table.ejection(0, NOW_US + 9_000_000) == (0, 0)  # "until" is exclusive
        assert table.ejection(0, NOW_US + 8_999_999) == (NOW_US + 9_000_000, 4)


def test_a_slot_republishing_replaces_its_own_ejection() -> None:
    with table_of(1, 2) as (table, _fd):
        table.publish_ejection(1, 0, NOW_US + 9_000_000, 1)
        table.publish_ejection(1, 0, NOW_US + 2_000_000, 2)
        assert table.ejection(0, NOW_US) == (NOW_US + 2_000_000, 2)


# ---------------------------------------------------------------------- carry_over


def test_carry_over_maps_old_rows_to_new_ones() -> None:
    with table_of(3, 1) as (old, _old_fd), table_of(2, 2) as (new, _new_fd):
        for _ in range(3):
            check(old, 0, passed=False, now_us=NOW_US + 1)  # old 0: down
        check(old, 2, passed=False, now_us=NOW_US + 2)  # old 2: up, one failure
        seen = new.changes()
        new.carry_over(old, [(2, 0), (0, 1)], NOW_US)
        assert new.changes() == seen + 1  # the workers re-read the verdicts
        assert [new.up(0), new.up(1)] == [True, False]
        assert (
            new.snapshot(0, NOW_US + 2)["active_check"]
            == old.snapshot(2, NOW_US + 2)["active_check"]
        )
        assert (
            new.snapshot(1, NOW_US + 2)["active_check"]
            == old.snapshot(0, NOW_US + 2)["active_check"]
        )
        assert old.up(0) is False  # the source is left as it was


def test_carry_over_with_no_rows_keeps_the_defaults() -> None:
    with table_of(1, 1) as (old, _old_fd), table_of(2, 1) as (new, _new_fd):
        check(old, 0, passed=False, unhealthy=1)
        new.carry_over(old, [], NOW_US)
        assert [new.up(0), new.up(1)] == [True, True]


def test_carry_over_keeps_running_ejections_and_drops_expired_ones() -> None:
    with table_of(3, 2) as (old, _old_fd), table_of(2, 1) as (new, _new_fd):
        old.publish_ejection(1, 0, NOW_US + 5_000_000, 3)  # running
        old.publish_ejection(0, 2, NOW_US - 1, 1)  # over
        new.carry_over(old, [(0, 1), (2, 0)], NOW_US)
        assert new.ejection(1, NOW_US) == (NOW_US + 5_000_000, 3)
        assert new.ejection(0, NOW_US) == (0, 0)


# -------------------------------------------------------------------------- snapshot


def test_snapshot_leaves_out_a_worker_that_stopped_publishing() -> None:
    with table_of(1, 2) as (table, _fd):
        table.publish_stats(0, 100, NOW_US, [stats(0, 1, 1_000, 10, 0)])
        table.publish_stats(1, 101, NOW_US - STALE_AFTER_US - 1, [stats(OPEN, 7, 1_000, 5, 5)])
        assert [w["pid"] for w in table.snapshot(0, NOW_US)["workers"]] == [100]


def test_snapshot_lists_published_slots_with_their_numbers() -> None:
    with table_of(2, 3) as (table, _fd):
        table.publish_stats(
            2,
            777,
            NOW_US - 250_000,
            [stats(OPEN, 4, 12_345, 100, 9), stats(0, 1, 2_000, 50, 0)],
        )
        table.publish_ejection(2, 0, NOW_US + 3_000_000, 2)
        snap = table.snapshot(0, NOW_US)
        assert snap["ejected_for_ms"] == 3000
        assert snap["ejection_streak"] == 2
        assert snap["workers"] == [  # slots 0 and 1 never published: left out
            {
                "slot": 2,
                "pid": 777,
                "breaker": OPEN,
                "inflight": 4,
                "latency_ewma_ms": 12.345,
                "requests": 100,
                "failures": 9,
                "published_ms_ago": 250,
            }
        ]
        other = table.snapshot(1, NOW_US)
        assert other["ejected_for_ms"] == 0
        assert other["ejection_streak"] == 0
        assert other["workers"][0]["requests"] == 50  # type: ignore[index]


def test_snapshot_after_the_ejection_ran_out() -> None:
    with table_of(1, 1) as (table, _fd):
        table.publish_ejection(0, 0, NOW_US + 1_000, 1)
        snap = table.snapshot(0, NOW_US + 2_000)
        assert (snap["ejected_for_ms"], snap["ejection_streak"]) == (0, 0)
        assert snap["workers"] == []  # an ejection alone is not a publication


# -------------------------------------------------------------------- cross-process


def test_a_forked_worker_publishes_into_the_same_table() -> None:
    with table_of(2, 2) as (table, fd):
        before = table.changes()
        pid = os.fork()
        if pid == 0:  # the child: another worker of the generation, slot 1
            code = 1
            try:
                child = HealthTable(fd)
                child.publish_ejection(1, 1, NOW_US + 7_000_000, 3)
                child.publish_stats(
                    1, os.getpid(), NOW_US, [stats(0, 2, 3_000, 10, 1), stats(OPEN, 0, 0, 8, 8)]
                )
                child.close()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert table.changes() == before + 1
        assert table.ejection(1, NOW_US) == (NOW_US + 7_000_000, 3)
        assert table.ejection(0, NOW_US) == (0, 0)
        workers = table.snapshot(1, NOW_US)["workers"]
        assert workers == [
            {
                "slot": 1,
                "pid": pid,
                "breaker": OPEN,
                "inflight": 0,
                "latency_ewma_ms": 0.0,
                "requests": 8,
                "failures": 8,
                "published_ms_ago": 0,
            }
        ]
        assert table.snapshot(0, NOW_US)["workers"][0]["inflight"] == 2  # type: ignore[index]
