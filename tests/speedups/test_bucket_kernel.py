"""Behaviour of the shared rate-limit table (``LimitTable``), on both builds.

Levels, waits and headers against hand-computed numbers and ``ReferenceModel.decide_all``;
random call sequences against the model; set-associative eviction; argument and header checks;
exact limits across real processes; the compiled build's lock takeover from a dead holder.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._speedups import Build, bucket_py, hashring_py
from fastgw.ratelimit.decision import (
    CustomerRequest,
    Decision,
    GlobalRequest,
    Level,
    endpoint_burst,
)
from fastgw.ratelimit.model import DAY_US, ReferenceModel

NOW = 20_000 * DAY_US + 12 * 3_600_000_000  # noon UTC, day 20000 (2024-10-04)
MIDNIGHT = 20_001 * DAY_US  # the next 00:00 UTC
# The layout the docstring of bucket_py.py documents; the sizes come from the kernel's own
# table_bytes, so a layout change moves these with it (the lock cells' places stay documented).
WAYS = 8
HEADER_CELLS = bucket_py.table_bytes(0) // 8
SET_CELLS = (bucket_py.table_bytes(1) - bucket_py.table_bytes(0)) // 8
GLOBAL_LOCK_CELL = 4
JOIN_S = 30.0  # a hung child fails the test, it never hangs the run


def lock_cell(set_index: int) -> int:
    return HEADER_CELLS + set_index * SET_CELLS


class Out(NamedTuple):
    """A decision without ``now_us``; ``retry_after_ms`` None: never."""

    level: int
    would_refuse: int
    retry_after_ms: int | None
    header_level: int
    limit: int
    remaining: int
    reset_ms: int


@dataclass(frozen=True)
class Req:
    """One request in the model's terms; ``shadow`` is the kernel's mask (bit 8: global)."""

    customer: bytes
    rate: float
    burst: int
    cost: int = 1
    endpoint: int = -1  # -1: no endpoint bucket
    endpoint_rate: float = 1.0
    daily_quota: int | None = None
    global_rate: float = 1.0
    global_burst: int = 0  # 0: no global level
    shadow: int = 0
    global_window_us: int = 0  # > 0: the global level is a sliding window of global_burst


def fingerprint(build: Build, customer: bytes) -> int:
    return int(build.bucket.customer_fingerprint(build.hashring.hash64(customer)))


def kernel_args(build: Build, now_us: int, req: Req) -> tuple[Any, ...]:
    return (
        now_us,
        fingerprint(build, req.customer),
        req.cost,
        req.rate,
        req.burst,
        req.endpoint,
        req.endpoint_rate,
        endpoint_burst(req.endpoint_rate),
        -1 if req.daily_quota is None else req.daily_quota,
        req.global_rate,
        req.global_burst,
        req.shadow,
        req.global_window_us,
    )


def kernel_decide(table: Any, build: Build, now_us: int, req: Req) -> Out:
    level = table.decide(*kernel_args(build, now_us, req))
    retry = table.retry_after_ms
    return Out(
        level,
        table.would_refuse,
        None if retry == -1 else retry,
        table.header_level,
        table.limit,
        table.remaining,
        table.reset_ms,
    )


def model_decide(model: ReferenceModel, now_us: int, req: Req) -> Out:
    request = CustomerRequest(
        customer_id=req.customer,
        endpoint=b"e%d" % req.endpoint,
        cost=req.cost,
        rate_per_s=req.rate,
        burst=req.burst,
        endpoint_rate_per_s=req.endpoint_rate if req.endpoint >= 0 else None,
        daily_quota=req.daily_quota,
        shadow=req.shadow & ~Level.GLOBAL.bit,
    )
    global_request = None
    if req.global_burst > 0:
        global_request = GlobalRequest(
            rate_per_s=req.global_rate,
            burst=req.global_burst,
            shadow=bool(req.shadow & Level.GLOBAL.bit),
            window_us=req.global_window_us,
        )
    d = model.decide_all(request, global_request, now_us)
    return Out(
        d.level, d.would_refuse, d.retry_after_ms, d.header_level, d.limit, d.remaining, d.reset_ms
    )


def as_decision(out: Out, now_us: int) -> Decision:
    return Decision(
        Level(out.level),
        out.would_refuse,
        out.retry_after_ms,
        Level(out.header_level),
        out.limit,
        out.remaining,
        out.reset_ms,
        now_us,
    )


@contextlib.contextmanager
def table_of(build: Build, sets: int) -> Iterator[tuple[Any, int]]:
    """A new table of ``sets`` sets in a memfd: ``(table, fd)``, closed on exit."""
    fd = os.memfd_create("fastgw-test-limits")
    try:
        os.ftruncate(fd, build.bucket.table_bytes(sets))
        table = build.bucket.LimitTable(fd, create=True)
        try:
            yield table, fd
        finally:
            table.close()
    finally:
        os.close(fd)


class Twin:
    """A table and the reference model fed the same calls; ``decide`` checks they agree."""

    def __init__(self, build: Build, table: Any) -> None:
        self.build = build
        self.table = table
        self.model = ReferenceModel()

    def decide(self, now_us: int, req: Req) -> Out:
        got = kernel_decide(self.table, self.build, now_us, req)
        assert got == model_decide(self.model, now_us, req), (now_us, req)
        return got


@pytest.fixture
def twin(speedups: Build) -> Iterator[Twin]:
    with table_of(speedups, 64) as (table, _fd):
        yield Twin(speedups, table)


@contextlib.contextmanager
def cells_of(fd: int) -> Iterator[memoryview]:
    """The table's cells through this test's own mapping (to set lock cells by hand)."""
    mm = mmap.mmap(fd, os.fstat(fd).st_size)
    cells = memoryview(mm).cast("q")
    try:
        yield cells
    finally:
        cells.release()
        mm.close()


# ----------------------------------------------------------------------- one customer


SIMPLE = Req(b"alice", rate=10.0, burst=20)


def test_burst_then_refusal(twin: Twin) -> None:
    for k in range(1, 21):
        assert twin.decide(NOW, SIMPLE) == Out(0, 0, 0, 1, 20, 20 - k, k * 100)
    refused = twin.decide(NOW, SIMPLE)
    assert refused == Out(1, 0b1, 100, 1, 20, 0, 2000)
    decision = as_decision(refused, NOW)
    assert decision.error_code == "rate_limited"
    assert decision.retry_after_s == 1
    assert twin.decide(NOW, SIMPLE) == refused  # the refusal took nothing


def test_refill_after_time_passes(twin: Twin) -> None:
    for _ in range(20):
        twin.decide(NOW, SIMPLE)
    assert twin.decide(NOW + 99_999, SIMPLE).retry_after_ms == 1
    assert twin.decide(NOW + 100_000, SIMPLE) == Out(0, 0, 0, 1, 20, 0, 2000)
    assert twin.decide(NOW + 150_000, SIMPLE) == Out(1, 1, 50, 1, 20, 0, 1950)
    assert twin.decide(NOW + 450_000, SIMPLE) == Out(0, 0, 0, 1, 20, 2, 1750)  # 2.5 left
    # long idle: full again, never above the burst
    assert twin.decide(NOW + 3_600_000_000, SIMPLE) == Out(0, 0, 0, 1, 20, 19, 100)


def test_endpoint_refuses_while_the_customer_has_tokens(twin: Twin) -> None:
    req = Req(b"bob", rate=100.0, burst=100, endpoint=0, endpoint_rate=2.0)  # endpoint burst 2
    assert twin.decide(NOW, req) == Out(0, 0, 0, 2, 2, 1, 500)
    assert twin.decide(NOW, req) == Out(0, 0, 0, 2, 2, 0, 1000)
    assert twin.decide(NOW, req) == Out(2, 0b10, 500, 2, 2, 0, 1000)
    assert twin.decide(NOW, req) == Out(2, 0b10, 500, 2, 2, 0, 1000)
    # the customer bucket paid for the two calls allowed, not for the refusals
    assert twin.decide(NOW, replace(req, endpoint=-1)) == Out(0, 0, 0, 1, 100, 97, 30)
    # another endpoint of the same customer has its own bucket
    assert twin.decide(NOW, replace(req, endpoint=1)).level == 0


def test_cost_weight_takes_cost_from_bucket_and_quota_but_one_from_endpoint(twin: Twin) -> None:
    req = Req(b"carol", rate=1e-3, burst=20, cost=3, endpoint=0, endpoint_rate=4.5, daily_quota=12)
    to_midnight_ms = (MIDNIGHT - NOW) // 1000
    # quota 12 - 3k is the level with the fewest calls left (customer 20 - 3k, endpoint 5 - k)
    for k in range(1, 5):
        assert twin.decide(NOW, req) == Out(0, 0, 0, 3, 12, 12 - 3 * k, to_midnight_ms)
    refused = twin.decide(NOW, req)
    assert refused == Out(3, 0b100, to_midnight_ms, 3, 12, 0, to_midnight_ms)
    assert as_decision(refused, NOW).error_code == "quota_exceeded"
    # without the quota: customer 8 tokens (4 x 3 taken), endpoint 1 call (4 x 1 taken)
    no_quota = replace(req, cost=1, daily_quota=None)
    assert twin.decide(NOW, no_quota) == Out(0, 0, 0, 2, 5, 0, 1112)
    assert twin.decide(NOW, no_quota).level == 2
    assert twin.decide(NOW, replace(no_quota, endpoint=-1)).remaining == 6  # 8 - 1 - 1


def test_daily_quota_is_exact_and_resets_at_midnight(twin: Twin) -> None:
    req = Req(b"dave", rate=1000.0, burst=1000, daily_quota=5)
    before = MIDNIGHT - 10_000_000
    for k in range(1, 6):
        assert twin.decide(before, req) == Out(0, 0, 0, 3, 5, 5 - k, 10_000)
    refused = twin.decide(before, req)
    assert refused == Out(3, 0b100, 10_000, 3, 5, 0, 10_000)
    assert as_decision(refused, before).error_code == "quota_exceeded"
    assert twin.decide(MIDNIGHT - 1_000_000, req).retry_after_ms == 1000
    assert twin.decide(MIDNIGHT - 1, req) == Out(3, 0b100, 1, 3, 5, 0, 1)
    assert twin.decide(MIDNIGHT, req) == Out(0, 0, 0, 3, 5, 4, 86_400_000)
    for _ in range(4):
        assert twin.decide(MIDNIGHT + 1, req).level == 0
    assert twin.decide(MIDNIGHT + 1, req).level == 3
    # A customer counts one day, the last it counted (as customer.lua's one hash does): a
    # clock that goes back across midnight counts that day from zero again.
    assert twin.decide(MIDNIGHT - 2, req) == Out(0, 0, 0, 3, 5, 4, 1)


def test_daily_quota_zero_refuses_everything(twin: Twin) -> None:
    req = Req(b"erin", rate=1000.0, burst=1000, daily_quota=0)
    for now in (NOW, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + DAY_US):
        refused = twin.decide(now, req)
        assert refused.level == 3
        assert refused.retry_after_ms is None  # never: the cost exceeds the quota
        assert (refused.limit, refused.remaining) == (0, 0)


def test_cost_above_burst_is_never_allowed(twin: Twin) -> None:
    req = Req(b"frank", rate=1.0, burst=5, cost=6)
    refused = twin.decide(NOW, req)
    assert refused == Out(1, 0b1, None, 1, 5, 5, 0)
    assert as_decision(refused, NOW).retry_after_s is None
    assert twin.decide(NOW, replace(req, cost=5)) == Out(0, 0, 0, 1, 5, 0, 5000)  # took nothing
    # a cost above the daily quota is never allowed either
    above_quota = twin.decide(NOW, Req(b"frank-2", rate=1.0, burst=50, cost=6, daily_quota=5))
    assert (above_quota.level, above_quota.retry_after_ms) == (3, None)


def test_global_bucket_is_shared_by_all_customers(twin: Twin) -> None:
    def req(name: bytes) -> Req:
        return Req(name, rate=100.0, burst=100, global_rate=1.0, global_burst=3)

    for name in (b"g1", b"g2", b"g3"):
        assert twin.decide(NOW, req(name)).level == 0
    assert twin.decide(NOW, req(b"g4")) == Out(4, 0b1000, 1000, 4, 3, 0, 3000)
    assert twin.decide(NOW, req(b"g1")).level == 4
    # the refusals took nothing from the customers' own buckets
    assert twin.decide(NOW, replace(req(b"g4"), global_burst=0)).remaining == 99
    assert twin.decide(NOW + 1_000_000, req(b"g5")).level == 0


def test_customer_fp_zero_decides_the_global_bucket_only(speedups: Build) -> None:
    with table_of(speedups, 4) as (table, _fd):
        # customer_fp 0: a route without a customer (documented in LimitTable.decide)
        assert table.decide(NOW, 0, 1, 1.0, 1, 0, 1.0, 1, 0, 2.0, 2, 0) == 0
        assert (table.header_level, table.limit, table.remaining) == (4, 2, 1)
        assert table.decide(NOW, 0, 1, 1.0, 1, -1, 1.0, 1, -1, 2.0, 2, 0) == 0
        assert table.decide(NOW, 0, 1, 1.0, 1, -1, 1.0, 1, -1, 2.0, 2, 0) == 4
        assert table.retry_after_ms == 500
        # no level at all: allowed, no headers
        assert table.decide(NOW, 0, 1, 1.0, 1, -1, 1.0, 1, -1, 2.0, 0, 0) == 0
        assert (table.header_level, table.would_refuse, table.retry_after_ms) == (0, 0, 0)


def test_clock_going_backwards_adds_nothing(twin: Twin) -> None:
    later = NOW + 10_000_000
    for _ in range(20):
        assert twin.decide(later, SIMPLE).level == 0
    # 5 s earlier: no refill; the wait counts from the stamp, still in the future
    assert twin.decide(NOW + 5_000_000, SIMPLE) == Out(1, 1, 5100, 1, 20, 0, 7000)
    assert twin.decide(NOW, SIMPLE).retry_after_ms == 10_100
    assert twin.decide(later + 99_999, SIMPLE).level == 1
    assert twin.decide(later + 100_000, SIMPLE).level == 0
    assert twin.decide(later + 100_000, SIMPLE).level == 1


# --------------------------------------------------------------------------- shadow


LEVEL_BITS = {Level.CUSTOMER: 1, Level.ENDPOINT: 2, Level.QUOTA: 4, Level.GLOBAL: 8}


def only_level_tight(level: Level) -> Req:
    """A request whose every level allows one call, and only ``level`` refuses the second."""
    tight = level
    return Req(
        b"shadow-%d" % level,
        rate=1.0 if tight is Level.CUSTOMER else 100.0,
        burst=1 if tight is Level.CUSTOMER else 100,
        endpoint=0,
        endpoint_rate=0.5 if tight is Level.ENDPOINT else 100.0,
        daily_quota=1 if tight is Level.QUOTA else 1000,
        global_rate=0.25 if tight is Level.GLOBAL else 100.0,
        global_burst=1 if tight is Level.GLOBAL else 100,
    )


@pytest.mark.parametrize("level", list(LEVEL_BITS), ids=lambda level: level.name.lower())
def test_a_shadow_level_never_refuses(speedups: Build, level: Level) -> None:
    bit = LEVEL_BITS[level]
    req = only_level_tight(level)
    with table_of(speedups, 64) as (table, _fd):
        twin = Twin(speedups, table)
        assert twin.decide(NOW, req).level == 0
        enforced = twin.decide(NOW, req)
        assert (enforced.level, enforced.would_refuse) == (level, bit)
        shadowed = replace(req, shadow=bit)
        for _ in range(3):
            got = twin.decide(NOW, shadowed)
            assert (got.level, got.would_refuse) == (0, bit)
            assert got.retry_after_ms == enforced.retry_after_ms  # the shadow level's wait
            assert got.header_level not in (0, level)  # headers show enforced levels only
        # the shadow level took nothing while it would refuse; the enforced levels did
        assert twin.decide(NOW, req) == enforced


def test_all_levels_shadowed(twin: Twin) -> None:
    req = Req(
        b"all-shadow",
        rate=1.0,
        burst=1,
        endpoint=0,
        endpoint_rate=0.5,
        daily_quota=1,
        global_rate=0.25,
        global_burst=1,
    )
    assert twin.decide(NOW, req).level == 0
    enforced = twin.decide(NOW, req)
    assert enforced.would_refuse == 0b1111
    assert enforced.level == 3  # the longest wait: the quota, until midnight
    for _ in range(3):
        got = twin.decide(NOW, replace(req, shadow=0b1111))
        assert got == Out(0, 0b1111, enforced.retry_after_ms, 0, 0, 0, 0)
    # all shadow and nothing would refuse: every level still counts
    fresh = replace(req, customer=b"all-shadow-2", global_burst=0, shadow=0b1111)
    assert twin.decide(NOW, fresh) == Out(0, 0, 0, 0, 0, 0, 0)
    assert twin.decide(NOW, replace(fresh, shadow=0)).would_refuse == 0b111


# ------------------------------------------------------------------ against the model

FIRST_DAY, LAST_DAY = 19_999, 20_006  # the random test's clock stays in these UTC days
MODEL_SETS = 4096


def _key_sets(customer: bytes) -> list[int]:
    """The sets of every key a customer of the random test can have (white box: the keys'
    fingerprints as ``bucket_py`` mixes them; the builds agree on them)."""
    fp = bucket_py.customer_fingerprint(hashring_py.hash64(customer))
    salts = [1, 2 + (0 << 2), 2 + (1 << 2)]  # bucket, endpoint 0, endpoint 1
    salts.append(3)  # the quota: one slot per customer, holding its day
    return [bucket_py._mix(fp, salt) % MODEL_SETS for salt in salts]


def _customers_in_distinct_sets(count: int) -> list[bytes]:
    """Customers whose keys all lie in distinct sets of the random test's table.

    The model never forgets a key; the table forgets one whose slot expired and was then reused
    by another key of its set, which reads the same (full) unless the clock later goes back
    before that expiry. Keys in distinct sets keep the comparison exact with any clock.
    """
    chosen: list[bytes] = []
    taken: set[int] = set()
    n = 0
    while len(chosen) < count:
        name = b"cust-%d" % n
        n += 1
        key_sets = _key_sets(name)
        if len(set(key_sets)) == len(key_sets) and taken.isdisjoint(key_sets):
            chosen.append(name)
            taken.update(key_sets)
    return chosen


MODEL_CUSTOMERS = _customers_in_distinct_sets(3)
CLOCK_LOW, CLOCK_HIGH = FIRST_DAY * DAY_US, (LAST_DAY + 1) * DAY_US - 1

clock_steps = st.one_of(
    st.tuples(st.just("dt"), st.just(0)),
    st.tuples(st.just("dt"), st.just(0)),  # (twice: the same instant is the common case)
    st.tuples(st.just("dt"), st.integers(1, 2_000)),  # µs apart
    st.tuples(st.just("dt"), st.integers(1, 3_000_000)),  # up to 3 s
    st.tuples(st.just("dt"), st.integers(-3_000_000, -1)),  # backwards
    st.tuples(st.just("dt"), st.integers(1, 6 * 3_600_000_000)),  # hours
    st.tuples(st.just("midnight"), st.integers(-2_000, 2_000)),  # around the next 00:00 UTC
)
model_steps = st.tuples(
    st.integers(0, len(MODEL_CUSTOMERS) - 1),  # customer
    st.integers(-1, 1),  # endpoint (-1: none)
    st.one_of(st.just(1), st.integers(1, 5)),  # cost
    st.booleans(),  # daily quota on (when the customer has one)
    st.booleans(),  # global bucket on
    st.one_of(st.just(0), st.integers(0, 15)),  # shadow mask (bit 8: global)
    clock_steps,
)
rates = st.sampled_from([0.01, 0.5, 1.0, 2.5, 10.0, 300.0])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, ...]:
    tiers = [
        (draw(rates), draw(st.integers(1, 6)), draw(st.none() | st.integers(0, 12)))
        for _ in MODEL_CUSTOMERS
    ]
    endpoint_rates = (draw(rates), draw(rates))
    global_tier = (draw(rates), draw(st.integers(1, 8)))
    start = 20_000 * DAY_US + draw(
        st.one_of(st.integers(0, DAY_US - 1), st.integers(DAY_US - 5_000_000, DAY_US - 1))
    )
    steps = draw(st.lists(model_steps, min_size=5, max_size=60))
    return tiers, endpoint_rates, global_tier, start, steps


@given(scenario=scenarios())
@settings(deadline=None, max_examples=150)
def test_random_sequences_decide_like_the_model(speedups: Build, scenario: tuple[Any, ...]) -> None:
    tiers, endpoint_rates, (global_rate, global_burst), now, steps = scenario
    with table_of(speedups, MODEL_SETS) as (table, _fd):
        twin = Twin(speedups, table)
        for customer, endpoint, cost, quota_on, global_on, shadow, (how, dt) in steps:
            if how == "midnight":
                now = (now // DAY_US + 1) * DAY_US + dt
            else:
                now += dt
            now = min(max(now, CLOCK_LOW), CLOCK_HIGH)
            rate, burst, quota = tiers[customer]
            twin.decide(
                now,
                Req(
                    MODEL_CUSTOMERS[customer],
                    rate=rate,
                    burst=burst,
                    cost=cost,
                    endpoint=endpoint,
                    endpoint_rate=endpoint_rates[endpoint] if endpoint >= 0 else 1.0,
                    daily_quota=quota if quota_on else None,
                    global_rate=global_rate,
                    global_burst=global_burst if global_on else 0,
                    shadow=shadow,
                ),
            )
        assert table.evictions == 0


def test_the_random_tests_customers_keys_are_in_the_sets_it_expects(speedups: Build) -> None:
    # the premise of the random test (``_key_sets`` mirrors the kernel's key mixing), checked
    # against where the keys really land
    with table_of(speedups, MODEL_SETS) as (table, fd):
        expected: set[int] = set()
        for name in MODEL_CUSTOMERS:
            key_sets = _key_sets(name)
            expected.update([key_sets[0], key_sets[2], key_sets[3]])  # bucket, endpoint 1, quota
            req = Req(name, rate=1.0, burst=5, endpoint=1, daily_quota=5)
            assert kernel_decide(table, speedups, NOW, req).level == 0
        with cells_of(fd) as cells:
            occupied = {
                set_index
                for set_index in range(MODEL_SETS)
                for way in range(WAYS)
                if cells[lock_cell(set_index) + 1 + 4 * way] != 0
            }
        assert occupied == expected
        assert len(expected) == 3 * len(MODEL_CUSTOMERS)


# ------------------------------------------------------------------------- eviction


def bucket_only(table: Any, build: Build, now_us: int, name: bytes, **kw: Any) -> Out:
    """A decision of ``name``'s customer bucket alone (rate 1/s, burst 10 unless given)."""
    req = Req(name, rate=kw.pop("rate", 1.0), burst=kw.pop("burst", 10), **kw)
    return kernel_decide(table, build, now_us, req)


