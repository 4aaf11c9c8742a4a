"""``fastgw.routing.health.HealthView``: one worker's view over a real shared health table.

Two views on one table stand for two workers of a gateway instance (slots 0 and 1). Times
are passed explicitly to ``on_failure``/``refresh``/``first_usable``; they start at ``T0``, a
little after the views were built (their constructor refreshes once with the real clock).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from fastgw.exchange import ABORTED, Exchange
from fastgw.routing.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings
from fastgw.routing.health import HealthView
from fastgw.routing.health_table import HealthTable, create_health_fd

LABELS = ("10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000")
BREAKER = BreakerSettings(
    failure_threshold=3,
    error_rate=0.5,
    min_requests=1000,
    cooldown_s=4.0,
    max_cooldown_s=60.0,
    half_open_probes=2,
    window_s=10.0,
    probe_timeout_s=30.0,
)
ALL = (0, 1, 2)


def us(seconds: float) -> int:
    return int(seconds * 1_000_000)


@pytest.fixture
def table() -> Iterator[HealthTable]:
    fd = create_health_fd(len(LABELS), 2)
    health = HealthTable(fd)
    try:
        yield health
    finally:
        health.close()
        os.close(fd)


class Load:
    """The ``load`` callable: this worker's requests in flight per instance."""

    def __init__(self) -> None:
        self.inflight = [0] * len(LABELS)

    def __call__(self, index: int) -> int:
        return self.inflight[index]


def view(
    table: HealthTable | None, slot: int, breaker: BreakerSettings | None = BREAKER
) -> HealthView:
    return HealthView(table, slot, LABELS, breaker, Load())


def start() -> float:
    return time.monotonic() + 1.0


def trip(health: HealthView, index: int, now_s: float) -> None:
    for _ in range(BREAKER.failure_threshold):
        health.on_failure(index, now_s, now_s)


def down(table: HealthTable, index: int) -> None:
    for _ in range(2):
        table.record_check(
            index, False, 1000, us(time.monotonic()), unhealthy_threshold=2, recovery_threshold=2
        )
    assert table.up(index) is False


def up(table: HealthTable, index: int) -> None:
    for _ in range(2):
        table.record_check(
            index, True, 1000, us(time.monotonic()), unhealthy_threshold=2, recovery_threshold=2
        )
    assert table.up(index) is True


# --------------------------------------------------------------------------- clear


def test_all_clear_at_start(table: HealthTable) -> None:
    worker = view(table, 0)
    assert worker.all_clear is True
    assert list(worker.usable) == [1, 1, 1]
    assert worker.reachable() == 3
    assert [b.state for b in worker.breakers] == [CLOSED] * 3
    t0 = start()
    assert worker.first_usable(ALL, 0, t0) == 0
    assert worker.first_usable(ALL, 2, t0) == 2
    assert worker.circuit_refused(ALL) is False


def test_an_empty_view_has_nothing_usable() -> None:
    empty = HealthView(None, 0, (), BREAKER, Load())
    assert empty.reachable() == 0
    assert empty.check_latency_ms() == 0.0
    assert empty.first_usable((), 0, start()) == -1


# ---------------------------------------------------------------- passive ejection


def test_failures_open_the_breaker_and_publish_an_ejection(table: HealthTable) -> None:
    worker = view(table, 0)
    t0 = start()
    changes = table.changes()
    worker.on_failure(1, t0, t0)
    worker.on_failure(1, t0, t0)
    assert worker.usable[1] == 1
    assert worker.all_clear is True  # two failures: still closed
    worker.on_failure(1, t0, t0)
    assert worker.breakers[1].state == OPEN
    assert worker.usable[1] == 0
    assert worker.all_clear is False
    assert worker.reachable() == 2
    assert worker.first_usable(ALL, 1, t0) == 2  # fails over past it
    assert worker.first_usable((1,), 0, t0) == -1
    assert worker.circuit_refused((1,)) is True  # a breaker holds it: circuit_open
    assert table.changes() == changes + 1
    assert table.ejection(1, us(t0)) == (us(t0 + BREAKER.cooldown_s), 1)
    worker.refresh(t0 + 0.1)  # reading its own ejection back changes nothing
    assert worker.usable[1] == 0
    assert worker.breakers[1].open_until_s == t0 + BREAKER.cooldown_s


