"""Run wrk and read its result.

wrk is a closed-loop generator: ``-c`` connections each keep exactly one request in flight, so
the latencies it reports are service times under that concurrency, not what an open stream of
arrivals would see (no coordinated-omission correction). That is what a proxy-vs-proxy
comparison at equal concurrency needs.

The figures come from a Lua ``done()`` hook that prints one JSON line (exact counts and the
percentiles of wrk's microsecond histogram), so nothing is scraped from the human-readable
summary, which is kept in the raw output for people.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.loadgen import LoadResult
from bench.procs import BenchError

MARKER: Final = "BENCH_WRK_JSON "
PERCENTILES: Final = (("p50", 50), ("p75", 75), ("p90", 90), ("p95", 95), ("p99", 99),
                      ("p999", 99.9))
GRACE_S: Final = 30.0  # beyond the run's duration before wrk is considered hung and killed

def lua_script() -> str:
    """The ``done()`` hook: one line, MARKER + JSON (latencies in microseconds)."""
    percentiles = "\n".join(
        f"  io.write(string.format(',\"{name}\":%d', latency:percentile({q})))"
        for name, q in PERCENTILES)
    return "\n".join([
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write("{MARKER}{{")',
        "  io.write(string.format('\"duration_us\":%d,\"requests\":%d,\"bytes\":%d,',",
        "    summary.duration, summary.requests, summary.bytes))",
        "  io.write(string.format('\"errors\":{\"connect\":%d,\"read\":%d,\"write\":%d,'",
        "    .. '\"status\":%d,\"timeout\":%d},',",
        "    e.connect, e.read, e.write, e.status, e.timeout))",
        "  io.write(string.format('\"latency_us\":{\"mean\":%.1f,\"stdev\":%.1f,\"max\":%d',",
        "    latency.mean, latency.stdev, latency.max))",
        percentiles,
        '  io.write("}}\\n")',
        "end",
        "",
    ])


WrkResult = LoadResult  # the name other modules imported before LoadResult existed


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk not found on PATH (Debian: apt-get install wrk)")
    return path


def parse(output: str, cpu_s: float) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            break
    else:
        raise BenchError(f"wrk printed no result line; its output:\n{output[-2000:]}")
    latency = {k: float(v) / 1000.0 for k, v in data["latency_us"].items()}
    errors = {k: int(v) for k, v in data["errors"].items()}
    human = "\n".join(x for x in output.splitlines() if not x.startswith(MARKER))
    return WrkResult(duration_s=data["duration_us"] / 1e6, requests=int(data["requests"]),
                     bytes=int(data["bytes"]), errors=errors, latency_ms=latency, cpu_s=cpu_s,
                     output=human)


def wrk_argv(url: str, *, duration_s: float, connections: int, threads: int = 1,
             timeout_s: float = 5.0, script_dir: Path,
             headers: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The wrk command line of every run, with the result hook written to ``script_dir`` and
    one ``-H "Name: value"`` per request header (the scenario's, e.g. a bearer token)."""
    script = script_dir / "wrk_report.lua"
    if not script.exists():
        script_dir.mkdir(parents=True, exist_ok=True)
        script.write_text(lua_script())
    return [wrk_binary(), f"-t{threads}", f"-c{connections}",
            f"-d{max(1, round(duration_s))}s", "--latency",
            f"--timeout={max(1, round(timeout_s))}s",
            *(arg for name, value in headers for arg in ("-H", f"{name}: {value}")),
            "-s", str(script), url]


def run_wrk(url: str, *, duration_s: float, connections: int, threads: int = 1,
            timeout_s: float = 5.0, script_dir: Path,
            headers: Sequence[tuple[str, str]] = ()) -> WrkResult:
    """One wrk run; its CPU is the growth of RUSAGE_CHILDREN across it (only wrk is reaped in
    that window)."""
    seconds = max(1, round(duration_s))
    argv = wrk_argv(url, duration_s=duration_s, connections=connections, threads=threads,
                    timeout_s=timeout_s, script_dir=script_dir, headers=headers)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + GRACE_S,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish {seconds + GRACE_S:.0f}s after starting a "
                         f"{seconds}s run against {url}") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with status {done.returncode} after "
                         f"{time.monotonic() - started:.1f}s: {done.stderr.strip()[-2000:]}")
    return parse(done.stdout, cpu_s)
