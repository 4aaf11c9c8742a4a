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
    WORSE,
    Row,
    compare,
    main,
    markdown,
    noise_pct,
)
from bench.results import TIMES, normalize, settings_of
from tests.support.bench_results import entry, results, schema1, skipped, target

FIGURES = ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "cpu_us_per_request",
           "user_us_per_request", "system_us_per_request", "rss_mb", "errors")


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
    assert [r.figure for r in rows if r.target == "fastgw"] == list(FIGURES)  # report order
    assert {r.figure for r in rows} == set(FIGURES)  # no error_share/unsent: the file has none


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


def test_p95_is_compared() -> None:
    a = results({"passthrough": entry({"fastgw": target(p95_ms=3.5)})})
    b = results({"passthrough": entry({"fastgw": target(p95_ms=4.5)})})
    r = row(compare(a, b), "p95_ms")
    assert r.verdict == WORSE and r.label == "p95 ms"


def test_error_share_is_compared_when_present_lower_is_better() -> None:
    def share(value: float, runs: list[float]) -> dict[str, Any]:
        base = target(error_share=value)
        return target([{**r, "error_share": v} for r, v in zip(base["runs"], runs,
                                                                strict=True)],
                      error_share=value)

    a = results({"passthrough": entry({"fastgw": share(0.002, [0.002, 0.002, 0.002])})})
    b = results({"passthrough": entry({"fastgw": share(0.001, [0.0009, 0.001, 0.0011])})})
    r = row(compare(a, b), "error_share")
    assert r.change_pct == pytest.approx(-50.0)
    assert r.noise_b == pytest.approx(20.0)
    assert r.verdict == BETTER
    assert row(compare(b, a), "error_share").verdict == WORSE
    assert "| fastgw | error share | 0.2 % | 0.1 % | -50.0 % | 0.0 % | 20.0 % | better |" \
        in markdown(compare(a, b), a, b)
    # only in one file: a row with a dash, not a crash
    old = results({"passthrough": entry({"fastgw": target()})})
    assert row(compare(old, b), "error_share").verdict == MISSING


def test_unsent_is_compared_for_open_loop_runs_only() -> None:
    def run(unsent: int, generator: str) -> dict[str, Any]:
        return results({"passthrough": entry({"fastgw": target(unsent=unsent)},
                                             generator=generator, rate=20000)})

    rows = compare(run(0, "openloop"), run(1200, "openloop"))
    r = row(rows, "unsent")
    assert r.verdict == WORSE  # from 0: an infinite change
    assert "| fastgw | unsent | 0 | 1200 |" in markdown(rows, run(0, "openloop"),
                                                          run(1200, "openloop"))
    assert row(compare(run(1200, "openloop"), run(0, "openloop")), "unsent").verdict == BETTER
    # wrk never leaves a request unsent: a 0 it writes is no figure worth a row
    assert "unsent" not in {r.figure for r in compare(run(0, "wrk"), run(0, "wrk"))}


def test_sweep_best_rate_is_judged_against_the_resolution() -> None:
    def sweep(best: float, resolution: float | None = None) -> dict[str, Any]:
        settings = {} if resolution is None else {"resolution": resolution}
        return results({"passthrough": {"status": "ran", "generator": "openloop", "targets": {
            "fastgw": {"target_p99_ms": 10.0, "best_rate": best, "steps": []}}}},
            kind="sweep", settings=settings)

    # the default resolution (5 %) and the threshold (2 %): a 4 % step is not a change
    assert row(compare(sweep(10000.0), sweep(10400.0)), "best_rate").verdict == NOISE
    assert row(compare(sweep(10000.0), sweep(10600.0)), "best_rate").verdict == BETTER
    # the coarser of the two files decides
    assert row(compare(sweep(10000.0, 0.1), sweep(10800.0, 0.02)),
               "best_rate").verdict == NOISE
    assert row(compare(sweep(10000.0, 0.01), sweep(10150.0, 0.01)),
               "best_rate").verdict == NOISE  # the threshold, above a fine resolution
    assert row(compare(sweep(10000.0, 0.01), sweep(10300.0, 0.01), threshold_pct=1.0),
               "best_rate").verdict == BETTER
    text = markdown(compare(sweep(1.0, 0.1), sweep(1.0)), sweep(1.0, 0.1), sweep(1.0))
    assert "within its resolution (10 % in A, 5 % in B)" in text
    assert "only beyond 10 %" in text


