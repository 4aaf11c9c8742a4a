"""One load scenario: fastgw and its peers in front of the same backends, measured alternately.

The scenario (:mod:`bench.scenarios`) gives fastgw's config and the traffic; every proxy gets
the same backends and the same number of workers. Runs alternate between the targets
(fastgw, nginx, haproxy, fastgw, ...) so that slow drifts of a noisy machine hit all alike.
Each run is one load-generator run (wrk, closed loop; or the built-in open-loop generator at a
fixed rate); around it the bench reads the CPU time of the proxy's process tree, of the
backends and of the load generator, and samples the proxy's RSS.

The figure to compare is **CPU-µs per request** of the proxy: CPU time (user + system) of
master + workers during the run, divided by the requests completed. On a 2-core machine that
the load generator, the backend and the proxy share, RPS says mostly who got the cores; CPU per
request says what each request costs the proxy, and it stays put when a neighbour steals time.

A scenario's helper processes (a Redis: :class:`bench.scenarios.Helper`) are read the same way
around each run and reported as groups of their own (``redis_cpu_us_per_request``, never added
to the proxy's figure), with the growth of their counters per request
(``redis_commands_per_request``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import profile as pyspy
from bench.loadgen import LoadResult, error_share
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
from bench.progress import RunProgress
from bench.report import median, now_iso
from bench.scenarios import HOST, Headers, Helper, Scenario
from bench.verdict import Targets

SETTLE_S: Final = 1.0  # pause between runs (connections close, TIME_WAIT settles)
NOISY_SHARE: Final = 0.1  # a run is "noisy" when others used more than this share of the CPUs
REPORTED_PERCENTILES: Final = ("p50", "p90", "p95", "p99", "p999")
GENERATORS: Final = ("wrk", "openloop")


@dataclass(frozen=True)
class Options:
    duration_s: float = 10.0
    runs: int = 3
    connections: int = 50
    threads: int = 1  # wrk threads
    warmup_s: float = 3.0
    path: str | None = None  # None: the scenario's own
    workers: int = 1
    peers: tuple[str, ...] = ("nginx",)
    out: Path = Path("bench/out/run")
    profile: bool = False
    command: str = ""
    generator: str = "wrk"
    rate: float = 5000.0  # open loop: requests per second offered
    processes: int = 1  # open loop: generator processes
    targets: Targets = dataclasses.field(default_factory=Targets)
    headers: Headers = ()  # the scenario's request headers (run_load sets them)
    # --set PATH=VALUE: changes to fastgw's config for the run (an A/B of one feature)
    overrides: tuple[tuple[str, Any], ...] = ()


def request_bytes(path: str, port: int, headers: Headers = ()) -> bytes:
    """The request the open-loop generator sends: what wrk sends for the same URL and
    ``-H`` headers."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}",
             *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class LoadGenerator:
    """The chosen generator, with the requests completed so far for the progress line."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.completed: int | None = None

    def run(self, target: Target, duration_s: float) -> LoadResult:
        opts = self.opts
        if opts.generator == "wrk":
            from bench.wrk import run_wrk

            return run_wrk(target.url(opts.path or "/"), duration_s=duration_s,
                           connections=opts.connections, threads=opts.threads,
                           script_dir=opts.out, headers=opts.headers)
        from bench.openloop import Progress, Traffic, run_open_loop

        def seen(tick: Progress) -> None:
            self.completed = tick.completed

        self.completed = 0
        request = request_bytes(opts.path or "/", target.port, opts.headers)
        traffic = Traffic(HOST, target.port, (request,))
        return run_open_loop(traffic, rate=opts.rate, duration_s=duration_s,
                             connections=opts.connections, processes=opts.processes,
                             progress=seen)


def helpers_line(record: dict[str, Any]) -> str:
    """The helpers' figures for a progress line (empty without helpers)."""
    def show(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    parts = [f"  {name} {show(record.get(f'{name}_cpu_us_per_request'), 1)} CPU-µs/req"
             + (f" {show(record[f'{name}_commands_per_request'], 2)} cmds/req"
                if f"{name}_commands_per_request" in record else "")
             for name in record.get("helpers", ())]
    return "".join(parts)


def per_request_us(cpu_s: float, requests: int) -> float | None:
    """CPU-µs per request, rounded; None (not NaN: results.json stays valid JSON) without
    requests."""
    return round(cpu_s * 1e6 / requests, 2) if requests else None


class HelperReadings:
    """The helpers' CPU and counters around one measurement: read at construction (counters
    first, then CPU) and again by :meth:`finish` (CPU first), so that the bench's own reading
    of the counters stays out of the CPU figures as far as it can."""

    def __init__(self, helpers: Sequence[Helper]) -> None:
        self.helpers = tuple(helpers)
        self.pids = {h.name: tree_pids(h.service.pid) for h in self.helpers}
        for h in self.helpers:
            if not self.pids[h.name]:
                raise BenchError(f"{h.name} is not running; log {h.service.log_path}:\n"
                                 f"{h.service.log_tail()}")
        self.counters = {h.name: dict(h.counters()) for h in self.helpers
                         if h.counters is not None}
        self.cpu = {name: cpu_snapshot(pids) for name, pids in self.pids.items()}

    def finish(self, requests: int) -> tuple[dict[str, Any], float]:
        """The record's fields (``<name>_cpu_us_per_request``, ``<name>_cpu``,
        ``<name>_<counter>_per_request``) and the helpers' CPU seconds together."""
        fields: dict[str, Any] = {}
        seconds = 0.0
        for h in self.helpers:
            now = cpu_snapshot(set(self.pids[h.name]) | set(tree_pids(h.service.pid)))
            spent = cpu_delta(self.cpu[h.name], now)
            seconds += spent.seconds
            fields[f"{h.name}_cpu_us_per_request"] = per_request_us(spent.seconds, requests)
            fields[f"{h.name}_cpu"] = spent.as_json()
        for h in self.helpers:
            if h.counters is None:
                continue
            before, after = self.counters[h.name], h.counters()
            for key, value in after.items():
                grown = value - before.get(key, 0)
                fields[f"{h.name}_{key}_per_request"] = (round(grown / requests, 3)
                                                         if requests else None)
        return fields, seconds


def measure(target: Target, backends: Sequence[Target], generator: LoadGenerator,
            index: int, helpers: Sequence[Helper] = ()) -> dict[str, Any]:
    """One load run against ``target``, with CPU and memory around it (and around the
    scenario's ``helpers``)."""
    opts = generator.opts
    proxy_pids = tree_pids(target.service.pid)
    backend_pids = [pid for b in backends for pid in tree_pids(b.service.pid)]
    if not proxy_pids:
        raise BenchError(f"{target.name} is not running; log {target.service.log_path}:\n"
                         f"{target.service.log_tail()}")
    started_at = now_iso()
    helper_readings = HelperReadings(helpers)
    proxy_before, backend_before = cpu_snapshot(proxy_pids), cpu_snapshot(backend_pids)
    machine_before = machine_cpu()
    label = f"run {index}/{opts.runs} {target.name}"
    groups = {"proxy": proxy_pids, "backend": backend_pids, **helper_readings.pids}
    with RssSampler(groups) as rss, \
            RunProgress(label, opts.duration_s, target.service.pid,
                        completed=lambda: generator.completed):
        result = generator.run(target, opts.duration_s)
    machine_after = machine_cpu()
    proxy_after_pids = tree_pids(target.service.pid)
    proxy = cpu_delta(proxy_before, cpu_snapshot(set(proxy_pids) | set(proxy_after_pids)))
    back = cpu_delta(backend_before, cpu_snapshot(backend_pids))
    helper_fields, helper_s = helper_readings.finish(result.requests)
    memory = memory_of(proxy_after_pids)
    busy_s = (machine_after.busy - machine_before.busy) / CLK_TCK
    total = max(1, machine_after.total - machine_before.total)
    other_s = busy_s - proxy.seconds - back.seconds - helper_s - result.cpu_s
    return {
        "run": index, "target": target.name, "started_at": started_at,
        "rps": round(result.rps, 1), "requests": result.requests,
        "duration_s": round(result.duration_s, 3),
        **{f"{k}_ms": round(result.latency_ms[k], 3) for k in REPORTED_PERCENTILES},
        "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
        "errors": result.error_total, "errors_by_kind": result.errors,
        "error_share": result.error_share,
        "cpu_us_per_request": per_request_us(proxy.seconds, result.requests),
        "user_us_per_request": per_request_us(proxy.user_s, result.requests),
        "system_us_per_request": per_request_us(proxy.system_s, result.requests),
        "backend_cpu_us_per_request": per_request_us(back.seconds, result.requests),
        "loadgen_cpu_us_per_request": per_request_us(result.cpu_s, result.requests),
        "proxy_cpu": proxy.as_json(), "backend_cpu": back.as_json(),
        "loadgen_cpu_s": round(result.cpu_s, 3),
        # the scenario's helper processes, each a group of its own (not in the proxy's CPU)
        "helpers": [h.name for h in helpers], **helper_fields,
        **{f"{h.name}_rss_mb": round(rss.peak_kb[h.name] / 1024, 2) for h in helpers},
        # open loop: what was offered, and what never went out (the run fell behind)
        "offered_rps": result.offered_rps, "sent": result.sent,
        "unsent": getattr(result, "unsent", None), "behind_s": result.behind_s,
        "rss_mb": round(rss.peak_kb["proxy"] / 1024, 2),
        "backend_rss_mb": round(rss.peak_kb["backend"] / 1024, 2),
        "memory_after": memory.as_json(),
        "proxy_pids": proxy_after_pids,
        "machine_busy_cpu_s": round(busy_s, 2),
        "other_cpu_s": round(other_s, 2),
        "steal_pct": round(100 * (machine_after.steal - machine_before.steal) / total, 2),
        "noisy": other_s > NOISY_SHARE * result.duration_s * (os.cpu_count() or 1),
        "loadgen_output": result.output,
    }


SUMMARY_MEDIANS: Final = ("rps", *(f"{k}_ms" for k in REPORTED_PERCENTILES),
                          "cpu_us_per_request",
                          "user_us_per_request", "system_us_per_request",
                          "backend_cpu_us_per_request", "loadgen_cpu_us_per_request")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs (errors: total; peak RSS: max), and every run's record. Every
    ``*_per_request`` figure of the runs has its median, the helpers' too."""
    kinds: dict[str, int] = {}
    for r in runs:
        for kind, count in r["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    def med(key: str) -> float | None:
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        return round(median(values), 3) if values else None

    errors, requests = sum(int(r["errors"]) for r in runs), sum(int(r["requests"]) for r in runs)
    behind = [float(r["behind_s"]) for r in runs if r.get("behind_s") is not None]
    per_request = dict.fromkeys(k for r in runs for k in r if k.endswith("_per_request"))
    helpers = list(dict.fromkeys(name for r in runs for name in r.get("helpers", ())))
    return {
        **{key: med(key) for key in (*SUMMARY_MEDIANS, *per_request)},
        "helpers": helpers,
        **{f"{name}_rss_mb": max(float(r[f"{name}_rss_mb"]) for r in runs) for name in helpers},
        "errors": errors,
        "errors_by_kind": kinds,
        "error_share": error_share(errors, requests, kinds),
        "requests": requests,
        "unsent": sum(int(r.get("unsent") or 0) for r in runs),
        "behind_s": max(behind) if behind else None,
        "rss_mb": max(float(r["rss_mb"]) for r in runs),
        "process_changes": [{"run": r["run"], **r["proxy_cpu"]} for r in runs
                            if r["proxy_cpu"]["exited"] or r["proxy_cpu"]["started"]],
        "noisy_runs": [r["run"] for r in runs if r["noisy"]],
        "runs": list(runs),
    }


def ratios(fastgw: dict[str, Any], peer: dict[str, Any], *,
           open_loop: bool = False) -> dict[str, Any]:
    """fastgw / peer for each figure. With the open-loop generator both sides are offered the
    same rate, so an RPS ratio would only echo ``--rate``: it is left out (None)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    paired = [ratio(f["cpu_us_per_request"], p["cpu_us_per_request"])
              for f, p in zip(fastgw["runs"], peer["runs"], strict=False)]
    return {
        "cpu_us_per_request": ratio(fastgw["cpu_us_per_request"], peer["cpu_us_per_request"]),
        "rps": None if open_loop else ratio(fastgw["rps"], peer["rps"]),
        "p50_ms": ratio(fastgw["p50_ms"], peer["p50_ms"]),
        "p99_ms": ratio(fastgw["p99_ms"], peer["p99_ms"]),
        "cpu_us_per_request_paired_runs": paired,
    }


def check_targets(targets: Sequence[Target], path: str,
                  request_headers: Headers = ()) -> dict[str, Any]:
    """One request through every target before measuring, with the scenario's headers (the
    bearer token): each must answer 200."""
    seen: dict[str, Any] = {}
    for target in targets:
        try:
            status, headers, body = get(target.port, path, headers=request_headers)
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


def planned_s(opts: Options, targets: int) -> float:
    """The longest a run of ``targets`` targets should take (for the scenario's token)."""
    per_target = opts.warmup_s + opts.runs * (opts.duration_s + SETTLE_S)
    return targets * per_target + 120.0  # starting and probing the services, with room


def run_load(scenario: Scenario, opts: Options) -> dict[str, Any]:
    """Every run of one load scenario; its entry in ``results.json``'s ``scenarios``."""
    opts = dataclasses.replace(opts, path=scenario.path if opts.path is None else opts.path)
    opts.out.mkdir(parents=True, exist_ok=True)
    peers = tuple(p for p in opts.peers if p in scenario.peers)
    targets: list[Target] = []
    runs: dict[str, list[dict[str, Any]]] = {}
    profile: dict[str, Any] | None = None
    with Services() as services:
        # first: its helpers (a Redis) are then stopped last, after the gateway using them
        prepared = scenario.prepare(opts.out, planned_s(opts, 1 + len(peers)), services,
                                    overrides=opts.overrides)
        opts = dataclasses.replace(opts, headers=prepared.headers)
        generator = LoadGenerator(opts)
        backends = [start_backend(services, opts.out, name=f"bench-backend-{i + 1}")
                    for i in range(scenario.backends)]
        targets.append(start_fastgw(services, opts.out, backends, workers=opts.workers,
                                    config=prepared.config))
        for peer in peers:
            targets.append(start_peer(peer, services, opts.out, backends,
                                      workers=opts.workers))
        probe = check_targets(targets, opts.path or scenario.path, opts.headers)
        print(f"{scenario.name}: backends " + ", ".join(f":{b.port}" for b in backends) + "; "
              + ", ".join(f"{t.name} :{t.port}" for t in targets), flush=True)
        if opts.warmup_s > 0:
            for target in targets:
                generator.run(target, opts.warmup_s)
        for index in range(1, opts.runs + 1):
            for target in targets:
                time.sleep(SETTLE_S)
                record = measure(target, backends, generator, index, prepared.helpers)
                runs.setdefault(target.name, []).append(record)
                print(f"run {index}/{opts.runs} {target.name:8s} {record['rps']:>9,.0f} rps  "
                      f"p50 {record['p50_ms']:.2f} ms  p99 {record['p99_ms']:.2f} ms  "
                      f"errors {record['errors']}  "
                      f"{record['cpu_us_per_request']:.1f} CPU-µs/req  "
                      f"rss {record['rss_mb']:.1f} MB{helpers_line(record)}", flush=True)
                if not target.service.alive():
                    raise BenchError(f"{target.name} died during run {index}; log "
                                     f"{target.service.log_path}:\n{target.service.log_tail()}")
        if opts.profile:
            profile = pyspy.profile_fastgw(targets[0], opts)
        problems = {t.name: log_problems(t) for t in [*backends, *targets]}
        for helper in prepared.helpers:
            if not helper.service.alive():
                raise BenchError(f"{helper.name} died during the runs; log "
                                 f"{helper.service.log_path}:\n{helper.service.log_tail()}")
        exit_codes = services.stop_all()
    summary = {t.name: summarize(runs[t.name]) for t in targets}
    pairs = {f"fastgw/{p}": ratios(summary["fastgw"], summary[p],
                                   open_loop=opts.generator == "openloop") for p in peers}
    not_run = [p for p in opts.peers if p not in peers]
    return {
        "status": "ran",
        "shape": "load",
        "reason": None,
        "description": scenario.description,
        "generator": opts.generator,
        "settings": {"duration_s": opts.duration_s, "runs": opts.runs,
                     "connections": opts.connections, "threads": opts.threads,
                     "warmup_s": opts.warmup_s, "path": opts.path, "workers": opts.workers,
                     "peers": list(peers), "generator": opts.generator,
                     **({"rate": opts.rate, "processes": opts.processes}
                        if opts.generator == "openloop" else {})},
        "peers_not_run": {p: f"no {p} config for {scenario.name} yet" for p in not_run},
        "helpers": [h.name for h in prepared.helpers],
        "probe": probe,
        "targets": summary,
        "ratios": pairs,
        "log_problems": problems,
        "exit_codes": exit_codes,
        "profile": profile,
    }
