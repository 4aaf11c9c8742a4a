"""Customer affinity through a running gateway: ``consistent_hash`` (the default strategy)
sends every request of a customer to the same instance, spreads customers over the instances,
and on a dead instance the customer's fallback order takes over; anonymous routes go round
robin (mock instances name themselves in ``X-Metald-Instance``)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import jwt

from fastgw.listen import free_port
from tests.support.client import RawClient, get
from tests.support.gateway import ECHO_ROUTES, GENEROUS_LIMITS, running, uvloop_test

SECRET = "routing-test-secret-routing-test-secret!"
PRIVATE = "/echo/private/x"
ANY_30 = range(30)


def auth(customer: str) -> dict[str, str]:
    claims = {"customer_id": customer, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


EXTRA = {
    "gateway": {"authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}}},
    "routing": {"strategy": "consistent_hash"},
    "routes": ECHO_ROUTES,
    "rate_limits": GENEROUS_LIMITS,
}


@uvloop_test
async def test_each_customer_sticks_to_one_instance_and_customers_spread() -> None:
    async with running(backends=3, extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        try:
            seen: dict[str, set[bytes]] = defaultdict(set)
            for _ in range(3):
                for n in range(30):
                    reply = await client.request(get(PRIVATE, headers=auth(f"c{n}")))
                    assert reply.status == 200
                    seen[f"c{n}"].add(reply.header("X-Metald-Instance") or b"")
            assert all(len(instances) == 1 for instances in seen.values())
            owners = Counter(next(iter(instances)) for instances in seen.values())
            assert len(owners) == 3  # 30 customers over 3 instances: each gets some
            anonymous = Counter(
                [(await client.request(get("/echo/x"))).header("X-Metald-Instance") for _ in ANY_30]
            )
            assert anonymous == {b"m0": 10, b"m1": 10, b"m2": 10}  # round robin, equal weights
        finally:
            await client.close()


@uvloop_test
async def test_a_dead_instance_sends_its_customers_down_their_fallback_order() -> None:
    async with running(backends=2, extra=EXTRA, dead_ports=[free_port()]) as gw:
        client = await RawClient.connect(gw.port)
        try:
            for n in range(30):  # about a third of them belong to the dead instance
                replies = [await client.request(get(PRIVATE, headers=auth(f"c{n}"))) for _ in "ab"]
                assert [r.status for r in replies] == [200, 200]
                # the fallback is the ring's next instance: the same one every time
                assert replies[0].header("X-Metald-Instance") == replies[1].header(
                    "X-Metald-Instance"
                )
        finally:
            await client.close()
