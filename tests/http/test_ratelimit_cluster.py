"""The Redis rate-limit backend through a running gateway, against a real 3-master Redis Cluster.

The gateway (in-process) is seeded with one master's ``host:port`` and ``redis.cluster: true``.
``on_failure: closed`` turns every Redis failure the backend does not recover from (a redirect
not followed, a NOSCRIPT not reloaded, a ``TRYAGAIN``) into a 503, so a test that sees only 200
and 429, in the expected order, saw every decision made by the scripts in the Cluster:

- customers whose hash tags ``{c:<id>}`` sit on different masters (``CLUSTER KEYSLOT`` and
  ``CLUSTER SLOTS`` say where) each get exactly their burst, and their keys live on their
  slot's master;
- the global bucket ``{g}:b`` (``rate_limits.global``) in its own slot;
- ``SCRIPT FLUSH`` on every master: the next calls get NOSCRIPT, are re-sent with EVAL, and
  decide against the unchanged buckets;
- a customer's slot migrated to another master between two requests (IMPORTING / MIGRATING,
  ``MIGRATE`` of the slot's keys, ``SETSLOT NODE`` on every master): the next request follows
  the ``-MOVED`` and the bucket, moved with its key, goes on counting. Requests made while
  the slot is half-moved are decided by Redis too (``on_failure: closed`` would answer 503
  otherwise): a customer is one key, so no ``-TRYAGAIN``; and the local table, which never saw
  the customer, would have allowed a full burst after the move, so the count is Redis's.

One Cluster per module (its start is most of the module's time); each test empties it first
and reads slot owners from the Cluster, so a test may leave a slot moved.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest

from fastgw.ratelimit.script import CUSTOMER, GLOBAL, GLOBAL_KEY
from tests.support.client import RawClient, Response, get
from tests.support.gateway import ECHO_ROUTES, Running, running, uvloop_test
from tests.support.redis_server import RedisClusterNodes, RedisServer, running_cluster

SECRET = "redis-cluster-limits-test-secret-0123456"
PATH = "/echo/private/x"
BURST = 3  # the default tier; no refill during a test
ROOMY = 1_000_000  # a tier (and a global burst) that no test comes near
SLOTS = 16384  # Redis Cluster hash slots


def token(customer: str, tier: str = "free") -> str:
    payload = {"customer_id": customer, "tier": tier, "exp": int(time.time()) + 600}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def config(
    seed: str, *, global_burst: int | None = None, on_failure: str = "closed"
) -> dict[str, Any]:
    limits: dict[str, Any] = {
        "customer_tiers": {
            "free": {"requests_per_second": 0.001, "burst_size": BURST},
            "roomy": {"requests_per_second": 0.001, "burst_size": ROOMY},
        },
        "default_tier": "free",
    }
    if global_burst is not None:
        limits["global"] = {"requests_per_second": 0.001, "burst_size": global_burst}
    return {
        "gateway": {
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "rate_limiting": {
                "backend": "redis",
                "redis": {"address": seed, "cluster": True, "timeout": "500ms", "pool_size": 1},
                "on_failure": on_failure,
            },
        },
        "routes": ECHO_ROUTES,
        "rate_limits": limits,
    }


@pytest.fixture(scope="module")
def cluster3() -> Iterator[RedisClusterNodes]:
    with running_cluster("fgw-rlc-", masters=3) as nodes:
        yield nodes


@pytest.fixture
def cluster(cluster3: RedisClusterNodes) -> RedisClusterNodes:
    """The module's Cluster, every master emptied (FLUSHALL) before the test."""
    for master in cluster3.masters:
        with master.client() as client:
            client.flushall()
    return cluster3


@asynccontextmanager
async def gateway(
    nodes: RedisClusterNodes, **kwargs: Any
) -> AsyncIterator[tuple[Running, RawClient]]:
    async with running(extra=config(nodes.address, **kwargs)) as gw:
        client = await RawClient.connect(gw.port)
        try:
            yield gw, client
        finally:
            await client.close()


async def call(client: RawClient, customer: str, tier: str = "free") -> Response:
    headers = {"Authorization": f"Bearer {token(customer, tier)}"}
    return await client.request(get(PATH, headers=headers))