def test_a_full_set_evicts_the_key_closest_to_expiry(speedups: Build) -> None:
    with table_of(speedups, 1) as (table, _fd):
        assert table.capacity == WAYS
        for i in range(WAYS):  # live-i took i + 1 tokens: live-0 is the closest to full
            assert bucket_only(table, speedups, NOW, b"live-%d" % i, cost=i + 1).level == 0
        assert table.evictions == 0
        assert bucket_only(table, speedups, NOW, b"new").level == 0
        assert table.evictions == 1
        for i in range(1, WAYS):  # still there: they show what they took
            assert bucket_only(table, speedups, NOW, b"live-%d" % i).remaining == 10 - (i + 2)
        assert table.evictions == 1
        # live-0 was forgotten: it reads as full again (the eviction errs towards allowing)
        assert bucket_only(table, speedups, NOW, b"live-0").remaining == 9
        assert table.evictions == 2


def test_keys_past_their_expiry_are_reused_without_an_eviction(speedups: Build) -> None:
    with table_of(speedups, 1) as (table, _fd):
        for i in range(WAYS):  # 1 token taken at 1/s: full at +1 s, expired at +6 s
            bucket_only(table, speedups, NOW, b"old-%d" % i)
        later = NOW + 6_000_000
        for i in range(WAYS):
            assert bucket_only(table, speedups, later, b"new-%d" % i).remaining == 9
        assert table.evictions == 0
        for i in range(WAYS):  # and the new keys are all kept
            assert bucket_only(table, speedups, later, b"new-%d" % i).remaining == 8
        assert table.evictions == 0


