"""The redis-limits scenario run for real, briefly: its own redis-server started for the run,
its CPU reported as a group of its own beside fastgw's, and Redis's count of the limiter's
commands per request (1: on a standalone Redis one script decides every level, the global
one included).

The scenario needs the ``redis-limits`` feature. These tests make sure it is in
``fastgw.features.AVAILABLE`` in this process (the bench reads it only here; fastgw's Redis
backend is what runs either way), so that they test the scenario in a checkout that has the
backend before the feature is named; hence the suite runs in-process, not through
``python -m bench``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from bench import modes, runner, suite
from bench.scenarios import SCENARIOS
from fastgw import features

SCENARIO = SCENARIOS["redis-limits"]
OPTIONS = runner.Options(duration_s=1.0, runs=2, warmup_s=0.0, connections=8, peers=(),
                         generator="wrk", command="test")


def leftovers(marker: Path) -> list[str]:
    """Processes whose command line names ``marker`` (redis-server's title names its socket,
    every other service its config)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(marker) in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def no_errors(figures: dict[str, Any]) -> bool:
    return figures["errors"] == 0 and not any(figures["errors_by_kind"].values())


@pytest.fixture(autouse=True)
def redis_limits_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "AVAILABLE", features.AVAILABLE | {"redis-limits"})


def test_run_reports_redis_apart_and_its_commands_per_request(tmp_path: Path) -> None:
    out = tmp_path / "run"
    results = suite.run_suite([SCENARIO], dataclasses.replace(OPTIONS, out=out))
    entry = results["scenarios"]["redis-limits"]
    assert entry["status"] == "ran", entry.get("reason")
    assert entry["helpers"] == ["redis"]
    assert entry["exit_codes"]["redis"] == 0  # stopped cleanly, after fastgw
    stopped = list(entry["exit_codes"])
    assert stopped.index("fastgw") < stopped.index("redis")
    fastgw = entry["targets"]["fastgw"]
    assert fastgw["requests"] > 0 and no_errors(fastgw), fastgw["errors_by_kind"]
    assert fastgw["cpu_us_per_request"] > 0 and fastgw["redis_cpu_us_per_request"] > 0
    assert fastgw["redis_rss_mb"] > 0
    # 2 scripts per request, every request decided in Redis (a few more: requests in flight
    # when wrk stopped reached Redis but were not counted as completed)
    assert 1.0 <= fastgw["redis_commands_per_request"] <= 1.05
    assert fastgw["redis_script_errors_per_request"] == 0
    for run in fastgw["runs"]:
        assert run["redis_cpu"]["cpu_s"] > 0 and run["redis_cpu"]["exited"] == []
        # the proxy's own figure never includes Redis: fastgw's pids only
        assert run["proxy_cpu"]["started"] == []
    report = (out / "report.md").read_text()
    assert "redis CPU-µs/req" in report and "redis cmds/req" in report
    assert (out / "redis-limits" / "logs" / "redis.log").exists()
    assert not (out / "redis-limits" / "redis.sock").exists()
    assert leftovers(out) == []


def test_a_failed_run_stops_redis_too(tmp_path: Path) -> None:
    out = tmp_path / "failed"
    opts = dataclasses.replace(OPTIONS, out=out, path="/status/503")
    results = suite.run_suite([SCENARIO], opts)
    failed = results["scenarios"]["redis-limits"]
    assert failed["status"] == "failed" and "answered 503" in failed["reason"]
    assert leftovers(out) == []


def test_sweep_steps_show_redis_apart(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    opts = dataclasses.replace(OPTIONS, out=out, generator="openloop", connections=4)
    results = modes.run_sweep(SCENARIO, opts, target_p99_ms=500.0, start_rate=100.0,
                              max_rate=100.0, resolution=0.05)
    entry = results["scenarios"]["redis-limits"]
    assert entry["status"] == "ran" and entry["helpers"] == ["redis"]
    [step] = entry["targets"]["fastgw"]["steps"]
    assert step["ok"] and no_errors(step), step
    assert step["redis_cpu_us_per_request"] > 0
    assert 1.0 <= step["redis_commands_per_request"] <= 1.1  # ~100 requests: in flight show
    assert "redis cmds/req" in (out / "report.md").read_text()
    assert leftovers(out) == []
