"""``python -m bench compare``: verdicts against run-to-run noise, schema 1 files, bad files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.compare import (
    BETTER,
    MISSING,
    NOISE,
    TIMES,
    WORSE,
    Row,
    compare,
    main,
    markdown,
    noise_pct,
    normalize,
)

FIGURES = ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "cpu_us_per_request",
           "user_us_per_request", "system_us_per_request", "rss_mb", "errors")


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
            commit: str = "0123456789abcdef0123456789abcdef01234567") -> dict[str, Any]:
    if scenarios is None:
        scenarios = {"passthrough": entry()}
    return {"schema": 2, "kind": kind, "command": f"python -m bench {kind}",
            "started_at": "2026-12-01T10:00:00+00:00",
            "finished_at": "2026-12-01T10:05:00+00:00",
            "machine": {"cpu_count": cpu_count, "cpu_model": cpu_model, "python": "3.11.7",
                        "speedups": "c", "git": {"commit": commit, "dirty": False},
                        "versions": {}},
            "settings": {}, "scenarios": scenarios}


def entry(targets: dict[str, Any] | None = None) -> dict[str, Any]:
    targets = targets if targets is not None else {
        "fastgw": target(), "nginx": target(rps=30000.0, cpu_us_per_request=20.0)}
    return {"status": "ran", "reason": None, "description": "plain proxy", "generator": "wrk",
            "targets": targets,
            "ratios": {"fastgw/nginx": {"cpu_us_per_request": 2.0, "rps": 0.67,
                                        "p50_ms": 1.3, "p99_ms": 1.4}},
            "verdict": {"passed": True, "checks": []}}


def skipped(reason: str = "JWT authentication has not landed (issue 4)") -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, "description": "jwt"}


def schema1() -> dict[str, Any]:
    """What bench/passthrough.py writes today."""
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


def row(rows: list[Row], figure: str, target_name: str = "fastgw", **match: str) -> Row:
    found = [r for r in rows if r.figure == figure and r.target == target_name
             and all(getattr(r, k) == v for k, v in match.items())]
    assert len(found) == 1, found
    return found[0]


def spread(value: float, pct: float) -> list[float]:
    """Three runs around ``value`` whose (max - min) / median is ``pct`` %."""
    return [value * (1 - pct / 200), value, value * (1 + pct / 200)]


def with_runs(key: str, values: list[float]) -> dict[str, Any]:
    base = target(**{key: values[1]})
    runs = [{**{k: v for k, v in base.items() if k not in ("runs", "errors_by_kind")},
             key: v} for v in values]
    return target(runs, **{key: values[1]})


# -- verdicts --------------------------------------------------------------------------------


def test_noise_is_relative_spread_and_unknown_for_one_run() -> None:
    assert noise_pct([99.0, 100.0, 101.0]) == pytest.approx(2.0)
    assert noise_pct([100.0]) is None
    assert noise_pct([]) is None
    assert noise_pct([0, 0, 0]) == 0.0


def test_rps_drop_beyond_noise_is_worse() -> None:
    a = results({"passthrough": entry({"fastgw": with_runs("rps", spread(20000.0, 1.0))})})
    b = results({"passthrough": entry({"fastgw": with_runs("rps", spread(18000.0, 1.0))})})
    r = row(compare(a, b), "rps")
    assert r.change_pct == pytest.approx(-10.0)
    assert r.noise_a == pytest.approx(1.0)
    assert r.verdict == WORSE


def test_change_inside_noise_is_within_noise() -> None:
    a = results({"passthrough": entry({"fastgw": with_runs("rps", spread(20000.0, 5.0))})})
    b = results({"passthrough": entry({"fastgw": with_runs("rps", spread(20600.0, 5.0))})})
    r = row(compare(a, b), "rps")
    assert r.change_pct == pytest.approx(3.0)
    assert r.verdict == NOISE


def test_threshold_applies_when_noise_is_small() -> None:
    a = results({"passthrough": entry({"fastgw": target(rps=20000.0)})})
    b = results({"passthrough": entry({"fastgw": target(rps=20300.0)})})  # +1.5 %, no noise
    assert row(compare(a, b), "rps").verdict == NOISE
    assert row(compare(a, b, threshold_pct=1.0), "rps").verdict == BETTER


def test_direction_latency_up_is_worse_cpu_down_is_better() -> None:
    a = results({"passthrough": entry({"fastgw": target()})})
    b = results({"passthrough": entry({"fastgw": target(p99_ms=6.0, cpu_us_per_request=30.0,
                                                        rss_mb=40.0, errors=7)})})
    rows = compare(a, b)
    assert row(rows, "p99_ms").verdict == WORSE
    assert row(rows, "cpu_us_per_request").verdict == BETTER
    assert row(rows, "rss_mb").verdict == BETTER
    assert row(rows, "errors").verdict == WORSE  # from 0: an infinite change
    assert row(rows, "p50_ms").verdict == NOISE
    assert {r.figure for r in rows} == set(FIGURES) - {"p95_ms"}


def test_single_run_noise_is_a_dash() -> None:
    one = results({"passthrough": entry({"fastgw": target([{"rps": 20000.0}])})})
    r = row(compare(one, one), "rps")
    assert r.noise_a is None and r.noise_b is None
    text = markdown([r], one, one)
    line = next(x for x in text.splitlines() if x.startswith("| fastgw | RPS"))
    assert line.split("|")[6].strip() == "—"  # noise A
    assert line.split("|")[7].strip() == "—"  # noise B


def test_missing_figures_show_a_dash_and_do_not_crash() -> None:
    bare = results({"passthrough": {"targets": {"fastgw": {"rps": 1.0}}}})
    del bare["machine"]
    rows = compare(bare, results())
    assert row(rows, "p99_ms").verdict == MISSING
    text = markdown(rows, bare, results())
    assert "| fastgw | p99 ms | — | 5.00 | — |" in text


# -- the Markdown ----------------------------------------------------------------------------


def test_scenarios_in_one_file_only_and_skipped_are_listed() -> None:
    a = results({"passthrough": entry(), "jwt": skipped(), "old": entry()})
    b = results({"passthrough": entry(), "jwt": entry(), "new": entry()})
    rows = compare(a, b)
    assert {r.scenario for r in rows} == {"passthrough"}
    text = markdown(rows, a, b)
    assert "## old\n\nOnly in A." in text
    assert "## new\n\nOnly in B." in text
    assert "Skipped in A: JWT authentication has not landed (issue 4)." in text


def test_header_names_commits_dates_and_ratios() -> None:
    a = results(commit="a" * 40)
    b = copy.deepcopy(results(commit="b" * 40))
    b["scenarios"]["passthrough"]["ratios"]["fastgw/nginx"]["cpu_us_per_request"] = 1.5
    text = markdown(compare(a, b), a, b)
    assert "aaaaaaaaaa" in text and "bbbbbbbbbb" in text
    assert "2026-12-01T10:00:00+00:00" in text
    assert f"| fastgw/nginx | CPU-µs/req | {TIMES}2.00 | {TIMES}1.50 |" in text
    assert "Warning" not in text


def test_machine_mismatch_warns() -> None:
    a = results(cpu_count=2)
    b = results(cpu_count=16, cpu_model="Intel Xeon Platinum 8375C")
    text = markdown(compare(a, b), a, b)
    warning = [line for line in text.splitlines() if "machines differ" in line]
    assert len(warning) == 1
    assert "cpu_count: 2 vs 16" in warning[0] and "cpu_model" in warning[0]


def test_schema1_is_read_as_schema2() -> None:
    old = schema1()
    norm = normalize(old)
    assert norm["schema"] == 2 and norm["kind"] == "run"
    fastgw = norm["scenarios"]["passthrough"]["targets"]["fastgw"]
    assert fastgw["loadgen_cpu_us_per_request"] == 15.0
    assert normalize(norm) == norm  # idempotent
    assert old["schema"] == 1 and "scenarios" not in old  # the input is not modified
    rows = compare(old, results())
    assert row(rows, "rps").noise_a == pytest.approx(2.0 / 1.0)  # runs at -1 %, 0, +1 %


def test_sweep_and_scale_files() -> None:
    def sweep(best: float | None) -> dict[str, Any]:
        return results({"passthrough": {"status": "ran", "generator": "openloop", "targets": {
            "fastgw": {"target_p99_ms": 10.0, "best_rate": best, "steps": []}}}}, kind="sweep")

    def scale(rps4: float) -> dict[str, Any]:
        points = [{"workers": 1, "rps": 10000.0, "p99_ms": 4.0, "cpu_us_per_request": 40.0},
                  {"workers": 4, "rps": rps4, "p99_ms": 4.0, "cpu_us_per_request": 40.0}]
        return results({"passthrough": {"status": "ran", "targets": {
            "fastgw": {"points": points}}}}, kind="scale")

    r = row(compare(sweep(18000.0), sweep(20000.0)), "best_rate")
    assert r.verdict == BETTER and r.noise_a is None
    assert row(compare(sweep(18000.0), sweep(None)), "best_rate").verdict == MISSING
    rows = compare(scale(36000.0), scale(30000.0))
    assert row(rows, "rps", where="4 workers").verdict == WORSE
    assert row(rows, "rps", where="1 worker").verdict == NOISE
    assert "| fastgw | RPS @ 4 workers | 36,000 | 30,000 | -16.7 % | — | — | **worse** |" \
        in markdown(rows, scale(36000.0), scale(30000.0))
    text = markdown(compare(sweep(1.0), scale(1.0)), sweep(1.0), scale(1.0))
    assert "Not comparable" in text


# -- the command -----------------------------------------------------------------------------


def test_main_prints_a_table_with_the_figures(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    a_path, b_path, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.md"
    a_path.write_text(json.dumps(schema1()))
    b = results({"passthrough": entry({"fastgw": target(rps=12345.0),
                                       "nginx": target(rps=30000.0)})})
    b_path.write_text(json.dumps(b))
    assert main([str(a_path), str(b_path), "--out", str(out), "--threshold", "3"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert "| fastgw | RPS | 17,000 | 12,345 | -27.4 % | 2.0 % | 0.0 % | **worse** |" \
        in printed.out
    assert "and 3 %" in printed.out
    assert out.read_text().strip() == printed.out.strip()


@pytest.mark.parametrize("content", [None, "not json {", "[1, 2]", '{"schema": 2}',
                                     '{"scenarios": {"x": 3}}'])
def test_main_bad_file_is_one_line_and_exit_2(tmp_path: Path, content: str | None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(results()))
    if content is not None:
        bad.write_text(content)
    assert main([str(good), str(bad)]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    lines = printed.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"compare: {bad}: "), lines
    assert "Traceback" not in printed.err
