"""Scenario ``passthrough``: fastgw against nginx (and HAProxy) as plain reverse proxies.

One mock metald backend; fastgw with one route ``path_prefix: /, auth: none`` (no token, no
limits: only the proxy path) and each peer proxy in front of the SAME backend, each with the
same number of workers. Runs alternate between the targets (fastgw, nginx, fastgw, nginx, ...)
so that slow drifts of a noisy machine hit both alike. Each run is one wrk run; around it the
bench reads the CPU time of the proxy's process tree, of the backend and of wrk, and samples
the proxy's RSS.

The figure to compare is **CPU-µs per request** of the proxy: CPU time (user + system) of
master + workers during the run, divided by the requests wrk completed. On a 2-core machine
that wrk, the backend and the proxy share, RPS says mostly who got the cores; CPU per request
says what each request costs the proxy, and it stays put when a neighbour steals time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import profile as pyspy
from bench.peers import Target, get, start_backend, start_fastgw, start_peer
from bench.procs import (
    CLK_TCK,
    BenchError,
    RssSampler,
    Services,
    cpu_delta,
    cpu_snapshot,
    machine_cpu,
    memory_of,
    tree_pids,
)
from bench.report import machine_info, machine_md, md_table, median, now_iso, write_results
from bench.wrk import run_wrk, wrk_binary

CPU_RATIO_GOAL: Final = 1.3  # fastgw's CPU-µs per request at most this times nginx's
SETTLE_S: Final = 1.0  # pause between runs (connections close, TIME_WAIT settles)
NOISY_SHARE: Final = 0.1  # a run is "noisy" when others used more than this share of the CPUs
LATENCY_KEYS: Final = ("p50", "p90", "p95", "p99", "p999")


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    runs: int = 3
    connections: int = 50
    threads: int = 1
    warmup_s: float = 3.0
    path: str = "/echo/x"
    workers: int = 1
    peers: tuple[str, ...] = ("nginx",)
    out: Path = Path("bench/out/passthrough")
    profile: bool = False
    command: str = ""


def per_request_us(cpu_s: float, requests: int) -> float:
    return cpu_s * 1e6 / requests if requests else float("nan")


def measure(target: Target, backend: Target, opts: Options, index: int) -> dict[str, Any]:
    """One wrk run against ``target``, with CPU and memory around it."""
    proxy_pids = tree_pids(target.service.pid)
    backend_pids = tree_pids(backend.service.pid)
    if not proxy_pids:
        raise BenchError(f"{target.name} is not running; log {target.service.log_path}:\n"
                         f"{target.service.log_tail()}")
    started_at = now_iso()
    proxy_before, backend_before = cpu_snapshot(proxy_pids), cpu_snapshot(backend_pids)
    machine_before = machine_cpu()
    with RssSampler({"proxy": proxy_pids, "backend": backend_pids}) as rss:
        result = run_wrk(target.url(opts.path), duration_s=opts.duration_s,
                         connections=opts.connections, threads=opts.threads,
                         script_dir=opts.out)
    machine_after = machine_cpu()
    proxy_after_pids = tree_pids(target.service.pid)
    proxy = cpu_delta(proxy_before, cpu_snapshot(set(proxy_pids) | set(proxy_after_pids)))
    back = cpu_delta(backend_before, cpu_snapshot(backend_pids))
    memory = memory_of(proxy_after_pids)
    busy_s = (machine_after.busy - machine_before.busy) / CLK_TCK
    total = max(1, machine_after.total - machine_before.total)
    return {
        "run": index, "target": target.name, "started_at": started_at,
        "rps": round(result.rps, 1), "requests": result.requests,
        "duration_s": round(result.duration_s, 3),
        **{f"{k}_ms": round(result.latency_ms[k], 3) for k in LATENCY_KEYS},
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
        "errors": result.error_total, "errors_by_kind": result.errors,
        "cpu_us_per_request": round(per_request_us(proxy.seconds, result.requests), 2),
        "user_us_per_request": round(per_request_us(proxy.user_s, result.requests), 2),
        "system_us_per_request": round(per_request_us(proxy.system_s, result.requests), 2),
        "backend_cpu_us_per_request": round(per_request_us(back.seconds, result.requests), 2),
        "wrk_cpu_us_per_request": round(per_request_us(result.cpu_s, result.requests), 2),
        "proxy_cpu": proxy.as_json(), "backend_cpu": back.as_json(),
        "wrk_cpu_s": round(result.cpu_s, 3),
        "rss_mb": round(rss.peak_kb["proxy"] / 1024, 2),
        "backend_rss_mb": round(rss.peak_kb["backend"] / 1024, 2),
        "memory_after": memory.as_json(),
        "proxy_pids": proxy_after_pids,
        "machine_busy_cpu_s": round(busy_s, 2),
        "other_cpu_s": round(busy_s - proxy.seconds - back.seconds - result.cpu_s, 2),
        "steal_pct": round(100 * (machine_after.steal - machine_before.steal) / total, 2),
        "noisy": busy_s - proxy.seconds - back.seconds - result.cpu_s
        > NOISY_SHARE * result.duration_s * (os.cpu_count() or 1),
        "wrk_output": result.output,
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(median([float(r[key]) for r in runs]), 3)

    kinds: dict[str, int] = {}
    for r in runs:
        for kind, count in r["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    return {
        "rps": med("rps"),
        **{f"{k}_ms": med(f"{k}_ms") for k in LATENCY_KEYS},
        "errors": sum(int(r["errors"]) for r in runs),
        "errors_by_kind": kinds,
        "requests": sum(int(r["requests"]) for r in runs),
        "cpu_us_per_request": med("cpu_us_per_request"),
        "user_us_per_request": med("user_us_per_request"),
        "system_us_per_request": med("system_us_per_request"),
        "backend_cpu_us_per_request": med("backend_cpu_us_per_request"),
        "wrk_cpu_us_per_request": med("wrk_cpu_us_per_request"),
        "rss_mb": max(float(r["rss_mb"]) for r in runs),
        "process_changes": [{"run": r["run"], **r["proxy_cpu"]} for r in runs
                            if r["proxy_cpu"]["exited"] or r["proxy_cpu"]["started"]],
        "noisy_runs": [r["run"] for r in runs if r["noisy"]],
        "runs": list(runs),
    }


def ratios(fastgw: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float:
        return round(a / b, 3) if b else float("nan")

    paired = [ratio(f["cpu_us_per_request"], p["cpu_us_per_request"])
              for f, p in zip(fastgw["runs"], peer["runs"], strict=False)]
    cpu = ratio(fastgw["cpu_us_per_request"], peer["cpu_us_per_request"])
    return {
        "cpu_us_per_request": cpu,
        "rps": ratio(fastgw["rps"], peer["rps"]),
        "p50_ms": ratio(fastgw["p50_ms"], peer["p50_ms"]),
        "p99_ms": ratio(fastgw["p99_ms"], peer["p99_ms"]),
        "cpu_us_per_request_paired_runs": paired,
        "cpu_goal": CPU_RATIO_GOAL,
        "cpu_goal_met": cpu <= CPU_RATIO_GOAL,
    }


def check_targets(targets: Sequence[Target], path: str) -> dict[str, Any]:
    """One request through every target before measuring: each must answer 200."""
    seen: dict[str, Any] = {}
    for target in targets:
        try:
            status, headers, body = get(target.port, path)
        except OSError as error:
            raise BenchError(f"{target.name}: GET {path} failed: {error}; log "
                             f"{target.service.log_path}:\n{target.service.log_tail()}") from None
        if status != 200:
            raise BenchError(f"{target.name}: GET {path} answered {status}: {body[:300]!r}; "
                             f"log {target.service.log_path}:\n{target.service.log_tail()}")
        seen[target.name] = {"status": status, "body_bytes": len(body),
                             "headers": sorted(headers)}
    return seen


def log_problems(target: Target, limit: int = 30) -> list[str]:
    """WARNING/ERROR/Traceback lines of a service's log (first ``limit``)."""
    try:
        lines = target.service.log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    keys = ("WARNING", "ERROR", "CRITICAL", "Traceback", "[warn]", "[error]", "[alert]",
            "[crit]", "[emerg]")
    return [line for line in lines if any(k in line for k in keys)][:limit]


