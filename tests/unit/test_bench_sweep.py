"""The sweep's search and judgement, against a fake target with a known knee.

The fake is deterministic on purpose: these tests check the search (doubling, bisection,
stopping rules) and the verdict text, not a system; the generator itself is tested for real in
tests/system/test_bench_openloop.py.
"""

from __future__ import annotations

import pytest

from bench.loadgen import LoadResult
from bench.sweep import Step, find_max_rate, generator_limit, judge

TARGET_P99_MS = 10.0


def result(rate: float, *, p99_ms: float = 1.0, achieved: float | None = None,
           errors: dict[str, int] | None = None, duration_s: float = 10.0,
           cpu_share: float = 0.1, processes: int | None = 1, behind_s: float = 0.0,
           hold_ms: float = 0.5, busy_share: float = 0.1,
           connections: int | None = 100) -> LoadResult:
    """A fake open-loop result; ``cpu_share``: the generator's CPU per process over the step."""
    completed = round((rate if achieved is None else achieved) * duration_s)
    kinds = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0, **(errors or {})}
    latency = {"mean": p99_ms / 2, "stdev": 0.1, "max": p99_ms * 2, "p50": p99_ms / 3,
               "p75": p99_ms / 2, "p90": p99_ms / 1.5, "p95": p99_ms / 1.2, "p99": p99_ms,
               "p999": p99_ms * 1.5}
    return LoadResult(duration_s=duration_s, requests=completed, bytes=completed * 100,
                      errors=kinds, latency_ms=latency,
                      cpu_s=cpu_share * duration_s * (processes or 1), output="",
                      offered_rps=rate, sent=completed, generator="openloop",
                      behind_s=behind_s, unsent=round(behind_s * rate), processes=processes,
                      connections=connections, hold_ms=hold_ms, busy_share=busy_share)


class Knee:
    """A target whose p99 is 2 ms up to ``knee`` req/s and grows steeply past it."""

    def __init__(self, knee: float) -> None:
        self.knee = knee
        self.asked: list[float] = []

    def __call__(self, rate: float) -> LoadResult:
        self.asked.append(rate)
        p99 = 2.0 if rate <= self.knee else 2.0 + (rate - self.knee) * 0.1
        return result(rate, p99_ms=p99)


@pytest.mark.parametrize("knee", [1_234.0, 5_000.0, 7_777.0, 31_000.0])
def test_finds_the_knee_within_resolution(knee: float) -> None:
    measure = Knee(knee)
    steps: list[Step] = []
    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=500,
                          max_rate=100_000, resolution=0.05, max_steps=20,
                          on_step=steps.append)
    limit = knee + (TARGET_P99_MS - 2.0) / 0.1  # where p99 reaches the target exactly
    assert found.best_rate is not None
    assert limit * 0.95 <= found.best_rate <= limit
    assert [s.rate for s in found.steps] == measure.asked == [s.rate for s in steps]
    first_fail = next(i for i, s in enumerate(found.steps) if not s.ok)
    assert all(s.ok for s in found.steps[:first_fail])  # doubling until the first failure
    assert [s.rate for s in found.steps[:first_fail + 1]] == [
        500 * 2 ** i for i in range(first_fail + 1)]
    assert found.target_p99_ms == TARGET_P99_MS


def test_bisection_stops_at_max_steps() -> None:
    measure = Knee(3_000.0)
    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=100,
                          max_rate=1e6, resolution=1e-9, max_steps=8)
    assert len(found.steps) == 8
    assert found.best_rate == max(s.rate for s in found.steps if s.ok)


def test_best_rate_is_none_when_start_rate_fails() -> None:
    measure = Knee(100.0)
    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=1_000,
                          max_rate=10_000)
    assert found.best_rate is None
    assert measure.asked == [1_000]  # nothing below start_rate is tried
    assert not found.steps[0].ok
    assert found.steps[0].why.startswith("p99 ")


def test_stops_at_max_rate_when_everything_passes() -> None:
    measure = Knee(1e9)
    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=1_000,
                          max_rate=5_000)
    assert measure.asked == [1_000, 2_000, 4_000, 5_000]  # capped, never above max_rate
    assert found.best_rate == 5_000
    assert all(s.ok and s.why == "" for s in found.steps)
    assert not found.stopped_by_generator
    assert not any(s.generator_limited for s in found.steps)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        find_max_rate(Knee(1.0), target_p99_ms=10, start_rate=0, max_rate=10)
    with pytest.raises(ValueError):
        find_max_rate(Knee(1.0), target_p99_ms=10, start_rate=20, max_rate=10)


def test_each_failure_names_its_reason() -> None:
    slow = judge(10_000, result(10_000, p99_ms=12.34), target_p99_ms=10)
    assert not slow.ok and slow.why == "p99 12.3 ms > 10 ms"

    short = judge(10_000, result(10_000, achieved=8_100), target_p99_ms=10)
    assert not short.ok and short.why == "achieved 8,100 rps < 95% of 10,000"

    # 1.2% of the attempts failed to connect: no response, so they are not in `requests`.
    failing = judge(1_000, result(1_000, achieved=988, errors={"connect": 120}),
                    target_p99_ms=10)
    assert not failing.ok and failing.why == "errors 1.2% > 0.1%"

    statuses = judge(1_000, result(1_000, errors={"status": 10_000}), target_p99_ms=10)
    assert not statuses.ok and statuses.why == "errors 100% > 0.1%"

    everything = judge(10_000, result(10_000, p99_ms=50, achieved=5_000,
                                      errors={"timeout": 5_000}), target_p99_ms=10)
    assert everything.why.split("; ") == [
        "p99 50.0 ms > 10 ms", "achieved 5,000 rps < 95% of 10,000", "errors 9.09% > 0.1%"]

    fine = judge(10_000, result(10_000, p99_ms=9.9, errors={"status": 5}), target_p99_ms=10)
    assert fine.ok and fine.why == ""