async def statuses(client: RawClient, customer: str, count: int) -> list[int]:
    return [(await call(client, customer)).status for _ in range(count)]


# -- where keys live ----------------------------------------------------------------------------


def key_slot(nodes: RedisClusterNodes, key: bytes) -> int:
    with nodes.masters[0].client() as client:
        slot: int = client.execute_command("CLUSTER", "KEYSLOT", key)
    return slot


def owner(nodes: RedisClusterNodes, slot: int) -> RedisServer:
    """The master that owns ``slot`` now, from the Cluster's own map (``CLUSTER SLOTS``)."""
    with nodes.masters[0].client() as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    by_port = {master.port: master for master in nodes.masters}
    for first, last, master, *_replicas in ranges:
        if first <= slot <= last:
            return by_port[int(master[1])]
    raise AssertionError(f"slot {slot} has no owner in {ranges}")


def customer_on(nodes: RedisClusterNodes, master: RedisServer, prefix: str) -> str:
    """A customer id whose bucket key's slot ``master`` owns."""
    for n in range(10_000):
        customer = f"{prefix}-{n}"
        if owner(nodes, key_slot(nodes, bucket_key(customer))) is master:
            return customer
    raise AssertionError(f"no customer id on {master.address}")


def bucket_key(customer: str) -> bytes:
    return f"{{c:{customer}}}".encode()


def assert_key_on(nodes: RedisClusterNodes, key: bytes, master: RedisServer) -> None:
    """``key`` exists, with a TTL, on ``master``, which owns its slot."""
    assert owner(nodes, key_slot(nodes, key)) is master
    with master.client() as client:
        assert client.exists(key), (key, master.address)
        assert client.pttl(key) > 0


def node_ids(nodes: RedisClusterNodes) -> dict[int, bytes]:
    """Each master's Cluster node id, by port."""
    ids = {}
    for master in nodes.masters:
        with master.client() as client:
            ids[master.port] = client.execute_command("CLUSTER", "MYID")
    return ids


def same_slot_customer(nodes: RedisClusterNodes, customer: str, prefix: str) -> str:
    """Another customer id whose keys share ``customer``'s slot (CRC16 of the hash tag,
    confirmed by ``CLUSTER KEYSLOT``)."""
    slot = key_slot(nodes, bucket_key(customer))
    for n in range(1_000_000):
        other = f"{prefix}-{n}"
        if binascii.crc_hqx(f"c:{other}".encode(), 0) % SLOTS == slot:
            assert key_slot(nodes, bucket_key(other)) == slot
            return other
    raise AssertionError(f"no customer id in slot {slot}")


class Migration:
    """Moving one slot and its keys from ``source`` to ``target``, step by step, as
    ``redis-cli --cluster reshard`` does."""

    def __init__(
        self, nodes: RedisClusterNodes, slot: int, source: RedisServer, target: RedisServer
    ) -> None:
        self.nodes, self.slot, self.source, self.target = nodes, slot, source, target
        self.ids = node_ids(nodes)

    def open(self) -> None:
        with self.target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        with self.source.client() as src:
            src.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)

    def move_keys(self) -> None:
        target = self.target
        with self.source.client() as src:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 1000)
            assert keys, "nothing to migrate"
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)

    def close(self) -> None:
        others = [m for m in self.nodes.masters if m not in (self.source, self.target)]
        for node in (self.target, self.source, *others):
            with node.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)

    @property
    def source_id(self) -> bytes:
        return self.ids[self.source.port]

    @property
    def target_id(self) -> bytes:
        return self.ids[self.target.port]


# -- tests --------------------------------------------------------------------------------------


@uvloop_test
async def test_customers_on_every_master_get_exactly_their_burst(
    cluster: RedisClusterNodes,
) -> None:
    customers = [customer_on(cluster, master, "spread") for master in cluster.masters]
    slots = [key_slot(cluster, bucket_key(customer)) for customer in customers]
    assert len({owner(cluster, slot).port for slot in slots}) == 3  # one on each master
    async with gateway(cluster) as (_, client):
        replies: dict[str, list[Response]] = {customer: [] for customer in customers}
        for _round in range(BURST + 1):  # interleaved: the masters answer in turn
            for customer in customers:
                replies[customer].append(await call(client, customer))
    for customer, master in zip(customers, cluster.masters, strict=True):
        got = replies[customer]
        assert [r.status for r in got] == [200] * BURST + [429], customer
        assert [r.header("RateLimit-Remaining") for r in got] == [b"2", b"1", b"0", b"0"]
        assert got[-1].json()["error"]["code"] == "rate_limited"  # type: ignore[index]
        assert_key_on(cluster, bucket_key(customer), master)


