"""The ban board (shared events, one writer per section) and one worker's bans: counting in a
window, banning at the threshold, sharing through the board, lifts, expiry, carry-over."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from fastgw.security.bans import RING, BanBoard, Bans, create_ban_fd

S = 1_000_000  # µs in a second


@contextmanager
def board(slots: int) -> Iterator[BanBoard]:
    fd = create_ban_fd(slots)
    try:
        table = BanBoard(fd)
        try:
            yield table
        finally:
            table.close()
    finally:
        os.close(fd)


def test_threshold_failures_within_the_window_ban_and_older_ones_do_not_count() -> None:
    with board(1) as shared:
        bans = Bans(shared, 0, threshold=3, window_s=10, ban_s=60)
        bans.failure(b"10.0.0.1", 0)
        bans.failure(b"10.0.0.1", 11 * S)  # the first is out of the window by now
        bans.failure(b"10.0.0.1", 12 * S)
        assert not bans.is_banned(b"10.0.0.1", 12 * S)
        bans.failure(b"10.0.0.1", 13 * S)  # three within 10 s
        assert bans.is_banned(b"10.0.0.1", 13 * S)
        assert bans.is_banned(b"10.0.0.1", 72 * S)
        assert not bans.is_banned(b"10.0.0.1", 73 * S + 1)  # expired
        assert not bans.is_banned(b"10.0.0.2", 13 * S)
        assert bans.count == 1


def test_a_ban_reaches_the_other_workers_and_a_lift_too() -> None:
    with board(2) as shared:
        first = Bans(shared, 0, threshold=2, window_s=10, ban_s=60)
        second = Bans(shared, 1, threshold=2, window_s=10, ban_s=60)
        first.failure(b"198.51.100.7", S)
        first.failure(b"198.51.100.7", 2 * S)
        assert not second.is_banned(b"198.51.100.7", 2 * S)  # until its refresh
        second.refresh(2 * S)
        assert second.is_banned(b"198.51.100.7", 3 * S)
        assert second.listing(3 * S) == [{"ip": "198.51.100.7", "remaining_s": 59.0}]
        assert second.lift(b"198.51.100.7", 4 * S) is True  # an operator, on another worker
        first.refresh(4 * S)
        assert not first.is_banned(b"198.51.100.7", 5 * S)
        assert second.lift(b"198.51.100.7", 5 * S) is False  # nothing left to lift


def test_the_ring_keeps_the_latest_events_and_views_keep_what_they_merged() -> None:
    with board(2) as shared:
        bans = Bans(shared, 0, threshold=1, window_s=1, ban_s=100)
        follower = Bans(shared, 1, threshold=1, window_s=1, ban_s=100)
        laggard = Bans(shared, 1, threshold=1, window_s=1, ban_s=100)
        for n in range(RING + 5):
            bans.failure(b"10.1.%d.%d" % divmod(n, 250), n)
            if n % 100 == 0:
                follower.refresh(n)
        follower.refresh(RING + 5)
        laggard.refresh(RING + 5)
        assert len(shared.events()) == RING
        assert len(bans.banned) == RING + 5  # this worker's own view keeps every ban
        assert len(follower.banned) == RING + 5  # and so does one that refreshes in time
        assert len(laggard.banned) == RING  # one further behind than the ring misses the oldest


def test_events_apply_in_time_order_and_the_shared_section_counts() -> None:
    with board(2) as shared:
        view = Bans(shared, 0, threshold=1, window_s=1, ban_s=100)
        shared.publish(1, b"10.0.0.5", 3 * S, 0)  # a lift, written first but later in time
        shared.publish(shared.shared, b"10.0.0.5", 2 * S, 50 * S)  # a ban from elsewhere
        shared.publish(shared.shared, b"10.0.0.6", 2 * S, 50 * S)
        view.refresh(4 * S)
        assert set(view.banned) == {b"10.0.0.6"}
        view.refresh(5 * S)  # nothing new: nothing changes
        assert set(view.banned) == {b"10.0.0.6"}


def test_carry_over_keeps_running_bans_only() -> None:
    with board(2) as old, board(1) as new:
        Bans(old, 1, threshold=1, window_s=1, ban_s=10).failure(b"10.0.0.1", S)
        Bans(old, 0, threshold=1, window_s=1, ban_s=1).failure(b"10.0.0.2", S)  # over at 2 s
        new.carry_over(old, 5 * S)
        view = Bans(new, 0, threshold=1, window_s=1, ban_s=1)
        view.refresh(5 * S)
        assert set(view.banned) == {b"10.0.0.1"}


def test_a_forked_worker_publishes_into_the_same_board() -> None:
    fd = create_ban_fd(2)
    try:
        pid = os.fork()
        if pid == 0:  # the child: another worker process
            code = 1
            try:
                Bans(BanBoard(fd), 1, threshold=1, window_s=1, ban_s=30).failure(b"::1", S)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        shared = BanBoard(fd)
        try:
            view = Bans(shared, 0, threshold=1, window_s=1, ban_s=30)
            view.refresh(2 * S)
            assert view.is_banned(b"::1", 2 * S)
        finally:
            shared.close()
    finally:
        os.close(fd)


def test_an_oversized_address_is_never_counted() -> None:
    bans = Bans(None, 0, threshold=1, window_s=1, ban_s=1)
    bans.failure(b"x" * 100, 0)
    assert not bans.banned


def test_a_respawned_worker_takes_its_predecessors_bans() -> None:
    with board(2) as shared:
        Bans(shared, 0, threshold=1, window_s=10, ban_s=60).failure(b"10.0.0.1", S)
        replacement = Bans(shared, 0, threshold=1, window_s=10, ban_s=60)  # the same slot
        replacement.refresh(2 * S)
        assert replacement.is_banned(b"10.0.0.1", 3 * S)