def test_an_expired_slot_reads_as_full(speedups: Build) -> None:
    with table_of(speedups, 1) as (table, fd):
        assert bucket_only(table, speedups, NOW, b"k", cost=5).remaining == 5
        with cells_of(fd) as cells:
            first_slot = lock_cell(0) + 1  # fingerprint, tokens, stamp, expires_us
            assert cells[first_slot] != 0
            assert cells[first_slot + 1] == 5_000_000
            cells[first_slot + 3] = NOW  # expired now (a slot lives while expires_us > now)
        assert bucket_only(table, speedups, NOW, b"k").remaining == 9
        assert table.evictions == 0


def test_a_decision_never_evicts_its_own_slots(speedups: Build) -> None:
    with table_of(speedups, 1) as (table, _fd):
        for i in range(WAYS):  # 8 live keys that expire in about 505 s
            bucket_only(table, speedups, NOW, b"filler-%d" % i, rate=0.01, cost=5)
        # three new keys (bucket, endpoint, quota) in the one full set; the bucket's slot,
        # placed first, expires in 6 s: the closest to expiry, yet its own decision keeps it
        req = Req(b"own", rate=1.0, burst=10, endpoint=0, endpoint_rate=3.0, daily_quota=5)
        assert kernel_decide(table, speedups, NOW, req).level == 0
        assert table.evictions == 3
        assert kernel_decide(table, speedups, NOW, req) == Out(0, 0, 0, 2, 3, 1, 667)
        no_endpoint = replace(req, endpoint=-1)
        assert kernel_decide(table, speedups, NOW, no_endpoint).remaining == 2  # quota: 5 - 3
        assert kernel_decide(table, speedups, NOW, replace(no_endpoint, daily_quota=None)) == Out(
            0, 0, 0, 1, 10, 6, 4000
        )
        assert table.evictions == 3


