"""Automatic bans through a running gateway (gateway.security.auto_ban): 401s and 429s count,
the threshold bans the client address (403 ip_blocked, nothing forwarded), the admin port
lists and lifts bans, and a ban runs out."""

from __future__ import annotations

import time
from typing import Any

from tests.support.client import assert_error, get, request_once
from tests.support.gateway import eventually, running, uvloop_test

DEV = {"Authorization": "Bearer dev_customer_acme"}


def bans(threshold: int = 3, ban: str = "60s") -> dict[str, Any]:
    rule = {"enabled": True, "threshold": threshold, "window": "10s", "ban": ban}
    return {"gateway": {"security": {"auto_ban": rule}}}


@uvloop_test
async def test_repeated_401s_ban_the_address_until_an_operator_lifts_it() -> None:
    async with running(extra=bans(threshold=3)) as gw:
        for _ in range(3):  # no token on an authenticated route
            assert_error(await request_once(gw.port, get("/echo/private/x")), 401, "unauthorized")
        banned = await request_once(gw.port, get("/echo/private/x", headers=DEV))
        assert_error(banned, 403, "ip_blocked")  # even with a good token now
        assert gw.backends[0].stats()["requests"] == 0
        listing = (await request_once(gw.gateway.admin_port, get("/admin/bans"))).json()
        assert [b["ip"] for b in listing["bans"]] == ["127.0.0.1"]  # type: ignore[index]
        lift = b"POST /admin/bans/lift?ip=127.0.0.1 HTTP/1.1\r\nHost: a\r\n\r\n"
        answer = await request_once(gw.gateway.admin_port, lift)
        assert answer.status == 200 and answer.json() == {"ip": "127.0.0.1", "lifted": True}
        assert (await request_once(gw.port, get("/echo/private/x", headers=DEV))).status == 200
        bad = await request_once(
            gw.gateway.admin_port, b"POST /admin/bans/lift?ip=nope HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert bad.status == 400


@uvloop_test
async def test_429s_count_and_a_ban_runs_out() -> None:
    extra = bans(threshold=2, ban="300ms")
    extra["rate_limits"] = {"global": {"requests_per_second": 0.001, "burst_size": 1}}
    async with running(extra=extra) as gw:
        assert (await request_once(gw.port, get("/echo/a"))).status == 200  # the one token
        for _ in range(2):
            assert_error(await request_once(gw.port, get("/echo/a")), 429, "rate_limited")
        assert_error(await request_once(gw.port, get("/echo/a")), 403, "ip_blocked")
        bans_now = gw.gateway.context.plan.bans
        assert bans_now is not None
        await eventually(lambda: not bans_now.is_banned(b"127.0.0.1", time.monotonic_ns() // 1000))
        # the ban ran out: back to the rate limit's own answer
        assert_error(await request_once(gw.port, get("/echo/a")), 429, "rate_limited")


@uvloop_test
async def test_bans_are_off_by_default() -> None:
    async with running() as gw:
        for _ in range(60):
            assert_error(await request_once(gw.port, get("/echo/private/x")), 401, "unauthorized")
        assert gw.gateway.context.plan.bans is None
