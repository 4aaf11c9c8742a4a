"""``python -m bench run``: several scenarios in one run, one ``results.json`` for all.

``results.json`` (schema 2) holds ``machine``, ``settings`` and ``scenarios``: per scenario its
``status`` (``ran`` or ``skipped`` with the ``reason``), per target the medians and every run,
the ratios of fastgw to each peer and the ``verdict``. When exactly one scenario ran, its
``targets`` are also at the top level (``results["targets"]["fastgw"]["rps"]``), as the
command's contract promises. ``report.md`` says the same in tables; the PNG plots are drawn
from ``results.json`` alone (:mod:`bench.plots`), so any saved file can be re-plotted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench import idle_conns, runner
from bench.procs import BenchError
from bench.report import fmt, machine_info, machine_md, md_table, now_iso, write_results
from bench.scenarios import Scenario
from bench.verdict import (
    IDLE_KEYS,
    LOAD_KEYS,
    PROJECT,
    RATIO_PREFIX,
    REFERENCE_IDLE,
    REFERENCE_LOAD,
    SUITE_LOAD,
    SUITE_OPEN_LOOP,
    Limit,
    judge,
    verdict_md,
)

SCHEMA: Final = 2


@dataclass(frozen=True)
class IdleOptions:
    connections: int = 10000
    concurrency: int = 200
    probe_requests: int = 200
    load_s: float = 3.0
    hold_s: float = 5.0


def _load_limit(key: str) -> bool:
    return key in LOAD_KEYS or key.startswith(RATIO_PREFIX)


def run_idle(scenario: Scenario, opts: runner.Options, idle: IdleOptions) -> dict[str, Any]:
    """The idle scenario (:mod:`bench.idle_conns`) as a suite entry."""
    done = idle_conns.run(idle_conns.Options(
        connections=idle.connections, path=opts.path or scenario.path, workers=opts.workers,
        concurrency=idle.concurrency, probe_requests=idle.probe_requests, load_s=idle.load_s,
        hold_s=idle.hold_s, out=opts.out, command=opts.command))
    fastgw = done["targets"]["fastgw"]
    fastgw["probe_p99_ms"] = fastgw["latency_with_idle"]["p99_ms"]
    return {"status": "ran", "shape": "idle", "reason": None,
            "description": scenario.description, "generator": "idle-client",
            "settings": done["settings"], "targets": {"fastgw": fastgw}, "ratios": {},
            "log_problems": done["log_problems"], "exit_codes": done["exit_codes"]}


def limits_for(scenario: Scenario, opts: runner.Options) -> tuple[Limit, ...]:
    """The reference design's targets, the project's goals, the suite's own checks and the
    stricter targets given, for one scenario."""
    given = opts.targets.for_scenario(scenario.name)
    if scenario.shape == "idle":
        return (REFERENCE_IDLE + PROJECT.get(scenario.name, ())
                + tuple(lim for lim in given if lim.key in IDLE_KEYS))
    suite = SUITE_LOAD + (SUITE_OPEN_LOOP if opts.generator == "openloop" else ())
    return (REFERENCE_LOAD + suite + PROJECT.get(scenario.name, ())
            + tuple(lim for lim in given if _load_limit(lim.key)))


def run_suite(scenarios: Sequence[Scenario], opts: runner.Options,
              idle: IdleOptions = IdleOptions()) -> dict[str, Any]:
    machine = machine_info()
    started_at = now_iso()
    entries: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        reason = scenario.skip_reason()
        if reason is not None:
            print(f"{scenario.name}: skipped: {reason}", flush=True)
            entries[scenario.name] = {"status": "skipped", "reason": reason,
                                      "description": scenario.description}
            continue
        scoped = dataclasses.replace(opts, out=opts.out / scenario.name)
        try:
            entry = (run_idle(scenario, scoped, idle) if scenario.shape == "idle"
                     else runner.run_load(scenario, scoped))
        except BenchError as error:  # keep what the other scenarios measured
            print(f"{scenario.name}: failed: {error}", flush=True)
            entries[scenario.name] = {"status": "failed", "reason": str(error),
                                      "description": scenario.description}
            continue
        entry["verdict"] = judge(entry["targets"]["fastgw"], entry["ratios"],
                                 limits_for(scenario, opts))
        if opts.generator == "openloop" and scenario.shape == "load":
            for check in entry["verdict"]["checks"]:
                if check["name"] == "rps":
                    check["note"] = (f"open loop offered {opts.rate:,.0f} req/s: the run can "
                                     "show at most that")
        entries[scenario.name] = entry
        print(f"{scenario.name}: verdict {'PASS' if entry['verdict']['passed'] else 'FAIL'}",
              flush=True)
    results: dict[str, Any] = {
        "schema": SCHEMA, "kind": "run", "command": opts.command,
        "started_at": started_at, "finished_at": now_iso(), "machine": machine,
        "settings": {"scenarios": [s.name for s in scenarios], "workers": opts.workers,
                     "peers": list(opts.peers), "generator": opts.generator},
        "scenarios": entries,
    }
    ran = [name for name, e in entries.items() if e["status"] == "ran"]
    if len(ran) == 1:
        results["scenario"] = ran[0]
        results["targets"] = entries[ran[0]]["targets"]
    write_all(results, opts)
    return results


def write_all(results: dict[str, Any], opts: runner.Options) -> None:
    """results.json and report.md, then the plots, then both again naming the plots: the
    figures are saved before anything that could fail while drawing. Without matplotlib
    only the pictures are missing, with a note saying so."""
    write_results(opts.out, results, markdown(results))
    try:
        from bench.plots import write_plots

        results["plots"] = {"files": [p.name for p in write_plots(results, opts.out)]}
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "matplotlib":
            raise
        results["plots"] = {"error": f"no plots: {error} (pip install 'fastgw[bench]')"}
    except Exception as error:  # a drawing bug must not cost the measurements
        results["plots"] = {"error": f"plots failed: {type(error).__name__}: {error}"}
    write_results(opts.out, results, markdown(results))


# -- report.md ------------------------------------------------------------------------------


def helper_columns(entry: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, figure) of the scenario's helper processes (a Redis): their CPU and, where
    they count them, the commands per request."""
    columns = []
    for name in entry.get("helpers", ()):
        columns.append((f"{name} CPU-µs/req", f"{name}_cpu_us_per_request"))
        key = f"{name}_commands_per_request"
        if any(key in t or any(key in step for step in t.get("steps", ()))
               for t in entry["targets"].values()):
            columns.append((f"{name} cmds/req", key))
    return columns


