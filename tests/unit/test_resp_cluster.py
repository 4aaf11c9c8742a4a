"""``fastgw.resp.RespCluster`` and the key-slot function, against a real 3-master Redis Cluster.

The slot function is checked against the Redis Cluster spec's vectors and, with hypothesis,
against ``CLUSTER KEYSLOT`` of a real node. The client runs against
``tests/support/redis_server.running_cluster``: one 3-master Cluster per module for routing,
a live slot migration (``-ASK`` then ``-MOVED``, no command may fail) and a redirect loop (the
bound); a 3+3 Cluster of its own for the failover test, which kills a master. Every wait is on
a callback or a condition under a deadline. The module takes about 10 s, mostly the two
Clusters' start (Redis holds a new master's state at ``fail`` for 2 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.limits import REDIS_CLUSTER_MAX_REDIRECTS, REDIS_CLUSTER_REFRESH_INTERVAL_S
from fastgw.listen import free_port
from fastgw.resp import RedisTimeout, RedisUnavailable, ReplyError, RespCluster, topology
from fastgw.resp.slots import SLOTS, crc16, hash_part, key_slot, parse_slots
from fastgw.resp.topology import ClusterMap
from tests.support.callbacks import WAIT_S, Collect, checked_uvloop, wait_until
from tests.support.redis_server import RedisClusterNodes, RedisServer, running_cluster


@pytest.fixture(scope="module")
def cluster3() -> Iterator[RedisClusterNodes]:
    with running_cluster("fgw-rc3-", masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def node_client(cluster3: RedisClusterNodes) -> Iterator[redis.Redis]:
    with cluster3.masters[0].client() as client:
        yield client


def keys_in_slot(slot: int, count: int) -> list[bytes]:
    """``count`` keys sharing a hash tag whose slot is ``slot``."""
    tag = next(b"t%d" % n for n in range(1_000_000) if key_slot(b"t%d" % n) == slot)
    return [b"{%s}:%d" % (tag, i) for i in range(count)]


def port_of(client: RespCluster, key: bytes) -> int | None:
    """The port of the node ``client`` sends ``key`` to now."""
    address = client.node_of(key)
    return None if address is None else address.port


def owner(cluster: RedisClusterNodes, slot: int) -> RedisServer:
    share = SLOTS // len(cluster.masters)
    return cluster.masters[min(slot // share, len(cluster.masters) - 1)]


# ------------------------------------------------------------------------- key slots


def test_crc16_and_key_slot_match_the_spec_vectors() -> None:
    assert crc16(b"123456789") == 0x31C3  # the spec's check value (CRC16/XMODEM)
    assert key_slot(b"123456789") == 0x31C3 % SLOTS == 12739
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert hash_part(b"foo{}{bar}") == b"foo{}{bar}"  # empty tag: the whole key
    assert hash_part(b"foo{{bar}}zap") == b"{bar"
    assert hash_part(b"foo{bar}{zap}") == b"bar"
    assert hash_part(b"{}") == b"{}" and hash_part(b"}{") == b"}{"


PIECES = st.sampled_from([b"{", b"}", b"{}", b"c:", b"\x00", b"\xff"]) | st.binary(max_size=8)


@settings(max_examples=300, deadline=None)
@given(key=st.lists(PIECES, max_size=6).map(b"".join) | st.binary(max_size=64))
def test_key_slot_agrees_with_cluster_keyslot(node_client: redis.Redis, key: bytes) -> None:
    expected = node_client.execute_command("CLUSTER", "KEYSLOT", key)
    assert key_slot(key) == expected
    assert crc16(hash_part(key)) % SLOTS == expected  # the table-driven twin, too


def test_parse_slots_refuses_other_shapes() -> None:
    ok = [[0, 16383, [b"", 7000, b"id"], [b"10.0.0.2", 7001, b"id2"]]]
    (only,) = parse_slots(ok, "10.0.0.1")
    assert only.master == ("10.0.0.1", 7000) and only.replicas == (("10.0.0.2", 7001),)
    for bad in ([[0, 16384, [b"h", 1]]], [[5, 4, [b"h", 1]]], [[0, 1]], [[0, 1, [b"h"]]], b"x"):
        with pytest.raises(ValueError, match="CLUSTER SLOTS"):
            parse_slots(bad, "h")


# ------------------------------------------------------------------------------ routing


@checked_uvloop
async def test_keys_on_every_master_are_served(cluster3: RedisClusterNodes) -> None:
    client = RespCluster.from_address(cluster3.address, timeout_s=2.0)
    try:
        assert await client.start(wait_s=WAIT_S)
        keys = [b"{c:%d}:x" % n for n in range(300)]
        assert {port_of(client, key) for key in keys} == {m.port for m in cluster3.masters}
        collect = Collect()
        replies: dict[bytes, list[Any]] = {key: [] for key in keys}
        for _round in range(3):
            for key in keys:
                client.send((b"INCR", key), replies[key].append, key)
        await wait_until(lambda: all(len(r) == 3 for r in replies.values()), "900 replies")
        assert all(r == [1, 2, 3] for r in replies.values())  # one connection per node
        assert await client.execute(b"GET", keys[0], key=keys[0]) == b"3"
        assert await client.execute(b"PING") == b"PONG"  # no key: any node
        client.send((b"GET", keys[1]), collect, keys[1])
        assert await collect.wait(1) == [b"3"]
        assert (client.errors, client.moved, client.asked) == (0, 0, 0)
        assert client.connected and client.in_flight == 0
    finally:
        await client.aclose()
    after = Collect()
    client.send((b"GET", b"k"), after, b"k")
    assert type(after.got[0]) is RedisUnavailable
    await client.aclose()  # idempotent


@checked_uvloop
async def test_an_unreachable_cluster_fails_fast() -> None:
    client = RespCluster.from_address(f"127.0.0.1:{free_port()}", timeout_s=0.05)
    try:
        assert not await client.start(wait_s=0.3)
        collect = Collect()
        client.send((b"GET", b"k"), collect, b"k")
        assert type(collect.got[0]) is RedisUnavailable
        assert not client.connected and client.errors == 1
    finally:
        await client.aclose()


@checked_uvloop
async def test_node_pools_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topology, "REDIS_CLUSTER_MAX_NODES", 2)
    nodes = ClusterMap(("127.0.0.1", free_port()), password="", pool_size=1, timeout_s=0.05)
    nodes.bind(asyncio.get_running_loop())
    try:
        first, second, third = (("127.0.0.1", free_port()) for _ in range(3))
        assert nodes.node(first) is not None and nodes.node(second) is not None
        assert nodes.node(third) is None  # a redirect there fails with RedisUnavailable
        assert nodes.node(first) is nodes.pool_of(first)
        assert len(list(nodes.pools())) == 2
    finally:
        await nodes.aclose()
    assert nodes.node(third) is None  # closed: no new pools


class Load:
    """``window`` INCRs in flight over ``keys`` through callbacks; every reply recorded."""

    def __init__(self, client: RespCluster, keys: list[bytes], window: int = 8) -> None:
        self.client, self.keys, self.window = client, keys, window
        self.sent = 0
        self.replies: dict[bytes, list[Any]] = {key: [] for key in keys}
        self.failures: list[BaseException] = []
        self.running = True

    def start(self) -> None:
        for _ in range(self.window):
            self.send_next()

    def send_next(self) -> None:
        key = self.keys[self.sent % len(self.keys)]
        self.sent += 1
        self.client.send((b"INCR", key), lambda reply: self.on_reply(key, reply), key)

    def on_reply(self, key: bytes, reply: object) -> None:
        if isinstance(reply, BaseException):
            self.failures.append(reply)
        else:
            self.replies[key].append(reply)
        if self.running:
            self.send_next()

    def answered(self) -> int:
        return sum(map(len, self.replies.values())) + len(self.failures)

    async def progress(self, count: int = 200) -> None:
        target = self.answered() + count
        await wait_until(lambda: self.answered() >= target, f"{count} more replies")

    async def stop(self) -> None:
        self.running = False
        await wait_until(lambda: self.answered() == self.sent, "the load to drain")


@checked_uvloop
async def test_a_slot_migrated_under_load_is_followed_through_ask_then_moved(
    cluster3: RedisClusterNodes,
) -> None:
    slot = 100
    keys = keys_in_slot(slot, 20)
    source = owner(cluster3, slot)
    target = next(m for m in cluster3.masters if m is not source)
    ids = {node.port: node_id for node_id, node in cluster3.node_ids().items()}
    client = RespCluster.from_address(cluster3.address, timeout_s=2.0)
    try:
        assert await client.start(wait_s=WAIT_S)
        with source.client() as src, target.client() as dst:
            for key in keys:
                src.set(key, 0)
            load = Load(client, keys)
            load.start()
            await load.progress()
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
            await load.progress()
            for batch in (keys[:10], keys[10:]):  # half moved: ASK for those, not the others
                src.execute_command(
                    "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *batch
                )
                await load.progress()
            await wait_until(lambda: client.asked > 0, "an -ASK to be followed")
            for node in (
                target,
                source,
                *(m for m in cluster3.masters if m not in (source, target)),
            ):
                with node.client() as raw:
                    raw.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
            await wait_until(lambda: client.moved > 0, "a -MOVED to be followed")
            await load.progress()
            await wait_until(lambda: port_of(client, keys[0]) == target.port, "the new map")
            await load.progress()
            await load.stop()
        assert load.failures == []
        for key, replies in load.replies.items():
            assert sorted(replies) == list(range(1, len(replies) + 1)), key  # each INCR once
        assert client.errors == 0
        await wait_until(lambda: client.in_flight == 0, "the slot-map refresh to end too")
    finally:
        await client.aclose()


@checked_uvloop
async def test_a_redirect_loop_ends_after_the_bound(cluster3: RedisClusterNodes) -> None:
    """Source MIGRATING to a target that is not IMPORTING: the source answers -ASK (the key is
    not there), the target -MOVED back: the command gets the error after the bound."""
    slot = 200
    (key,) = keys_in_slot(slot, 1)
    source = owner(cluster3, slot)
    target = next(m for m in cluster3.masters if m is not source)
    ids = {node.port: node_id for node_id, node in cluster3.node_ids().items()}
    client = RespCluster.from_address(cluster3.address, timeout_s=2.0)
    try:
        assert await client.start(wait_s=WAIT_S)
        with source.client() as src:
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
            try:
                with pytest.raises(ReplyError, match=r"^(MOVED|ASK) "):
                    await client.execute(b"GET", key, key=key)
            finally:
                src.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert client.moved + client.asked == REDIS_CLUSTER_MAX_REDIRECTS
        assert await client.execute(b"SET", key, b"v", key=key) == b"OK"  # and it recovers
        assert client.errors == 1
    finally:
        await client.aclose()


@checked_uvloop
async def test_a_killed_master_fails_fast_until_its_replica_takes_over() -> None:
    with running_cluster("fgw-rcf-", masters=3, replicas_per_master=1) as cluster:
        client = RespCluster.from_address(cluster.address, timeout_s=0.2)
        try:
            assert await client.start(wait_s=WAIT_S)
            victim, replica = cluster.masters[0], cluster.replicas[0][0]
            doomed = keys_in_slot(10, 5)  # on the victim
            healthy = keys_in_slot(16000, 5)  # on the last master
            for key in doomed + healthy:
                assert await client.execute(b"INCR", key, key=key) == 1
            await client.execute(b"WAIT", b"1", b"1000", key=doomed[0])  # replicated

            refreshes, killed_at = client.refreshes, time.monotonic()
            victim.kill()
            outage = Collect()
            pool = client.pool_of(victim.host, victim.port)
            assert pool is not None
            await wait_until(lambda: not pool.connected, "the victim's connection to drop")
            started = time.monotonic()
            client.send((b"INCR", doomed[0]), outage, doomed[0])
            assert type(outage.got[0]) is RedisUnavailable  # at once, no wait
            assert time.monotonic() - started < 0.05
            for key in healthy:  # the other masters are not affected
                assert await client.execute(b"INCR", key, key=key) == 2

            with replica.client() as raw:
                raw.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            failures: list[BaseException] = []
            deadline = time.monotonic() + WAIT_S
            while True:  # the caller's policy: try again on its next request
                probe = Collect()
                client.send((b"INCR", doomed[0]), probe, doomed[0])
                (reply,) = await probe.wait(1)
                if not isinstance(reply, BaseException):
                    break
                failures.append(reply)
                assert time.monotonic() < deadline, failures[-5:]
                await asyncio.sleep(0.02)  # the next request's arrival, not a readiness wait
            assert reply == 2  # the replica had the data (WAIT above)
            # Every failure asked for a refresh; they ran one at a time, 0.1 s apart at most.
            refresh_bound = (time.monotonic() - killed_at) / REDIS_CLUSTER_REFRESH_INTERVAL_S
            assert 1 <= client.refreshes - refreshes <= refresh_bound + 2
            assert all(type(f) in (RedisUnavailable, RedisTimeout) for f in failures), failures
            assert port_of(client, doomed[0]) == replica.port
            for key in doomed[1:]:
                assert await client.execute(b"INCR", key, key=key) == 2
            assert client.connected
        finally:
            await client.aclose()
