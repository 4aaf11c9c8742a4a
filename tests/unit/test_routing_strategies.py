"""Target selection: pools, the overflow pool, and the three strategies (ARCHITECTURE A2).

The consistent-hash ring's movement property is measured here on 20,000 customers: removing
one of N instances moves about 1/N of them (only its own), adding one moves about 1/(N+1)
(only to it).
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from fastgw.auth.context import CustomerContext
from fastgw.exchange import Exchange
from fastgw.routing.strategies import Instance, PoolBalancer

CUSTOMERS = [b"cust-%d" % n for n in range(20_000)]


def request(customer: bytes | None = None, pool: bytes | None = None) -> Exchange:
    ex = Exchange(None, 0.0)  # type: ignore[arg-type] - selection reads ex.customer only
    if customer is not None:
        ex.customer = CustomerContext(customer, b"free", frozenset(), pool=pool)
    return ex


def fleet(count: int, weight: int = 100, pools: tuple[str, ...] = ()) -> list[Instance]:
    return [Instance(b"10.0.0.%d:9000" % i, weight, pools) for i in range(count)]


def owners(balancer: PoolBalancer, instances: list[Instance]) -> dict[bytes, bytes]:
    return {c: instances[balancer.order(request(c))[0]].key for c in CUSTOMERS}


# ----------------------------------------------------------------- bounded loads (optional)


def test_bounded_load_moves_a_customer_off_an_instance_over_c_times_the_mean() -> None:
    instances = fleet(4)
    loads = [0, 0, 0, 0]
    balancer = PoolBalancer(
        "consistent_hash", instances, depth=4, load=loads.__getitem__, bounded_load=1.25
    )
    plain = PoolBalancer("consistent_hash", instances, depth=4)
    usual = plain.order(request(b"acme"))
    assert balancer.order(request(b"acme")) == usual  # nobody loaded: the usual order
    home = usual[0]
    loads[home] = 10  # capacity ceil(1.25 x (10 + 1) / 4) = 4: 10 + 1 is over it
    moved = balancer.order(request(b"acme"))
    assert moved[0] == usual[1]  # the next instance of the customer's own order
    assert moved[1:] == (home, *usual[2:])
    loads[home] = 3  # ceil(1.25 x 4 / 4) = 2: still over
    assert balancer.order(request(b"acme"))[0] == usual[1]
    loads[home] = 1  # ceil(1.25 x 2 / 4) = 1 < 1 + 1: over; 0 in flight anywhere else fits
    assert balancer.order(request(b"acme"))[0] == usual[1]
    loads[home] = 0  # back under: the customer returns home
    assert balancer.order(request(b"acme")) == usual


def test_bounded_load_spreads_a_hot_spot_to_within_c_times_the_mean() -> None:
    instances = fleet(5)
    loads = [0] * 5
    balancer = PoolBalancer(
        "consistent_hash", instances, depth=5, load=loads.__getitem__, bounded_load=1.25
    )
    for n in range(2_000):  # requests that stay in flight, from 40 customers
        loads[balancer.order(request(b"cust-%d" % (n % 40)))[0]] += 1
    mean = sum(loads) / len(loads)
    assert max(loads) <= 1.25 * mean + 1


def test_bounded_load_honours_weights() -> None:
    instances = [Instance(b"10.0.0.1:9000", 300, ()), Instance(b"10.0.0.2:9000", 100, ())]
    loads = [0, 0]
    balancer = PoolBalancer(
        "consistent_hash", instances, depth=2, load=loads.__getitem__, bounded_load=1.0
    )
    for n in range(400):  # requests that stay in flight, from 50 customers
        loads[balancer.order(request(b"cust-%d" % (n % 50)))[0]] += 1
    assert loads[0] == pytest.approx(300, abs=2) and loads[1] == pytest.approx(100, abs=2)


def test_bounded_load_with_an_empty_candidate_group_keeps_the_order() -> None:
    # every instance lists a pool and the customer's pool is none of them: only the overflow
    instances = [
        Instance(b"10.0.0.1:9000", 100, ("a",)),
        Instance(b"10.0.0.2:9000", 100, ("overflow",)),
    ]
    balancer = PoolBalancer(
        "consistent_hash", instances, depth=2, load=lambda i: 0, bounded_load=1.25
    )
    assert balancer.order(request(b"acme", pool=b"elsewhere")) == (1,)


def test_full_order_widens_a_cut_consistent_hash_order_to_the_whole_pool() -> None:
    instances = fleet(12)
    balancer = PoolBalancer("consistent_hash", instances, depth=8)
    ex = request(b"acme")
    short, full = balancer.order(ex), balancer.full_order(ex)
    assert len(short) == 8 and full is not None and sorted(full) == list(range(12))
    assert full[:8] == short  # the cut order is the whole order's beginning
    assert PoolBalancer("consistent_hash", instances, depth=12).full_order(ex) is None
    assert PoolBalancer("round_robin", instances, depth=8).full_order(ex) is None


# ------------------------------------------------------------------------- consistent hash


def test_a_customer_keeps_its_instance_and_gets_a_distinct_fallback_order() -> None:
    instances = fleet(8)
    balancer = PoolBalancer("consistent_hash", instances, depth=3)
    first = balancer.order(request(b"acme"))
    assert len(first) == 3 == len(set(first))
    assert all(balancer.order(request(b"acme")) == first for _ in range(5))
    # another balancer over the same instances (another worker, another gateway) agrees
    assert PoolBalancer("consistent_hash", instances, depth=3).order(request(b"acme")) == first
    spread = Counter(balancer.order(request(c))[0] for c in CUSTOMERS)
    assert len(spread) == 8 and min(spread.values()) > 0.5 * len(CUSTOMERS) / 8


@pytest.mark.parametrize("count", [5, 10])
def test_removing_one_instance_moves_only_its_customers_about_one_in_n(count: int) -> None:
    before = fleet(count)
    after = before[:2] + before[3:]  # instance 2 removed
    old = owners(PoolBalancer("consistent_hash", before, depth=2), before)
    new = owners(PoolBalancer("consistent_hash", after, depth=2), after)
    moved = [c for c in CUSTOMERS if old[c] != new[c]]
    assert all(old[c] == before[2].key for c in moved)  # only the removed one's customers
    share = len(moved) / len(CUSTOMERS)
    assert 0.6 / count < share < 1.4 / count, share


@pytest.mark.parametrize("count", [5, 10])
def test_adding_one_instance_moves_about_one_in_n_plus_one_and_only_to_it(count: int) -> None:
    before = fleet(count)
    after = [*before, Instance(b"10.0.1.1:9000", 100, ())]
    old = owners(PoolBalancer("consistent_hash", before, depth=2), before)
    new = owners(PoolBalancer("consistent_hash", after, depth=2), after)
    moved = [c for c in CUSTOMERS if old[c] != new[c]]
    assert all(new[c] == b"10.0.1.1:9000" for c in moved)
    share = len(moved) / len(CUSTOMERS)
    assert 0.6 / (count + 1) < share < 1.4 / (count + 1), share


def test_weights_shape_the_share_and_weight_zero_gets_nothing() -> None:
    instances = [
        Instance(b"a:1", 100, ()),
        Instance(b"b:1", 300, ()),
        Instance(b"c:1", 0, ()),
    ]
    balancer = PoolBalancer("consistent_hash", instances, depth=5)
    picks = Counter(balancer.order(request(c))[0] for c in CUSTOMERS)
    assert 2 not in picks
    assert 2.3 < picks[1] / picks[0] < 3.9
    assert all(2 not in balancer.order(request(c)) for c in CUSTOMERS[:500])


# ---------------------------------------------------------------------------- pools, overflow


def pooled() -> list[Instance]:
    return [
        Instance(b"eu-1:9000", 100, ("eu",)),
        Instance(b"eu-2:9000", 100, ("eu",)),
        Instance(b"us-1:9000", 100, ("us",)),
        Instance(b"any:9000", 100, ()),  # serves every customer
        Instance(b"spare:9000", 100, ("overflow",)),
    ]


@pytest.mark.parametrize("strategy", ["consistent_hash", "round_robin", "least_connections"])
def test_candidates_are_the_pool_and_the_pool_less_then_the_overflow(strategy: str) -> None:
    balancer = PoolBalancer(strategy, pooled(), depth=5, load=lambda _: 0)
    for customer in CUSTOMERS[:200]:
        eu = balancer.order(request(customer, b"eu"))
        assert set(eu[:-1]) == {0, 1, 3} and eu[-1] == 4, eu  # overflow last
        us = balancer.order(request(customer, b"us"))
        assert set(us[:-1]) == {2, 3} and us[-1] == 4, us
        unknown = balancer.order(request(customer, b"mars"))
        assert unknown == (3, 4)  # only the pool-less instance, then the overflow
        everyone = balancer.order(request(customer))
        assert sorted(everyone) == [0, 1, 2, 3, 4]  # no pool claim: every instance


def test_a_pool_with_no_instance_left_falls_to_the_overflow_alone() -> None:
    instances = [Instance(b"eu-1:9000", 100, ("eu",)), Instance(b"spare:9000", 100, ("overflow",))]
    balancer = PoolBalancer("consistent_hash", instances, depth=3)
    assert balancer.order(request(b"x", b"us")) == (1,)
    drained = [Instance(b"eu-1:9000", 0, ("eu",)), Instance(b"spare:9000", 100, ("overflow",))]
    assert PoolBalancer("consistent_hash", drained, depth=3).order(request(b"x", b"eu")) == (1,)


# ------------------------------------------------------------------- round robin, least load


def test_round_robin_is_smooth_and_weighted_within_the_pool() -> None:
    instances = [
        Instance(b"a:1", 1, ("p",)),
        Instance(b"b:1", 2, ("p",)),
        Instance(b"c:1", 3, ("p",)),
        Instance(b"other:1", 100, ("q",)),
    ]
    balancer = PoolBalancer("round_robin", instances, depth=3)
    picks = [balancer.order(request(b"c", b"p"))[0] for _ in range(600)]
    # smooth: every cycle of 6 picks holds exactly the weights' shares, none bunched up
    for start in range(0, len(picks), 6):
        assert Counter(picks[start : start + 6]) == {0: 1, 1: 2, 2: 3}
    assert all(a != b or a == 2 for a, b in itertools.pairwise(picks))


def test_least_connections_prefers_the_less_loaded_per_unit_of_weight() -> None:
    load = {0: 10, 1: 0, 2: 4}
    instances = [Instance(b"a:1", 100, ()), Instance(b"b:1", 100, ()), Instance(b"c:1", 200, ())]
    balancer = PoolBalancer("least_connections", instances, depth=3, load=load.__getitem__)
    picks = Counter(balancer.order(request(b"c"))[0] for _ in range(3000))
    # two random candidates, the less loaded wins: 1 (load 0) is never beaten; 0 (load 10)
    # loses to both others; 2 (4 on weight 200 = 2 per 100) beats only 0
    assert picks[0] == 0
    assert picks[1] > picks[2] > 0
    assert all(len(set(balancer.order(request(b"c")))) == 3 for _ in range(50))


def test_anonymous_requests_go_round_robin_over_everyone() -> None:
    balancer = PoolBalancer("consistent_hash", pooled(), depth=3)
    picks = Counter(balancer.order(request())[0] for _ in range(500))
    assert picks == {i: 100 for i in range(5)}


@pytest.mark.parametrize(
    ("strategy", "kw"),
    [("random", {}), ("least_connections", {})],
)
def test_bad_arguments_are_refused(strategy: str, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PoolBalancer(strategy, fleet(2), depth=2, **kw)
