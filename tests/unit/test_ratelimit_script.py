"""The Redis rate-limit scripts against their Python reference model, on a real redis-server.

The scripts read Redis ``TIME``; every test here but one passes the test-hook clock (the last
ARGV) so that script and model see the same ``now_us`` and must agree exactly, decision and
stored state. ``test_without_the_hook_the_clock_is_redis_time`` proves the hook is the only
thing that replaces ``TIME``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import redis.cluster
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from fastgw.ratelimit import script as script_module
from fastgw.ratelimit.decision import (
    SHADOW_ALL,
    CustomerRequest,
    Decision,
    GlobalRequest,
    Level,
    decode_reply,
    endpoint_burst,
)
from fastgw.ratelimit.model import DAY_US, UT, ReferenceModel
from fastgw.ratelimit.script import (
    CUSTOMER,
    GLOBAL,
    GLOBAL_KEY,
    customer_argv,
    customer_key,
    endpoint_fields,
    evalsha_or_load,
    global_argv,
)
from tests.support.redis_server import RedisServer, running_redis

T0 = 1_700_000_000 * UT  # 2023-11-14T22:13:20Z, in µs
_ids = itertools.count()


def fresh_id() -> bytes:
    """A customer id no earlier test used: hypothesis examples share one server."""
    return b"cust-%d" % next(_ids)


def run(client: redis.Redis, request: CustomerRequest, now_us: int | None) -> Decision:
    keys = [customer_key(request.customer_id)]
    return decode_reply(
        evalsha_or_load(client, CUSTOMER, keys, customer_argv(request, now_us=now_us))
    )


def run_global(
    client: redis.Redis, request: GlobalRequest, now_us: int | None, key: bytes = GLOBAL_KEY
) -> Decision:
    reply = evalsha_or_load(client, GLOBAL, [key], global_argv(request, now_us=now_us))
    return decode_reply(reply)


@dataclass
class Pair:
    """Script and model side by side: every call must decide the same."""

    client: redis.Redis
    model: ReferenceModel

    def decide(self, request: CustomerRequest, now_us: int) -> Decision:
        got = run(self.client, request, now_us)
        assert got == self.model.decide(request, now_us)
        return got


@pytest.fixture
def client(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    with redis_clean.client() as c:
        yield c


@pytest.fixture
def pair(client: redis.Redis) -> Pair:
    return Pair(client, ReferenceModel())


C1: bytes = customer_key(b"c1")  # the hash of the customer most tests use


def quota_used(client: redis.Redis, customer_id: bytes, day: int) -> int | None:
    """Units the customer's hash counts for ``day`` (None: it counts another day)."""
    recorded_day, used = client.hmget(customer_key(customer_id), "qd", "qu")
    return int(used) if recorded_day == b"%d" % day else None


def req(**kw: object) -> CustomerRequest:
    base: dict[str, object] = {"customer_id": b"c1", "endpoint": b"CreateVM"}
    base.update(kw)
    return CustomerRequest(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------- script against model


@dataclass(frozen=True)
class Step:
    advance_us: int
    customer: int
    endpoint: int
    cost: int
    variant: int
    shadow: int
    is_global: bool


def step_request(
    step: Step,
    customers: list[bytes],
    tiers: list[tuple[tuple[float, int], tuple[float, int]]],
    endpoint_rates: list[float | None],
    day_quotas: list[int | None],
) -> CustomerRequest:
    """The customer request a random step makes, from the example's numbers."""
    rate, burst = tiers[step.customer][step.variant]
    return CustomerRequest(
        customer_id=customers[step.customer],
        endpoint=b"ep%d" % step.endpoint,
        cost=step.cost,
        rate_per_s=rate,
        burst=burst,
        endpoint_rate_per_s=endpoint_rates[step.endpoint],
        daily_quota=day_quotas[step.customer],
        shadow=step.shadow,
    )


steps = st.lists(
    st.builds(
        Step,
        advance_us=st.one_of(
            st.integers(0, 200_000),
            st.integers(0, 5 * UT),
            st.integers(-2 * UT, 0),  # the clock going backwards
            st.sampled_from([0, 1, 999, 1000, 1001, 3600 * UT]),
        ),
        customer=st.integers(0, 2),
        endpoint=st.integers(0, 2),
        cost=st.integers(1, 6),
        variant=st.integers(0, 1),
        shadow=st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7]),
        is_global=st.booleans(),
    ),
    min_size=1,
    max_size=60,
)
rates = st.one_of(
    st.floats(0.01, 2000.0, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 1.0, 1.5, 3.0, 10.0, 1 / 3]),
)
tier = st.tuples(rates, st.integers(1, 40))  # (rate_per_s, burst)
endpoint_numbers = st.one_of(st.none(), rates)
quotas = st.one_of(st.none(), st.integers(0, 80))