def load_table(entry: dict[str, Any]) -> str:
    helpers = helper_columns(entry)
    header = ["target", "RPS", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms", "errors",
              "CPU-µs/req", "(user + sys)", "backend CPU-µs/req", "loadgen CPU-µs/req",
              *(column for column, _ in helpers), "peak RSS MB"]
    rows = [[name, t["rps"], t["p50_ms"], t["p90_ms"], t["p95_ms"], t["p99_ms"], t["p999_ms"],
             t["errors"], t["cpu_us_per_request"],
             f"{fmt(t['user_us_per_request'], 1)} + {fmt(t['system_us_per_request'], 1)}",
             t["backend_cpu_us_per_request"], t["loadgen_cpu_us_per_request"],
             *(t.get(key) for _, key in helpers), t["rss_mb"]]
            for name, t in entry["targets"].items()]
    lines = [md_table(header, rows), ""]
    for pair, r in entry["ratios"].items():
        paired = ", ".join(fmt(x) for x in r["cpu_us_per_request_paired_runs"])
        lines.append(f"- **{pair}**: CPU-µs/req x{fmt(r['cpu_us_per_request'])} (per run pair: "
                     f"{paired}), RPS x{fmt(r['rps'])}, p50 x{fmt(r['p50_ms'])}, "
                     f"p99 x{fmt(r['p99_ms'])}")
    errors = {name: t["errors_by_kind"] for name, t in entry["targets"].items()
              if any(t["errors_by_kind"].values())}
    for name, kinds in errors.items():
        lines.append(f"- {name} errors by kind: " + ", ".join(
            f"{k} {v}" for k, v in kinds.items() if v))
    return "\n".join(lines)


def runs_table(entry: dict[str, Any]) -> str:
    open_loop = entry["generator"] == "openloop"
    helpers = helper_columns(entry)
    return md_table(
        ["target", "run", "RPS", "p50 ms", "p99 ms", "errors", "CPU-µs/req", "backend",
         "loadgen", *(column for column, _ in helpers), "other CPU s", "steal %",
         *(["unsent", "behind s"] if open_loop else [])],
        [[r["target"], f"{r['run']}{' (noisy)' if r['noisy'] else ''}", r["rps"],
          r["p50_ms"], r["p99_ms"], r["errors"], r["cpu_us_per_request"],
          r["backend_cpu_us_per_request"], r["loadgen_cpu_us_per_request"],
          *(r.get(key) for _, key in helpers), r["other_cpu_s"],
          r["steal_pct"], *([r.get("unsent"), r.get("behind_s")] if open_loop else [])]
         for t in entry["targets"].values() for r in t["runs"]])


def sweep_md(entry: dict[str, Any]) -> str:
    helpers = helper_columns(entry)
    parts = []
    for name, t in entry["targets"].items():
        best = "none (even the first rate missed)" if t["best_rate"] is None else (
            f"{t['best_rate']:,.0f} req/s")
        if t.get("stopped_by_generator"):
            best += (" — a lower bound: the load generator, not the target, reached its limit "
                     "(more --processes or --connections, or a bigger machine)")
        parts += [f"**{name}**: highest rate with p99 ≤ {t['target_p99_ms']:g} ms: {best}", "",
                  md_table(["offered req/s", "RPS", "p50 ms", "p99 ms", "p99.9 ms", "errors",
                            "CPU-µs/req", *(column for column, _ in helpers), "result"],
                           [[s["rate"], s["rps"], s["p50_ms"], s["p99_ms"], s["p999_ms"],
                             s["errors"], s["cpu_us_per_request"],
                             *(s.get(key) for _, key in helpers), "ok" if s["ok"] else s["why"]]
                            for s in t["steps"]]), ""]
    return "\n".join(parts)