def test_another_worker_adopts_the_ejection_and_probes_after_the_cooldown(
    table: HealthTable,
) -> None:
    first, second = view(table, 0), view(table, 1)
    t0 = start()
    trip(first, 0, t0)
    assert second.usable[0] == 1  # not read yet
    second.refresh(t0 + 0.1)
    assert second.usable[0] == 0
    assert second.all_clear is False
    assert second.breakers[0].state == OPEN
    assert second.breakers[0].streak == 1
    assert second.first_usable((0,), 0, t0 + 0.1) == -1
    assert second.first_usable(ALL, 0, t0 + 0.1) == 1
    assert second.circuit_refused((0,)) is True
    # still held just before the end of the cool-down
    second.refresh(t0 + BREAKER.cooldown_s - 0.1)
    assert second.usable[0] == 0
    # after it: exactly half_open_probes requests get through, as probes
    probe_at = t0 + BREAKER.cooldown_s
    second.refresh(probe_at)
    assert second.usable[0] == 1
    admitted = [second.first_usable((0,), 0, probe_at) for _ in range(5)]
    assert admitted == [0] * BREAKER.half_open_probes + [-1] * (5 - BREAKER.half_open_probes)
    assert second.breakers[0].state == HALF_OPEN
    assert second.first_usable((0, 1), 0, probe_at) == 1  # the rest fail over
    assert second.circuit_refused((0,)) is True
    assert second.all_clear is False
    # a probe's success closes it and the view is clear again
    second.on_success(0, probe_at + 0.05, probe_at + 0.05 - 0.01)
    assert second.breakers[0].state == CLOSED
    assert second.breakers[0].streak == 0
    assert second.all_clear is True
    assert second.first_usable((0,), 0, probe_at + 0.05) == 0
    assert second.circuit_refused((0,)) is False


def test_a_failed_probe_reejects_everyone_for_longer(table: HealthTable) -> None:
    first, second = view(table, 0), view(table, 1)
    t0 = start()
    trip(first, 2, t0)
    second.refresh(t0 + 0.1)
    probe_at = t0 + BREAKER.cooldown_s
    second.refresh(probe_at)
    assert second.first_usable((2,), 0, probe_at) == 0
    second.on_failure(
        2, probe_at + 0.5, probe_at + 0.5
    )  # the probe failed: the second opening in a row
    assert second.breakers[2].streak == 2
    until = probe_at + 0.5 + BREAKER.cooldown_for(2)
    assert second.breakers[2].open_until_s == until
    assert second.usable[2] == 0
    # the first worker's own cool-down is over, but it adopts the longer one
    first.refresh(probe_at + 0.6)
    assert first.breakers[2].state == OPEN
    assert first.breakers[2].streak == 2
    assert first.breakers[2].open_until_s == pytest.approx(until, abs=1e-6)
    assert first.usable[2] == 0
    assert first.first_usable((2,), 0, probe_at + 0.6) == -1


def test_a_view_without_a_table_reopens_after_its_own_cooldown() -> None:
    worker = view(None, 0)
    t0 = start()
    trip(worker, 0, t0)
    assert worker.usable[0] == 0
    worker.refresh(t0 + BREAKER.cooldown_s)
    assert worker.usable[0] == 1
    assert worker.first_usable((0,), 0, t0 + BREAKER.cooldown_s) == 0
    assert worker.circuit_refused((0,)) is True  # probes used up, no table: the breaker's


