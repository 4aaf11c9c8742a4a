"""Bans shared between gateway instances through a real redis-server (fastgw.security.ban_sync):
each test gives every "instance" its own ban board and its own BanSync, as slot 0 of two
gateway instances would."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from fastgw.config.gateway import RedisConfig
from fastgw.listen import free_port
from fastgw.security.ban_sync import ACTIVE_KEY, EVENTS_KEY, BanSync
from fastgw.security.bans import BanBoard, Bans, create_ban_fd
from tests.support.gateway import eventually, uvloop_test
from tests.support.redis_server import RedisServer, start_redis

S = 1_000_000


def now_us() -> int:
    return time.monotonic_ns() // 1000


@contextmanager
def board(slots: int = 1) -> Iterator[BanBoard]:
    fd = create_ban_fd(slots)
    try:
        shared = BanBoard(fd)
        try:
            yield shared
        finally:
            shared.close()
    finally:
        os.close(fd)


@asynccontextmanager
async def syncing(shared: BanBoard, address: str) -> AsyncIterator[BanSync]:
    sync = BanSync(shared, RedisConfig(address=address))
    sync.start()
    try:
        yield sync
    finally:
        await sync.aclose()


def view(shared: BanBoard, slot: int = 0, ban_s: float = 60) -> Bans:
    return Bans(shared, slot, threshold=1, window_s=10, ban_s=ban_s)


def banned(bans: Bans, address: bytes) -> bool:
    bans.refresh(now_us())
    return bans.is_banned(address, now_us())


@uvloop_test
async def test_a_ban_reaches_another_instance_and_a_lift_comes_back(
    redis_clean: RedisServer,
) -> None:
    with board() as first, board() as second:
        here, there = view(first), view(second)
        async with syncing(first, redis_clean.address), syncing(second, redis_clean.address):
            here.failure(b"203.0.113.9", now_us())  # threshold 1: banned on the first
            await eventually(lambda: banned(there, b"203.0.113.9"))
            remaining = there.listing(now_us())[0]["remaining_s"]
            assert 55 < remaining <= 60  # type: ignore[operator]  # the same end, converted
            with redis_clean.client() as direct:
                assert direct.zscore(ACTIVE_KEY, b"203.0.113.9") is not None
            assert there.lift(b"203.0.113.9", now_us())
            await eventually(lambda: not banned(here, b"203.0.113.9"))
            with redis_clean.client() as direct:
                assert direct.zscore(ACTIVE_KEY, b"203.0.113.9") is None
                assert direct.xlen(EVENTS_KEY) == 2  # one ban, one lift: nothing echoed back


@uvloop_test
async def test_an_instance_that_starts_later_takes_the_running_bans(
    redis_clean: RedisServer,
) -> None:
    with board() as first, board() as late:
        async with syncing(first, redis_clean.address) as sync:
            view(first, ban_s=60).failure(b"2001:db8::7", now_us())
            view(first, ban_s=1).failure(b"198.51.100.1", now_us() - 2 * S)  # already over
            await eventually(lambda: sync.pushed == 1)
        latecomer = view(late)
        async with syncing(late, redis_clean.address):
            await eventually(lambda: banned(latecomer, b"2001:db8::7"))
            assert not banned(latecomer, b"198.51.100.1")


@uvloop_test
async def test_a_respawned_syncer_does_not_push_old_events_again(
    redis_clean: RedisServer,
) -> None:
    with board(2) as shared:
        view(shared, slot=1).failure(b"192.0.2.1", now_us())
        async with syncing(shared, redis_clean.address) as sync:
            await eventually(lambda: sync.pushed == 1)
        async with syncing(shared, redis_clean.address) as again:
            view(shared, slot=1).failure(b"192.0.2.2", now_us())
            await eventually(lambda: again.pushed == 1)
        with redis_clean.client() as direct:
            assert direct.xlen(EVENTS_KEY) == 2


@uvloop_test
async def test_a_trimmed_stream_makes_a_follower_resync_from_the_active_set(
    redis_clean: RedisServer,
) -> None:
    with board() as follower_board:
        follower = view(follower_board)
        async with syncing(follower_board, redis_clean.address) as sync:
            await eventually(lambda: sync.following)
            with redis_clean.client() as direct:
                direct.xadd(EVENTS_KEY, {"ip": "10.9.9.9", "until": "0", "from": "x"})
                await eventually(lambda: sync.pulled == 1)
                # Other instances banned while this one was behind, and the stream was cut
                # past the last entry it read: only the active set still has those bans.
                until_ms = int(time.time() * 1000) + 60_000
                direct.zadd(ACTIVE_KEY, {"10.1.1.1": until_ms, "not an address": until_ms})
                direct.zadd(ACTIVE_KEY, {"10.2.2.2": until_ms})
                direct.xtrim(EVENTS_KEY, maxlen=0)
                direct.xadd(EVENTS_KEY, {"ip": "10.2.2.2", "until": str(until_ms), "from": "x"})
            await eventually(lambda: banned(follower, b"10.1.1.1"))
            await eventually(lambda: banned(follower, b"10.2.2.2"))
            assert set(follower.banned) == {b"10.1.1.1", b"10.2.2.2"}  # garbage ignored


@uvloop_test
async def test_bans_made_while_redis_is_down_are_pushed_when_it_answers(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path / "a", port=port)
    address = f"127.0.0.1:{port}"
    with board() as shared, board() as other:
        remote = view(other)
        try:
            async with syncing(shared, address) as sync, syncing(other, address):
                server.stop()
                local = view(shared)
                local.failure(b"100.64.0.1", now_us())
                assert local.is_banned(b"100.64.0.1", now_us())  # the local ban holds at once
                server = start_redis(tmp_path / "b", port=port)  # a fresh, empty Redis
                await eventually(lambda: sync.pushed == 1, timeout_s=15)
                await eventually(lambda: banned(remote, b"100.64.0.1"), timeout_s=15)
        finally:
            server.stop()


def test_a_config_redis_cannot_use_is_refused_at_once() -> None:
    from fastgw.errors import ConfigError

    with board() as shared, pytest.raises(ConfigError):
        BanSync(shared, RedisConfig(address="127.0.0.1:1", cluster=True, db=3))


@uvloop_test
async def test_bans_are_shared_through_a_redis_cluster(tmp_path: Path) -> None:
    server = start_redis(tmp_path, cluster=True)
    try:
        with board() as first, board() as second:
            there = view(second)
            config = RedisConfig(address=server.address, cluster=True)
            syncers = [BanSync(first, config), BanSync(second, config)]
            for sync in syncers:
                sync.start()
            try:
                view(first).failure(b"203.0.113.77", now_us())
                await eventually(lambda: banned(there, b"203.0.113.77"))
            finally:
                for sync in syncers:
                    await sync.aclose()
    finally:
        server.stop()


@uvloop_test
async def test_a_lift_waiting_on_the_board_is_not_undone_by_a_resync(
    redis_clean: RedisServer,
) -> None:
    with board(2) as shared:
        first, second = view(shared, slot=0), view(shared, slot=1)
        async with syncing(shared, redis_clean.address) as sync:
            second.failure(b"10.0.0.7", now_us())
            await eventually(lambda: sync.pushed == 1)
        # slot 0 is respawned (its successor resyncs) while an operator's lift waits unpushed
        assert second.lift(b"10.0.0.7", now_us())
        async with syncing(shared, redis_clean.address) as again:
            await eventually(lambda: again.pushed == 1 and again.following)
            for worker in (first, second):
                assert not banned(worker, b"10.0.0.7")
        with redis_clean.client() as direct:
            assert direct.zrange(ACTIVE_KEY, 0, -1) == []


@uvloop_test
async def test_a_resync_lifts_what_was_lifted_elsewhere_while_not_following(
    redis_clean: RedisServer,
) -> None:
    with board() as shared:
        local = view(shared)
        async with syncing(shared, redis_clean.address) as sync:
            local.failure(b"10.0.0.8", now_us())
            await eventually(lambda: sync.pushed == 1)
        with redis_clean.client() as direct:  # lifted by another instance meanwhile
            direct.zrem(ACTIVE_KEY, b"10.0.0.8")
            direct.xtrim(EVENTS_KEY, maxlen=0)
        assert banned(local, b"10.0.0.8")
        async with syncing(shared, redis_clean.address):
            await eventually(lambda: not banned(local, b"10.0.0.8"))
