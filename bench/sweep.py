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


@dataclass(frozen=True)
class SweepResult:
    steps: tuple[Step, ...]
    best_rate: float | None  # the highest rate that passed; None if even start_rate failed
    target_p99_ms: float


def _pct(share: float) -> str:
    return f"{share * 100:.3g}%"


def judge(rate: float, result: LoadResult, *, target_p99_ms: float,
          max_error_share: float = 0.001, min_achieved_share: float = 0.95) -> Step:
    """Pass or fail one step, with every reason it failed."""
    reasons: list[str] = []
    p99 = result.latency_ms.get("p99", 0.0)
    if result.requests and p99 > target_p99_ms:
        reasons.append(f"p99 {p99:.1f} ms > {target_p99_ms:g} ms")
    if result.rps < min_achieved_share * rate:
        reasons.append(f"achieved {result.rps:,.0f} rps < {min_achieved_share:.0%} of "
                       f"{rate:,.0f}")
    # Socket errors are requests that got no response; status errors are among the responses.
    failed = result.error_total - result.errors.get("status", 0)
    attempted = result.requests + failed
    share = result.error_total / attempted if attempted else 0.0
    if share > max_error_share:
        reasons.append(f"errors {_pct(share)} > {_pct(max_error_share)}")
    return Step(rate=rate, result=result, ok=not reasons, why="; ".join(reasons))


def find_max_rate(measure: Callable[[float], LoadResult], *, target_p99_ms: float,
                  start_rate: float, max_rate: float, resolution: float = 0.05,
                  max_steps: int = 12,
                  on_step: Callable[[Step], None] | None = None) -> SweepResult:
    """Doubling then bisection (see the module docstring); ``on_step`` sees each step as it
    is judged (for a live report)."""
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
    while len(steps) < max_steps:
        if not step(rate):
            bad = rate
            break
        good = rate
        if rate >= max_rate:
            break
        rate = min(rate * 2, max_rate)
    while (good is not None and bad is not None and len(steps) < max_steps
           and bad - good > resolution * good):
        middle = (good + bad) / 2
        if step(middle):
            good = middle
        else:
            bad = middle
    best = max((s.rate for s in steps if s.ok), default=None)
    return SweepResult(steps=tuple(steps), best_rate=best, target_p99_ms=target_p99_ms)
