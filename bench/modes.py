"""The ``sweep`` and ``scale`` modes: the same services as a run, driven differently.

- **sweep** (``python -m bench sweep``): for each target (fastgw, then each peer) the open-loop
  generator offers rising constant rates (:func:`bench.sweep.find_max_rate`: doubling, then
  bisection) and the answer is the highest rate whose p99 stays under the target, with every
  step's latency, errors and the proxy's CPU per request. Latency at a given *rate* is the
  honest figure for capacity planning: a closed-loop tool slows down with the server and hides
  queueing (coordinated omission).
- **scale** (``python -m bench scale``): the scenario with 1, 2, 4, 8 ... workers, the load
  generator and the backends grown with it, and the scaling curve (RPS, efficiency against
  linear, CPU-µs per request). Meant for machines with many cores: on one with fewer cores
  than workers + load generator, the curve measures the machine, and the report says so.

Both prepare the scenario as a run does (:meth:`bench.scenarios.Scenario.prepare`): its files,
its helper processes (a Redis, measured as a group of its own) and its request headers (a
bearer token), sent by the probe and by every generator run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any, Final

from bench import runner
from bench.loadgen import LoadResult
from bench.peers import Target, start_backend, start_fastgw, start_peer
from bench.procs import Services, cpu_delta, cpu_snapshot, tree_pids
from bench.report import machine_info, now_iso
from bench.scenarios import HOST, Headers, Helper, Prepared, Scenario
from bench.suite import SCHEMA, write_all

SWEEP_MAX_STEPS: Final = 12  # steps of one target's sweep (find_max_rate's max_steps)


def _start(services: Services, scenario: Scenario, opts: runner.Options, *, backends_n: int,
           peers: Sequence[str], run_s: float) -> tuple[list[Target], list[Target], Prepared]:
    """The scenario prepared for a run of at most ``run_s`` seconds (helpers first, so that
    they stop last), its backends and targets, each probed with the scenario's headers."""
    opts.out.mkdir(parents=True, exist_ok=True)
    prepared = scenario.prepare(opts.out, run_s, services, overrides=opts.overrides)
    backends = [start_backend(services, opts.out, name=f"bench-backend-{i + 1}")
                for i in range(backends_n)]
    targets = [start_fastgw(services, opts.out, backends, workers=opts.workers,
                            config=prepared.config)]
    targets += [start_peer(p, services, opts.out, backends, workers=opts.workers)
                for p in peers]
    runner.check_targets(targets, opts.path or scenario.path, prepared.headers)
    return backends, targets, prepared


def _skipped(scenario: Scenario, reason: str) -> dict[str, Any]:
    print(f"{scenario.name}: skipped: {reason}", flush=True)
    return {"status": "skipped", "reason": reason, "description": scenario.description}


