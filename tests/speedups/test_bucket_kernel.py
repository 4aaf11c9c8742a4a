"""Behaviour of the token-bucket table, on both builds: refill, burst, waits, eviction, clock."""

from __future__ import annotations

import math

import pytest

from fastgw._speedups import Build


def test_new_key_starts_full(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert t.peek(b"k", 0.0, 1.0, 5.0) == 5.0
    assert len(t) == 0  # peek creates nothing
    for _ in range(5):
        assert t.take(b"k", 0.0, 1.0, 5.0, 1.0) == 0.0
    assert t.peek(b"k", 0.0, 1.0, 5.0) == 0.0
    assert len(t) == 1


def test_refusal_reports_the_wait_and_takes_nothing(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert t.take("k", 100.0, 2.0, 10.0, 10.0) == 0.0
    assert t.take("k", 100.0, 2.0, 10.0, 1.0) == 0.5  # (1 - 0) / 2
    assert t.take("k", 100.25, 2.0, 10.0, 1.0) == 0.25  # 0.5 tokens refilled
    assert t.peek("k", 100.25, 2.0, 10.0) == 0.5  # the refusal subtracted nothing
    assert t.take("k", 100.5, 2.0, 10.0, 1.0) == 0.0
    assert t.peek("k", 100.5, 2.0, 10.0) == 0.0


def test_refill_is_capped_by_burst(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert t.take(1, 0.0, 10.0, 20.0, 20.0) == 0.0
    assert t.peek(1, 1.0, 10.0, 20.0) == 10.0
    assert t.peek(1, 2.0, 10.0, 20.0) == 20.0
    assert t.peek(1, 1e9, 10.0, 20.0) == 20.0
    assert t.take(1, 1e9, 10.0, 20.0, 5.0) == 0.0
    assert t.peek(1, 1e9, 10.0, 20.0) == 15.0


def test_smaller_burst_caps_existing_tokens(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    t.take("k", 0.0, 1.0, 100.0, 0.0)
    assert t.peek("k", 0.0, 1.0, 10.0) == 10.0
    assert t.take("k", 0.0, 1.0, 10.0, 10.0) == 0.0
    assert t.take("k", 0.0, 1.0, 10.0, 1.0) == 1.0


def test_cost_above_burst_is_never_allowed(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert t.take("k", 0.0, 1.0, 5.0, 6.0) == math.inf
    assert t.peek("k", 0.0, 1.0, 5.0) == 5.0  # nothing taken
    assert t.take("k", 0.0, 1.0, 5.0, 5.0) == 0.0


def test_zero_cost_is_always_allowed(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    t.take("k", 0.0, 1.0, 1.0, 1.0)
    assert t.take("k", 0.0, 1.0, 1.0, 0.0) == 0.0


def test_time_going_backwards_adds_nothing(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert t.take("k", 10.0, 1.0, 5.0, 5.0) == 0.0
    assert t.peek("k", 5.0, 1.0, 5.0) == 0.0
    assert t.take("k", 5.0, 1.0, 5.0, 1.0) == 1.0
    # last_s stayed at 10: one second later exactly one token is back, not six
    assert t.peek("k", 11.0, 1.0, 5.0) == 1.0
    assert t.take("k", 11.0, 1.0, 5.0, 1.0) == 0.0


def test_tiny_waits_stay_positive(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    t.take("k", 0.0, 1e300, 1.0, 1.0)
    wait = t.take("k", 0.0, 1e300, 1.0, 1.0)
    assert wait > 0.0
    assert wait == 1e-9


def test_least_recently_used_key_is_evicted(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(2)
    t.take("a", 0.0, 1.0, 3.0, 3.0)
    t.take("b", 0.0, 1.0, 3.0, 3.0)
    t.take("a", 0.0, 1.0, 3.0, 0.0)  # a is now the most recent
    t.take("c", 0.0, 1.0, 3.0, 3.0)  # the table is full: b goes
    assert len(t) == 2
    assert t.peek("a", 0.0, 1.0, 3.0) == 0.0
    assert t.peek("c", 0.0, 1.0, 3.0) == 0.0
    assert t.peek("b", 0.0, 1.0, 3.0) == 3.0  # forgotten: back to full


def test_refused_take_counts_as_use(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(2)
    t.take("a", 0.0, 1.0, 1.0, 1.0)
    t.take("b", 0.0, 1.0, 1.0, 1.0)
    assert t.take("a", 0.0, 1.0, 1.0, 1.0) > 0.0  # refused, still a use
    t.take("c", 0.0, 1.0, 1.0, 1.0)
    assert t.peek("b", 0.0, 1.0, 1.0) == 1.0  # b was evicted, not a
    assert t.peek("a", 0.0, 1.0, 1.0) == 0.0


def test_peek_does_not_refresh_recency(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(2)
    t.take("a", 0.0, 1.0, 1.0, 1.0)
    t.take("b", 0.0, 1.0, 1.0, 1.0)
    t.peek("a", 0.0, 1.0, 1.0)
    t.take("c", 0.0, 1.0, 1.0, 1.0)
    assert t.peek("a", 0.0, 1.0, 1.0) == 1.0  # a was the least recently *used*
    assert t.peek("b", 0.0, 1.0, 1.0) == 0.0


def test_table_never_exceeds_max_keys(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(50)
    for i in range(1000):
        t.take(i, float(i), 1.0, 1.0, 1.0)
        assert len(t) == min(i + 1, 50)
    assert t.max_keys == 50


def test_remove(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    t.take("k", 0.0, 1.0, 2.0, 2.0)
    t.remove("k")
    assert len(t) == 0
    assert t.take("k", 0.0, 1.0, 2.0, 2.0) == 0.0  # back full
    t.remove("absent")  # not an error


def test_keys_are_any_hashable(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    for key in (b"k", "k", 1, (b"customer", b"endpoint"), None, 1.5):
        assert t.take(key, 0.0, 1.0, 1.0, 1.0) == 0.0
    assert len(t) == 6
    with pytest.raises(TypeError):
        t.take([1], 0.0, 1.0, 1.0, 1.0)


BAD_ARGS = [  # (now_s, rate_per_s, burst, cost), message
    ((math.nan, 1.0, 1.0, 1.0), "now_s must be finite"),
    ((math.inf, 1.0, 1.0, 1.0), "now_s must be finite"),
    ((-math.inf, 1.0, 1.0, 1.0), "now_s must be finite"),
    ((0.0, 0.0, 1.0, 1.0), "rate_per_s must be > 0 and finite"),
    ((0.0, -1.0, 1.0, 1.0), "rate_per_s must be > 0 and finite"),
    ((0.0, math.nan, 1.0, 1.0), "rate_per_s must be > 0 and finite"),
    ((0.0, math.inf, 1.0, 1.0), "rate_per_s must be > 0 and finite"),
    ((0.0, 1.0, 0.0, 1.0), "burst must be > 0 and finite"),
    ((0.0, 1.0, -5.0, 1.0), "burst must be > 0 and finite"),
    ((0.0, 1.0, math.nan, 1.0), "burst must be > 0 and finite"),
    ((0.0, 1.0, math.inf, 1.0), "burst must be > 0 and finite"),
    ((0.0, 1.0, 1.0, -1.0), "cost must be >= 0"),
    ((0.0, 1.0, 1.0, math.nan), "cost must be >= 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_bad_arguments(
    speedups: Build, args: tuple[float, float, float, float], message: str
) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    with pytest.raises(ValueError, match=message):
        t.take("k", *args)
    if "cost" not in message:
        with pytest.raises(ValueError, match=message):
            t.peek("k", *args[:3])
    assert len(t) == 0


def test_max_keys_must_be_positive(speedups: Build) -> None:
    with pytest.raises(ValueError, match="max_keys must be >= 1"):
        speedups.bucket.TokenBucketTable(0)


def test_results_are_floats(speedups: Build) -> None:
    t = speedups.bucket.TokenBucketTable(10)
    assert type(t.take("k", 0.0, 1.0, 2.0, 1.0)) is float
    assert type(t.take("k", 0.0, 1.0, 2.0, 5.0)) is float
    assert type(t.peek("k", 0.0, 1.0, 2.0)) is float
    assert type(t.peek("new", 0.0, 1.0, 2.0)) is float