def run(opts: Options) -> dict[str, Any]:
    wrk_binary()  # fail before anything starts
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    started_at = now_iso()
    targets: list[Target] = []
    runs: dict[str, list[dict[str, Any]]] = {}
    profile: dict[str, Any] | None = None
    with Services() as services:
        backend = start_backend(services, opts.out)
        targets.append(start_fastgw(services, opts.out, backend, workers=opts.workers))
        for peer in opts.peers:
            targets.append(start_peer(peer, services, opts.out, backend, workers=opts.workers))
        probe = check_targets(targets, opts.path)
        print(f"started: backend :{backend.port}, " +
              ", ".join(f"{t.name} :{t.port}" for t in targets), flush=True)
        if opts.warmup_s > 0:
            for target in targets:
                run_wrk(target.url(opts.path), duration_s=opts.warmup_s,
                        connections=opts.connections, threads=opts.threads, script_dir=opts.out)
        for index in range(1, opts.runs + 1):
            for target in targets:
                time.sleep(SETTLE_S)
                record = measure(target, backend, opts, index)
                runs.setdefault(target.name, []).append(record)
                print(f"run {index}/{opts.runs} {target.name:8s} {record['rps']:>9,.0f} rps  "
                      f"p50 {record['p50_ms']:.2f} ms  p99 {record['p99_ms']:.2f} ms  "
                      f"errors {record['errors']}  "
                      f"{record['cpu_us_per_request']:.1f} CPU-µs/req  "
                      f"rss {record['rss_mb']:.1f} MB", flush=True)
                if not target.service.alive():
                    raise BenchError(f"{target.name} died during run {index}; log "
                                     f"{target.service.log_path}:\n{target.service.log_tail()}")
        if opts.profile:
            profile = pyspy.profile_fastgw(targets[0], opts)
        problems = {t.name: log_problems(t) for t in [backend, *targets]}
        exit_codes = services.stop_all()
    summary = {t.name: summarize(runs[t.name]) for t in targets}
    results: dict[str, Any] = {
        "schema": 1,
        "scenario": "passthrough",
        "started_at": started_at,
        "finished_at": now_iso(),
        "command": opts.command,
        "settings": {
            "duration_s": opts.duration_s, "runs": opts.runs, "connections": opts.connections,
            "threads": opts.threads, "warmup_s": opts.warmup_s, "path": opts.path,
            "workers": opts.workers, "peers": list(opts.peers),
        },
        "machine": machine,
        "probe": probe,
        "targets": summary,
        "ratios": {f"fastgw/{p}": ratios(summary["fastgw"], summary[p]) for p in opts.peers},
        "log_problems": problems,
        "exit_codes": exit_codes,
        "profile": profile,
    }
    write_results(opts.out, results, markdown(results))
    return results


