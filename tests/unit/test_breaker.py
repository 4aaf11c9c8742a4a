"""``fastgw.routing.breaker.CircuitBreaker``: every transition, with times passed explicitly.

The explicit tests walk the documented behaviour one rule at a time (opening on a streak of
failures or on an error share, the two-bucket window, the cool-down and its doubling, the
half-open probes, ``adopt_open``). A hypothesis test then drives random sequences of time
steps, admissions, outcomes, adoptions and released probes against ``RefBreaker``, a small
model written from the module docstring (outcomes kept as a list tagged with their bucket,
not as counters), and checks both agree on every answer and every state, plus the safety
invariants (never more probes than allowed, never an admission while OPEN before the
deadline). Times are multiples of 0.5 s, so every sum is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.routing.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATE_NAMES,
    BreakerSettings,
    CircuitBreaker,
)

# A small breaker: 3 failures in a row, or half of at least 6 outcomes, opens it.
SMALL = BreakerSettings(
    failure_threshold=3,
    error_rate=0.5,
    min_requests=6,
    cooldown_s=4.0,
    max_cooldown_s=20.0,
    half_open_probes=1,
    window_s=10.0,
    probe_timeout_s=30.0,
)
HALF_S = SMALL.window_s / 2


def _fields(settings: BreakerSettings) -> dict[str, float | int]:
    return {name: getattr(settings, name) for name in BreakerSettings.__dataclass_fields__}


def with_(**changes: float | int) -> BreakerSettings:
    """``SMALL`` with some settings changed."""
    return BreakerSettings(**{**_fields(SMALL), **changes})  # type: ignore[arg-type]


def fail_n(breaker: CircuitBreaker, count: int, now_s: float) -> list[bool]:
    return [breaker.on_failure(now_s) for _ in range(count)]


def open_at(settings: BreakerSettings, now_s: float) -> CircuitBreaker:
    """A breaker that opened at ``now_s`` on a streak of failures."""
    breaker = CircuitBreaker(settings)
    assert fail_n(breaker, settings.failure_threshold, now_s)[-1] is True
    assert breaker.state == OPEN
    return breaker


# ------------------------------------------------------------------------- basics


def test_a_new_breaker_is_closed_and_admits() -> None:
    breaker = CircuitBreaker(SMALL)
    assert (breaker.state, breaker.streak, breaker.probes_in_flight) == (CLOSED, 0, 0)
    assert all(breaker.admit(t) for t in (0.0, 1.0, 1e6))
    assert STATE_NAMES[CLOSED] == "closed"
    assert STATE_NAMES[OPEN] == "open"
    assert STATE_NAMES[HALF_OPEN] == "half_open"


def test_cooldown_for_doubles_from_cooldown_up_to_max() -> None:
    assert [SMALL.cooldown_for(n) for n in range(1, 7)] == [4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    assert SMALL.cooldown_for(10_000) == 20.0  # a long streak does not overflow


# --------------------------------------------------------------- consecutive failures


def test_opens_after_exactly_failure_threshold_failures_in_a_row() -> None:
    breaker = CircuitBreaker(SMALL)
    assert fail_n(breaker, 2, 0.0) == [False, False]
    assert breaker.state == CLOSED
    assert breaker.admit(0.0)
    assert breaker.on_failure(0.0) is True
    assert breaker.state == OPEN
    assert breaker.streak == 1
    assert breaker.open_until_s == 4.0
    assert not breaker.admit(0.0)


def test_a_success_between_failures_resets_the_streak() -> None:
    breaker = CircuitBreaker(with_(min_requests=1000))
    assert fail_n(breaker, 2, 0.0) == [False, False]
    assert breaker.on_success(0.0) is False
    assert breaker.consecutive_failures == 0
    assert fail_n(breaker, 2, 0.0) == [False, False]
    assert breaker.state == CLOSED
    assert breaker.on_failure(0.0) is True  # the third in a row since the success


# ------------------------------------------------------------------------ error share


def test_opens_on_error_share_once_min_requests_were_seen() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100))
    # success, failure alternating: the share is 1/2 after every failure
    answers = []
    for _ in range(3):
        assert breaker.on_success(0.0) is False
        answers.append(breaker.on_failure(0.0))
    assert answers == [False, False, True]  # 6 outcomes, 3 failures: 3 >= 0.5 * 6
    assert breaker.state == OPEN


def test_error_share_waits_for_min_requests() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    # all failures, but only 5 outcomes: the share is 100 % and still nothing opens
    assert fail_n(breaker, 5, 0.0) == [False] * 5
    assert breaker.state == CLOSED
    assert breaker.on_failure(0.0) is True  # the sixth outcome


def test_error_share_below_the_rate_does_not_open() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    for _ in range(20):
        assert breaker.on_success(0.0) is False
        assert breaker.on_success(0.0) is False
        assert breaker.on_failure(0.0) is False  # a third of them
    assert breaker.state == CLOSED


# ------------------------------------------------------------------------ the window


def test_the_previous_bucket_still_counts() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    # t=0 starts the bucket [0, 5); 5 failures there
    assert fail_n(breaker, 5, 0.0) == [False] * 5
    # [5, 10) is the next bucket: [0, 5) ages into "previous" and still counts
    assert breaker.on_failure(HALF_S + 1.0) is True


def test_a_bucket_two_buckets_old_is_forgotten() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    assert fail_n(breaker, 5, 0.0) == [False] * 5  # bucket [0, 5)
    assert breaker.on_success(HALF_S) is False  # bucket [5, 10); [0, 5) is previous
    # bucket [10, 15): [5, 10) is previous, [0, 5) has gone
    assert fail_n(breaker, 4, 2 * HALF_S) == [False] * 4
    assert breaker.state == CLOSED  # 5 outcomes in the window (1 success, 4 failures)
    assert breaker.on_failure(2 * HALF_S) is True  # 6 outcomes, 5 failures


def test_idle_longer_than_a_bucket_past_its_end_clears_the_history() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    assert fail_n(breaker, 5, 0.0) == [False] * 5  # bucket [0, 5)
    # t=10: a whole bucket with no outcome went by, so [0, 5) is not the previous one
    assert fail_n(breaker, 5, 2 * HALF_S) == [False] * 5
    assert breaker.state == CLOSED
    assert breaker.on_failure(2 * HALF_S) is True


def test_idle_just_under_a_bucket_past_its_end_keeps_the_history() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=100, min_requests=6))
    assert fail_n(breaker, 5, 0.0) == [False] * 5  # bucket [0, 5)
    assert breaker.on_failure(2 * HALF_S - 0.5) is True  # bucket [5, 10): [0, 5) still counts


# ---------------------------------------------------------------- OPEN and HALF_OPEN


def test_open_refuses_until_open_until_then_half_open_admits_exactly_the_probes() -> None:
    breaker = open_at(with_(half_open_probes=2), 0.0)
    assert breaker.open_until_s == 4.0
    assert [breaker.admit(t) for t in (0.0, 1.0, 3.5, 3.999)] == [False] * 4
    assert breaker.state == OPEN
    assert breaker.admit(4.0) is True
    assert breaker.state == HALF_OPEN
    assert breaker.probes_in_flight == 1
    assert breaker.admit(4.0) is True
    assert breaker.probes_in_flight == 2
    assert [breaker.admit(t) for t in (4.0, 5.0, 20.0)] == [False] * 3
    assert breaker.probes_in_flight == 2


def test_a_probe_success_closes_and_resets_the_streak() -> None:
    breaker = open_at(SMALL, 0.0)
    assert breaker.admit(4.0)
    assert breaker.on_failure(4.0) is True  # the probe failed: streak 2
    assert breaker.streak == 2
    assert breaker.admit(12.0)
    assert breaker.on_success(12.0) is True
    assert (breaker.state, breaker.streak, breaker.probes_in_flight) == (CLOSED, 0, 0)
    assert breaker.consecutive_failures == 0
    assert breaker.admit(12.0)
    # the next opening starts the cool-down over at cooldown_s
    assert fail_n(breaker, 3, 100.0)[-1] is True
    assert (breaker.streak, breaker.open_until_s) == (1, 104.0)


def test_late_outcomes_of_tries_sent_before_half_open_decide_nothing() -> None:
    breaker = open_at(SMALL, 0.0)  # open until 4.0
    assert breaker.admit(4.0) and breaker.state == HALF_OPEN  # the probe, sent at 4.0
    # answers to requests sent before the circuit opened arrive now: no verdict
    assert breaker.on_failure(4.2, sent_s=-1.0) is False
    assert breaker.on_success(4.3, sent_s=3.9) is False
    assert breaker.state == HALF_OPEN and breaker.probes_in_flight == 1
    assert breaker.on_success(4.5, sent_s=4.0) is True  # the probe's own answer closes it
    assert breaker.state == CLOSED


def test_a_probe_failure_reopens_with_a_doubled_cooldown_up_to_the_max() -> None:
    breaker = open_at(SMALL, 0.0)
    now = 0.0
    seen = [(breaker.streak, breaker.open_until_s - now)]
    for _ in range(5):
        now = breaker.open_until_s
        assert breaker.admit(now)
        assert breaker.state == HALF_OPEN
        assert breaker.on_failure(now) is True
        assert breaker.state == OPEN
        assert breaker.probes_in_flight == 0
        seen.append((breaker.streak, breaker.open_until_s - now))
    assert seen == [(1, 4.0), (2, 8.0), (3, 16.0), (4, 20.0), (5, 20.0), (6, 20.0)]


def test_outcomes_while_open_do_not_change_the_state() -> None:
    breaker = open_at(SMALL, 0.0)
    # requests sent before it opened report late: no verdict on any probe
    assert breaker.on_success(1.0) is False
    assert breaker.on_failure(1.0) is False
    assert (breaker.state, breaker.open_until_s, breaker.streak) == (OPEN, 4.0, 1)


def test_a_probe_slot_frees_after_probe_timeout() -> None:
    breaker = open_at(SMALL, 0.0)
    assert breaker.admit(4.0)  # the probe that never reports
    assert not breaker.admit(4.0 + SMALL.probe_timeout_s - 0.5)
    assert breaker.probes_in_flight == 1
    assert breaker.admit(4.0 + SMALL.probe_timeout_s)
    assert breaker.probes_in_flight == 1  # the lost one freed, the new one counted
    assert breaker.state == HALF_OPEN


def test_release_probe_gives_the_slot_back() -> None:
    breaker = open_at(SMALL, 0.0)
    assert breaker.admit(4.0)
    assert not breaker.admit(4.0)
    breaker.release_probe()
    assert breaker.probes_in_flight == 0
    assert breaker.admit(4.0)
    breaker.release_probe()
    breaker.release_probe()  # more releases than probes: stays at 0
    assert breaker.probes_in_flight == 0
    closed = CircuitBreaker(SMALL)
    closed.release_probe()  # no effect when not half-open
    assert (closed.state, closed.probes_in_flight) == (CLOSED, 0)


# ----------------------------------------------------------------------- adopt_open


def test_adopt_open_closes_the_door_until_the_given_time() -> None:
    breaker = CircuitBreaker(SMALL)
    assert breaker.adopt_open(7.0, 3) is True
    assert (breaker.state, breaker.open_until_s, breaker.streak) == (OPEN, 7.0, 3)
    assert not breaker.admit(6.5)
    assert breaker.admit(7.0)
    assert breaker.state == HALF_OPEN
    # its own next opening continues the adopted streak
    assert breaker.on_failure(7.0) is True
    assert (breaker.streak, breaker.open_until_s) == (4, 7.0 + SMALL.cooldown_for(4))


def test_adopt_open_extends_and_keeps_the_larger_streak() -> None:
    breaker = open_at(SMALL, 0.0)  # until 4, streak 1
    assert breaker.adopt_open(9.0, 2) is True
    assert (breaker.open_until_s, breaker.streak) == (9.0, 2)
    assert breaker.adopt_open(12.0, 1) is True  # a later deadline, a smaller streak
    assert (breaker.open_until_s, breaker.streak) == (12.0, 2)


def test_adopt_open_returns_false_when_nothing_changes() -> None:
    breaker = open_at(SMALL, 0.0)  # until 4, streak 1
    assert breaker.adopt_open(4.0, 1) is False  # the same ejection (its own, read back)
    assert breaker.adopt_open(3.0, 5) is False  # an earlier one: ignored, streak too
    assert (breaker.state, breaker.open_until_s, breaker.streak) == (OPEN, 4.0, 1)


def test_adopt_open_while_half_open_drops_the_probes() -> None:
    breaker = open_at(with_(half_open_probes=2), 0.0)
    assert breaker.admit(4.0)
    assert breaker.state == HALF_OPEN
    assert breaker.adopt_open(10.0, 2) is True  # another worker's probe failed
    assert (breaker.state, breaker.probes_in_flight) == (OPEN, 0)
    assert not breaker.admit(9.5)


# ----------------------------------------------------- a fresh window after an opening


def test_failures_before_an_opening_do_not_count_after_it() -> None:
    breaker = CircuitBreaker(with_(failure_threshold=3, min_requests=6))
    assert fail_n(breaker, 3, 0.0)[-1] is True  # the window is cleared on opening
    assert breaker.admit(4.0)
    assert breaker.on_success(4.0) is True
    # 2 failures: neither the streak (2 < 3) nor the share (3 outcomes < 6) is reached
    assert fail_n(breaker, 2, 4.0) == [False, False]
    assert breaker.state == CLOSED


def test_late_failures_while_open_do_not_reopen_the_closed_circuit_at_once() -> None:
    """The module's own rule ("a fresh window after the cool-down: old failures must not
    re-open it at once") for outcomes that arrive while OPEN: requests sent before the
    circuit opened fail late (e.g. 20 in flight to a dead backend). After a probe succeeds,
    one new failure must not re-open the circuit on the strength of those late ones."""
    breaker = CircuitBreaker(with_(failure_threshold=5, min_requests=20, cooldown_s=10.0))
    assert breaker.on_success(0.0) is False  # the bucket [0, 5) starts
    assert fail_n(breaker, 5, 4.5)[-1] is True  # open until 14.5
    assert fail_n(breaker, 20, 5.0) == [False] * 20  # the late ones, while OPEN
    assert breaker.admit(14.5)
    assert breaker.on_success(14.5) is True  # the probe passed: closed
    assert breaker.on_failure(14.5) is False  # one failure after closing
    assert breaker.state == CLOSED


def test_failures_before_an_adopted_opening_do_not_reopen_the_closed_circuit_at_once() -> None:
    """Same rule for ``adopt_open``: this worker's own failures from before another worker's
    opening was adopted belong to the same incident; once its probe succeeds, one new failure
    must not re-open the circuit because of them."""
    breaker = CircuitBreaker(with_(failure_threshold=5, min_requests=20, cooldown_s=10.0))
    # 19 outcomes (under min_requests), 16 failures, never 5 in a row: still closed
    for _ in range(3):
        assert fail_n(breaker, 4, 5.0) == [False] * 4
        assert breaker.on_success(5.0) is False
    assert fail_n(breaker, 4, 5.0) == [False] * 4
    assert breaker.state == CLOSED
    assert breaker.adopt_open(14.5, 1) is True  # another worker saw the same and opened
    assert breaker.admit(14.5)
    assert breaker.on_success(14.5) is True
    assert breaker.on_failure(14.5) is False
    assert breaker.state == CLOSED


# ------------------------------------------------------------------ reference model


@dataclass
class RefBreaker:
    """The state machine of the module docstring, written independently of the code:
    outcomes are kept as ``(bucket number, failed)`` and the window is the last two bucket
    numbers; an opening forgets them all, and so does a probe that closes the circuit."""

    settings: BreakerSettings
    state: int = CLOSED
    open_until_s: float = 0.0
    streak: int = 0
    probes_in_flight: int = 0
    consecutive_failures: int = 0
    last_probe_s: float = 0.0
    bucket_no: int = 0
    bucket_end_s: float = 0.0
    outcomes: list[tuple[int, bool]] = field(default_factory=list)

    def admit(self, now_s: float) -> bool:
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now_s < self.open_until_s:
                return False
            self.state, self.probes_in_flight = HALF_OPEN, 0
        if self.probes_in_flight == self.settings.half_open_probes:
            if now_s - self.last_probe_s < self.settings.probe_timeout_s:
                return False
            self.probes_in_flight = 0  # the newest probe is that old: all of them are lost
        self.probes_in_flight += 1
        self.last_probe_s = now_s
        return True

    def release_probe(self) -> None:
        if self.state == HALF_OPEN:
            self.probes_in_flight = max(0, self.probes_in_flight - 1)

    def _record(self, now_s: float, failed: bool) -> None:
        half = self.settings.window_s / 2
        if now_s >= self.bucket_end_s:
            if now_s < self.bucket_end_s + half:
                self.bucket_no, self.bucket_end_s = self.bucket_no + 1, self.bucket_end_s + half
            else:
                self.bucket_no, self.bucket_end_s = self.bucket_no + 2, now_s + half
        self.outcomes.append((self.bucket_no, failed))
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0

    def _open(self, now_s: float) -> None:
        self.streak += 1
        self.state = OPEN
        self.open_until_s = now_s + min(
            self.settings.max_cooldown_s, self.settings.cooldown_s * 2 ** (self.streak - 1)
        )
        self.probes_in_flight = 0
        self.consecutive_failures = 0
        self.outcomes = []

    def on_success(self, now_s: float) -> bool:
        self._record(now_s, failed=False)
        if self.state != HALF_OPEN:
            return False
        self.state, self.streak, self.probes_in_flight = CLOSED, 0, 0
        self.outcomes = []
        return True

    def on_failure(self, now_s: float) -> bool:
        self._record(now_s, failed=True)
        if self.state == HALF_OPEN:
            self._open(now_s)
            return True
        if self.state == OPEN:
            return False
        window = [failed for number, failed in self.outcomes if number >= self.bucket_no - 1]
        if self.consecutive_failures >= self.settings.failure_threshold or (
            len(window) >= self.settings.min_requests
            and sum(window) >= self.settings.error_rate * len(window)
        ):
            self._open(now_s)
            return True
        return False

    def adopt_open(self, until_s: float, streak: int) -> bool:
        if self.state == OPEN and self.open_until_s >= until_s:
            return False
        self.state, self.open_until_s = OPEN, until_s
        self.streak = max(self.streak, streak)
        self.probes_in_flight = 0
        return True


def observed(breaker: CircuitBreaker | RefBreaker) -> tuple[int, float, int, int]:
    return (breaker.state, breaker.open_until_s, breaker.streak, breaker.probes_in_flight)


STEPS = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 4.0, 4.5, 5.0, 7.5, 10.0, 30.0])
EDGE_OFFSETS = st.sampled_from([-0.5, 0.0, 0.0, 0.5])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), STEPS),
        # jumps to the edges the model knows of: a bucket's end (+0, +1 or +2 half windows),
        # the cool-down's deadline, the probe timeout; -0.5 lands just before one
        st.tuples(st.sampled_from(["bucket", "deadline", "probe_timeout"]), EDGE_OFFSETS),
        st.tuples(st.just("bucket_after"), st.sampled_from([1.0, 2.0])),
        st.tuples(st.just("admit"), st.just(0.0)),
        st.tuples(st.just("success"), st.just(0.0)),
        st.tuples(st.just("failure"), st.just(0.0)),
        st.tuples(st.just("failure"), st.just(0.0)),
        st.tuples(st.just("release"), st.just(0.0)),
        st.tuples(st.just("adopt"), st.sampled_from([0.5, 4.0, 12.0])),
    ),
    min_size=10,
    max_size=120,
)
SETTINGS = st.builds(
    BreakerSettings,
    failure_threshold=st.integers(1, 4),
    error_rate=st.sampled_from([0.25, 0.5, 1.0]),
    min_requests=st.integers(1, 8),
    cooldown_s=st.sampled_from([1.0, 4.0]),
    max_cooldown_s=st.sampled_from([4.0, 16.0]),
    half_open_probes=st.integers(1, 3),
    window_s=st.sampled_from([5.0, 10.0]),
    probe_timeout_s=st.sampled_from([2.0, 30.0]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SETTINGS, OPS, st.integers(1, 4))
def test_matches_the_reference_model(
    breaker_settings: BreakerSettings, ops: list[tuple[str, float]], adopted_streak: int
) -> None:
    breaker, ref = CircuitBreaker(breaker_settings), RefBreaker(breaker_settings)
    now = 0.0
    for op, arg in ops:
        if op == "advance":
            now += arg
            continue
        if op in ("bucket", "bucket_after", "deadline", "probe_timeout"):
            half = breaker_settings.window_s / 2
            edge = {
                "bucket": ref.bucket_end_s + arg,
                "bucket_after": ref.bucket_end_s + arg * half,
                "deadline": ref.open_until_s + arg,
                "probe_timeout": ref.last_probe_s + breaker_settings.probe_timeout_s + arg,
            }[op]
            now = max(now, edge)
            continue
        if op == "admit":
            was_open_before_deadline = breaker.state == OPEN and now < breaker.open_until_s
            got, want = breaker.admit(now), ref.admit(now)
            if was_open_before_deadline:
                assert got is False
        elif op == "success":
            got, want = breaker.on_success(now), ref.on_success(now)
        elif op == "failure":
            got, want = breaker.on_failure(now), ref.on_failure(now)
        elif op == "release":
            breaker.release_probe()
            ref.release_probe()
            got = want = None
        else:
            got = breaker.adopt_open(now + arg, adopted_streak)
            want = ref.adopt_open(now + arg, adopted_streak)
        assert got == want, (op, now)
        assert observed(breaker) == observed(ref), (op, now)
        assert breaker.consecutive_failures == ref.consecutive_failures
        assert 0 <= breaker.probes_in_flight <= breaker_settings.half_open_probes
        if breaker.state != HALF_OPEN:
            assert breaker.probes_in_flight == 0
        if breaker.state == OPEN:
            assert breaker.streak >= 1
            assert breaker.open_until_s > 0


@pytest.mark.parametrize("probes", [1, 2, 3])
def test_half_open_never_admits_more_than_the_probes(probes: int) -> None:
    breaker = open_at(with_(half_open_probes=probes), 0.0)
    admitted = sum(breaker.admit(4.0 + 0.5 * k) for k in range(10 * probes))
    assert admitted == probes
    assert breaker.probes_in_flight == probes
