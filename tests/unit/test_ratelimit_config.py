"""``rate_limits`` and ``gateway.rate_limiting`` as config, and the numbers the limiter gets.

Config errors must name their exact path (ARCHITECTURE A2, principle 7); ``LimitPolicy`` turns
the frozen config into the plain numbers one decision needs (tiers, default tier, endpoint
buckets, shadow mask, global bucket), and ``check_overrides`` decides which ``quotas`` claims a
token may carry.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from fastgw.auth.context import CustomerContext, development_context
from fastgw.config import Config, ConfigError, parse_config
from fastgw.ratelimit.decision import (
    MAX_BURST,
    MAX_DAILY_QUOTA,
    SHADOW_ALL,
    Level,
    check_overrides,
)
from fastgw.ratelimit.policy import (
    NO_ENDPOINT,
    NO_QUOTA,
    CustomerLimits,
    GlobalLimits,
    LimitPolicy,
    RouteLimits,
)
from fastgw.ratelimit.service import LimitService
from fastgw.replies import ReplyTable

ROUTING = {"metald_instances": [{"host": "127.0.0.1", "port": 9001}]}
ROUTES = [
    {"endpoint": "CreateVM", "path": "/create"},
    {"endpoint": "ListVMs", "path": "/list"},
    {"endpoint": "Plain", "path": "/plain"},
]
ONE_PER_S = {"requests_per_second": 1}
SHADOW_CHOICES = "expected one of 'customer', 'endpoint', 'quota', 'global'"


def load(rate_limits: object = None, **gateway: Any) -> Config:
    data: dict[str, Any] = {"routing": ROUTING, "routes": ROUTES, "gateway": gateway}
    if rate_limits is not None:
        data["rate_limits"] = rate_limits
    return parse_config(data, base_dir=Path.cwd(), env={})


def problems(rate_limits: object = None, **gateway: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(rate_limits, **gateway)
    return [str(problem) for problem in caught.value.problems]


def policy(rate_limits: dict[str, Any] | None = None) -> LimitPolicy:
    return LimitPolicy(load(rate_limits or {}).rate_limits)


def customer(tier: str, quotas: dict[str, float] | None = None) -> CustomerContext:
    return CustomerContext(b"acme", tier.encode(), frozenset(), quotas=quotas)


# ----------------------------------------------------------------------- rate_limits.shadow


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["customer", "quota"], ("customer", "quota")),
        (["customer", "endpoint", "quota", "global"], ("customer", "endpoint", "quota", "global")),
        ("global", ("global",)),
        ("customer", ("customer",)),
        ([], ()),
    ],
)
def test_shadow_accepts_a_list_or_a_single_name(value: object, expected: tuple[str, ...]) -> None:
    assert load({"shadow": value}).rate_limits.shadow == expected


def test_shadow_defaults_to_no_level() -> None:
    assert load().rate_limits.shadow == ()
    assert policy().shadow == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bogus", f'$.rate_limits.shadow: {SHADOW_CHOICES}, got "bogus"'),
        (["customer", "cusomer"], f'$.rate_limits.shadow[1]: {SHADOW_CHOICES}, got "cusomer"'),
        (["Customer"], f'$.rate_limits.shadow[0]: {SHADOW_CHOICES}, got "Customer"'),
        (["customer", "customer"], "$.rate_limits.shadow[1]: duplicate of $.rate_limits.shadow[0]"),
        (3, "$.rate_limits.shadow: expected string or list, got 3"),
        (None, "$.rate_limits.shadow: expected string or list, got null"),
    ],
)
def test_shadow_refuses_unknown_names_with_the_key_path(value: object, expected: str) -> None:
    assert problems({"shadow": value}) == [expected]


@pytest.mark.parametrize(
    ("names", "mask"),
    [
        (["customer"], Level.CUSTOMER.bit),
        (["endpoint"], Level.ENDPOINT.bit),
        (["quota"], Level.QUOTA.bit),
        (["global"], Level.GLOBAL.bit),
        (["quota", "customer"], Level.CUSTOMER.bit | Level.QUOTA.bit),
        (["customer", "endpoint", "quota", "global"], SHADOW_ALL),
    ],
)
def test_shadow_mask_bits(names: list[str], mask: int) -> None:
    assert policy({"shadow": names}).shadow == mask


def test_level_bits_are_the_scripts_layout() -> None:
    # customer.lua ARGV[7]: customer 1, endpoint 2, quota 4; the kernel's global bit is 8
    bits = [Level.CUSTOMER.bit, Level.ENDPOINT.bit, Level.QUOTA.bit, Level.GLOBAL.bit]
    assert bits == [1, 2, 4, 8]
    assert SHADOW_ALL == 0b1111


# ------------------------------------------------------------ gateway.rate_limiting.max_keys

MAX_KEYS_RANGE = "$.gateway.rate_limiting.max_keys: expected integer 1024..268435456"


@pytest.mark.parametrize("value", [1024, 262_144, 1 << 28])
def test_max_keys_in_range(value: int) -> None:
    assert load(rate_limiting={"max_keys": value}).gateway.rate_limiting.max_keys == value


def test_max_keys_default() -> None:
    assert load().gateway.rate_limiting.max_keys == 262_144


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1023, "1023"), ((1 << 28) + 1, "268435457"), (0, "0"), (-1, "-1"), (2048.0, "2048.0"),
     ("4096", '"4096"'), (True, "true")],
)  # fmt: skip
def test_max_keys_out_of_range(value: object, shown: str) -> None:
    assert problems(rate_limiting={"max_keys": value}) == [f"{MAX_KEYS_RANGE}, got {shown}"]


def test_the_smallest_table_is_usable() -> None:
    config = load({"global": {"max_concurrent": 3}}, rate_limiting={"max_keys": 1024})
    service = LimitService(config, ReplyTable(b""), workers=1)
    try:
        assert service.table is not None
    finally:
        service.close()
        service.close()  # idempotent


# ------------------------------------------------------------------- rate_limits.global


def test_sliding_window_needs_a_rate_and_takes_no_burst() -> None:
    found = problems({"global": {"algorithm": "sliding_window"}})
    assert [p.split(": ")[0] for p in found] == ["$.rate_limits.global.requests_per_second"]
    limits = {"algorithm": "sliding_window", "requests_per_second": 5, "burst_size": 10}
    found = problems({"global": limits})
    assert [p.split(": ")[0] for p in found] == ["$.rate_limits.global.burst_size"]


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        ({"window_size": "2d", "requests_per_second": 1}, "$.rate_limits.global.window_size"),
        ({"window_size": "1d", "requests_per_second": 1e6},
         "$.rate_limits.global.requests_per_second"),  # 8.64e10 requests per window
    ],
)  # fmt: skip
def test_sliding_window_numbers_out_of_range(limits: dict[str, Any], path: str) -> None:
    found = problems({"global": {"algorithm": "sliding_window", **limits}})
    assert [p.split(": ")[0] for p in found] == [path], found


def test_sliding_window_limit_is_rate_times_window() -> None:
    config = load({"global": {"algorithm": "sliding_window", "window_size": "100ms",
                              "requests_per_second": 10}})  # fmt: skip
    top = LimitPolicy(config.rate_limits).global_limits
    assert top is not None
    assert (top.burst, top.window_us) == (1, 100_000)  # 10/s over 100 ms: 1, not 2 (float noise)
    config = load({"global": {"algorithm": "sliding_window", "window_size": "1m",
                              "requests_per_second": 2.5}})  # fmt: skip
    top = LimitPolicy(config.rate_limits).global_limits
    assert top is not None and (top.burst, top.window_us) == (150, 60_000_000)


def test_token_bucket_is_the_default_algorithm() -> None:
    assert load().rate_limits.global_limit.algorithm == "token_bucket"
    assert load({"global": {"algorithm": "token_bucket"}}).rate_limits.global_limit.algorithm


def test_unknown_algorithm_is_a_choice_error() -> None:
    assert problems({"global": {"algorithm": "leaky"}}) == [
        "$.rate_limits.global.algorithm: expected one of 'token_bucket', 'sliding_window', "
        'got "leaky"'
    ]


def test_global_burst_without_a_rate_is_refused() -> None:
    assert problems({"global": {"burst_size": 5}}) == [
        "$.rate_limits.global.burst_size: needs requests_per_second"
    ]


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        ({"default_tier": "gold"}, "$.rate_limits.default_tier"),
        ({"endpoints": {"CreateVm": {"cost_weight": 2}}}, "$.rate_limits.endpoints.CreateVm"),
        ({"customer_tiers": {"free": ONE_PER_S, "dev": ONE_PER_S}},
         "$.rate_limits.customer_tiers.dev"),
        ({"customer_tiers": {"free": {"requests_per_second": 0}}},
         "$.rate_limits.customer_tiers.free.requests_per_second"),
        ({"customer_tiers": {"free": {"requests_per_second": 1, "burst_size": 0}}},
         "$.rate_limits.customer_tiers.free.burst_size"),
        ({"customer_tiers": {"free": {"requests_per_second": 1, "requests_per_day": 0}}},
         "$.rate_limits.customer_tiers.free.requests_per_day"),
        ({"endpoints": {"CreateVM": {"cost_weight": 0}}},
         "$.rate_limits.endpoints.CreateVM.cost_weight"),
        ({"global": {"max_concurrent": 0}}, "$.rate_limits.global.max_concurrent"),
    ],
)  # fmt: skip
def test_rate_limit_problems_name_their_path(limits: dict[str, Any], path: str) -> None:
    found = problems(limits)
    assert [p.split(": ")[0] for p in found] == [path], found


def test_every_rate_limit_problem_is_reported_at_once() -> None:
    found = problems(
        {"shadow": ["nope"], "global": {"algorithm": "sliding_window"}, "default_tier": "gold"},
        rate_limiting={"max_keys": 1},
    )
    paths = sorted(p.split(": ")[0] for p in found)
    assert paths == [
        "$.gateway.rate_limiting.max_keys",
        "$.rate_limits.default_tier",
        "$.rate_limits.global.requests_per_second",
        "$.rate_limits.shadow[0]",
    ], found


# --------------------------------------------------------------------- LimitPolicy numbers


def test_default_tiers_are_the_reference_designs() -> None:
    limits = policy()
    numbers = {
        name: (got.rate_per_s, got.burst, got.daily_quota)
        for name in ("free", "pro", "enterprise")
        for got in [limits.customer_limits(customer(name))]
    }
    assert numbers == {
        "free": (10.0, 20, 1000),
        "pro": (100.0, 200, 100_000),
        "enterprise": (1000.0, 2000, 1_000_000),
    }


def test_tier_numbers_and_unset_burst_is_the_rate_rounded_up() -> None:
    limits = policy(
        {
            "customer_tiers": {
                "free": {"requests_per_second": 2.5},
                "slow": {"requests_per_second": 0.2},
                "pro": {"requests_per_second": 50, "burst_size": 75, "requests_per_day": 9000},
            }
        }
    )
    free = limits.customer_limits(customer("free"))
    assert (free.rate_per_s, free.burst, free.daily_quota) == (2.5, 3, NO_QUOTA)
    slow = limits.customer_limits(customer("slow"))
    assert (slow.rate_per_s, slow.burst, slow.daily_quota) == (0.2, 1, NO_QUOTA)
    pro = limits.customer_limits(customer("pro"))
    assert (pro.rate_per_s, pro.burst, pro.daily_quota) == (50.0, 75, 9000)
    assert not pro.unlimited
    assert pro.customer_id == b"acme"
    assert pro.fingerprint == free.fingerprint != 0  # by customer id, not by tier


def test_unknown_tier_gets_the_default_tiers_numbers() -> None:
    limits = policy(
        {
            "customer_tiers": {
                "free": {"requests_per_second": 1, "burst_size": 3},
                "silver": {"requests_per_second": 5, "burst_size": 9, "requests_per_day": 99},
            },
            "default_tier": "silver",
        }
    )
    unknown = limits.customer_limits(customer("platinum"))
    assert (unknown.rate_per_s, unknown.burst, unknown.daily_quota) == (5.0, 9, 99)
    free = limits.customer_limits(customer("free"))
    assert (free.rate_per_s, free.burst) == (1.0, 3)


def test_customer_numbers_are_resolved_once_and_kept_on_the_context() -> None:
    limits = policy()
    context = customer("free")
    first = limits.customer_limits(context)
    assert context.rate_limits is first
    assert limits.customer_limits(context) is first


def test_quotas_claim_overrides_the_tier() -> None:
    limits = policy(
        {"customer_tiers": {"free": {"requests_per_second": 1, "burst_size": 3,
                                      "requests_per_day": 50}}}
    )  # fmt: skip
    got = limits.customer_limits(
        customer("free", {"requests_per_second": 0.5, "burst_size": 7.0, "requests_per_day": 0})
    )
    assert (got.rate_per_s, got.burst, got.daily_quota) == (0.5, 7, 0)
    assert type(got.burst) is int and type(got.daily_quota) is int
    partial = limits.customer_limits(customer("free", {"burst_size": 4, "vms": 12}))
    assert (partial.rate_per_s, partial.burst, partial.daily_quota) == (1.0, 4, 50)


def test_a_quota_claim_gives_a_tier_without_quota_one() -> None:
    limits = policy({"customer_tiers": {"free": {"requests_per_second": 1}}})
    assert limits.customer_limits(customer("free")).daily_quota == NO_QUOTA
    assert limits.customer_limits(customer("free", {"requests_per_day": 5})).daily_quota == 5


def test_development_tokens_are_unlimited() -> None:
    assert policy().customer_limits(development_context(b"42")).unlimited


def test_endpoint_limits_burst_is_the_rate_rounded_up() -> None:
    limits = policy(
        {
            "endpoints": {
                "CreateVM": {"requests_per_second": 2.5, "cost_weight": 5},
                "ListVMs": {"cost_weight": 3},
                "Plain": {"requests_per_second": 0.001},
            }
        }
    )
    create = limits.route_limits("CreateVM")
    assert (create.endpoint, create.cost, create.rate_per_s, create.burst) == (
        b"CreateVM", 5, 2.5, 3)  # fmt: skip
    assert create.bucket_id != NO_ENDPOINT
    plain = limits.route_limits("Plain")
    assert (plain.cost, plain.rate_per_s, plain.burst) == (1, 0.001, 1)
    assert plain.bucket_id not in (NO_ENDPOINT, create.bucket_id)  # one bucket per endpoint
    assert limits.route_limits("ListVMs") == RouteLimits(b"ListVMs", NO_ENDPOINT, 3, 0.0, 0)
    assert limits.route_limits("Unnamed") == RouteLimits(b"Unnamed", NO_ENDPOINT, 1, 0.0, 0)


@pytest.mark.parametrize(
    ("rate", "burst"), [(1, 1), (1.0001, 2), (2, 2), (2.5, 3), (99.1, 100), (0.5, 1)]
)
def test_endpoint_burst_is_ceil_of_the_rate(rate: float, burst: int) -> None:
    limits = policy({"endpoints": {"CreateVM": {"requests_per_second": rate}}})
    assert limits.route_limits("CreateVM").burst == burst == max(1, math.ceil(rate))


def test_no_global_limit_without_requests_per_second() -> None:
    assert policy().global_limits is None
    assert policy().max_concurrent is None
    only_cap = policy({"global": {"max_concurrent": 100}})
    assert only_cap.global_limits is None
    assert only_cap.max_concurrent == 100


def test_global_limits_numbers() -> None:
    assert policy({"global": {"requests_per_second": 2.5}}).global_limits == GlobalLimits(2.5, 3)
    both = policy({"global": {"requests_per_second": 100, "burst_size": 500}})
    assert both.global_limits == GlobalLimits(100.0, 500)


@pytest.mark.parametrize(
    ("max_concurrent", "workers", "slots"), [(10, 1, 10), (10, 2, 5), (3, 2, 2), (1, 4, 1)]
)
def test_max_concurrent_is_shared_out_between_workers(
    max_concurrent: int, workers: int, slots: int
) -> None:
    config = load({"global": {"max_concurrent": max_concurrent}}, rate_limiting={"max_keys": 1024})
    service = LimitService(config, ReplyTable(b""), workers=workers)
    try:
        limiter = service.limiter
        exchanges = [SimpleNamespace(reply=None, end_hook=None) for _ in range(slots + 1)]
        top = CustomerLimits(b"c", 1, 1.0, 1, NO_QUOTA)  # shed_above 1.0: every slot
        admitted = [limiter.admit(cast(Any, ex), top) for ex in exchanges]
        assert admitted == [True] * slots + [False]
        assert limiter.inflight == slots
        assert exchanges[-1].reply is not None  # the 503 overloaded
        assert limiter.counts.concurrency_refused == 1
        for ex in exchanges[:-1]:
            ex.end_hook()
        assert limiter.inflight == 0
    finally:
        service.close()


# ------------------------------------------------------------------------- check_overrides


@pytest.mark.parametrize(
    "quotas",
    [
        {},
        {"requests_per_second": 1e-6},
        {"requests_per_second": 1e9},
        {"requests_per_second": 0.5},
        {"burst_size": 1},
        {"burst_size": 5.0},
        {"burst_size": MAX_BURST},
        {"requests_per_day": 0},
        {"requests_per_day": MAX_DAILY_QUOTA},
        {"vms": 3, "storage_gb": 0.5},  # business quotas for the backends: not ours to check
        {"requests_per_second": 20, "burst_size": 40, "requests_per_day": 1000},
    ],
    ids=repr,
)
def test_check_overrides_accepts(quotas: dict[str, float]) -> None:
    check_overrides(quotas)


@pytest.mark.parametrize(
    ("quotas", "message"),
    [
        ({"requests_per_second": 0}, "requests_per_second must be in"),
        ({"requests_per_second": 1e-7}, "requests_per_second must be in"),
        ({"requests_per_second": 1.5e9}, "requests_per_second must be in"),
        ({"requests_per_second": -1}, "requests_per_second must be in"),
        ({"requests_per_second": math.nan}, "requests_per_second must be in"),
        ({"burst_size": 0}, "burst_size must be an integer"),
        ({"burst_size": 1.5}, "burst_size must be an integer"),
        ({"burst_size": MAX_BURST + 1}, "burst_size must be an integer"),
        ({"burst_size": -3}, "burst_size must be an integer"),
        ({"requests_per_day": -1}, "requests_per_day must be an integer"),
        ({"requests_per_day": 2.5}, "requests_per_day must be an integer"),
        ({"requests_per_day": MAX_DAILY_QUOTA + 1}, "requests_per_day must be an integer"),
        ({"burst_size": 4, "requests_per_day": 0.5}, "requests_per_day must be an integer"),
    ],
    ids=repr,
)
def test_check_overrides_refuses(quotas: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_overrides(quotas)


@pytest.mark.parametrize(
    "quotas",
    [
        {"burst_size": math.inf},
        {"requests_per_day": math.inf},
        {"burst_size": math.nan},
        {"requests_per_day": math.nan},
    ],
    ids=repr,
)
def test_check_overrides_refuses_non_finite_numbers_with_value_error(
    quotas: dict[str, float],
) -> None:
    # Its contract: ValueError for any value no tier could hold. (The JWT path filters these
    # before, in fastgw.auth.context._quotas; a direct caller relies on the contract.)
    # Product bug: infinity escapes as OverflowError from int(inf).
    with pytest.raises(ValueError):
        check_overrides(quotas)


@pytest.mark.parametrize(
    ("limits", "path"),
    [
        ({"customer_tiers": {"free": {"requests_per_second": 1e-7}}},
         "$.rate_limits.customer_tiers.free.requests_per_second"),
        ({"customer_tiers": {"free": {"requests_per_second": 2e9}}},
         "$.rate_limits.customer_tiers.free.requests_per_second"),
        ({"customer_tiers": {"free": {"requests_per_second": 1, "burst_size": 2_000_000_000}}},
         "$.rate_limits.customer_tiers.free.burst_size"),
        ({"customer_tiers": {"free": {"requests_per_second": 1, "requests_per_day": 2 * 10**15}}},
         "$.rate_limits.customer_tiers.free.requests_per_day"),
        ({"global": {"requests_per_second": 2e9}}, "$.rate_limits.global.requests_per_second"),
        ({"global": {"requests_per_second": 1, "burst_size": 2_000_000_000}},
         "$.rate_limits.global.burst_size"),
    ],
)  # fmt: skip
def test_numbers_the_limiter_cannot_count_are_config_errors(
    limits: dict[str, Any], path: str
) -> None:
    """Refused by check-config, never met as a ValueError on the request path."""
    found = problems(limits)
    assert [p.split(": ")[0] for p in found] == [path], found


def test_a_cluster_needs_a_tcp_seed_and_database_0() -> None:
    redis = {"address": "unix:///run/redis.sock", "cluster": True, "db": 2}
    found = problems({}, rate_limiting={"backend": "redis", "redis": redis})
    assert sorted(p.split(": ")[0] for p in found) == [
        "$.gateway.rate_limiting.redis.address",
        "$.gateway.rate_limiting.redis.db",
    ]


def test_lower_tiers_are_shed_first_and_the_last_slots_stay_for_the_top_tier() -> None:
    config = load({"global": {"max_concurrent": 10}}, rate_limiting={"max_keys": 1024})
    service = LimitService(config, ReplyTable(b""), workers=1)
    try:
        limiter = service.limiter
        tiers = {  # the default tiers' ranks: free 0.8, pro 0.9, enterprise 1.0
            name: CustomerLimits(b"c", 1, 1.0, 1, NO_QUOTA, shed_above=share)
            for name, share in (("free", 0.8), ("pro", 0.9), ("enterprise", 1.0))
        }
        assert config.rate_limits.customer_tiers["free"].shed_above == 0.8
        held = []

        def take(limits: CustomerLimits | None) -> bool:
            ex = SimpleNamespace(reply=None, end_hook=None)
            if limiter.admit(cast(Any, ex), limits):
                held.append(ex)
                return True
            return False

        assert [take(tiers["free"]) for _ in range(9)] == [True] * 8 + [False]
        assert not take(None)  # anonymous traffic ranks with the lowest tier
        assert [take(tiers["pro"]) for _ in range(2)] == [True, False]
        assert [take(tiers["enterprise"]) for _ in range(2)] == [True, False]
        assert limiter.inflight == 10 and limiter.counts.concurrency_refused == 4
        held.pop().end_hook()
        assert not take(tiers["free"]) and take(tiers["enterprise"])
    finally:
        service.close()
