"""Optional profiles of a fastgw worker under the scenario's load (``--profile``).

Two separate, unrecorded wrk runs (a profiler perturbs the process, so never during a measured
run), each as long as a measured one and sending the scenario's request headers (its bearer
token: a profile of 401 answers would sample the wrong code). Each keeps its load's figures
(``load``: requests, RPS, errors), so that a profile taken under errors says so. The two:

- **py-spy** (Python frames): py-spy's ``raw`` output (collapsed stacks, one
  ``frame;frame;... count`` per line; feed it to any flamegraph tool) and the functions with
  the most self samples -- the innermost Python frame, so a socket write or a Cython kernel is
  counted in the Python function that called it. Idle samples (the loop in epoll) are not
  recorded: shares are of busy time. py-spy stops the process to take a sample, and a stopped
  thread tends to be caught on its way out of a system call, so functions that write to
  sockets look heavier than they are: read it for *where* in fastgw, not for how much.
- **perf** (when installed and allowed): ``perf record -F 999`` on the worker, summarized by
  shared object (kernel vs libpython vs uvloop vs httptools vs the Cython kernels) and by
  symbol. A CPU-clock sample, unbiased by system calls: this is the split to trust.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.loadgen import LoadResult
from bench.procs import BenchError, tree_pids
from bench.report import md_table
from bench.wrk import run_wrk

if TYPE_CHECKING:
    from bench.peers import Target
    from bench.runner import Options

RATE_HZ: Final = 200
PERF_HZ: Final = 999
ATTACH_S: Final = 1.0
TOP_N: Final = 25
_LINE_NO = re.compile(r":\d+\)$")


def summarize_raw(text: str, top: int = TOP_N) -> dict[str, Any]:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_LINE_NO.sub(")", f) for f in stack.split(";")]
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count

    def pct(n: int) -> float:
        return round(100 * n / samples, 1) if samples else 0.0

    return {
        "samples": samples,
        "top_self": [{"function": f, "self_pct": pct(n), "total_pct": pct(total_counts[f])}
                     for f, n in self_counts.most_common(top)],
    }


def load_of(result: LoadResult) -> dict[str, Any]:
    """What a profile's wrk run did: a profile of errors samples the error path."""
    return {"requests": result.requests, "rps": round(result.rps, 1),
            "errors": result.error_total, "errors_by_kind": result.errors}


def _load(target: Target, opts: Options, seconds: int) -> LoadResult:
    return run_wrk(target.url(opts.path or "/"), duration_s=seconds,
                   connections=opts.connections, threads=opts.threads, script_dir=opts.out,
                   headers=opts.headers)


def _worker(target: Target) -> int:
    pids = tree_pids(target.service.pid)
    if len(pids) < 2:
        raise BenchError("fastgw has no worker process to profile")
    return pids[1]


def profile_fastgw(target: Target, opts: Options) -> dict[str, Any]:
    result = {"py_spy": py_spy_profile(target, opts), "perf": perf_profile(target, opts)}
    return result


def py_spy_profile(target: Target, opts: Options) -> dict[str, Any]:
    binary = shutil.which("py-spy")
    if binary is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    worker = _worker(target)
    out = opts.out / "fastgw-profile.raw.txt"
    seconds = max(2, round(opts.duration_s))
    argv = [binary, "record", "--pid", str(worker), "--rate", str(RATE_HZ), "--duration",
            str(seconds + 2), "--format", "raw", "-o", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(ATTACH_S)
        load = _load(target, opts, seconds)
        output, _ = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(5)
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed (status {spy.returncode}): {output.strip()[-1000:]}")
    summary = summarize_raw(out.read_text())
    print(f"py-spy profile of fastgw worker {worker}: {out}", flush=True)
    return {"worker_pid": worker, "file": str(out), "rate_hz": RATE_HZ, "load": load_of(load),
            **summary}


def _perf_report(binary: str, data: Path, sort: str, top: int) -> list[dict[str, Any]]:
    done = subprocess.run([binary, "report", "-i", str(data), "--no-children", "--sort", sort,
                           "--stdio", "-g", "none"], capture_output=True, text=True,
                          timeout=120, check=False)
    rows = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if not parts or not parts[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        rows.append({"pct": float(parts[0].rstrip("%")), "what": " ".join(parts[1:])})
    return rows[:top]


def perf_profile(target: Target, opts: Options) -> dict[str, Any] | None:
    """CPU-clock samples of the worker, kernel included; None when perf is missing or denied."""
    binary = shutil.which("perf")
    if binary is None:
        return None
    worker = _worker(target)
    data = opts.out / "fastgw.perf.data"
    seconds = max(2, round(opts.duration_s))
    perf = subprocess.Popen([binary, "record", "-F", str(PERF_HZ), "-p", str(worker), "-o",
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(ATTACH_S)
        if perf.poll() is not None:  # e.g. perf_event_paranoid forbids it
            return {"error": (perf.stdout.read() if perf.stdout else "")[-500:]}
        load = _load(target, opts, seconds)
        perf.send_signal(signal.SIGINT)
        perf.communicate(timeout=60)
    finally:
        if perf.poll() is None:
            perf.kill()
            perf.wait(5)
    if not data.exists():
        return {"error": f"perf wrote no {data}"}
    print(f"perf profile of fastgw worker {worker}: {data}", flush=True)
    return {"worker_pid": worker, "file": str(data), "rate_hz": PERF_HZ, "load": load_of(load),
            "by_object": _perf_report(binary, data, "dso", 12),
            "top_symbols": _perf_report(binary, data, "dso,sym", TOP_N)}


def _load_md(part: dict[str, Any]) -> str:
    load = part.get("load")  # absent from results saved before profiles recorded their load
    if load is None:
        return "not recorded"
    return f"{load['rps']:,.0f} req/s, {load['errors']} errors"


def profile_md(profile: dict[str, Any]) -> str:
    spy = profile["py_spy"]
    rows = [[p["function"].replace("|", "\\|"), p["self_pct"], p["total_pct"]]
            for p in spy["top_self"]]
    parts = [
        f"Profile (py-spy, {spy['samples']} busy samples at {spy['rate_hz']} Hz of "
        f"worker {spy['worker_pid']}; raw stacks in `{spy['file']}`; biased towards "
        "functions that make system calls, see bench/profile.py; "
        f"load {_load_md(spy)}):",
        "",
        md_table(["function (file)", "self %", "total %"], rows),
    ]
    perf = profile.get("perf")
    if perf and "error" not in perf:
        parts += [
            "", f"perf, {perf['rate_hz']} Hz CPU-clock samples of worker {perf['worker_pid']} "
            f"(`{perf['file']}`; load {_load_md(perf)}), by shared object:", "",
            md_table(["object", "%"], [[r["what"], r["pct"]] for r in perf["by_object"]]),
            "", "Top symbols:", "",
            md_table(["object / symbol", "%"],
                     [[r["what"].replace("|", "\\|"), r["pct"]] for r in perf["top_symbols"]]),
        ]
    elif perf:
        parts += ["", f"perf failed: {perf['error']}"]
    return "\n".join(parts)
