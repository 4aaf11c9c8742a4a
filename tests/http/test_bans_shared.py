"""Automatic bans shared by two gateway instances through a real redis-server (auto_ban with
the rate-limit backend redis): a ban earned on one is enforced by the other, and an operator's
lift on either lifts it on both."""

from __future__ import annotations

from typing import Any

from tests.support.client import assert_error, get, request_once
from tests.support.gateway import eventually, running, uvloop_test
from tests.support.redis_server import RedisServer

DEV = {"Authorization": "Bearer dev_customer_acme"}
LIFT = b"POST /admin/bans/lift?ip=127.0.0.1 HTTP/1.1\r\nHost: a\r\n\r\n"


def shared_bans(redis_address: str) -> dict[str, Any]:
    return {
        "gateway": {
            "rate_limiting": {"backend": "redis", "redis": {"address": redis_address}},
            "security": {
                "auto_ban": {"enabled": True, "threshold": 3, "window": "10s", "ban": "60s"}
            },
        }
    }


@uvloop_test
async def test_a_ban_on_one_instance_is_enforced_by_the_other_and_lifted_on_both(
    redis_clean: RedisServer,
) -> None:
    extra = shared_bans(redis_clean.address)
    async with running(extra=extra) as first, running(extra=extra) as second:
        assert (await request_once(second.port, get("/echo/a", headers=DEV))).status == 200
        for _ in range(3):  # no token on an authenticated route, on the first instance only
            assert_error(
                await request_once(first.port, get("/echo/private/x")), 401, "unauthorized"
            )
        assert_error(await request_once(first.port, get("/echo/a", headers=DEV)), 403, "ip_blocked")
        second_bans = second.gateway.context.plan.bans
        assert second_bans is not None
        await eventually(lambda: bool(second_bans.banned))
        assert_error(
            await request_once(second.port, get("/echo/a", headers=DEV)), 403, "ip_blocked"
        )
        assert second.backends[0].stats()["requests"] == 1  # only the request before the ban
        listing = (await request_once(second.gateway.admin_port, get("/admin/bans"))).json()
        assert [b["ip"] for b in listing["bans"]] == ["127.0.0.1"]  # type: ignore[index]

        lifted = await request_once(second.gateway.admin_port, LIFT)  # on the second instance
        assert lifted.json() == {"ip": "127.0.0.1", "lifted": True}
        first_bans = first.gateway.context.plan.bans
        assert first_bans is not None
        await eventually(lambda: not first_bans.banned)
        assert (await request_once(first.port, get("/echo/a", headers=DEV))).status == 200
        assert (await request_once(second.port, get("/echo/a", headers=DEV))).status == 200
