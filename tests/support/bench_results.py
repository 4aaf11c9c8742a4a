"""Factories of bench ``results.json`` contents, for the tests of bench.compare and bench.plots.

Each returns a fresh dict in the shape the bench writes (schema 2, except :func:`schema1`), with
plausible figures that the caller overrides where a test needs a particular value.
"""

from __future__ import annotations

import copy
from typing import Any, Final

#: The settings a run entry records (bench/runner.py run_load), wrk closed loop.
RUN_SETTINGS: Final[dict[str, Any]] = {
    "duration_s": 10.0, "runs": 3, "connections": 50, "threads": 1, "warmup_s": 2.0,
    "path": "/echo/x", "workers": 1, "peers": ["nginx"], "generator": "wrk"}


def target(runs: list[dict[str, float]] | None = None, **medians: float) -> dict[str, Any]:
    """A TargetSummary: defaults, then ``medians``; ``runs`` as given, else three runs equal to
    the summary (zero noise)."""
    summary: dict[str, Any] = {
        "rps": 20000.0, "p50_ms": 2.0, "p90_ms": 3.0, "p95_ms": 3.5, "p99_ms": 5.0,
        "p999_ms": 8.0, "errors": 0, "errors_by_kind": {}, "requests": 600000,
        "cpu_us_per_request": 40.0, "user_us_per_request": 22.0,
        "system_us_per_request": 18.0, "backend_cpu_us_per_request": 20.0,
        "loadgen_cpu_us_per_request": 15.0, "rss_mb": 50.0}
    summary.update(medians)
    if runs is None:
        runs = [{k: v for k, v in summary.items() if k != "errors_by_kind"} for _ in range(3)]
    summary["runs"] = [{**r, "run": i + 1} for i, r in enumerate(runs)]
    return summary


def results(scenarios: dict[str, dict[str, Any]] | None = None, *, kind: str = "run",
            cpu_count: int = 2, cpu_model: str = "AMD EPYC 7B13 64-Core Processor",
            commit: str = "0123456789abcdef0123456789abcdef01234567",
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """A whole file; ``settings`` is the top-level one (a sweep's or a scale's settings)."""
    if scenarios is None:
        scenarios = {"passthrough": entry()}
    return {"schema": 2, "kind": kind, "command": f"python -m bench {kind}",
            "started_at": "2026-12-01T10:00:00+00:00",
            "finished_at": "2026-12-01T10:05:00+00:00",
            "machine": {"cpu_count": cpu_count, "cpu_model": cpu_model, "python": "3.11.7",
                        "speedups": "c", "git": {"commit": commit, "dirty": False},
                        "versions": {}},
            "settings": {} if settings is None else settings, "scenarios": scenarios}


def entry(targets: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """A load scenario that ran with :data:`RUN_SETTINGS`, updated by ``settings``."""
    targets = targets if targets is not None else {
        "fastgw": target(), "nginx": target(rps=30000.0, cpu_us_per_request=20.0)}
    merged = {**copy.deepcopy(RUN_SETTINGS), **settings}
    return {"status": "ran", "reason": None, "description": "plain proxy",
            "generator": merged["generator"], "settings": merged, "targets": targets,
            "ratios": {"fastgw/nginx": {"cpu_us_per_request": 2.0, "rps": 0.67,
                                        "p50_ms": 1.3, "p99_ms": 1.4}},
            "verdict": {"passed": True, "checks": []}}


def skipped(reason: str = "JWT authentication has not landed (issue 4)") -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, "description": "jwt"}


def schema1() -> dict[str, Any]:
    """What bench/passthrough.py wrote before the suite."""
    def t1(rps: float, cpu: float) -> dict[str, Any]:
        run = {"rps": rps, "p50_ms": 2.0, "p90_ms": 3.0, "p95_ms": 3.4, "p99_ms": 5.0,
               "p999_ms": 9.0, "errors": 0, "errors_by_kind": {}, "requests": 100,
               "cpu_us_per_request": cpu, "user_us_per_request": cpu / 2,
               "system_us_per_request": cpu / 2, "backend_cpu_us_per_request": 20.0,
               "wrk_cpu_us_per_request": 15.0, "rss_mb": 50.0, "noisy": False}
        runs = [{**run, "run": i, "rps": rps * (1 + (i - 2) / 100)} for i in (1, 2, 3)]
        return {**{k: v for k, v in run.items() if k != "noisy"}, "requests": 300,
                "process_changes": [], "noisy_runs": [], "runs": runs}
    return {"schema": 1, "scenario": "passthrough", "started_at": "2026-11-26T10:00:00+00:00",
            "finished_at": "2026-11-26T10:02:00+00:00", "command": "python -m bench run",
            "settings": {"runs": 3},
            "machine": {"cpu_count": 2, "cpu_model": "AMD EPYC", "python": "3.11.7",
                        "speedups": "c", "git": {"commit": "2d1a83f" + "0" * 33,
                                                 "dirty": True}},
            "targets": {"fastgw": t1(17000.0, 56.0), "nginx": t1(30000.0, 25.0)},
            "ratios": {"fastgw/nginx": {"cpu_us_per_request": 2.26, "rps": 0.56,
                                        "p50_ms": 2.0, "p99_ms": 1.47,
                                        "cpu_us_per_request_paired_runs": [2.7, 2.28, 2.21],
                                        "cpu_goal": 1.3, "cpu_goal_met": False}}}