# ------------------------------------------------------------------- argument checks

FP = 0x1234_5678_9ABC_DEF1
VALID = dict(
    now_us=NOW,
    customer_fp=FP,
    cost=1,
    rate=1.0,
    burst=1,
    endpoint_index=0,
    endpoint_rate=1.0,
    endpoint_burst=1,
    daily_quota=10,
    global_rate=1.0,
    global_burst=1,
    shadow=0,
)
BAD_ARGUMENTS = [
    ("now_us", 0),
    ("now_us", -1),
    ("now_us", 2**52),
    ("customer_fp", -1),
    ("customer_fp", 2**62),
    ("rate", 0.0),
    ("rate", -1.0),
    ("rate", math.nan),
    ("rate", math.inf),
    ("rate", 1e-7),
    ("rate", 2e9),
    ("burst", 0),
    ("burst", -1),
    ("burst", 10**9 + 1),
    ("cost", 0),
    ("cost", -1),
    ("cost", 10**9 + 1),
    ("endpoint_rate", 0.0),
    ("endpoint_rate", math.nan),
    ("endpoint_burst", 0),
    ("daily_quota", 10**15 + 1),
    ("global_rate", math.nan),
    ("global_rate", math.inf),
    ("global_burst", 10**9 + 1),
    ("shadow", 16),
    ("shadow", -1),
]


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS, ids=str)
def test_bad_arguments_raise_value_error_and_take_nothing(
    speedups: Build, name: str, value: Any
) -> None:
    with table_of(speedups, 4) as (table, _fd):
        with pytest.raises(ValueError):
            table.decide(*{**VALID, name: value}.values())
        assert table.decide(*VALID.values()) == 0  # burst 1: the bad call took nothing
        assert table.decide(*VALID.values()) != 0