def table(results: dict[str, Any]) -> str:
    header = ["target", "RPS", "p50 ms", "p90 ms", "p99 ms", "errors", "CPU-µs/req",
              "(user + sys)", "backend CPU-µs/req", "wrk CPU-µs/req", "peak RSS MB"]
    rows = [[name, t["rps"], t["p50_ms"], t["p90_ms"], t["p99_ms"], t["errors"],
             t["cpu_us_per_request"],
             f"{t['user_us_per_request']:.1f} + {t['system_us_per_request']:.1f}",
             t["backend_cpu_us_per_request"],
             t["wrk_cpu_us_per_request"], t["rss_mb"]]
            for name, t in results["targets"].items()]
    lines = [md_table(header, rows), ""]
    for pair, r in results["ratios"].items():
        verdict = "meets" if r["cpu_goal_met"] else "MISSES"
        paired = ", ".join(f"{x:.2f}" for x in r["cpu_us_per_request_paired_runs"])
        lines.append(f"- **{pair}**: CPU-µs/req x{r['cpu_us_per_request']:.2f} ({verdict} the "
                     f"≤ {r['cpu_goal']}x goal; per run pair: {paired}), RPS x{r['rps']:.2f}, "
                     f"p99 x{r['p99_ms']:.2f}")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    parts = [
        f"# passthrough — {results['started_at']}",
        "",
        f"`{results['command']}`",
        "",
        f"{s['runs']} runs x {s['duration_s']:g} s per target, alternating; wrk -t{s['threads']} "
        f"-c{s['connections']} GET {s['path']}; {s['workers']} worker(s) each; one mock metald "
        "backend shared by all targets. Figures are medians over the runs (errors: total; "
        "peak RSS: max). CPU-µs/req = (utime+stime of master+workers during the run) / "
        "requests completed.",
        "",
        machine_md(results["machine"]),
        "",
        table(results),
        "",
        "Per run:",
        "",
        md_table(["target", "run", "RPS", "p50 ms", "p99 ms", "errors", "CPU-µs/req",
                  "backend", "wrk", "other CPU s", "steal %"],
                 [[r["target"], f"{r['run']}{' (noisy)' if r['noisy'] else ''}", r["rps"],
                   r["p50_ms"], r["p99_ms"], r["errors"],
                   r["cpu_us_per_request"], r["backend_cpu_us_per_request"],
                   r["wrk_cpu_us_per_request"], r["other_cpu_s"], r["steal_pct"]]
                  for t in results["targets"].values() for r in t["runs"]]),
    ]
    notes = [f"- {name}: process tree changed during run(s) {t['process_changes']}"
             for name, t in results["targets"].items() if t["process_changes"]]
    notes += [f"- {name}: run(s) {t['noisy_runs']} noisy: other processes used more than "
              f"{NOISY_SHARE:.0%} of the machine's CPU (see \"other CPU s\")"
              for name, t in results["targets"].items() if t["noisy_runs"]]
    notes += [f"- {name} log: `{line}`" for name, lines in results["log_problems"].items()
              for line in lines[:10]]
    if notes:
        parts += ["", "Incidents:", "", *notes]
    if results.get("profile"):
        parts += ["", pyspy.profile_md(results["profile"])]
    return "\n".join(parts) + "\n"