def scale_md(entry: dict[str, Any]) -> str:
    names = dict.fromkeys(h for t in entry["targets"].values() for p in t["points"]
                          for h in p.get("helpers", ()))
    helpers = [(f"{h} CPU-µs/req", f"{h}_cpu_us_per_request") for h in names]
    rows = [[name, p["workers"], p["rps"], p["efficiency"], p["p50_ms"], p["p99_ms"],
             p["errors"], p["cpu_us_per_request"], *(p.get(key) for _, key in helpers),
             p["rss_mb"], "yes" if p["oversubscribed"] else ""]
            for name, t in entry["targets"].items() for p in t["points"]]
    return md_table(["target", "workers", "RPS", "efficiency vs linear", "p50 ms", "p99 ms",
                     "errors", "CPU-µs/req", *(column for column, _ in helpers), "peak RSS MB",
                     "fewer cores than 2 x workers"], rows)


def helpers_note(entry: dict[str, Any]) -> str:
    names = list(entry.get("helpers", ()))
    if not names:
        return ""
    note = (f" The scenario's own processes ({', '.join(names)}) are measured the same way "
            "and shown apart, never in the proxy's CPU-µs/req")
    if "redis" in names:
        note += ("; redis cmds/req = EVALSHA + EVAL calls in Redis's INFO commandstats during "
                 "the run / requests completed (the limiter sends 2 per request: the customer "
                 "and the global script)")
    return note + "."


def scenario_md(name: str, entry: dict[str, Any]) -> list[str]:
    parts = [f"## {name}", "", entry["description"] + ".", ""]
    if entry["status"] == "skipped":
        return [*parts, f"Skipped: {entry['reason']}.", ""]
    if entry["status"] == "failed":
        return [*parts, "**Failed**:", "", "```", entry["reason"], "```", ""]
    if entry["shape"] == "sweep":
        return [*parts, sweep_md(entry), ""]
    if entry["shape"] == "scale":
        return [*parts, scale_md(entry), ""]
    if entry["shape"] == "idle":
        return [*parts, idle_conns.table({"settings": entry["settings"],
                                          "targets": entry["targets"]}), "",
                verdict_md(entry["verdict"]), ""]
    s = entry["settings"]
    load = (f"wrk -t{s['threads']} -c{s['connections']} (closed loop)"
            if s["generator"] == "wrk" else
            f"open loop at {s['rate']:,.0f} req/s over {s['connections']} connections "
            f"({s['processes']} process(es)), latency from the intended send time")
    parts += [f"{s['runs']} runs x {s['duration_s']:g} s per target, alternating; {load}; "
              f"GET {s['path']}; {s['workers']} worker(s) each. Figures are medians over the "
              "runs (errors: total; peak RSS: max). CPU-µs/req = (utime+stime of master+workers "
              "during the run) / requests completed." + helpers_note(entry), "",
              load_table(entry), "",
              verdict_md(entry["verdict"]), "", "Per run:", "", runs_table(entry), ""]
    notes = [f"- {p}: not run: {why}" for p, why in entry["peers_not_run"].items()]
    notes += [f"- {n}: process tree changed during run(s) {t['process_changes']}"
              for n, t in entry["targets"].items() if t["process_changes"]]
    notes += [f"- {n}: run(s) {t['noisy_runs']} noisy: other processes used more than "
              f"{runner.NOISY_SHARE:.0%} of the machine's CPU (see \"other CPU s\")"
              for n, t in entry["targets"].items() if t["noisy_runs"]]
    notes += [f"- {n} log: `{line}`" for n, lines in entry["log_problems"].items()
              for line in lines[:10]]
    if notes:
        parts += ["Incidents:", "", *notes, ""]
    if entry.get("profile"):
        from bench import profile as pyspy

        parts += [pyspy.profile_md(entry["profile"]), ""]
    return parts


def markdown(results: dict[str, Any]) -> str:
    parts = [f"# fastgw benchmark — {results['started_at']}", "", f"`{results['command']}`",
             "", machine_md(results["machine"]), ""]
    summary = [[name, e["status"], e.get("reason") or "",
                "" if "verdict" not in e else ("PASS" if e["verdict"]["passed"] else "FAIL")]
               for name, e in results["scenarios"].items()]
    parts += [md_table(["scenario", "status", "why skipped", "verdict"], summary), ""]
    for name, entry in results["scenarios"].items():
        parts += scenario_md(name, entry)
    plots = results.get("plots", {})
    if plots.get("files"):
        parts += ["## Plots", "", *[f"![{f}]({f})" for f in plots["files"]], ""]
    elif plots.get("error"):
        parts += [plots["error"], ""]
    return "\n".join(parts)