def test_the_arguments_of_a_level_that_is_off_are_not_checked(speedups: Build) -> None:
    with table_of(speedups, 4) as (table, _fd):
        off = {**VALID, "endpoint_index": -1, "endpoint_rate": math.nan, "endpoint_burst": 0}
        assert table.decide(*off.values()) == 0
        off = {**VALID, "customer_fp": FP + 2, "global_burst": 0, "global_rate": math.nan}
        assert table.decide(*off.values()) == 0
        off = {**VALID, "customer_fp": FP + 4, "global_burst": 0, "daily_quota": -1}
        assert table.decide(*off.values()) == 0


def test_bad_arguments_raise_the_same_on_both_builds(
    speedups_pair: tuple[Build, Build],
) -> None:
    messages = []
    for build in speedups_pair:
        with table_of(build, 4) as (table, _fd):
            for name, value in BAD_ARGUMENTS:
                with pytest.raises(ValueError) as info:
                    table.decide(*{**VALID, name: value}.values())
                messages.append(str(info.value))
    half = len(BAD_ARGUMENTS)
    assert messages[:half] == messages[half:]


# ------------------------------------------------------------------------ the header


@pytest.mark.parametrize("sets", [1, 3, 64])
def test_capacity_is_eight_keys_a_set(speedups: Build, sets: int) -> None:
    with table_of(speedups, sets) as (table, fd):
        assert (table.sets, table.capacity) == (sets, sets * WAYS)
        other = speedups.bucket.LimitTable(fd)  # another mapping of the same file
        assert (other.sets, other.capacity) == (sets, sets * WAYS)
        other.close()