def _results(kind: str, opts: runner.Options, settings: dict[str, Any], *, started_at: str,
             machine: dict[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    results = {"schema": SCHEMA, "kind": kind, "command": opts.command,
               "started_at": started_at, "finished_at": now_iso(), "machine": machine,
               "settings": settings, "scenarios": entries}
    write_all(results, opts)
    return results


# -- sweep ----------------------------------------------------------------------------------


def sweep_target(target: Target, opts: runner.Options, *, target_p99_ms: float,
                 start_rate: float, max_rate: float, resolution: float,
                 headers: Headers = (), helpers: Sequence[Helper] = ()) -> dict[str, Any]:
    """One target's sweep, its requests with ``headers``; the scenario's ``helpers``' CPU (and
    counters) per request beside the target's in every step."""
    from bench.openloop import Traffic, run_open_loop
    from bench.sweep import find_max_rate

    request = runner.request_bytes(opts.path or "/", target.port, headers)
    traffic = Traffic(HOST, target.port, (request,))
    cpu_us: list[float | None] = []  # per step, in the order find_max_rate measures
    helper_fields: list[dict[str, Any]] = []  # the same, for the helpers

    def measure(rate: float) -> LoadResult:
        time.sleep(runner.SETTLE_S)
        pids = tree_pids(target.service.pid)
        readings = runner.HelperReadings(helpers)
        before = cpu_snapshot(pids)
        result = run_open_loop(traffic, rate=rate, duration_s=opts.duration_s,
                               connections=opts.connections, processes=opts.processes)
        spent = cpu_delta(before, cpu_snapshot(set(pids) | set(tree_pids(target.service.pid))))
        cpu_us.append(runner.per_request_us(spent.seconds, result.requests))
        helper_fields.append(readings.finish(result.requests)[0])
        return result

    def show(step: Any) -> None:
        r = step.result
        print(f"sweep {target.name:8s} {step.rate:>9,.0f} req/s offered: {r.rps:>9,.0f} rps  "
              f"p99 {r.latency_ms['p99']:.2f} ms  errors {r.error_total}  "
              f"{'ok' if step.ok else 'over: ' + step.why}", flush=True)

    found = find_max_rate(measure, target_p99_ms=target_p99_ms, start_rate=start_rate,
                          max_rate=max_rate, resolution=resolution, max_steps=SWEEP_MAX_STEPS,
                          on_step=show)
    steps = [{"rate": s.rate, "rps": round(s.result.rps, 1),
              **{f"{k}_ms": round(s.result.latency_ms[k], 3) for k in runner.REPORTED_PERCENTILES},
              "errors": s.result.error_total, "errors_by_kind": s.result.errors,
              "cpu_us_per_request": cpu, **helper, "ok": s.ok, "why": s.why,
              "generator_limited": s.generator_limited}
             for s, cpu, helper in zip(found.steps, cpu_us, helper_fields, strict=True)]
    # stopped by the generator: the best rate is a lower bound of the target's
    return {"target_p99_ms": target_p99_ms, "best_rate": found.best_rate,
            "stopped_by_generator": found.stopped_by_generator, "steps": steps}


def run_sweep(scenario: Scenario, opts: runner.Options, *, target_p99_ms: float,
              start_rate: float, max_rate: float, resolution: float) -> dict[str, Any]:
    machine, started_at = machine_info(), now_iso()
    settings = {"scenario": scenario.name, "target_p99_ms": target_p99_ms,
                "start_rate": start_rate, "max_rate": max_rate, "resolution": resolution,
                "step_duration_s": opts.duration_s, "connections": opts.connections,
                "processes": opts.processes, "workers": opts.workers, "peers": list(opts.peers)}
    reason = scenario.skip_reason()
    if reason is not None or scenario.shape != "load":
        entry = _skipped(scenario, reason or "not a load scenario")
    else:
        scoped = dataclasses.replace(opts, out=opts.out / scenario.name,
                                     path=opts.path or scenario.path)
        peers = [p for p in opts.peers if p in scenario.peers]
        # every step of every target, with room (for the scenario's token)
        run_s = (1 + len(peers)) * SWEEP_MAX_STEPS * (opts.duration_s + runner.SETTLE_S) + 120
        with Services() as services:
            _, targets, prepared = _start(services, scenario, scoped,
                                          backends_n=scenario.backends, peers=peers, run_s=run_s)
            found = {t.name: sweep_target(t, scoped, target_p99_ms=target_p99_ms,
                                          start_rate=start_rate, max_rate=max_rate,
                                          resolution=resolution, headers=prepared.headers,
                                          helpers=prepared.helpers)
                     for t in targets}
        entry = {"status": "ran", "shape": "sweep", "reason": None,
                 "description": scenario.description, "generator": "openloop",
                 "helpers": [h.name for h in prepared.helpers], "targets": found}
    return _results("sweep", opts, settings, started_at=started_at, machine=machine,
                    entries={scenario.name: entry})


# -- scale ----------------------------------------------------------------------------------


def scale_point(scenario: Scenario, opts: runner.Options, workers: int) -> dict[str, Any]:
    """One worker count: fresh services, ``opts.runs`` runs per target, medians."""
    cores = os.cpu_count() or 1
    # The load grows with the gateway: connections per worker stay the same, wrk gets a
    # thread per two workers (it needs far less CPU per request than the proxy).
    scoped = dataclasses.replace(
        opts, workers=workers, connections=opts.connections * workers,
        threads=max(1, min(workers // 2, cores)), processes=max(1, workers // 2),
        rate=opts.rate * workers, out=opts.out / scenario.name / f"workers-{workers}",
        path=opts.path or scenario.path)
    peers = [p for p in opts.peers if p in scenario.peers]
    runs: dict[str, list[dict[str, Any]]] = {}
    with Services() as services:
        # one backend per two workers, so that the backend is never the bottleneck
        backends, targets, prepared = _start(
            services, scenario, scoped, backends_n=max(1, workers // 2), peers=peers,
            run_s=runner.planned_s(scoped, 1 + len(peers)))
        scoped = dataclasses.replace(scoped, headers=prepared.headers)
        generator = runner.LoadGenerator(scoped)
        if scoped.warmup_s > 0:
            for target in targets:
                generator.run(target, min(scoped.warmup_s, scoped.duration_s))
        for index in range(1, scoped.runs + 1):
            for target in targets:
                time.sleep(runner.SETTLE_S)
                record = runner.measure(target, backends, generator, index, prepared.helpers)
                runs.setdefault(target.name, []).append(record)
                print(f"scale {scenario.name} workers {workers} {target.name:8s} "
                      f"{record['rps']:>9,.0f} rps  p99 {record['p99_ms']:.2f} ms  "
                      f"{record['cpu_us_per_request']:.1f} CPU-µs/req"
                      f"{runner.helpers_line(record)}", flush=True)
    return {name: runner.summarize(r) for name, r in runs.items()}


def run_scale(scenarios: Sequence[Scenario], opts: runner.Options,
              workers_list: Sequence[int]) -> dict[str, Any]:
    machine, started_at = machine_info(), now_iso()
    cores = os.cpu_count() or 1
    settings = {"scenarios": [s.name for s in scenarios], "workers": list(workers_list),
                "cpu_count": cores, "duration_s": opts.duration_s, "runs": opts.runs,
                "connections_per_worker": opts.connections, "generator": opts.generator,
                "peers": list(opts.peers)}
    entries: dict[str, Any] = {}
    for scenario in scenarios:
        reason = scenario.skip_reason()
        if reason is not None or scenario.shape != "load":
            entries[scenario.name] = _skipped(scenario, reason or "not a load scenario")
            continue
        curves: dict[str, list[dict[str, Any]]] = {}
        for workers in workers_list:
            for name, t in scale_point(scenario, opts, workers).items():
                curves.setdefault(name, []).append({
                    "workers": workers, "rps": t["rps"], "p50_ms": t["p50_ms"],
                    "p99_ms": t["p99_ms"], "errors": t["errors"],
                    "cpu_us_per_request": t["cpu_us_per_request"], "rss_mb": t["rss_mb"],
                    # the helpers' figures (redis_cpu_us_per_request ...), each its own group
                    "helpers": t["helpers"],
                    **{k: v for k, v in t.items() if k.endswith("_per_request")
                       and any(k.startswith(f"{h}_") for h in t["helpers"])},
                    "oversubscribed": workers * 2 > cores,
                    # per run, so that compare can show the noise of each point
                    "runs": {key: [r[key] for r in t["runs"]]
                             for key in ("rps", "p99_ms", "cpu_us_per_request")}})
        for points in curves.values():
            base = points[0]["rps"] / points[0]["workers"] if points[0]["rps"] else 0.0
            for p in points:
                p["efficiency"] = round(p["rps"] / (base * p["workers"]), 3) if base else None
        entries[scenario.name] = {"status": "ran", "shape": "scale", "reason": None,
                                  "description": scenario.description,
                                  "generator": opts.generator,
                                  "targets": {n: {"points": pts} for n, pts in curves.items()}}
    return _results("scale", opts, settings, started_at=started_at, machine=machine,
                    entries=entries)
