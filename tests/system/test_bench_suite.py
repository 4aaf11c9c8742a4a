"""The benchmark suite run for real, briefly: fastgw, the mock backend, nginx, HAProxy, wrk and
the open-loop generator on loopback. These check that every mode produces complete, honest
results (skipped scenarios say why, figures are present and plausible), not how fast anything
is: speed is measured by the suite itself, not by tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "errors",
           "cpu_us_per_request", "rss_mb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, env: dict[str, str] | None = None,
          timeout_s: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def leftovers(marker: Path) -> list[str]:
    """Processes whose command line names ``marker`` (every service's config lives there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(marker) in cmdline and "pytest" not in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def results_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert data["schema"] == 2
    return data


def test_run_measures_fastgw_and_both_peers_and_the_full_scenario(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = bench("run", "--scenario", "passthrough,full", "--duration", "1s",
                 "--runs", "2", "--warmup", "0", "--peers", "nginx,haproxy",
                 "--target", "p99_ms=1000", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(out)
    assert results["kind"] == "run"
    # full: every feature has landed (the skip rule itself: tests/unit/test_bench_headers.py);
    # its helpers (Redis, the OTLP sink) are measured as groups of their own.
    full = results["scenarios"]["full"]
    assert full["status"] == "ran", full.get("reason")
    assert set(full["targets"]) == {"fastgw"}  # no peer does the same work yet
    fastgw = full["targets"]["fastgw"]
    assert fastgw["rps"] > 0 and fastgw["errors"] == 0, fastgw["errors_by_kind"]
    for figure in ("redis_cpu_us_per_request", "redis_commands_per_request",
                   "otlp_cpu_us_per_request", "otlp_posts_per_request",
                   "otlp_bytes_per_request"):
        assert figure in fastgw, figure
    entry = results["scenarios"]["passthrough"]
    assert entry["status"] == "ran"
    assert set(entry["targets"]) == {"fastgw", "nginx", "haproxy"}
    for name, target in entry["targets"].items():
        for figure in FIGURES:
            assert figure in target, (name, figure)
        assert target["rps"] > 0 and target["errors"] == 0, (name, target["errors_by_kind"])
        assert target["p50_ms"] <= target["p90_ms"] <= target["p99_ms"] <= target["p999_ms"]
        assert target["cpu_us_per_request"] > 0 and target["rss_mb"] > 0
        assert target["backend_cpu_us_per_request"] > 0
        assert target["loadgen_cpu_us_per_request"] > 0
        assert [r["run"] for r in target["runs"]] == [1, 2]
    assert set(entry["ratios"]) == {"fastgw/nginx", "fastgw/haproxy"}
    checks = {(c["name"], c["source"]) for c in entry["verdict"]["checks"]}
    assert {("p50_ms", "reference"), ("p95_ms", "reference"), ("p99_ms", "reference"),
            ("rps", "reference"), ("p99_ms", "cli"), ("cpu_vs_nginx", "project goal"),
            ("error_share", "suite")} <= checks
    # two scenarios ran: their targets are under "scenarios" only (one would also be at the top)
    assert "targets" not in results
    report = (out / "report.md").read_text()
    assert "## full" in report
    assert "fastgw/nginx" in report and "Verdict:" in report
    plots = results["plots"]["files"]
    assert {"latency.png", "throughput.png", "cpu.png"} <= set(plots)
    for name in plots:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert (out / "passthrough" / "nginx" / "nginx.conf").exists()
    assert (out / "passthrough" / "haproxy" / "haproxy.cfg").exists()
    assert leftovers(out) == []


def test_open_loop_run_offers_the_asked_rate(tmp_path: Path) -> None:
    out = tmp_path / "openloop"
    done = bench("run", "--scenario", "passthrough", "--generator", "openloop", "--rate", "400",
                 "--duration", "2s", "--runs", "1", "--warmup", "0", "--peers", "",
                 "--connections", "8", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    entry = results_of(out)["scenarios"]["passthrough"]
    assert entry["generator"] == "openloop"
    fastgw = entry["targets"]["fastgw"]
    assert set(entry["targets"]) == {"fastgw"}
    assert 700 <= fastgw["requests"] <= 900, fastgw["requests"]
    assert fastgw["errors"] == 0
    assert fastgw["runs"][0]["offered_rps"] == pytest.approx(400)
    assert fastgw["unsent"] == 0 and fastgw["behind_s"] is not None
    checks = {c["name"]: c for c in entry["verdict"]["checks"]}
    assert checks["behind_s"]["ok"] and checks["error_share"]["ok"]
    assert not checks["rps"]["ok"] and "offered 400" in checks["rps"]["note"]
    assert leftovers(out) == []


def test_idle_scenario_holds_connections_and_judges_them(tmp_path: Path) -> None:
    out = tmp_path / "idle"
    done = bench("idle", "--connections", "300", "--load", "1s", "--hold", "1s",
                 "--probe-requests", "20", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    entry = results_of(out)["scenarios"]["idle-10k"]
    fastgw = entry["targets"]["fastgw"]
    assert fastgw["connections_open"] == 300
    assert fastgw["second_request_on_idle"]["results"] == {"200": 300}
    checks = {c["name"]: c for c in entry["verdict"]["checks"]}
    # 300 connections do not show the reference design's 10k: the verdict must not pass
    assert not checks["connections_open"]["ok"]
    assert checks["rss_mb"]["ok"]
    assert not entry["verdict"]["passed"]
    assert leftovers(out) == []


def test_sweep_finds_a_rate_under_the_target(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    done = bench("sweep", "--scenario", "passthrough", "--target-p99", "200ms",
                 "--start-rate", "200", "--max-rate", "800", "--duration", "1s",
                 "--connections", "8", "--peers", "", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(out)
    assert results["kind"] == "sweep"
    found = results["scenarios"]["passthrough"]["targets"]["fastgw"]
    assert [s["rate"] for s in found["steps"]][:3] == [200, 400, 800]
    assert found["best_rate"] == 800
    assert all(s["ok"] and s["cpu_us_per_request"] > 0 for s in found["steps"])
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert leftovers(out) == []


def test_scale_reports_a_curve(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    done = bench("scale", "--scenarios", "passthrough", "--workers-list", "1,2",
                 "--duration", "1s", "--runs", "1", "--warmup", "0", "--peers", "",
                 "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(out)
    points = results["scenarios"]["passthrough"]["targets"]["fastgw"]["points"]
    assert [p["workers"] for p in points] == [1, 2]
    assert all(p["rps"] > 0 and p["errors"] == 0 for p in points)
    one, two = points
    assert two["efficiency"] == pytest.approx(two["rps"] / (2 * one["rps"]), abs=0.001)
    assert len(two["runs"]["rps"]) == 1
    assert (out / "scale.png").read_bytes()[:8] == PNG_MAGIC
    assert leftovers(out) == []


def test_compare_two_runs(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        out = tmp_path / name
        done = bench("run", "--scenario", "passthrough", "--duration", "1s", "--runs", "2",
                     "--warmup", "0", "--peers", "", "--out", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        files.append(str(out / "results.json"))
    done = bench("compare", *files)
    assert done.returncode == 0, done.stderr
    assert "CPU-µs/req" in done.stdout and "## passthrough" in done.stdout
    assert "noise A" in done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("run", "--scenario", "bogus"), "bogus"),
    (("run", "--scenario", "passthrough", "--target", "p98=1"), "--target"),
    (("run", "--scenario", "passthrough", "--peers", "envoy"), "envoy"),
])
def test_bad_command_lines_are_usage_errors(args: tuple[str, ...], message: str) -> None:
    done = bench(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_problems_are_one_line_each_and_start_nothing(tmp_path: Path) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("scenarios: {passthrough: {p99_ms: soon}}\n")
    done = bench("run", "--scenario", "passthrough", "--targets", str(targets),
                 "--out", str(tmp_path / "x"))
    assert done.returncode == 2
    assert done.stderr.startswith("bench: ") and "$.scenarios.passthrough.p99_ms" in done.stderr
    env = {**os.environ, "PATH": str(tmp_path)}  # no wrk on this PATH
    done = bench("run", "--scenario", "passthrough", "--generator", "wrk",
                 "--out", str(tmp_path / "y"), env=env)
    assert done.returncode == 2
    assert "wrk not found" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "y").exists()


def test_a_failed_scenario_keeps_what_the_others_measured(tmp_path: Path) -> None:
    out = tmp_path / "partial"
    # every target answers 503 on this path: passthrough refuses to measure an error page,
    # idle-10k (which does not judge statuses) still runs
    done = bench("run", "--scenario", "passthrough,idle-10k", "--path", "/status/503",
                 "--peers", "", "--idle-connections", "50", "--load", "0", "--hold", "1s",
                 "--probe-requests", "5", "--out", str(out))
    assert done.returncode == 2
    assert "bench: passthrough failed:" in done.stderr and "Traceback" not in done.stderr
    results = results_of(out)
    failed = results["scenarios"]["passthrough"]
    assert failed["status"] == "failed" and "503" in failed["reason"]
    assert results["scenarios"]["idle-10k"]["status"] == "ran"
    assert "**Failed**" in (out / "report.md").read_text()
    assert leftovers(out) == []