def test_a_table_made_by_one_build_is_refused_by_the_other(
    speedups_pair: tuple[Build, Build],
) -> None:
    for maker, other in (speedups_pair, speedups_pair[::-1]):
        with table_of(maker, 2) as (_table, fd):
            with pytest.raises(ValueError, match="other build"):
                other.bucket.LimitTable(fd)
            maker.bucket.LimitTable(fd).close()  # its own build attaches


@pytest.mark.parametrize("size_cells", [0, 1, HEADER_CELLS, HEADER_CELLS + SET_CELLS - 1])
def test_a_file_too_small_is_refused(speedups: Build, size_cells: int) -> None:
    fd = os.memfd_create("fastgw-test-limits")
    try:
        os.ftruncate(fd, 8 * size_cells)
        for create in (False, True):
            with pytest.raises(ValueError):
                speedups.bucket.LimitTable(fd, create=create)
        os.ftruncate(fd, speedups.bucket.table_bytes(1) + 4)  # not whole cells
        with pytest.raises(ValueError):
            speedups.bucket.LimitTable(fd, create=True)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("cell", "value"),
    [(0, 0x66617374_67776C75), (0, 0), (1, 1), (2, 2), (2, 0), (2, -1)],
    ids=["magic", "no-magic", "layout", "sets-beyond-file", "no-sets", "negative-sets"],
)
def test_a_header_that_is_not_this_layout_is_refused(
    speedups: Build, cell: int, value: int
) -> None:
    with table_of(speedups, 1) as (_table, fd):
        os.pwrite(fd, value.to_bytes(8, "little", signed=True), 8 * cell)
        with pytest.raises(ValueError):
            speedups.bucket.LimitTable(fd)