@settings(deadline=None, max_examples=150)
@given(
    steps=steps,
    tiers=st.lists(st.tuples(tier, tier), min_size=3, max_size=3),
    endpoint_rates=st.lists(endpoint_numbers, min_size=3, max_size=3),
    day_quotas=st.lists(quotas, min_size=3, max_size=3),
    global_tier=tier,
    start_before_midnight_us=st.integers(0, 30 * UT),
)
def test_script_decides_like_the_model(
    redis_server: RedisServer,
    *,
    steps: list[Step],
    tiers: list[tuple[tuple[float, int], tuple[float, int]]],
    endpoint_rates: list[float | None],
    day_quotas: list[int | None],
    global_tier: tuple[float, int],
    start_before_midnight_us: int,
) -> None:
    model = ReferenceModel()
    customers = [fresh_id() for _ in range(3)]
    global_key = b"{g:%s}:b" % fresh_id()
    now = (T0 // DAY_US + 1) * DAY_US - start_before_midnight_us  # day boundaries get crossed
    with redis_server.client() as client:
        for step in steps:
            now += step.advance_us
            if step.is_global:
                g = GlobalRequest(
                    rate_per_s=global_tier[0], burst=global_tier[1], shadow=bool(step.shadow)
                )
                got = run_global(client, g, now, global_key)
                assert got == model.decide_global(g, now, global_key), step
                continue
            request = step_request(step, customers, tiers, endpoint_rates, day_quotas)
            assert run(client, request, now) == model.decide(request, now), step
        # ... and the state left behind is the model's, to the micro-token
        for key, (tokens, stamp) in model.buckets.items():
            kind, cid, *rest = key
            fields = (b"t", b"ts")
            if kind == "g":
                rkey = global_key
            else:
                assert isinstance(cid, bytes)
                rkey = customer_key(cid)
                if kind == "e":
                    assert isinstance(rest[0], bytes)
                    fields = endpoint_fields(rest[0])
            assert client.hmget(rkey, *fields) == [b"%d" % tokens, b"%d" % stamp]
        for (_, cid), (day, used) in model.used.items():  # the day each customer counts
            assert isinstance(cid, bytes)
            assert client.hmget(customer_key(cid), "qd", "qu") == [b"%d" % day, b"%d" % used]


@settings(deadline=None, max_examples=150)
@given(
    window_us=st.sampled_from([1000, 250_000, UT, 7 * UT, 60 * UT]),
    limit=st.integers(1, 12),
    advances=st.lists(
        st.one_of(
            st.integers(0, 300_000),
            st.integers(0, 20 * UT),
            st.integers(-UT, 0),  # the clock going backwards
            st.sampled_from([0, 1, 999, 1000, UT, 60 * UT, 120 * UT]),
        ),
        min_size=1,
        max_size=60,
    ),
    shadow=st.booleans(),
    combined=st.booleans(),
)
def test_sliding_window_decides_like_the_model(
    redis_server: RedisServer,
    *,
    window_us: int,
    limit: int,
    advances: list[int],
    shadow: bool,
    combined: bool,
) -> None:
    """The global sliding window: global.lua (a Cluster) and customer.lua's KEYS[4] (standalone)
    decide what the model decides, waits and remaining included."""
    model = ReferenceModel()
    g = GlobalRequest(rate_per_s=1.0, burst=limit, window_us=window_us, shadow=shadow)
    key = b"{g:%s}:w" % fresh_id()
    customer = CustomerRequest(
        customer_id=fresh_id(), endpoint=b"ep", rate_per_s=1e6, burst=1_000_000
    )
    now = T0 + 12_345
    with redis_server.client() as client:
        for advance in advances:
            now += advance
            if combined:
                keys = [customer_key(customer.customer_id), key]
                argv = customer_argv(customer, g, now_us=now)
                got = decode_reply(evalsha_or_load(client, CUSTOMER, keys, argv))
                assert got == model.decide_all(customer, g, now), advance
            else:
                got = run_global(client, g, now, key)
                assert got == model.decide_global(g, now, key), advance
            if got.level:
                assert got.retry_after_ms is None or got.retry_after_ms >= 1


def test_sliding_window_admits_the_limit_per_window_and_fades(client: redis.Redis) -> None:
    g = GlobalRequest(rate_per_s=1.0, burst=5, window_us=10 * UT)
    start = (T0 // (10 * UT) + 1) * 10 * UT  # a window boundary
    levels = [run_global(client, g, start + i, b"{g}:w").level for i in range(6)]
    assert levels == [0, 0, 0, 0, 0, Level.GLOBAL]
    refused = run_global(client, g, start + 10, b"{g}:w")
    assert refused.retry_after_ms == 12_000  # next window + 20 % of it, as 5 * 0.8 + 1 <= 5
    at_next = run_global(client, g, start + 10 * UT, b"{g}:w")
    assert at_next.level == Level.GLOBAL and at_next.retry_after_ms == 2000
    assert run_global(client, g, start + 12 * UT, b"{g}:w").level == 0
    assert 0 < client.pttl(b"{g}:w") <= (8 + 10) * 1000 + 5000


@settings(deadline=None, max_examples=100)
@given(
    steps=steps,
    tiers=st.lists(st.tuples(tier, tier), min_size=3, max_size=3),
    endpoint_rates=st.lists(endpoint_numbers, min_size=3, max_size=3),
    day_quotas=st.lists(quotas, min_size=3, max_size=3),
    global_tier=tier,
)
def test_one_script_with_the_global_key_decides_like_the_memory_backend(
    redis_server: RedisServer,
    *,
    steps: list[Step],
    tiers: list[tuple[tuple[float, int], tuple[float, int]]],
    endpoint_rates: list[float | None],
    day_quotas: list[int | None],
    global_tier: tuple[float, int],
) -> None:
    """Standalone Redis: customer.lua with KEYS[4] decides all four levels atomically, exactly
    as ``ReferenceModel.decide_all`` (the spec of the memory backend's table)."""
    model = ReferenceModel()
    customers = [fresh_id() for _ in range(3)]
    global_key = b"{g:%s}:b" % fresh_id()
    now = T0
    with redis_server.client() as client:
        for step in steps:
            now += step.advance_us
            request = step_request(step, customers, tiers, endpoint_rates, day_quotas)
            g = None
            if step.is_global:
                g = GlobalRequest(
                    rate_per_s=global_tier[0], burst=global_tier[1], shadow=bool(step.shadow & 1)
                )
            keys = [customer_key(request.customer_id)]
            if g is not None:
                keys.append(global_key)
            reply = evalsha_or_load(client, CUSTOMER, keys, customer_argv(request, g, now_us=now))
            assert decode_reply(reply) == model.decide_all(request, g, now), step


@settings(deadline=None, max_examples=300)
@given(
    rate=rates,
    burst=st.integers(1, 40),
    endpoint_rate=endpoint_numbers,
    quota=quotas,
    cost=st.integers(1, 6),
    calls=st.integers(1, 60),
    spacing_us=st.integers(0, 300_000),
)
def test_retry_after_is_enough(
    *,
    rate: float,
    burst: int,
    endpoint_rate: float | None,
    quota: int | None,
    cost: int,
    calls: int,
    spacing_us: int,
) -> None:
    """Model only: a refused request, retried alone after ``retry_after``, is allowed."""
    model = ReferenceModel()
    request = req(
        rate_per_s=rate, burst=burst, endpoint_rate_per_s=endpoint_rate,
        daily_quota=quota, cost=cost,
    )  # fmt: skip
    now = T0
    for _ in range(calls):
        decision = model.decide(request, now)
        if not decision.allowed:
            if decision.retry_after_ms is None:
                assert cost > burst or (quota is not None and cost > quota)
                return
            assert decision.retry_after_ms > 0
            retried = model.decide(request, now + decision.retry_after_ms * 1000)
            assert retried.allowed, (decision, retried)
            return
        now += spacing_us


# ---------------------------------------------------------------------------- exactness


def test_burst_then_rate_is_admitted(pair: Pair) -> None:
    request = req(rate_per_s=10.0, burst=20)
    admitted = sum(pair.decide(request, T0).allowed for _ in range(50))
    assert admitted == 20
    now = T0
    for _ in range(5000):  # 5 s in 1 ms steps
        now += 1000
        admitted += pair.decide(request, now).allowed
    assert admitted == 20 + 10 * 5  # exact; the brief allows 1 token of error


def test_fractional_rate_does_not_starve_under_hammering(pair: Pair) -> None:
    """Refusals write nothing, so the floor() of a tiny refill is never lost."""
    request = req(rate_per_s=0.001, burst=1)
    assert pair.decide(request, T0).allowed
    now, admitted = T0, 1
    while now < T0 + 3000 * UT:  # 3000 s at one call per 100 ms: 3 more tokens
        now += 100_000
        admitted += pair.decide(request, now).allowed
    assert admitted == 4


def test_cost_weight_takes_from_bucket_and_quota_not_endpoint(pair: Pair) -> None:
    request = req(cost=3, rate_per_s=1.0, burst=10, endpoint_rate_per_s=5.0, daily_quota=100)
    for _ in range(3):
        assert pair.decide(request, T0).allowed
    refused = pair.decide(request, T0)
    assert refused.level is Level.CUSTOMER and refused.error_code == "rate_limited"
    assert refused.retry_after_ms == 2000  # (3 - 1) tokens / 1 per s
    assert refused.retry_after_s == 2
    assert (refused.limit, refused.remaining) == (10, 1)
    day = T0 // DAY_US
    assert quota_used(pair.client, b"c1", day) == 9  # 3 calls x cost 3
    assert pair.client.hget(C1, "t") == b"%d" % UT  # 10 - 9 tokens
    assert pair.client.hget(C1, b"e:CreateVM:t") == b"%d" % (2 * UT)  # 5 - 3 calls


def test_cost_above_burst_is_never_allowed(pair: Pair) -> None:
    decision = pair.decide(req(cost=11, rate_per_s=100.0, burst=10), T0)
    assert decision.level is Level.CUSTOMER and decision.retry_after_ms is None
    assert pair.client.keys("*") == []  # a refusal writes nothing


def test_endpoint_bucket_refuses_and_takes_nothing_elsewhere(pair: Pair) -> None:
    request = req(rate_per_s=100.0, burst=100, endpoint_rate_per_s=2.5, daily_quota=1000)
    assert request.endpoint_burst == 3 == endpoint_burst(2.5)
    for _ in range(3):
        assert pair.decide(request, T0).allowed
    refused = pair.decide(request, T0)
    assert refused.level is Level.ENDPOINT and refused.retry_after_ms == 400  # 1 / 2.5 s
    assert pair.client.hget(C1, "t") == b"%d" % (97 * UT)
    assert quota_used(pair.client, b"c1", T0 // DAY_US) == 3
    other = pair.decide(replace(request, endpoint=b"ListVMs"), T0)  # its own endpoint bucket
    assert other.allowed


def test_daily_quota_is_exact_and_resets_at_utc_midnight(pair: Pair) -> None:
    day = T0 // DAY_US
    midnight = (day + 1) * DAY_US
    request = req(rate_per_s=1000.0, burst=1000, daily_quota=5, cost=1)
    before = midnight - 100_000  # 23:59:59.900
    assert [pair.decide(request, before).allowed for _ in range(6)] == [True] * 5 + [False]
    refused = pair.decide(request, midnight - 1)
    assert refused.level is Level.QUOTA and refused.error_code == "quota_exceeded"
    assert refused.retry_after_ms == 1  # ceil(1 µs)
    assert (refused.header_level, refused.limit, refused.remaining) == (Level.QUOTA, 5, 0)
    fresh = pair.decide(request, midnight)  # 00:00:00.000 UTC: a new day
    assert fresh.allowed and fresh.header_level is Level.QUOTA and fresh.remaining == 4
    assert fresh.reset_ms == 86_400_000
    assert quota_used(pair.client, b"c1", day + 1) == 1  # the new day replaced the old one


def test_quota_of_zero_and_cost_above_quota(pair: Pair) -> None:
    zero = pair.decide(req(rate_per_s=1.0, burst=5, daily_quota=0), T0)
    assert zero.level is Level.QUOTA and zero.retry_after_ms is None
    above = pair.decide(req(rate_per_s=1.0, burst=5, daily_quota=2, cost=3), T0)
    assert above.level is Level.QUOTA and above.retry_after_ms is None


def test_clock_going_backwards_adds_nothing(pair: Pair) -> None:
    request = req(rate_per_s=1.0, burst=2)
    assert pair.decide(request, T0 + 10 * UT).allowed
    assert pair.decide(request, T0 + 10 * UT).allowed
    back = pair.decide(request, T0)  # 10 s earlier: no refill, and no negative one either
    assert not back.allowed and back.retry_after_ms == 11_000  # measured from the stamp
    assert pair.client.hgetall(C1) == {b"t": b"0", b"ts": b"%d" % (T0 + 10 * UT)}
    assert not pair.decide(request, T0 + 10 * UT + 999_999).allowed
    assert pair.decide(request, T0 + 11 * UT).allowed


def test_most_refusing_level_is_reported_with_the_longest_wait(pair: Pair) -> None:
    request = req(rate_per_s=1.0, burst=1, daily_quota=1, endpoint_rate_per_s=1.0)
    assert pair.decide(request, T0).allowed
    refused = pair.decide(request, T0)
    assert refused.would_refuse == 0b111
    assert refused.refusing_levels == (Level.CUSTOMER, Level.ENDPOINT, Level.QUOTA)
    assert refused.level is Level.QUOTA  # until midnight beats 1 s
    assert refused.retry_after_ms == math.ceil(((T0 // DAY_US + 1) * DAY_US - T0) / 1000)


def test_headers_describe_the_tightest_level(pair: Pair) -> None:
    request = req(rate_per_s=10.0, burst=20, endpoint_rate_per_s=2.0, daily_quota=1000)
    first = pair.decide(request, T0)
    assert (first.header_level, first.limit, first.remaining) == (Level.ENDPOINT, 2, 1)
    assert first.reset_ms == 500  # 1 call / 2 per s until full again
    bare = pair.decide(replace(request, customer_id=b"c2", endpoint_rate_per_s=None), T0)
    assert (bare.header_level, bare.limit, bare.remaining, bare.reset_ms) == (
        Level.CUSTOMER, 20, 19, 100,
    )  # fmt: skip


# ------------------------------------------------------------------------------- shadow


def test_shadow_everything_allows_and_evolves_like_enforcing(pair: Pair) -> None:
    shadow = req(customer_id=b"s", rate_per_s=2.0, burst=3, daily_quota=4, shadow=SHADOW_ALL)
    enforced = replace(shadow, customer_id=b"e", shadow=0)
    now = T0
    for _ in range(20):
        s, e = pair.decide(shadow, now), pair.decide(enforced, now)
        assert s.allowed
        assert s.would_refuse == e.would_refuse and s.retry_after_ms == e.retry_after_ms
        assert s.header_level is Level.NONE  # shadow levels are not advertised
        now += 100_000
    for suffix in (b":b", b":q:%d" % (T0 // DAY_US)):
        values = [pair.client.dump(b"{c:%s}%s" % (c, suffix)) for c in (b"s", b"e")]
        assert values[0] == values[1]


def test_shadow_quota_lets_enforced_levels_take(pair: Pair) -> None:
    request = req(rate_per_s=100.0, burst=10, daily_quota=2, shadow=Level.QUOTA.bit)
    results = [pair.decide(request, T0) for _ in range(5)]
    assert all(d.allowed for d in results)
    assert [d.would_refuse for d in results] == [0, 0, 4, 4, 4]
    assert results[2].retry_after_ms is not None and results[2].retry_after_ms > 0
    assert pair.client.hget(C1, "t") == b"%d" % (5 * UT)  # the enforced bucket took 5
    assert quota_used(pair.client, b"c1", T0 // DAY_US) == 2  # not more than allowed


def test_shadow_global(client: redis.Redis) -> None:
    model = ReferenceModel()
    request = GlobalRequest(rate_per_s=1.0, burst=1, shadow=True)
    decisions = [run_global(client, request, T0) for _ in range(2)]
    assert decisions == [model.decide_global(request, T0, GLOBAL_KEY) for _ in range(2)]
    assert decisions[1].allowed and decisions[1].would_refuse == Level.GLOBAL.bit
    enforced = run_global(client, replace(request, shadow=False), T0)
    assert enforced.level is Level.GLOBAL and enforced.retry_after_ms == 1000


# -------------------------------------------------------------------- Redis mechanics


def test_without_the_hook_the_clock_is_redis_time(client: redis.Redis) -> None:
    def redis_now_us() -> int:
        seconds, micros = client.time()
        return seconds * UT + micros

    request = req(rate_per_s=1.0, burst=5, daily_quota=10)
    before = redis_now_us()
    decision = run(client, request, None)
    after = redis_now_us()
    assert before <= decision.now_us <= after
    assert client.hget(C1, "ts") == b"%d" % decision.now_us
    assert quota_used(client, b"c1", decision.now_us // DAY_US) == 1
    assert customer_argv(request)[-1] == b"0"  # production ARGV: no clock of ours
    g = run_global(client, GlobalRequest(rate_per_s=1.0, burst=1), None)
    assert decision.now_us <= g.now_us <= redis_now_us()


def test_every_key_has_a_ttl(pair: Pair) -> None:
    rate, burst = 2.0, 10
    request = req(rate_per_s=rate, burst=burst, endpoint_rate_per_s=1.0, daily_quota=50, cost=4)
    now = (T0 // DAY_US + 1) * DAY_US - 3600 * UT  # 23:00 UTC
    pair.decide(request, now)
    run_global(pair.client, GlobalRequest(rate_per_s=5.0, burst=5), now)
    keys = sorted(pair.client.keys("*"))
    # The customer's hash lives as long as its longest-lived level needs: here the quota,
    # until 00:00 UTC + 60 s (the buckets need 4/2 s and 1/1 s + 5 s); the global bucket
    # until it is full again + 5 s.
    assert keys == sorted([C1, GLOBAL_KEY])
    assert 3500_000 < pair.client.pttl(C1) <= 3600_000 + 60_000
    assert 0 < pair.client.pttl(GLOBAL_KEY) <= 1 / 5.0 * 1000 + 5000
    # a later call that needs less never shortens it (the quota must outlive the day)
    pair.decide(req(rate_per_s=rate, burst=burst), now + UT)
    assert pair.client.pttl(C1) > 3500_000


def test_a_bucket_only_customer_expires_when_full_again(pair: Pair) -> None:
    pair.decide(req(rate_per_s=2.0, burst=10, cost=4), T0)
    assert 0 < pair.client.pttl(C1) <= 4 / 2.0 * 1000 + 5000


def test_the_customer_script_runs_on_a_cluster(tmp_path: Path) -> None:
    key = customer_key(b"cust-9")
    assert key_slot(GLOBAL_KEY) != key_slot(key)
    with running_redis(cluster=True) as server:
        with server.client() as plain:
            assert plain.execute_command("CLUSTER", "KEYSLOT", key) == key_slot(key)
        cluster = redis.cluster.RedisCluster(host=server.host, port=server.port)
        try:
            request = req(customer_id=b"cust-9", rate_per_s=1.0, burst=2, daily_quota=3)
            d = decode_reply(
                evalsha_or_load(
                    cluster,
                    CUSTOMER,
                    [key],
                    customer_argv(request, now_us=T0),
                )
            )
            assert d == ReferenceModel().decide(request, T0)
            g = GlobalRequest(rate_per_s=1.0, burst=1)
            reply = evalsha_or_load(cluster, GLOBAL, [GLOBAL_KEY], global_argv(g, now_us=T0))
            assert decode_reply(reply).allowed
        finally:
            cluster.close()


def test_noscript_is_recovered_after_script_flush(client: redis.Redis) -> None:
    request = req(rate_per_s=1.0, burst=3)
    assert run(client, request, T0).remaining == 2
    client.script_flush()
    assert client.script_exists(CUSTOMER.sha1, GLOBAL.sha1) == [False, False]
    assert run(client, request, T0).remaining == 1  # EVAL after NOSCRIPT: state intact
    assert client.script_exists(CUSTOMER.sha1) == [True]  # and cached again
    assert client.script_load(CUSTOMER.source) == CUSTOMER.sha1
    assert client.script_load(GLOBAL.source) == GLOBAL.sha1


def test_both_scripts_in_one_pipelined_round_trip(client: redis.Redis) -> None:
    client.script_load(CUSTOMER.source)
    client.script_load(GLOBAL.source)
    request = req(rate_per_s=1.0, burst=3)
    keys = [C1]
    with client.pipeline(transaction=False) as pipe:
        pipe.evalsha(
            GLOBAL.sha1, 1, GLOBAL_KEY, *global_argv(GlobalRequest(rate_per_s=9.0, burst=9))
        )
        pipe.evalsha(CUSTOMER.sha1, len(keys), *keys, *customer_argv(request))
        global_reply, customer_reply = pipe.execute()
    assert decode_reply(global_reply).allowed and decode_reply(customer_reply).allowed


def test_both_scripts_run_the_shared_bucket_code() -> None:
    bucket = (Path(script_module.__file__).parent / "bucket.lua").read_bytes()
    for script in (CUSTOMER, GLOBAL):
        assert bucket in script.source
        assert b"--@include" not in script.source


# ----------------------------------------------------------------------- types at the edge


@pytest.mark.parametrize(
    "kw",
    [
        {"cost": 0},
        {"burst": 0},
        {"rate_per_s": 0.0},
        {"rate_per_s": math.nan},
        {"rate_per_s": math.inf},
        {"endpoint_rate_per_s": -1.0},
        {"daily_quota": -1},
        {"shadow": 16},
        {"burst": 2.5},
        {"burst": 10**10},
    ],
)
def test_requests_out_of_range_are_refused(kw: dict[str, object]) -> None:
    numbers: dict[str, object] = {"rate_per_s": 1.0, "burst": 1}
    with pytest.raises(ValueError):
        req(**{**numbers, **kw})


@pytest.mark.parametrize(
    "reply", [[], [0] * 7, [0] * 9, [0, 0, 0, 0, 0, 0, 0, b"1"], [9, 0, 0, 0, 0, 0, 0, 0]]
)
def test_decode_refuses_other_layouts(reply: list[object]) -> None:
    with pytest.raises(ValueError):
        decode_reply(reply)


def test_decode_reads_never_and_seconds() -> None:
    d = decode_reply([3, 4, -1, 3, 10, 0, 1001, T0])
    assert d.retry_after_ms is None and d.retry_after_s is None and d.reset_s == 2
    assert d.error_code == "quota_exceeded" and not d.allowed