# -- the generator's own limit ---------------------------------------------------------------


def test_a_generator_out_of_cpu_is_not_the_targets_limit() -> None:
    # 2 processes at 95% of a core each, and the target "achieved" less than offered
    busy = judge(40_000, result(40_000, achieved=30_000, cpu_share=0.95, processes=2),
                 target_p99_ms=10)
    assert not busy.ok and busy.generator_limited
    assert busy.why == ("generator-limited: its CPU was 95% of a core per process (over 90%); "
                        "achieved 30,000 rps < 95% of 40,000")
    # the same CPU over 4 processes is under half a core each: the target's failure
    four = judge(40_000, result(40_000, achieved=30_000, cpu_share=0.45, processes=4),
                 target_p99_ms=10)
    assert not four.ok and not four.generator_limited
    assert four.why == "achieved 30,000 rps < 95% of 40,000"


def test_a_passing_step_stays_a_pass_whatever_the_generator() -> None:
    fine = judge(10_000, result(10_000, cpu_share=0.97), target_p99_ms=10)
    assert fine.ok and not fine.generator_limited and fine.why == ""


def test_too_few_connections_is_the_generators_limit() -> None:
    """Behind, every connection busy all the time, yet each request held its connection well
    within the target: the connections, not the target, capped the rate."""
    few = result(50_000, p99_ms=800, achieved=40_000, behind_s=2.0, hold_ms=2.5,
                 busy_share=0.99, connections=100)
    step = judge(50_000, few, target_p99_ms=10)
    assert not step.ok and step.generator_limited
    assert step.why.startswith("generator-limited: all 100 connections were busy 99% of the "
                               "time though each request held one only 2.50 ms, and the "
                               "schedule fell 2.00 s behind; p99 800.0 ms > 10 ms")
    assert generator_limit(few, target_p99_ms=10) in step.why

    # the target kept each request longer than the target: the target's limit
    slow = result(50_000, p99_ms=800, achieved=40_000, behind_s=2.0, hold_ms=25.0,
                  busy_share=0.99)
    assert not judge(50_000, slow, target_p99_ms=10).generator_limited
    # connections idle most of the time: a stall near the end, not a shortage of connections
    stall = result(50_000, p99_ms=800, behind_s=0.3, hold_ms=0.4, busy_share=0.2)
    assert not judge(50_000, stall, target_p99_ms=10).generator_limited
    # hardly behind at all
    close = result(50_000, p99_ms=800, behind_s=0.05, hold_ms=0.4, busy_share=0.99)
    assert not judge(50_000, close, target_p99_ms=10).generator_limited


def test_wrk_results_are_never_generator_limited() -> None:
    wrk = LoadResult(duration_s=10.0, requests=1_000, bytes=0,
                     errors=dict.fromkeys(("connect", "read", "write", "timeout", "status"), 0),
                     latency_ms={"p99": 50.0}, cpu_s=100.0, output="")
    step = judge(10_000, wrk, target_p99_ms=10)
    assert not step.ok and not step.generator_limited
    assert generator_limit(wrk, target_p99_ms=10) == ""


class Saturating(Knee):
    """A target that never degrades, behind a generator that runs out of CPU at ``limit``
    req/s: past it the generator's CPU is pegged and it sends only ``limit``."""

    def __init__(self, limit: float) -> None:
        super().__init__(knee=1e12)
        self.limit = limit

    def __call__(self, rate: float) -> LoadResult:
        self.asked.append(rate)
        cpu = min(rate / self.limit, 1.0)
        return result(rate, achieved=min(rate, self.limit), cpu_share=cpu,
                      behind_s=max(0.0, (rate - self.limit) / rate * 10))


def test_the_sweep_stops_at_the_generators_limit() -> None:
    measure = Saturating(3_000)
    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=500,
                          max_rate=100_000)
    assert measure.asked == [500, 1_000, 2_000, 4_000]  # no bisection below 4,000: it stops
    assert found.stopped_by_generator
    assert found.best_rate == 2_000  # a lower bound of the target's, reported as such
    last = found.steps[-1]
    assert not last.ok and last.generator_limited
    assert last.why.startswith("generator-limited: its CPU was 100% of a core per process")
    assert not any(s.generator_limited for s in found.steps[:-1])


def test_the_sweep_stops_when_bisection_meets_the_generators_limit() -> None:
    """The first failure is the target's (p99), the bisection's next step the generator's
    (a noisy neighbour ate its CPU): the search stops there instead of bisecting on."""
    script = {1_000: result(1_000), 2_000: result(2_000),
              4_000: result(4_000, p99_ms=50),
              3_000: result(3_000, achieved=2_500, cpu_share=0.99)}
    asked: list[float] = []

    def measure(rate: float) -> LoadResult:
        asked.append(rate)
        return script[rate]

    found = find_max_rate(measure, target_p99_ms=TARGET_P99_MS, start_rate=1_000,
                          max_rate=100_000, max_steps=12)
    assert asked == [1_000, 2_000, 4_000, 3_000]
    assert found.stopped_by_generator and found.best_rate == 2_000
    assert not found.steps[2].generator_limited and found.steps[3].generator_limited