def test_an_abandoned_probe_gives_its_slot_back_on_refresh(table: HealthTable) -> None:
    worker = view(table, 0)
    t0 = start()
    trip(worker, 0, t0)
    probe_at = t0 + BREAKER.cooldown_s
    worker.refresh(probe_at)
    probes = [Exchange(None, probe_at) for _ in range(3)]  # type: ignore[arg-type]
    assert [worker.first_usable((0,), 0, probe_at, ex) for ex in probes] == [0, 0, -1]
    assert worker.breakers[0].probes_in_flight == BREAKER.half_open_probes
    worker.refresh(probe_at + 0.1)  # both still running: nothing is freed
    assert worker.first_usable((0,), 0, probe_at + 0.1, probes[2]) == -1
    probes[0].state = ABORTED  # its client left before any outcome
    worker.refresh(probe_at + 0.2)
    assert worker.breakers[0].probes_in_flight == 1
    assert worker.first_usable((0,), 0, probe_at + 0.2, probes[2]) == 0  # probed again at once
    assert worker.first_usable((0,), 0, probe_at + 0.2) == -1
    worker.refresh(probe_at + 0.3)  # the same abandoned probe is not released twice
    assert worker.breakers[0].probes_in_flight == BREAKER.half_open_probes
    # a probe's verdict closes the circuit and forgets the probes
    worker.on_success(0, probe_at + 0.4, probe_at + 0.4 - 0.01)
    probes[1].state = ABORTED
    probes[2].state = ABORTED
    worker.refresh(probe_at + 0.5)
    assert worker.breakers[0].state == CLOSED
    assert worker.all_clear is True


# ------------------------------------------------------------------- active checks


def test_check_latency_is_the_mean_of_the_last_checks(table: HealthTable) -> None:
    worker = view(table, 0)
    assert worker.check_latency_ms() == 0.0  # no check yet
    for index, latency_us in enumerate((1_000, 2_500, 4_000)):
        table.record_check(
            index, True, latency_us, us(time.monotonic()), unhealthy_threshold=2,
            recovery_threshold=2,
        )  # fmt: skip
    assert worker.check_latency_ms() == 2.5
    assert view(None, 0).check_latency_ms() == 0.0  # no table, no checks


def test_active_checks_down_make_it_unusable_and_not_a_circuit_refusal(
    table: HealthTable,
) -> None:
    worker = view(table, 1)
    t0 = start()
    down(table, 1)
    assert worker.usable[1] == 1  # until the next refresh
    worker.refresh(t0)
    assert worker.usable[1] == 0
    assert worker.all_clear is False
    assert worker.first_usable((1,), 0, t0) == -1
    assert worker.first_usable((1, 0), 0, t0) == 1
    assert worker.circuit_refused((1,)) is False  # no_healthy_upstream
    up(table, 1)
    worker.refresh(t0 + 0.1)
    assert worker.usable[1] == 1
    assert worker.all_clear is True


def test_circuit_refused_only_when_a_breaker_holds_an_instance_that_is_up(
    table: HealthTable,
) -> None:
    worker = view(table, 0)
    t0 = start()
    down(table, 0)
    trip(worker, 1, t0)  # instance 1: up, but its breaker is open
    worker.refresh(t0)
    assert worker.first_usable((0, 1), 0, t0) == -1
    assert worker.circuit_refused((0,)) is False
    assert worker.circuit_refused((1,)) is True
    assert worker.circuit_refused((0, 1)) is True
    # a breaker open on an instance the checks call down: still the checks' verdict
    trip(worker, 0, t0)
    assert worker.circuit_refused((0,)) is False


def test_after_the_cooldown_a_down_instance_stays_unusable(table: HealthTable) -> None:
    worker = view(table, 0)
    t0 = start()
    trip(worker, 0, t0)
    down(table, 0)
    worker.refresh(t0 + BREAKER.cooldown_s)
    assert worker.usable[0] == 0
    assert worker.first_usable((0,), 0, t0 + BREAKER.cooldown_s) == -1
    # the cool-down is over (half-open), but the checks hold it off: no probe was taken
    assert worker.breakers[0].state == HALF_OPEN
    assert worker.breakers[0].probes_in_flight == 0
    up(table, 0)
    worker.refresh(t0 + BREAKER.cooldown_s + 0.1)
    assert worker.usable[0] == 1
    assert worker.first_usable((0,), 0, t0 + BREAKER.cooldown_s + 0.1) == 0
    assert worker.breakers[0].state == HALF_OPEN