@uvloop_test
async def test_the_global_bucket_lives_in_its_own_slot(cluster: RedisClusterNodes) -> None:
    global_burst = 4
    customers = [customer_on(cluster, master, "global") for master in cluster.masters]
    async with gateway(cluster, global_burst=global_burst) as (_, client):
        got = [await call(client, customers[n % 3], "roomy") for n in range(global_burst + 2)]
    assert [r.status for r in got] == [200] * global_burst + [429, 429]
    refused = got[-1]
    assert refused.json()["error"]["code"] == "rate_limited"  # type: ignore[index]
    assert refused.header("RateLimit-Limit") == b"%d" % global_burst  # the global level refused
    assert refused.header("Retry-After") is not None
    assert_key_on(cluster, GLOBAL_KEY, owner(cluster, key_slot(cluster, GLOBAL_KEY)))


@uvloop_test
async def test_noscript_after_a_flush_on_every_master_is_recovered(
    cluster: RedisClusterNodes,
) -> None:
    customers = [customer_on(cluster, master, "flush") for master in cluster.masters]
    async with gateway(cluster, global_burst=ROOMY) as (_, client):
        for customer in customers:
            assert await statuses(client, customer, 2) == [200, 200]
        for master in cluster.masters:
            with master.client() as direct:
                direct.script_flush()
        # Both scripts are gone everywhere; the buckets are not: one call left each.
        for customer in customers:
            assert await statuses(client, customer, 2) == [200, 429]
    global_master = owner(cluster, key_slot(cluster, GLOBAL_KEY))
    for master in cluster.masters:  # EVAL reloaded the scripts where they ran
        with master.client() as direct:
            assert direct.script_exists(CUSTOMER.sha1) == [True], master.address
            if master is global_master:
                assert direct.script_exists(GLOBAL.sha1) == [True]


@uvloop_test
async def test_a_migrated_slot_takes_the_bucket_along(cluster: RedisClusterNodes) -> None:
    """Between two requests of ``customer`` its slot moves; ``passer_by`` (same slot) calls
    while the slot is half-moved. ``on_failure: closed``: Redis must decide every one of them
    (a customer is one key, so the source serves it or ``-ASK`` sends it to the target; there
    is no ``-TRYAGAIN`` for keys split across the two), else the answer would be a 503."""
    source, target = cluster.masters[0], cluster.masters[1]
    customer = customer_on(cluster, source, "moving")
    passer_by = same_slot_customer(cluster, customer, "passer")
    slot = key_slot(cluster, bucket_key(customer))
    migration = Migration(cluster, slot, source, target)
    async with gateway(cluster, on_failure="closed") as (gw, client):
        assert await statuses(client, customer, 2) == [200, 200]  # one token left, on source
        window = [await call(client, passer_by)]
        migration.open()
        window.append(await call(client, passer_by))
        migration.move_keys()
        window.append(await call(client, passer_by))
        migration.close()
        assert {r.status for r in window} == {200}, [(r.status, r.body) for r in window]
        assert_key_on(cluster, bucket_key(customer), target)
        with source.client() as direct:  # moved, not copied
            assert direct.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        # The gateway's map still names the source: -MOVED, then the target decides with the
        # bucket it received. (The local table, never used for this customer, would allow 3.)
        replies = [await call(client, customer) for _ in range(2)]
        assert [r.status for r in replies] == [200, 429]
        assert [r.header("RateLimit-Remaining") for r in replies] == [b"0", b"0"]
        limits = gw.gateway.context.plan.limits.redis
        assert limits is not None and limits.client.moved >= 1  # type: ignore[attr-defined]
    assert_key_on(cluster, bucket_key(customer), target)
