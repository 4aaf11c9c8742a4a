"""The sweep: the highest constant rate a target sustains with its p99 under a target.

Each step offers one rate with the open-loop generator (the caller's ``measure``) and is
judged (:func:`judge`): it passes when p99 is within the target, errors stay under a small
share, and the target actually completed nearly what was offered (an open-loop run that
completed much less than offered was overloaded, whatever its percentiles say: the requests
that were never sent carry no latency).

Search (:func:`find_max_rate`): double from ``start_rate`` until a step fails or ``max_rate`` is
reached, then bisect between the last passing and the first failing rate until they are within
``resolution`` of each other (relative) or ``max_steps`` is used. Doubling finds the order of
magnitude in a few steps; bisection then spends the rest where the knee is. Every rate is
measured exactly once, in order, and ``measure`` is called once per step (callers count on it
to pair their own per-step figures with :attr:`SweepResult.steps`). A noisy machine may make
the curve non-monotonic; the answer is the highest rate that *passed*, never an interpolation.

The generator's own limit. With fixed connections and processes, a step can fail because the
generator, not the target, could not offer the rate. :func:`judge` marks a *failed* step
``generator_limited`` on either of two signals, and the search then stops there
(:attr:`SweepResult.stopped_by_generator`): the best rate is then a lower bound of the target's,
and higher rates need a bigger generator (more processes or connections) to be judged at all.

- CPU: the generator's CPU per process exceeded ``max_generator_cpu`` (90 %) of the step
  (``cpu_s / (duration_s * processes)``). A process that busy is late to send and late to read,
  so both its schedule and its timestamps are the generator's, not the target's.
- Connections: the run fell behind (``behind_s`` over ``max_behind_s``, 0.1 s: requests still
  waiting for a connection when the schedule ended) *and* the connections were busy nearly all
  the time (``busy_share`` >= ``min_busy_share``, 0.9) *and* each request held its connection
  no longer than the p99 target on average (``hold_ms``). The last one is what says the
  latency stayed low where the target is concerned: the target answered within the target,
  there were just not enough connections to carry ``rate * hold`` requests at once (Little's
  law), so the backlog grew in the generator. Latency from the intended time cannot say that:
  it grows with that backlog whoever caused it. A target out of capacity, on the other hand,
  keeps each request longer than the target (when connections are plenty) and fails on its own
  account; where connections are so few that even an overloaded target answers within the
  target, the step cannot tell the two apart, and stopping with a lower bound is the honest
  answer. The busy share keeps a short stall near the end of an otherwise easy step (a
  backlog, but connections idle most of the time) from counting.

A step that passed is valid whatever the generator's state: the target sustained the rate.
wrk results (no ``processes``, ``hold_ms`` or ``busy_share``) are never generator-limited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.loadgen import LoadResult


@dataclass(frozen=True)
class Step:
    rate: float
    result: LoadResult
    ok: bool
    why: str  # "" when ok, else every reason it failed, separated by "; "
    # failed because the generator could not offer the rate; ``why`` starts "generator-limited: "
    generator_limited: bool = False


@dataclass(frozen=True)
class SweepResult:
    steps: tuple[Step, ...]
    best_rate: float | None  # the highest rate that passed; None if even start_rate failed
    target_p99_ms: float
    # the last step was generator-limited and the search stopped there: best_rate (when not
    # None) is a lower bound of what the target sustains, not its limit
    stopped_by_generator: bool = False


def _pct(share: float) -> str:
    return f"{share * 100:.3g}%"


def generator_limit(result: LoadResult, *, target_p99_ms: float, max_generator_cpu: float = 0.9,
                    max_behind_s: float = 0.1, min_busy_share: float = 0.9) -> str:
    """Why the generator itself limited this run ("" if nothing says so); see the module
    docstring for the two signals."""
    reasons: list[str] = []
    if result.processes and result.duration_s > 0:
        cpu = result.cpu_s / (result.duration_s * result.processes)
        if cpu > max_generator_cpu:
            reasons.append(f"its CPU was {cpu:.0%} of a core per process "
                           f"(over {max_generator_cpu:.0%})")
    if (result.behind_s is not None and result.behind_s > max_behind_s
            and result.hold_ms is not None and result.busy_share is not None
            and result.busy_share >= min_busy_share and result.hold_ms <= target_p99_ms):
        held = f"{result.connections:,} " if result.connections else ""
        reasons.append(f"all {held}connections were busy {result.busy_share:.0%} of the time "
                       f"though each request held one only {result.hold_ms:.2f} ms, and the "
                       f"schedule fell {result.behind_s:.2f} s behind")
    return "; ".join(reasons)


def judge(rate: float, result: LoadResult, *, target_p99_ms: float,
          max_error_share: float = 0.001, min_achieved_share: float = 0.95,
          max_generator_cpu: float = 0.9, max_behind_s: float = 0.1,
          min_busy_share: float = 0.9) -> Step:
    """Pass or fail one step, with every reason it failed; a failed step is also
    ``generator_limited`` when :func:`generator_limit` finds a reason (its ``why`` then starts
    with "generator-limited: ...", before the target's reasons)."""
    reasons: list[str] = []
    p99 = result.latency_ms.get("p99", 0.0)
    if result.requests and p99 > target_p99_ms:
        reasons.append(f"p99 {p99:.1f} ms > {target_p99_ms:g} ms")
    if result.rps < min_achieved_share * rate:
        reasons.append(f"achieved {result.rps:,.0f} rps < {min_achieved_share:.0%} of "
                       f"{rate:,.0f}")
    share = result.error_share or 0.0
    if share > max_error_share:
        reasons.append(f"errors {_pct(share)} > {_pct(max_error_share)}")
    limited = ""
    if reasons:
        limited = generator_limit(result, target_p99_ms=target_p99_ms,
                                  max_generator_cpu=max_generator_cpu,
                                  max_behind_s=max_behind_s, min_busy_share=min_busy_share)
        if limited:
            reasons.insert(0, f"generator-limited: {limited}")
    return Step(rate=rate, result=result, ok=not reasons, why="; ".join(reasons),
                generator_limited=bool(limited))


def find_max_rate(measure: Callable[[float], LoadResult], *, target_p99_ms: float,
                  start_rate: float, max_rate: float, resolution: float = 0.05,
                  max_steps: int = 12,
                  on_step: Callable[[Step], None] | None = None) -> SweepResult:
    """Doubling then bisection (see the module docstring), stopping at the first
    generator-limited step; ``on_step`` sees each step as it is judged (for a live report)."""
    if not 0 < start_rate <= max_rate:
        raise ValueError(f"need 0 < start_rate <= max_rate, got {start_rate} and {max_rate}")
    if resolution <= 0 or max_steps < 1 or target_p99_ms <= 0:
        raise ValueError(f"bad sweep settings: resolution={resolution} max_steps={max_steps} "
                         f"target_p99_ms={target_p99_ms}")
    steps: list[Step] = []

    def step(rate: float) -> bool:
        judged = judge(rate, measure(rate), target_p99_ms=target_p99_ms)
        steps.append(judged)
        if on_step is not None:
            on_step(judged)
        return judged.ok

    good: float | None = None  # the highest rate known to pass
    bad: float | None = None  # the lowest rate known to fail
    rate = start_rate

    def stopped() -> bool:
        return bool(steps) and steps[-1].generator_limited

    while len(steps) < max_steps:
        if not step(rate):
            bad = rate
            break
        good = rate
        if rate >= max_rate:
            break
        rate = min(rate * 2, max_rate)
    while (good is not None and bad is not None and len(steps) < max_steps
           and bad - good > resolution * good and not stopped()):
        middle = (good + bad) / 2
        if step(middle):
            good = middle
        else:
            bad = middle
    best = max((s.rate for s in steps if s.ok), default=None)
    return SweepResult(steps=tuple(steps), best_rate=best, target_p99_ms=target_p99_ms,
                       stopped_by_generator=stopped())
