"""``fastgw.routing.retry``: the retry budget's bound and the back-off's range.

The budget's promise, stated in true time so it can be checked from the outside: every time
it allows a retry at ``s``, the retries it allowed (and were not refunded) in the last half
window ``[s - W/2, s]`` are at most ``share`` x the requests counted in the last window
``(s - W, s]`` plus the floor. (The two buckets cover between half a window and a whole one,
hence the two spans.) Requests are bumped the way the forward stage does it, straight on the
current bucket with no rotation, and the worker's tick calls ``rotate``. Times are multiples
of 0.5 s, so every sum is exact.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.routing.retry import (
    MAX_RETRY_BACKOFF_S,
    RETRY_BUDGET_FLOOR,
    RETRY_BUDGET_WINDOW_S,
    RetryBudget,
    backoff_s,
)

HALF_S = RETRY_BUDGET_WINDOW_S / 2


def withdraw_all(budget: RetryBudget, now_s: float, limit: int = 10_000) -> int:
    """Retries the budget allows at ``now_s`` before its first refusal."""
    for taken in range(limit):
        if not budget.withdraw(now_s):
            return taken
    raise AssertionError("the budget never refused")


# ------------------------------------------------------------------------ the bound


def test_a_quiet_budget_allows_exactly_the_floor() -> None:
    budget = RetryBudget(0.2)
    assert withdraw_all(budget, 0.0) == RETRY_BUDGET_FLOOR
    assert budget.refused == 1
    assert budget.withdraw(0.0) is False
    assert budget.refused == 2


@pytest.mark.parametrize(
    ("share", "requests"), [(0.2, 100), (0.2, 7), (0.5, 31), (1.0, 50), (0.0, 1000)]
)
def test_allows_share_of_the_requests_plus_the_floor(share: float, requests: int) -> None:
    budget = RetryBudget(share)
    budget.rotate(0.0)
    budget.requests += requests
    allowed = withdraw_all(budget, 0.0)
    assert allowed == math.floor(share * requests + RETRY_BUDGET_FLOOR + 1e-9)
    assert allowed <= share * requests + RETRY_BUDGET_FLOOR


def test_the_previous_bucket_counts_and_the_one_before_is_forgotten() -> None:
    budget = RetryBudget(0.5)
    budget.rotate(0.0)  # the bucket [0, 5)
    budget.requests += 20
    assert withdraw_all(budget, 0.0) == 20  # 0.5 * 20 + 10
    # [5, 10): the requests and retries of [0, 5) still count, so nothing more yet
    assert budget.withdraw(HALF_S) is False
    budget.requests += 2
    assert withdraw_all(budget, HALF_S) == 1  # 0.5 * 22 + 10 = 21 retries in all
    # [10, 15): [0, 5) has aged out; [5, 10) had 2 requests and 1 retry
    assert withdraw_all(budget, 2 * HALF_S) == 10  # 0.5 * 2 + 10 - 1


def test_idle_for_a_bucket_past_its_end_forgets_everything() -> None:
    budget = RetryBudget(0.0)
    assert withdraw_all(budget, 0.0) == RETRY_BUDGET_FLOOR  # bucket [0, 5)
    # at 10, [5, 10) saw nothing, so [0, 5) is two buckets old
    assert withdraw_all(budget, 2 * HALF_S) == RETRY_BUDGET_FLOOR


def test_idle_just_under_that_keeps_the_previous_bucket() -> None:
    budget = RetryBudget(0.0)
    assert withdraw_all(budget, 0.0) == RETRY_BUDGET_FLOOR  # bucket [0, 5)
    assert budget.withdraw(2 * HALF_S - 0.5) is False  # [5, 10): [0, 5) is the previous one


def test_rotate_only_acts_at_the_end_of_a_bucket() -> None:
    budget = RetryBudget(0.5)
    budget.rotate(0.0)
    budget.requests += 4
    assert budget.withdraw(0.0)
    budget.rotate(HALF_S - 0.5)  # still [0, 5): nothing moves
    assert (budget.requests, budget.retries) == (4, 1)
    budget.rotate(HALF_S)  # [5, 10): the counts age into the previous bucket
    assert (budget.requests, budget.retries) == (0, 0)
    assert withdraw_all(budget, HALF_S) == 11  # 0.5 * 4 + 10 - 1: still counted


def test_refund_gives_the_last_retry_back() -> None:
    budget = RetryBudget(0.0)
    assert withdraw_all(budget, 0.0) == RETRY_BUDGET_FLOOR
    budget.refund()
    assert budget.retries == RETRY_BUDGET_FLOOR - 1
    assert budget.withdraw(0.0) is True
    assert budget.withdraw(0.0) is False


def test_refund_with_nothing_withdrawn_stays_at_zero() -> None:
    budget = RetryBudget(0.0)
    budget.refund()
    assert budget.retries == 0
    assert withdraw_all(budget, 0.0) == RETRY_BUDGET_FLOOR  # no extra credit


# -------------------------------------------------------------------- hypothesis: bound

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.5, 5.0, 10.0])),
        st.tuples(st.just("requests"), st.integers(1, 30)),
        st.tuples(st.just("withdraw"), st.integers(1, 15)),
        st.tuples(st.just("withdraw_refund"), st.integers(1, 3)),
        st.tuples(st.just("tick"), st.just(0)),
    ),
    min_size=5,
    max_size=80,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]), OPS)
def test_retries_stay_within_share_of_requests_plus_floor(
    share: float, ops: list[tuple[str, float]]
) -> None:
    budget = RetryBudget(share)
    now = 0.0
    requests: list[float] = []  # true times of the requests
    retries: list[float] = []  # true times of the retries allowed and kept
    for op, arg in ops:
        if op == "advance":
            now += arg
        elif op == "tick":
            budget.rotate(now)
        elif op == "requests":
            budget.requests += int(arg)  # as the forward stage does: no rotation
            requests.extend([now] * int(arg))
        else:
            for _ in range(int(arg)):
                allowed = budget.withdraw(now)
                if not allowed:
                    break
                if op == "withdraw_refund":
                    budget.refund()  # found no instance to go to
                    continue
                retries.append(now)
                recent_retries = sum(1 for t in retries if now - HALF_S <= t <= now)
                window_requests = sum(1 for t in requests if now - RETRY_BUDGET_WINDOW_S < t)
                assert recent_retries <= share * window_requests + RETRY_BUDGET_FLOOR


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([0.0, 0.1, 0.2, 0.5]), st.integers(0, 200))
def test_a_refund_makes_room_for_exactly_one_more(share: float, requests: int) -> None:
    budget = RetryBudget(share)
    budget.rotate(0.0)
    budget.requests += requests
    total = withdraw_all(budget, 0.0)
    assert total >= RETRY_BUDGET_FLOOR
    for _ in range(3):
        budget.refund()
        assert budget.retries == total - 1
        assert budget.withdraw(0.0) is True
        assert budget.withdraw(0.0) is False
        assert budget.retries == total


# ---------------------------------------------------------------------------- back-off


@pytest.mark.parametrize("base", [0.01, 0.1, 0.5, 1.0, 2.0, 3.0])
def test_backoff_ceiling_doubles_per_retry_up_to_the_cap(base: float) -> None:
    cap = max(MAX_RETRY_BACKOFF_S, base)
    ceilings = [backoff_s(base, retry, draw=1.0) for retry in range(1, 40)]
    assert ceilings[0] == min(base, cap)
    for previous, ceiling in itertools.pairwise(ceilings):
        assert ceiling == min(previous * 2, cap)
    assert max(ceilings) == cap
    assert backoff_s(base, 10_000, draw=1.0) == cap  # a huge retry count does not overflow


def test_backoff_is_full_jitter_over_the_ceiling() -> None:
    assert backoff_s(0.1, 3, draw=0.0) == 0.0
    assert backoff_s(0.1, 3, draw=0.5) == pytest.approx(0.2)
    assert backoff_s(0.1, 3, draw=0.999) == pytest.approx(0.3996)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=0.001, max_value=30.0),
    st.integers(1, 100),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_backoff_is_in_zero_to_the_ceiling(base: float, retry: int, draw: float) -> None:
    ceiling = min(max(MAX_RETRY_BACKOFF_S, base), base * 2.0 ** (retry - 1))
    delay = backoff_s(base, retry, draw)
    assert 0.0 <= delay < ceiling or delay == ceiling == 0.0
    assert delay <= max(MAX_RETRY_BACKOFF_S, base)


def test_backoff_random_draws_stay_in_range() -> None:
    for retry in range(1, 8):
        ceiling = min(MAX_RETRY_BACKOFF_S, 0.05 * 2 ** (retry - 1))
        delays = [backoff_s(0.05, retry) for _ in range(200)]
        assert all(0.0 <= d < ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, not a fixed wait