def test_scale_points_use_their_runs_for_noise() -> None:
    def scale(rps4: float, runs: list[float] | None) -> dict[str, Any]:
        point = {"workers": 4, "rps": rps4, "cpu_us_per_request": 40.0}
        if runs is not None:
            point["runs"] = {"rps": runs, "p99_ms": [4.0, 4.0, 4.0],
                             "cpu_us_per_request": [39.0, 40.0, 41.0]}
        return results({"passthrough": {"status": "ran", "targets": {
            "fastgw": {"points": [point]}}}}, kind="scale")

    a, b = scale(36000.0, [32400.0, 36000.0, 39600.0]), scale(33000.0, [33000.0] * 3)
    rows = compare(a, b)
    r = row(rows, "rps", where="4 workers")
    assert r.noise_a == pytest.approx(20.0) and r.noise_b == 0.0
    assert r.verdict == NOISE  # -8.3 % inside A's 20 % spread
    assert row(rows, "cpu_us_per_request").noise_a == pytest.approx(5.0)
    # without runs (an older file) the noise is unknown: a dash, and the threshold decides
    bare = compare(scale(36000.0, None), scale(33000.0, None))
    assert row(bare, "rps").noise_a is None and row(bare, "rps").verdict == WORSE
    assert "| fastgw | RPS @ 4 workers | 36,000 | 33,000 | -8.3 % | — | — | **worse** |" in \
        markdown(bare, scale(36000.0, None), scale(33000.0, None))


def test_settings_are_read_per_scenario_then_from_the_file() -> None:
    run = normalize(results({"passthrough": entry(connections=80)},
                            settings={"workers": 1, "generator": "wrk", "scenarios": ["x"]}))
    got = settings_of(run, "passthrough")
    assert got["connections"] == 80 and got["generator"] == "wrk" and got["runs"] == 3
    sweep = normalize(results({"passthrough": {"status": "ran", "generator": "openloop",
                                               "targets": {}}}, kind="sweep",
                              settings={"step_duration_s": 5.0, "connections": 64,
                                        "resolution": 0.05, "workers": 2}))
    assert settings_of(sweep, "passthrough") == {
        "generator": "openloop", "duration_s": 5.0, "connections": 64, "resolution": 0.05,
        "workers": 2}
    scale = normalize(results({"passthrough": {"status": "ran", "targets": {}}}, kind="scale",
                              settings={"connections_per_worker": 50, "workers": [1, 2]}))
    assert settings_of(scale, "passthrough") == {"connections": 50, "workers": [1, 2]}


def test_different_settings_warn_in_the_header() -> None:
    a = results({"passthrough": entry(), "jwt": entry()})
    b = results({"passthrough": entry(connections=200, duration_s=5.0),
                 "jwt": entry(connections=200, duration_s=5.0)})
    text = markdown(compare(a, b), a, b)
    warning = [line for line in text.splitlines() if "different settings" in line]
    assert warning == ["> **Warning: A and B ran with different settings:** passthrough, jwt: "
                       "connections 50 vs 200, duration_s 10 vs 5: a change may be the load, "
                       "not the code."]
    assert text.index("different settings") < text.index("## passthrough")  # in the header
    same = markdown(compare(a, a), a, a)
    assert "different settings" not in same and "Warning" not in same
    # keys one file does not record are not a difference (schema 1 kept only "runs")
    assert "different settings" not in markdown(compare(schema1(), a), schema1(), a)


@pytest.mark.parametrize(("key", "a_value", "b_value", "shown"), [
    ("generator", "wrk", "openloop", "generator wrk vs openloop"),
    ("rate", 10000, 20000, "rate 10000 vs 20000"),
    ("workers", 1, 2, "workers 1 vs 2"),
    ("runs", 3, 5, "runs 3 vs 5"),
    ("threads", 1, 2, "threads 1 vs 2"),
    ("path", "/echo/x", "/echo/y", "path /echo/x vs /echo/y"),
])
def test_each_load_setting_is_checked(key: str, a_value: object, b_value: object,
                                      shown: str) -> None:
    a = results({"passthrough": entry(**{key: a_value})})
    b = results({"passthrough": entry(**{key: b_value})})
    warning = [line for line in markdown(compare(a, b), a, b).splitlines()
               if "different settings" in line]
    assert len(warning) == 1 and f"passthrough: {shown}:" in warning[0], warning


def test_sweep_settings_differ_at_the_top_level() -> None:
    def sweep(step_s: float) -> dict[str, Any]:
        return results({"passthrough": {"status": "ran", "generator": "openloop", "targets": {
            "fastgw": {"best_rate": 1000.0, "steps": []}}}}, kind="sweep",
            settings={"step_duration_s": step_s, "connections": 64, "resolution": 0.05})

    text = markdown(compare(sweep(5.0), sweep(10.0)), sweep(5.0), sweep(10.0))
    assert "different settings:** passthrough: duration_s 5 vs 10:" in text


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
