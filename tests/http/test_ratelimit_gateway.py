"""Rate limits end to end: real client sockets → in-process gateway → real backend.

The gateway trusts an HS256 secret; tokens are minted here with the claims each case needs
(``tier``, ``quotas``). Every level is checked through what a client sees (status, JSON body,
``Retry-After``, ``RateLimit-*``), what the backend saw (a refused request never reaches it),
and the limiter's counters (``fastgw_ratelimit_total``).

Clock. The gateway reads the wall clock, so numbers that depend on time are kept away from it:
tiers refill at ``FROZEN_RATE`` (one token in 1000 s), so no token comes back during a test and
``RateLimit-Remaining`` is exact. A ``Reset``/``Retry-After`` of ``T`` whole seconds is exact when
the test takes under a second, and is checked as ``T - floor(elapsed) .. T`` (``within``) so that
a stalled machine cannot make it flaky. Concurrency tests hold requests in a backend of their own
(``HeldBackend``) that answers only when the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from fastgw.listen import free_port
from fastgw.ratelimit.limiter import NEVER_RETRY_S, RateLimiter
from fastgw.stages.ratelimit import RateLimit
from tests.support.client import RawClient, Response, assert_error, get
from tests.support.gateway import Running, eventually, running, uvloop_test

SECRET = "rate-limit-tests-hs256-secret-0123456789abcdef"
FROZEN_RATE = 0.001  # tokens/s: one token in 1000 s, i.e. no refill during a test
TOKEN_S = 1000  # seconds one token takes to refill at FROZEN_RATE
PRIVATE = "/echo/private/x"
SLOW = "/echo/slow/x"
HEAVY = "/echo/heavy/x"
OPEN = "/echo/open"
ROUTES: list[dict[str, Any]] = [
    {"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"},
    {"endpoint": "Private", "path_prefix": "/echo/private"},
    {"endpoint": "Slow", "path_prefix": "/echo/slow"},
    {"endpoint": "Heavy", "path_prefix": "/echo/heavy"},
]


def tier(burst: int, *, rate: float = FROZEN_RATE, per_day: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"requests_per_second": rate, "burst_size": burst}
    if per_day is not None:
        out["requests_per_day"] = per_day
    return out


def config(
    rate_limits: dict[str, Any], routes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "gateway": {"authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}}},
        "routes": ROUTES if routes is None else routes,
        "rate_limits": rate_limits,
    }


def token(customer: str, tier_name: str | None = None, quotas: object = None) -> dict[str, str]:
    """The Authorization header of a fresh HS256 token (valid for an hour)."""
    claims: dict[str, Any] = {"customer_id": customer, "exp": int(time.time()) + 3600}
    if tier_name is not None:
        claims["tier"] = tier_name
    if quotas is not None:
        claims["quotas"] = quotas
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@asynccontextmanager
async def serving(
    rate_limits: dict[str, Any], routes: list[dict[str, Any]] | None = None
) -> AsyncIterator[tuple[Running, RawClient]]:
    async with running(extra=config(rate_limits, routes)) as gw:
        client = await RawClient.connect(gw.port)
        try:
            yield gw, client
        finally:
            await client.close()


def limiter(gw: Running) -> RateLimiter:
    found: RateLimiter = gw.gateway.context.plan.limits.limiter
    return found


def counts(gw: Running) -> dict[tuple[str, str], int]:
    """The non-zero ``fastgw_ratelimit_total`` counters."""
    return {key: n for key, n in limiter(gw).counts.as_dict().items() if n}


def backend_requests(gw: Running) -> int:
    return sum(int(mock.stats()["requests"]) for mock in gw.backends)


def headers_of(response: Response) -> tuple[int, int, int] | None:
    """``(RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset)``, or None when absent."""
    values = [response.header(f"ratelimit-{name}") for name in ("limit", "remaining", "reset")]
    if all(value is None for value in values):
        return None
    assert all(value is not None for value in values), response.headers
    limit, remaining, reset = (int(value or b"") for value in values)
    return limit, remaining, reset


def all_shown(response: Response) -> tuple[int, int, int]:
    """``(RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset)``; they must be there."""
    found = headers_of(response)
    assert found is not None, response.headers
    return found


def shown(response: Response) -> tuple[int, int]:
    """``(RateLimit-Limit, RateLimit-Remaining)``; they must be there."""
    limit, remaining, _ = all_shown(response)
    return limit, remaining


def within(got: int, whole_s: int, started: float) -> bool:
    """``got`` is ``ceil(whole_s - e)`` for some ``0 <= e <= elapsed`` since ``started``: the
    gateway counts from its first decision, which came after ``started``."""
    elapsed = time.monotonic() - started
    return whole_s - math.floor(elapsed) <= got <= whole_s


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def skip_near_midnight() -> None:
    # A UTC day that ends during the test starts a fresh quota: the outcome would depend on it.
    if seconds_to_utc_midnight() < 30:
        pytest.skip("too close to 00:00 UTC for a daily-quota test")


def retry_after(response: Response) -> int:
    value = response.header("retry-after")
    assert value is not None, response.headers
    return int(value)


async def call(client: RawClient, path: str, auth: dict[str, str] | None = None) -> Response:
    return await client.request(get(path, headers=auth))


# ----------------------------------------------------------------------- customer bucket


@uvloop_test
async def test_burst_then_429_with_exact_body_and_headers() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(3)}}) as (gw, client):
        started = time.monotonic()
        for taken in (1, 2, 3):
            response = await call(client, PRIVATE, auth)
            assert response.status == 200, response.body
            limit, remaining, reset = all_shown(response)
            assert (limit, remaining) == (3, 3 - taken)
            assert within(reset, taken * TOKEN_S, started), reset
            assert response.header("retry-after") is None
        for _ in range(2):  # refused twice: a refusal takes nothing, so nothing changes
            refused = await call(client, PRIVATE, auth)
            assert_error(refused, 429, "rate_limited")
            limit, remaining, reset = all_shown(refused)
            assert (limit, remaining) == (3, 0)
            assert within(reset, 3 * TOKEN_S, started), reset
            assert within(retry_after(refused), TOKEN_S, started)
            assert refused.header("connection") is None  # keep-alive (HTTP/1.1 default)
        assert backend_requests(gw) == 3
        assert counts(gw) == {("customer", "allowed"): 3, ("customer", "limited"): 2}
        # the connection stays usable after a 429 (keep-alive), for a route without limits
        assert not client.eof
        follow = await call(client, OPEN)
        assert follow.status == 200
        assert headers_of(follow) is None


@uvloop_test
async def test_pipelined_requests_past_the_burst_never_reach_the_backend() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(3)}}) as (gw, client):
        await client.send(b"".join(get(f"{PRIVATE}/{i}", headers=auth) for i in range(6)))
        responses = await client.read_responses(6)
        assert [r.status for r in responses] == [200, 200, 200, 429, 429, 429]
        assert [shown(r)[1] for r in responses] == [2, 1, 0, 0, 0, 0]
        assert backend_requests(gw) == 3
        assert (await call(client, OPEN)).status == 200


@uvloop_test
async def test_head_request_on_a_429_gets_the_head_only() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(1)}}) as (gw, client):
        assert (await call(client, PRIVATE, auth)).status == 200
        head_request = get(PRIVATE, headers=auth).replace(b"GET ", b"HEAD ", 1)
        await client.send(head_request + get(OPEN))
        # httptools cannot know a response answers HEAD: read the raw head instead
        head = (await client.reader.readuntil(b"\r\n\r\n")).lower()
        assert head.startswith(b"http/1.1 429")
        assert b"\r\ncontent-length: " in head
        assert b"\r\nretry-after: " in head
        assert b"\r\nratelimit-limit: 1\r\n" in head
        assert b"\r\nratelimit-remaining: 0\r\n" in head
        # the next bytes are the next response, not a body of the 429
        follow = await client.read_one()
        assert follow.status == 200
        assert backend_requests(gw) == 2


@uvloop_test
async def test_refill_lets_the_customer_back_in_after_retry_after() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(1, rate=2.0)}}) as (_, client):
        refused = None
        for _ in range(50):  # a token per 500 ms: a 429 comes within a few back-to-back calls
            response = await call(client, PRIVATE, auth)
            if response.status == 429:
                refused = response
                break
            assert response.status == 200
        assert refused is not None
        assert retry_after(refused) == 1  # at most 500 ms, rounded up to whole seconds
        deadline = time.monotonic() + retry_after(refused) + 2.0
        while (await call(client, PRIVATE, auth)).status != 200:
            assert time.monotonic() < deadline, "not admitted again after Retry-After"
            await asyncio.sleep(0.05)


@uvloop_test
async def test_customers_have_independent_buckets() -> None:
    alice, bob = token("alice"), token("bob")
    async with serving({"customer_tiers": {"free": tier(3)}}) as (gw, client):
        for _ in range(3):
            assert (await call(client, PRIVATE, alice)).status == 200
        assert (await call(client, PRIVATE, alice)).status == 429
        response = await call(client, PRIVATE, bob)
        assert response.status == 200
        assert shown(response) == (3, 2)
        assert backend_requests(gw) == 4


@uvloop_test
async def test_unknown_or_missing_tier_gets_the_default_tiers_numbers() -> None:
    limits = {
        "customer_tiers": {"free": tier(3), "silver": tier(5), "gold": tier(7)},
        "default_tier": "silver",
    }
    cases = [("c1", "platinum", 5), ("c2", None, 5), ("c3", "gold", 7), ("c4", "free", 3)]
    cases.append(("c5", "dev", 5))  # the development tokens' tier: never unlimited from a JWT
    async with serving(limits) as (_, client):
        for customer, tier_name, burst in cases:
            auth = token(customer, tier_name)
            for taken in range(1, burst + 1):
                response = await call(client, PRIVATE, auth)
                assert response.status == 200, (customer, taken)
                assert shown(response) == (burst, burst - taken)
            assert (await call(client, PRIVATE, auth)).status == 429, customer


# ----------------------------------------------------------------------- endpoint bucket


@uvloop_test
async def test_endpoint_level_refuses_while_the_customer_bucket_has_tokens() -> None:
    limits = {
        "customer_tiers": {"free": tier(10)},
        "endpoints": {"Slow": {"requests_per_second": FROZEN_RATE}},  # burst ceil(0.001) = 1
    }
    auth = token("acme")
    async with serving(limits) as (gw, client):
        started = time.monotonic()
        first = await call(client, SLOW, auth)
        assert first.status == 200
        # the tightest level: the endpoint bucket (0 calls left) rather than the customer's 9
        limit, remaining, reset = all_shown(first)
        assert (limit, remaining) == (1, 0)
        assert within(reset, TOKEN_S, started)
        refused = await call(client, SLOW, auth)
        assert_error(refused, 429, "rate_limited")
        assert shown(refused) == (1, 0)
        assert within(retry_after(refused), TOKEN_S, started)
        # the refused call took nothing from the customer bucket: 10 - Slow - this call = 8
        other = await call(client, PRIVATE, auth)
        assert other.status == 200
        assert shown(other) == (10, 8)
        assert backend_requests(gw) == 2
        got = counts(gw)
        assert got[("endpoint", "allowed")] == 1
        assert got[("endpoint", "limited")] == 1
        assert ("customer", "limited") not in got


# ------------------------------------------------------------------------ cost and quota


@uvloop_test
async def test_cost_weight_takes_from_the_customer_bucket() -> None:
    limits = {"customer_tiers": {"free": tier(10)}, "endpoints": {"Heavy": {"cost_weight": 4}}}
    auth = token("acme")
    async with serving(limits) as (gw, client):
        started = time.monotonic()
        for remaining in (6, 2):
            response = await call(client, HEAVY, auth)
            assert response.status == 200
            assert shown(response) == (10, remaining)
        refused = await call(client, HEAVY, auth)  # needs 4, 2 left: 2 tokens to refill
        assert_error(refused, 429, "rate_limited")
        assert shown(refused) == (10, 2)
        assert within(retry_after(refused), 2 * TOKEN_S, started)
        light = await call(client, PRIVATE, auth)  # cost 1 still fits
        assert light.status == 200
        assert shown(light) == (10, 1)
        assert backend_requests(gw) == 3


@uvloop_test
async def test_cost_weight_takes_from_the_daily_quota() -> None:
    skip_near_midnight()
    limits = {
        "customer_tiers": {"free": tier(100, per_day=10)},
        "endpoints": {"Heavy": {"cost_weight": 4}},
    }
    auth = token("acme")
    async with serving(limits) as (gw, client):
        for remaining in (6, 2):  # the quota has fewer calls left (6 // 4) than the bucket
            response = await call(client, HEAVY, auth)
            assert response.status == 200
            limit, left, reset = all_shown(response)
            assert (limit, left) == (10, remaining)
            assert abs(reset - seconds_to_utc_midnight()) <= 2
        refused = await call(client, HEAVY, auth)
        assert_error(refused, 429, "quota_exceeded")
        assert shown(refused) == (10, 2)
        assert abs(retry_after(refused) - seconds_to_utc_midnight()) <= 2
        for remaining in (1, 0):
            light = await call(client, PRIVATE, auth)
            assert light.status == 200
            assert shown(light) == (10, remaining)
        assert_error(await call(client, PRIVATE, auth), 429, "quota_exceeded")
        assert backend_requests(gw) == 4
        # the refusals took nothing from the customer bucket: 100 - 4 - 4 - 1 - 1
        assert counts(gw)[("quota", "limited")] == 2


@uvloop_test
async def test_daily_quota_exceeded_until_utc_midnight() -> None:
    skip_near_midnight()
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(100, per_day=3)}}) as (gw, client):
        for taken in (1, 2, 3):
            response = await call(client, PRIVATE, auth)
            assert response.status == 200
            assert shown(response) == (3, 3 - taken)
        refused = await call(client, PRIVATE, auth)
        assert_error(refused, 429, "quota_exceeded")
        wait_s = retry_after(refused)
        assert 0 < wait_s <= 86_400
        assert abs(wait_s - seconds_to_utc_midnight()) <= 2
        limit, remaining, reset = all_shown(refused)
        assert (limit, remaining) == (3, 0)
        assert abs(reset - wait_s) <= 1
        assert backend_requests(gw) == 3
        assert counts(gw)[("quota", "limited")] == 1


@uvloop_test
async def test_quota_zero_in_the_quotas_claim_refuses_everything() -> None:
    none_today = token("acme", quotas={"requests_per_day": 0})
    async with serving({"customer_tiers": {"free": tier(100, per_day=1000)}}) as (gw, client):
        for _ in range(3):
            refused = await call(client, PRIVATE, none_today)
            assert_error(refused, 429, "quota_exceeded")
            assert retry_after(refused) == NEVER_RETRY_S  # no wait lets a call through
            assert shown(refused) == (0, 0)
        assert backend_requests(gw) == 0
        # another customer of the same tier is not affected
        assert (await call(client, PRIVATE, token("other"))).status == 200


@uvloop_test
async def test_quotas_claim_overrides_the_tiers_numbers() -> None:
    skip_near_midnight()
    limits = {"customer_tiers": {"free": tier(3, per_day=1000)}}
    async with serving(limits) as (gw, client):
        started = time.monotonic()
        bigger = token("big", quotas={"burst_size": 5, "other_business_quota": 7})
        for taken in range(1, 6):
            response = await call(client, PRIVATE, bigger)
            assert response.status == 200
            assert shown(response) == (5, 5 - taken)
        refused = await call(client, PRIVATE, bigger)
        assert_error(refused, 429, "rate_limited")
        assert within(retry_after(refused), TOKEN_S, started)

        faster = token("fast", quotas={"requests_per_second": 2 * FROZEN_RATE, "burst_size": 2})
        for _ in range(2):
            assert (await call(client, PRIVATE, faster)).status == 200
        refused = await call(client, PRIVATE, faster)
        assert_error(refused, 429, "rate_limited")
        assert within(retry_after(refused), TOKEN_S // 2, started)

        two_a_day = token("daily", quotas={"requests_per_day": 2})
        for taken in (1, 2):
            response = await call(client, PRIVATE, two_a_day)
            assert response.status == 200
            assert shown(response) == (2, 2 - taken)
        assert_error(await call(client, PRIVATE, two_a_day), 429, "quota_exceeded")
        assert backend_requests(gw) == 9


@pytest.mark.parametrize(
    "quotas",
    [
        {"burst_size": 0},
        {"burst_size": 1.5},
        {"burst_size": 2_000_000_000},
        {"requests_per_second": 0},
        {"requests_per_second": 2e9},
        {"requests_per_day": 2.5},
        {"requests_per_day": -1},
        {"burst_size": "5"},
        {"burst_size": True},
        ["burst_size", 5],
        "burst_size=5",
    ],
    ids=repr,
)
@uvloop_test
async def test_an_invalid_quotas_claim_makes_the_token_401(quotas: object) -> None:
    async with serving({"customer_tiers": {"free": tier(3)}}) as (gw, client):
        refused = await call(client, PRIVATE, token("acme", quotas=quotas))
        assert_error(refused, 401, "unauthorized")
        assert refused.header("www-authenticate") == b'Bearer error="invalid_token"'
        assert headers_of(refused) is None
        assert backend_requests(gw) == 0
        assert counts(gw) == {}
        assert (await call(client, PRIVATE, token("acme"))).status == 200


@uvloop_test
async def test_a_cost_that_can_never_fit_gets_retry_after_a_day() -> None:
    skip_near_midnight()
    limits = {
        "customer_tiers": {"free": tier(10), "daily": tier(100, per_day=10)},
        "endpoints": {"Heavy": {"cost_weight": 20}},
    }
    async with serving(limits) as (gw, client):
        above_burst = await call(client, HEAVY, token("acme"))
        assert_error(above_burst, 429, "rate_limited")
        assert retry_after(above_burst) == NEVER_RETRY_S
        above_quota = await call(client, HEAVY, token("big", "daily"))
        assert_error(above_quota, 429, "quota_exceeded")
        assert retry_after(above_quota) == NEVER_RETRY_S
        # nothing was taken: both still have their whole bucket for a call of cost 1
        for auth, burst in ((token("acme"), 10), (token("big", "daily"), 10)):
            response = await call(client, PRIVATE, auth)
            assert response.status == 200
            assert shown(response) == (burst, burst - 1)
        assert backend_requests(gw) == 2


@uvloop_test
async def test_headers_describe_the_level_with_the_fewest_calls_left() -> None:
    limits = {
        "customer_tiers": {"free": tier(5)},
        "global": {"requests_per_second": FROZEN_RATE, "burst_size": 3},
    }
    async with serving(limits) as (_, client):
        auth = token("acme")
        # customer 5 -> 4 left, global 3 -> 2 left: the global bucket is the tighter
        assert shown(await call(client, PRIVATE, auth)) == (3, 2)
        assert shown(await call(client, PRIVATE, auth)) == (3, 1)
        # another customer's call: the global bucket, shared, is down to 0
        assert shown(await call(client, PRIVATE, token("b"))) == (3, 0)
        assert_error(await call(client, PRIVATE, auth), 429, "rate_limited")


@uvloop_test
async def test_a_refused_request_with_a_body_leaves_the_connection_usable() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(1)}}) as (gw, client):
        assert (await call(client, PRIVATE, auth)).status == 200
        body = b"x" * 1000
        lines = [f"POST {PRIVATE} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}"]
        lines.append(f"Authorization: {auth['Authorization']}")
        await client.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body + get(OPEN))
        refused, follow = await client.read_responses(2)
        assert_error(refused, 429, "rate_limited")
        assert follow.status == 200  # the body was skipped, not read as a request
        assert backend_requests(gw) == 2


@uvloop_test
async def test_when_several_levels_refuse_the_longest_wait_is_told() -> None:
    skip_near_midnight()
    async with serving({"customer_tiers": {"free": tier(1, per_day=1)}}) as (gw, client):
        auth = token("acme")
        assert (await call(client, PRIVATE, auth)).status == 200
        # the bucket is empty (1000 s) and the quota used up (until midnight): the quota's
        # wait is the one a client must honour, unless midnight comes sooner
        refused = await call(client, PRIVATE, auth)
        until_midnight = seconds_to_utc_midnight()
        if until_midnight > TOKEN_S + 2:
            assert_error(refused, 429, "quota_exceeded")
            assert abs(retry_after(refused) - until_midnight) <= 2
        assert counts(gw)[("customer", "limited")] == 1
        assert counts(gw)[("quota", "limited")] == 1


@uvloop_test
async def test_a_429_to_expect_100_continue_sends_no_100() -> None:
    auth = token("acme")
    async with serving({"customer_tiers": {"free": tier(1)}}) as (gw, client):
        assert (await call(client, PRIVATE, auth)).status == 200
        lines = [f"POST {PRIVATE} HTTP/1.1", "Host: gw", "Content-Length: 10"]
        lines += ["Expect: 100-continue", f"Authorization: {auth['Authorization']}"]
        await client.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        refused = await client.read_one()  # answered without the body being sent
        assert_error(refused, 429, "rate_limited")
        assert b"100 Continue" not in client.raw
        if refused.header("connection") == b"close":
            assert await client.closed_by_peer()
        else:  # kept alive: the body, when it comes, must be skipped
            await client.send(b"0123456789" + get(OPEN))
            assert (await client.read_one()).status == 200
        assert backend_requests(gw) == 1


# -------------------------------------------------------------------------------- shadow


@uvloop_test
async def test_shadow_every_level_never_refuses_and_counts_as_if_enforcing() -> None:
    skip_near_midnight()
    limits = {
        "customer_tiers": {"free": tier(3, per_day=100)},
        "endpoints": {"Slow": {"requests_per_second": FROZEN_RATE}},
        "global": {"requests_per_second": FROZEN_RATE, "burst_size": 1000},
        "shadow": ["customer", "endpoint", "quota", "global"],
    }
    async with serving(limits) as (gw, client):
        # a: 6 calls on a burst of 3; b: 3 calls on an endpoint of 1; c: 3 calls, quota 1
        plan = [
            (token("a"), PRIVATE, 6),
            (token("b"), SLOW, 3),
            (token("c", quotas={"requests_per_day": 1}), PRIVATE, 3),
        ]
        for auth, path, calls in plan:
            for _ in range(calls):
                response = await call(client, path, auth)
                assert response.status == 200, response.body
                assert response.header("retry-after") is None
        assert backend_requests(gw) == 12
        # Shadow levels take what enforcing levels would have taken (customer.lua, "Shadow"),
        # so the counters are those of enforcing: a refused call takes from no level.
        assert counts(gw) == {
            ("customer", "allowed"): 9,
            ("customer", "limited"): 3,
            ("endpoint", "allowed"): 1,
            ("endpoint", "limited"): 2,
            ("quota", "allowed"): 10,
            ("quota", "limited"): 2,
            ("global", "allowed"): 12,
        }


@pytest.mark.parametrize("shadow", ["customer", ["customer"]])
@uvloop_test
async def test_shadow_customer_level_alone(shadow: object) -> None:
    async with serving({"customer_tiers": {"free": tier(3)}, "shadow": shadow}) as (gw, client):
        auth = token("acme")
        for _ in range(5):
            assert (await call(client, PRIVATE, auth)).status == 200
        assert backend_requests(gw) == 5
        assert counts(gw) == {("customer", "allowed"): 3, ("customer", "limited"): 2}


@uvloop_test
async def test_shadow_endpoint_level_alone_keeps_the_customer_level_enforced() -> None:
    limits = {
        "customer_tiers": {"free": tier(3)},
        "endpoints": {"Slow": {"requests_per_second": FROZEN_RATE}},
        "shadow": ["endpoint"],
    }
    async with serving(limits) as (gw, client):
        auth = token("acme")
        for remaining in (2, 1, 0):  # the endpoint would refuse the 2nd and 3rd: shadow
            response = await call(client, SLOW, auth)
            assert response.status == 200
            # headers describe enforced levels only: the customer bucket, which did take
            assert shown(response) == (3, remaining)
        assert_error(await call(client, PRIVATE, auth), 429, "rate_limited")
        assert backend_requests(gw) == 3
        assert counts(gw) == {
            ("customer", "allowed"): 3,
            ("customer", "limited"): 1,
            ("endpoint", "allowed"): 1,
            ("endpoint", "limited"): 2,
        }


@uvloop_test
async def test_shadow_quota_level_alone() -> None:
    skip_near_midnight()
    limits = {"customer_tiers": {"free": tier(10, per_day=2)}, "shadow": "quota"}
    async with serving(limits) as (gw, client):
        auth = token("acme")
        for remaining in (9, 8, 7, 6):
            response = await call(client, PRIVATE, auth)
            assert response.status == 200
            assert shown(response) == (10, remaining)
        assert backend_requests(gw) == 4
        assert counts(gw) == {
            ("customer", "allowed"): 4,
            ("quota", "allowed"): 2,
            ("quota", "limited"): 2,
        }


@uvloop_test
async def test_shadow_global_level_alone() -> None:
    limits = {
        "global": {"requests_per_second": FROZEN_RATE, "burst_size": 2},
        "shadow": ["global"],
    }
    async with serving(limits) as (gw, client):
        for _ in range(4):
            assert (await call(client, OPEN)).status == 200
        assert backend_requests(gw) == 4
        assert counts(gw) == {("global", "allowed"): 2, ("global", "limited"): 2}


# ----------------------------------------------------------------- dev tokens, anonymous


@uvloop_test
async def test_development_tokens_have_no_limits() -> None:
    limits = {"customer_tiers": {"free": tier(1, per_day=1)}}
    async with serving(limits) as (gw, client):
        dev = {"Authorization": "Bearer dev_customer_42"}
        for _ in range(10):
            response = await call(client, PRIVATE, dev)
            assert response.status == 200
            assert headers_of(response) is None
        assert backend_requests(gw) == 10
        assert counts(gw) == {}


def route_stages(gw: Running, path: bytes) -> list[object]:
    route = gw.gateway.context.plan.router.match(b"GET", path)
    assert route is not None
    return [getattr(step, "__self__", None) for step in route.steps]


@uvloop_test
async def test_anonymous_route_limited_by_the_global_bucket() -> None:
    limits = {
        "customer_tiers": {"free": tier(100)},
        "global": {"requests_per_second": FROZEN_RATE, "burst_size": 2},
    }
    async with serving(limits) as (gw, client):
        assert any(isinstance(stage, RateLimit) for stage in route_stages(gw, b"/echo/open"))
        started = time.monotonic()
        for remaining in (1, 0):
            response = await call(client, OPEN)
            assert response.status == 200
            assert shown(response) == (2, remaining)
        refused = await call(client, OPEN)
        assert_error(refused, 429, "rate_limited")
        assert within(retry_after(refused), TOKEN_S, started)
        # the global bucket is shared by all traffic: authenticated calls are refused too
        assert_error(await call(client, PRIVATE, token("acme")), 429, "rate_limited")
        assert backend_requests(gw) == 2
        assert counts(gw)[("global", "limited")] == 2


@uvloop_test
async def test_anonymous_route_has_no_limit_stage_without_a_global_limit() -> None:
    async with serving({"customer_tiers": {"free": tier(1)}}) as (gw, client):
        assert not any(isinstance(stage, RateLimit) for stage in route_stages(gw, b"/echo/open"))
        assert any(isinstance(stage, RateLimit) for stage in route_stages(gw, PRIVATE.encode()))
        for _ in range(5):
            response = await call(client, OPEN)
            assert response.status == 200
            assert headers_of(response) is None
        assert counts(gw) == {}


# --------------------------------------------------------------------------- concurrency


class HeldBackend:
    """A backend that reads each request head and answers only when the test releases it
    (``release_one``: the oldest held request; ``release_all``), so the gateway keeps those
    requests in flight as long as the test needs. Requests without a body only."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nheld"
    HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def __init__(self) -> None:
        self.arrived = 0
        self._gates: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> HeldBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.release_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()  # after the handlers: 3.12 waits for connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /health "):  # the gateway's active health check
                    writer.write(self.HEALTHY)
                    continue
                self.arrived += 1
                gate = asyncio.Event()
                self._gates.append(gate)
                await gate.wait()
                writer.write(self.ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    def release_one(self) -> None:
        self._gates.pop(0).set()

    def release_all(self) -> None:
        while self._gates:
            self.release_one()


@asynccontextmanager
async def held_gateway(max_concurrent: int) -> AsyncIterator[tuple[Running, HeldBackend]]:
    async with HeldBackend() as backend:
        # one tier with every slot (shed_above 1.0): anonymous traffic ranks with it
        tiers = {"free": {"requests_per_second": 10}}
        extra = config({"global": {"max_concurrent": max_concurrent}, "customer_tiers": tiers})
        async with running(backends=0, extra=extra, dead_ports=[backend.port]) as gw:
            yield gw, backend


@uvloop_test
async def test_max_concurrent_refuses_with_503_and_frees_a_slot_on_release() -> None:
    async with held_gateway(2) as (gw, backend):
        held = [await RawClient.connect(gw.port) for _ in range(2)]
        extra = await RawClient.connect(gw.port)
        try:
            for index, client in enumerate(held):
                await client.send(get(f"/echo/held/{index}"))
            await eventually(lambda: backend.arrived == 2)
            assert limiter(gw).inflight == 2
            refused = await extra.request(get("/echo/held/extra"))
            assert_error(refused, 503, "overloaded")
            assert refused.header("retry-after") == b"1"
            assert limiter(gw).counts.concurrency_refused == 1
            assert backend.arrived == 2

            backend.release_one()
            first = await held[0].read_one()
            assert (first.status, first.body) == (200, b"held")
            await eventually(lambda: limiter(gw).inflight == 1)
            # the same connection, refused before, now gets the free slot
            await extra.send(get("/echo/held/extra"))
            await eventually(lambda: backend.arrived == 3)
            assert limiter(gw).inflight == 2
            backend.release_all()
            assert (await held[1].read_one()).status == 200
            assert (await extra.read_one()).status == 200
            await eventually(lambda: limiter(gw).inflight == 0)
            assert limiter(gw).counts.concurrency_refused == 1
        finally:
            for client in (*held, extra):
                await client.close()


@uvloop_test
async def test_a_client_that_disconnects_while_held_releases_its_slot() -> None:
    async with held_gateway(1) as (gw, backend):
        leaving = await RawClient.connect(gw.port)
        staying = await RawClient.connect(gw.port)
        try:
            await leaving.send(get("/echo/held/leaving"))
            await eventually(lambda: backend.arrived == 1)
            assert_error(await staying.request(get("/echo/held/early")), 503, "overloaded")
            await leaving.close()
            await eventually(lambda: limiter(gw).inflight == 0)
            await staying.send(get("/echo/held/staying"))
            await eventually(lambda: backend.arrived == 2)
            backend.release_all()
            response = await staying.read_one()
            assert (response.status, response.body) == (200, b"held")
            await eventually(lambda: limiter(gw).inflight == 0)
        finally:
            with contextlib.suppress(Exception):
                await leaving.close()
            await staying.close()


@uvloop_test
async def test_every_way_an_exchange_ends_gives_its_slot_back() -> None:
    """A 429, a 401 and proxied answers: none may keep its slot."""
    limits = {
        "customer_tiers": {"free": tier(1)},
        "global": {"max_concurrent": 1},
    }
    async with serving(limits) as (gw, client):
        auth = token("acme")
        assert (await call(client, PRIVATE, auth)).status == 200
        assert (await call(client, PRIVATE, auth)).status == 429
        assert (await call(client, PRIVATE, {"Authorization": "Bearer nope"})).status == 401
        assert (await call(client, OPEN)).status == 200
        await eventually(lambda: limiter(gw).inflight == 0)
        assert limiter(gw).counts.concurrency_refused == 0


@uvloop_test
async def test_upstream_timeout_and_failure_give_the_slot_back() -> None:
    routes = [{"endpoint": "Quick", "path_prefix": "/echo", "auth": "none", "timeout": "200ms"}]
    async with HeldBackend() as backend:
        extra = config({"global": {"max_concurrent": 1}}, routes)
        async with running(backends=0, extra=extra, dead_ports=[backend.port]) as gw:
            client = await RawClient.connect(gw.port)
            try:
                assert_error(await call(client, "/echo/slow"), 504, "upstream_timeout")
                await eventually(lambda: limiter(gw).inflight == 0)
                backend.release_all()
            finally:
                await client.close()
    async with running(backends=0, extra=extra, dead_ports=[free_port()]) as gw:
        client = await RawClient.connect(gw.port)
        try:
            failed = await call(client, "/echo/nowhere")
            assert failed.status in (502, 503), failed.body
            await eventually(lambda: limiter(gw).inflight == 0)
            assert limiter(gw).counts.concurrency_refused == 0
        finally:
            await client.close()


@uvloop_test
async def test_development_tokens_skip_the_concurrency_cap() -> None:
    """A2: a dev token has no limits, and max_concurrent is one (the held anonymous request
    holds the only slot; the dev request is still forwarded)."""
    async with HeldBackend() as backend:
        extra = config({"global": {"max_concurrent": 1}})
        extra["gateway"]["authentication"]["development"] = {"enabled": True}
        async with running(backends=0, extra=extra, dead_ports=[backend.port]) as gw:
            held = await RawClient.connect(gw.port)
            dev = await RawClient.connect(gw.port)
            try:
                await held.send(get(f"{OPEN}/held"))
                await eventually(lambda: backend.arrived == 1)
                assert limiter(gw).inflight == 1
                dev_auth = {"Authorization": "Bearer dev_customer_7"}
                await dev.send(get(PRIVATE, headers=dev_auth))
                await eventually(lambda: backend.arrived == 2)  # forwarded, not refused
                assert limiter(gw).inflight == 1
                assert limiter(gw).counts.concurrency_refused == 0
                backend.release_all()
                assert (await held.read_one()).status == 200
                assert (await dev.read_one()).status == 200
            finally:
                await held.close()
                await dev.close()


@uvloop_test
async def test_shedding_under_overload_keeps_admitted_enterprise_traffic_fast() -> None:
    # 10 slots; free traffic is shed at half of them, so enterprise always finds a slot.
    tiers = {
        "free": {"requests_per_second": 1e6, "burst_size": 10**6, "shed_above": 0.5},
        "enterprise": {"requests_per_second": 1e6, "burst_size": 10**6},
    }
    extra = config({"global": {"max_concurrent": 10}, "customer_tiers": tiers})
    async with running(backends=1, extra=extra) as gw:
        gw.backends[0].behaviour.delay_ms = 50
        free_codes: list[int] = []
        stop = asyncio.Event()

        async def flood(n: int) -> None:
            client = await RawClient.connect(gw.port)
            headers = token(f"free-{n}", "free")
            try:
                while not stop.is_set():
                    free_codes.append(
                        (await client.request(get("/echo/private/f", headers=headers))).status
                    )
            finally:
                await client.close()

        floods = [asyncio.create_task(flood(n)) for n in range(20)]
        await eventually(lambda: 503 in free_codes)  # the free tier is being shed
        vip = await RawClient.connect(gw.port)
        latencies = []
        try:
            for _ in range(30):
                started = time.monotonic()
                response = await vip.request(
                    get("/echo/private/e", headers=token("big", "enterprise"))
                )
                latencies.append(time.monotonic() - started)
                assert response.status == 200, response.body
        finally:
            stop.set()
            await asyncio.gather(*floods)
            await vip.close()
        assert set(free_codes) <= {200, 503}
        assert free_codes.count(200) > 0  # shed, not starved: free still got its 5 slots
        latencies.sort()
        assert latencies[-1] < 1.0  # every enterprise request: the backend's 50 ms plus little
        assert limiter(gw).counts.concurrency_refused == free_codes.count(503)