def test_a_zeroed_file_is_not_a_table_until_created(speedups: Build) -> None:
    fd = os.memfd_create("fastgw-test-limits")
    try:
        os.ftruncate(fd, speedups.bucket.table_bytes(2))
        with pytest.raises(ValueError):
            speedups.bucket.LimitTable(fd)
        speedups.bucket.LimitTable(fd, create=True).close()
        assert speedups.bucket.LimitTable(fd).capacity == 2 * WAYS
    finally:
        os.close(fd)


def _decide_after_close(build: Build) -> tuple[str, str]:
    fd = os.memfd_create("fastgw-test-limits")
    os.ftruncate(fd, build.bucket.table_bytes(4))
    table = build.bucket.LimitTable(fd, create=True)
    table.close()
    try:
        return ("returned", repr(table.decide(*VALID.values())))
    except Exception as exc:
        return ("raised", type(exc).__name__)


def test_a_closed_table_refuses_to_decide(speedups: Build) -> None:
    # in a child: a build that reads or writes past its cells must not corrupt this process
    [(what, detail)] = run_children(_decide_after_close, [(speedups,)])
    assert what == "raised", f"decide on a closed table {what} {detail}"


# ------------------------------------------------------------------- across processes


def _child_main(conn: Any, barrier: Any, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        barrier.wait(JOIN_S)  # all children start together: no sleep for readiness
        conn.send(("ok", target(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_children(target: Callable[..., Any], args_per_child: list[tuple[Any, ...]]) -> list[Any]:
    """``target(*args)`` in one forked process per ``args``; their results, in order."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args_per_child))
    procs: list[Any] = []
    conns: list[Any] = []
    try:
        for args in args_per_child:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child_main, args=(send, barrier, target, args))
            proc.daemon = True
            proc.start()
            send.close()
            procs.append(proc)
            conns.append(recv)
        deadline = time.monotonic() + JOIN_S
        results = []
        for conn in conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                pytest.fail(f"a child did not report within {JOIN_S} s")
            status, value = conn.recv()
            assert status == "ok", value
            results.append(value)
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            assert proc.exitcode == 0
        return results
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in conns:
            conn.close()


def _hammer_fixed_clock(build: Build, fd: int, me: int, calls: int, burst: int) -> tuple[int, int]:
    table = build.bucket.LimitTable(fd)  # attach: this process's own mapping and pid
    shared = fingerprint(build, b"shared")
    own = fingerprint(build, b"own-%d" % me)  # other sets, other lock orders
    admitted = 0
    for i in range(calls):
        args = (NOW, shared, 1, 1.0, burst, 0, 1e6, 10**6, 10**9, 1e9, 10**9, 0)
        admitted += table.decide(*args) == 0
        table.decide(NOW, own, 1, 1.0, 10**6, i % 2, 1e6, 10**6, 10**9, 1e9, 10**9, 0)
    return admitted, table.evictions


def test_processes_never_admit_more_than_the_burst(speedups: Build) -> None:
    procs = 4
    calls, burst = (20_000, 1000) if speedups.name == "c" else (300, 250)
    with table_of(speedups, 16) as (table, fd):
        results = run_children(
            _hammer_fixed_clock, [(speedups, fd, me, calls, burst) for me in range(procs)]
        )
        assert sum(evictions for _, evictions in results) == 0
        assert sum(admitted for admitted, _ in results) == burst
        # the global bucket counted every decision of every process, exactly
        table.decide(NOW, FP, 1, 1.0, 10, -1, 1.0, 1, -1, 1e9, 10**9, 0b1)  # headers: global
        assert table.header_level == 4
        assert table.remaining == 10**9 - (burst + procs * calls) - 1


def _hammer_real_clock(build: Build, fd: int, calls: int, rate: float, burst: int) -> Any:
    table = build.bucket.LimitTable(fd)
    shared = fingerprint(build, b"shared")
    admitted = 0
    first = last = 0
    for _ in range(calls):
        now = time.time_ns() // 1000
        first = first or now
        last = now
        admitted += table.decide(now, shared, 1, rate, burst, 0, 1e6, 10**6, -1, 1e9, 10**9, 0) == 0
    return admitted, first, last


def test_processes_admit_at_most_burst_plus_refill_on_a_real_clock(speedups: Build) -> None:
    procs, rate = 4, 5000.0
    calls, burst = (20_000, 50) if speedups.name == "c" else (300, 50)
    with table_of(speedups, 16) as (_table, fd):
        results = run_children(
            _hammer_real_clock, [(speedups, fd, calls, rate, burst) for _ in range(procs)]
        )
    admitted = sum(r[0] for r in results)
    elapsed_us = max(r[2] for r in results) - min(r[1] for r in results)
    assert admitted <= burst + rate * elapsed_us / 1e6 + 1
    assert admitted >= min(burst, procs * calls)


# ------------------------------------------------------------- lock holders (compiled)


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _decide_timed(build: Build, fd: int) -> tuple[int, float]:
    table = build.bucket.LimitTable(fd)
    req = Req(b"after-a-death", rate=1.0, burst=5, endpoint=0, daily_quota=5, global_burst=5)
    start = time.monotonic()
    level = table.decide(*kernel_args(build, NOW, req))
    return level, time.monotonic() - start


def test_a_dead_holders_lock_is_taken_over(speedups: Build) -> None:
    if speedups.name != "c":
        pytest.skip("the pure build holds fcntl record locks, which the kernel drops at exit")
    with table_of(speedups, 1) as (_table, fd), cells_of(fd) as cells:
        cells[GLOBAL_LOCK_CELL] = dead_pid()
        cells[lock_cell(0)] = dead_pid()
        # decided in a child: a lock never taken over fails on a timeout, not a hung run
        [(level, seconds)] = run_children(_decide_timed, [(speedups, fd)])
        assert level == 0
        assert seconds < 5.0
        assert (cells[GLOBAL_LOCK_CELL], cells[lock_cell(0)]) == (0, 0)  # and released


def test_release_locks_of_frees_the_cells_of_one_pid(speedups: Build) -> None:
    if speedups.name != "c":
        pytest.skip("the pure build holds fcntl record locks, which the kernel drops at exit")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a live process that holds nothing, until it is killed
        try:
            os.close(write_end)
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    try:
        with table_of(speedups, 3) as (table, fd), cells_of(fd) as cells:
            cells[GLOBAL_LOCK_CELL] = pid
            cells[lock_cell(0)] = pid
            cells[lock_cell(2)] = pid
            cells[lock_cell(1)] = os.getpid()  # another live holder: left alone
            assert table.release_locks_of(pid) == 3
            assert [cells[GLOBAL_LOCK_CELL], cells[lock_cell(0)], cells[lock_cell(2)]] == [0, 0, 0]
            assert cells[lock_cell(1)] == os.getpid()
            assert table.release_locks_of(pid) == 0
            assert table.release_locks_of(os.getpid()) == 1
            assert table.decide(*VALID.values()) == 0  # every lock free again
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(write_end)


def test_release_locks_of_frees_nothing_on_the_pure_build(speedups: Build) -> None:
    if speedups.name != "py":
        pytest.skip("the compiled build's lock cells hold pids")
    with table_of(speedups, 2) as (table, _fd):
        assert table.release_locks_of(os.getpid()) == 0


def test_release_locks_of_a_pid_that_holds_nothing_frees_nothing(speedups: Build) -> None:
    with table_of(speedups, 4) as (table, _fd):
        assert table.release_locks_of(os.getpid() + 1) == 0
        # pid 0 is no process: "freeing" the cells that are already free must count nothing
        assert table.release_locks_of(0) == 0


# ------------------------------------------------------------------ the global sliding window


@settings(deadline=None, max_examples=200)
@given(
    window_us=st.sampled_from([1000, 250_000, 1_000_000, 7_000_000, 60_000_000]),
    limit=st.integers(1, 12),
    advances=st.lists(
        st.one_of(
            st.integers(0, 300_000),
            st.integers(0, 20_000_000),
            st.integers(-1_000_000, 0),  # the clock going backwards
            st.sampled_from([0, 1, 999, 1000, 60_000_000, 120_000_000]),
        ),
        min_size=1,
        max_size=60,
    ),
    shadow=st.booleans(),
    with_customer=st.booleans(),
)
def test_sliding_window_decides_like_the_model(
    speedups: Build,
    *,
    window_us: int,
    limit: int,
    advances: list[int],
    shadow: bool,
    with_customer: bool,
) -> None:
    with table_of(speedups, 64) as (table, _fd):
        twin = Twin(speedups, table)
        req = Req(
            b"window-customer",
            rate=1e6,
            burst=1_000_000,
            global_burst=limit,
            global_window_us=window_us,
            shadow=Level.GLOBAL.bit if shadow else 0,
        )
        now = NOW + 12_345
        for advance in advances:
            now += advance
            if with_customer:
                out = twin.decide(now, req)
            else:  # customer_fp 0: the global level alone, compared with decide_global
                level = table.decide(now, 0, 1, 1.0, 1, -1, 0.0, 0, -1, 1.0, limit,
                                     req.shadow, window_us)  # fmt: skip
                d = twin.model.decide_global(
                    GlobalRequest(rate_per_s=1.0, burst=limit, window_us=window_us, shadow=shadow),
                    now,
                )
                assert (level, table.would_refuse, table.remaining, table.reset_ms) == (
                    d.level, d.would_refuse, d.remaining, d.reset_ms
                )
                retry = table.retry_after_ms
                assert (None if retry == -1 else retry) == d.retry_after_ms
                continue
            if out.level:
                assert out.retry_after_ms is None or out.retry_after_ms >= 1


def test_a_sliding_window_of_another_length_starts_empty(twin: Twin) -> None:
    five_per_10s = Req(b"w", rate=1e6, burst=10**6, global_burst=5, global_window_us=10_000_000)
    for _ in range(5):
        assert twin.decide(NOW, five_per_10s).level == 0
    assert twin.decide(NOW, five_per_10s).level == Level.GLOBAL
    # a reload to a 20 s window: the 10 s counts are not read as 20 s ones
    other = replace(five_per_10s, global_window_us=20_000_000)
    assert kernel_decide(twin.table, twin.build, NOW + 1, other).level == 0
