"""Every mode of the bench sends the scenario's request headers, for real and briefly.

jwt-cached's fastgw answers 401 to a request without the scenario's bearer token, so a mode
that dropped the headers anywhere -- the probe, wrk, the open-loop generator, the profiles'
wrk runs, tools/profile_worker.py -- either fails its probe or counts every request as an
error. Each test below runs one mode on jwt-cached and checks the requests were answered 200
(no errors), and that no process is left behind. The profiles need py-spy with ptrace
permission, as tests/system/test_tools_profile.py explains: without it they fail, not skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def results_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def leftovers(marker: Path) -> list[str]:
    """Processes whose command line names ``marker`` (every service's config lives there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(marker) in cmdline and "pytest" not in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def no_errors(figures: dict[str, Any]) -> bool:
    return figures["errors"] == 0 and not any(figures["errors_by_kind"].values())


def test_run_measures_both_jwt_scenarios_with_their_token(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = bench("run", "--scenario", "jwt-cached,jwt-uncached", "--duration", "1s",
                 "--runs", "1", "--warmup", "0", "--peers", "nginx", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("jwt-cached", "jwt-uncached"):
        entry = results_of(out)["scenarios"][name]
        assert entry["status"] == "ran", entry.get("reason")
        assert set(entry["targets"]) == {"fastgw"}  # no peer does the same work yet
        assert entry["peers_not_run"] == {"nginx": f"no nginx config for {name} yet"}
        fastgw = entry["targets"]["fastgw"]
        assert fastgw["requests"] > 0 and no_errors(fastgw), fastgw["errors_by_kind"]
        assert fastgw["cpu_us_per_request"] > 0
    assert leftovers(out) == []


def test_sweep_sends_the_token(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    done = bench("sweep", "--scenario", "jwt-cached", "--target-p99", "500ms",
                 "--start-rate", "100", "--max-rate", "200", "--duration", "1s",
                 "--connections", "4", "--peers", "", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    found = results_of(out)["scenarios"]["jwt-cached"]["targets"]["fastgw"]
    assert [s["rate"] for s in found["steps"]] == [100, 200]
    for step in found["steps"]:
        assert step["rps"] > 0 and no_errors(step), step
        assert step["ok"], step["why"]
    assert leftovers(out) == []


def test_scale_sends_the_token(tmp_path: Path) -> None:
    out = tmp_path / "scale"
    done = bench("scale", "--scenarios", "jwt-cached", "--workers-list", "1",
                 "--duration", "1s", "--runs", "1", "--warmup", "0", "--peers", "",
                 "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    [point] = results_of(out)["scenarios"]["jwt-cached"]["targets"]["fastgw"]["points"]
    assert point["rps"] > 0 and point["errors"] == 0, point
    assert leftovers(out) == []


def test_run_profile_sends_the_token(tmp_path: Path) -> None:
    assert shutil.which("py-spy"), "py-spy is not on PATH (pip install py-spy)"
    out = tmp_path / "profile"
    done = bench("run", "--scenario", "jwt-cached", "--duration", "1s", "--runs", "1",
                 "--warmup", "0", "--peers", "", "--connections", "8", "--profile",
                 "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    profile = results_of(out)["scenarios"]["jwt-cached"]["profile"]
    spy = profile["py_spy"]
    assert spy["load"]["requests"] > 0 and spy["load"]["errors"] == 0, spy["load"]
    assert spy["samples"] > 0
    perf = profile["perf"]
    if perf is not None and "error" not in perf:  # perf is optional (missing or denied)
        assert perf["load"]["requests"] > 0 and perf["load"]["errors"] == 0, perf["load"]
    assert "0 errors" in (out / "report.md").read_text()
    assert leftovers(out) == []


def test_profile_worker_sends_the_token(tmp_path: Path) -> None:
    assert shutil.which("py-spy"), "py-spy is not on PATH (pip install py-spy)"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "profile_worker.py"),
                           "--scenario", "jwt-cached", "--duration", "2s", "--connections",
                           "8", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    load = re.search(r"^load: ([\d,]+) requests/s \((\d+) requests in [\d.]+s, wrk -c8\)$",
                     done.stdout, re.MULTILINE)  # ", N errors" would follow -c8 otherwise
    assert load is not None, done.stdout
    assert int(load.group(2)) > 0
    assert (tmp_path / "keys" / "public.pem").exists()  # the scenario's setup ran there
    assert leftovers(tmp_path) == []