# --------------------------------------------------------------- breakers disabled


def test_with_breakers_disabled_failures_never_open(table: HealthTable) -> None:
    worker = view(table, 0, breaker=None)
    other = view(table, 1)
    t0 = start()
    changes = table.changes()
    for n in range(100):
        worker.on_failure(0, t0 + n * 0.01, t0 + n * 0.01)
    assert worker.breakers[0].state == CLOSED
    assert worker.usable[0] == 1
    assert worker.all_clear is True
    assert worker.failures[0] == 100
    assert table.changes() == changes  # nothing published
    assert table.ejection(0, us(t0)) == (0, 0)
    # nor does it adopt another worker's ejection
    trip(other, 0, t0)
    worker.refresh(t0 + 0.1)
    assert worker.usable[0] == 1
    assert worker.breakers[0].state == CLOSED
    assert worker.first_usable((0,), 0, t0 + 0.1) == 0
    assert worker.circuit_refused((0,)) is False
    # the active checks still count
    down(table, 0)
    worker.refresh(t0 + 0.2)
    assert worker.usable[0] == 0
    assert worker.circuit_refused((0,)) is False


# -------------------------------------------------------------------------- stats


def test_refresh_publishes_this_workers_numbers(table: HealthTable) -> None:
    load = Load()
    worker = HealthView(table, 1, LABELS, BREAKER, load)
    t0 = start()
    load.inflight[2] = 7
    worker.on_success(2, t0, t0 - 0.010)
    worker.on_success(2, t0, t0 - 0.030)
    worker.on_failure(2, t0, t0)
    worker.on_success(0, t0, t0 - 0.004)
    worker.refresh(t0)
    snap = table.snapshot(2, us(t0) + 5_000)
    assert snap["workers"] == [
        {
            "slot": 1,
            "pid": os.getpid(),
            "breaker": CLOSED,
            "inflight": 7,
            "latency_ewma_ms": 20.0,  # the mean of the first tick
            "requests": 3,
            "failures": 1,
            "published_ms_ago": 5,
        }
    ]
    assert table.snapshot(0, us(t0))["workers"][0]["requests"] == 1  # type: ignore[index]
    # the next tick moves the EWMA a LATENCY_EWMA_WEIGHT step toward the new mean
    worker.on_success(2, t0 + 0.1, t0 + 0.1 - 0.050)
    worker.refresh(t0 + 0.1)
    [numbers] = table.snapshot(2, us(t0 + 0.1))["workers"]  # type: ignore[misc]
    assert numbers["latency_ewma_ms"] == pytest.approx(29.0, abs=0.002)
    assert numbers["requests"] == 4
    # a tick with no new latency keeps it
    worker.refresh(t0 + 0.2)
    [numbers] = table.snapshot(2, us(t0 + 0.2))["workers"]  # type: ignore[misc]
    assert numbers["latency_ewma_ms"] == pytest.approx(29.0, abs=0.002)


def test_published_breaker_state_follows_the_breaker(table: HealthTable) -> None:
    worker = view(table, 0)
    t0 = start()
    trip(worker, 1, t0)
    worker.refresh(t0)
    [numbers] = table.snapshot(1, us(t0))["workers"]  # type: ignore[misc]
    assert numbers["breaker"] == OPEN
    assert numbers["failures"] == BREAKER.failure_threshold
    worker.refresh(t0 + BREAKER.cooldown_s)
    assert worker.first_usable((1,), 0, t0 + BREAKER.cooldown_s) == 0
    worker.refresh(t0 + BREAKER.cooldown_s)
    [numbers] = table.snapshot(1, us(t0 + BREAKER.cooldown_s))["workers"]  # type: ignore[misc]
    assert numbers["breaker"] == HALF_OPEN
