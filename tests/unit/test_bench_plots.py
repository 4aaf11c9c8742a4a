"""The bench's PNG plots: which files, real images, skipped scenarios left out, schema 1."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from bench.plots import build_figures, short_cpu, write_plots
from bench.results import TIMES
from tests.support.bench_results import entry, results, schema1, skipped, target

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_results(*, skip_second: bool = True) -> dict[str, Any]:
    def curve(scale: float, best: float) -> dict[str, Any]:
        rates = [1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 12000.0]
        steps = [{"rate": r, "rps": r * 0.99, "p50_ms": 0.5 * scale * (1 + r / 8000),
                  "p99_ms": scale * (1 + (r / 6000) ** 3), "p999_ms": 20.0, "errors": 0,
                  "cpu_us_per_request": 40.0, "ok": r <= best, "why": ""} for r in rates]
        return {"target_p99_ms": 10.0, "best_rate": best, "steps": steps}

    scenarios: dict[str, Any] = {"passthrough": {
        "status": "ran", "reason": None, "generator": "openloop", "shape": "sweep",
        "targets": {"fastgw": curve(2.0, 8000.0), "nginx": curve(1.0, 12000.0)}}}
    scenarios["jwt"] = skipped() if skip_second else scenarios["passthrough"]
    return results(scenarios, kind="sweep")


def scale_results() -> dict[str, Any]:
    def points(rps1: float, efficiency: float) -> list[dict[str, Any]]:
        # with per-run values, as bench/modes.py keeps them for compare's noise
        return [{"workers": w, "rps": rps1 * w * efficiency ** (w - 1), "p99_ms": 4.0,
                 "cpu_us_per_request": 40.0 + w,
                 "runs": {"rps": [rps1 * w * efficiency ** (w - 1)] * 3,
                          "p99_ms": [4.0] * 3, "cpu_us_per_request": [40.0 + w] * 3}}
                for w in (1, 2, 4, 8)]

    return results({"passthrough": {"status": "ran", "generator": "wrk", "targets": {
        "fastgw": {"points": points(15000.0, 0.93)},
        "nginx": {"points": points(30000.0, 0.97)}}}}, kind="scale")


def run_results(*, skip_second: bool = False) -> dict[str, Any]:
    three = entry({"fastgw": target(), "nginx": target(rps=30000.0, p99_ms=3.0),
                   "haproxy": target(rps=31000.0, p99_ms=2.8)})
    three["ratios"]["fastgw/haproxy"] = {"cpu_us_per_request": 2.1}
    return results({"passthrough": three,
                    "jwt": skipped() if skip_second else entry()})


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    height, width, channels = image.shape
    assert 300 <= height <= 3000 and 400 <= width <= 4000 and channels in (3, 4)
    assert image.std() > 0.01  # something was drawn, not a blank canvas


@pytest.mark.parametrize(("make", "names"), [
    (run_results, ["latency.png", "throughput.png", "cpu.png"]),
    (sweep_results, ["sweep.png"]),
    (scale_results, ["scale.png"]),
    (schema1, ["latency.png", "throughput.png", "cpu.png"]),
], ids=["run", "sweep", "scale", "schema1"])
def test_every_expected_png_is_written(tmp_path: Path, make: Any, names: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matplotlib warning is a bug in a plot
        paths = write_plots(make(), tmp_path / "out")
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    for path in paths:
        assert_png(path)


def test_skipped_scenarios_are_left_out() -> None:
    both = build_figures(run_results())
    one_ran = run_results(skip_second=True)
    one_ran["scenarios"]["jwt"]["targets"] = {"fastgw": target()}  # status decides, not data
    one = build_figures(one_ran)
    assert len(both["latency.png"].axes) == 2
    assert len(one["latency.png"].axes) == 1
    assert one["latency.png"].axes[0].get_title().startswith("passthrough")
    ticks = [t.get_text() for t in one["throughput.png"].axes[0].get_xticklabels()]
    assert ticks == ["passthrough"]
    assert len(build_figures(sweep_results()).get("sweep.png").axes) == 1
    assert len(build_figures(sweep_results(skip_second=False))["sweep.png"].axes) == 2


def test_cpu_plot_prints_the_ratio_above_fastgw() -> None:
    fig = build_figures(run_results(skip_second=True))["cpu.png"]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(f"2.00{TIMES} nginx" in t and f"2.10{TIMES} haproxy" in t for t in texts), texts


def test_titles_name_machine_and_commit() -> None:
    fig = build_figures(run_results())["latency.png"]
    title = fig.get_suptitle()
    assert f"2 {TIMES} AMD EPYC 7B13" in title and "0123456789" in title
    assert "0123456789a" not in title  # the first 10 characters only


def test_scale_has_linear_ideal_and_cpu_panel() -> None:
    fig = build_figures(scale_results())["scale.png"]
    rps_ax, cpu_ax = fig.axes
    labels = [line.get_label() for line in rps_ax.get_lines()]
    assert "fastgw linear" in labels and "nginx linear" in labels
    ideal = next(line for line in rps_ax.get_lines() if line.get_label() == "fastgw linear")
    assert list(ideal.get_ydata()) == pytest.approx([15000.0, 30000.0, 60000.0, 120000.0])
    assert "CPU" in cpu_ax.get_ylabel()


def test_nothing_ran_writes_nothing(tmp_path: Path) -> None:
    nothing = results({"jwt": skipped(), "ratelimit": skipped("no redis")})
    assert write_plots(nothing, tmp_path / "out") == []
    assert not (tmp_path / "out").exists()


def test_missing_figures_do_not_crash(tmp_path: Path) -> None:
    sparse = results({"passthrough": {"status": "ran", "targets": {
        "fastgw": {"rps": 1000.0, "p99_ms": 3.0}, "nginx": {"p50_ms": 1.0}}}})
    del sparse["machine"]
    paths = write_plots(sparse, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "throughput.png"]  # no CPU figures
    for path in paths:
        assert_png(path)


def test_short_cpu_names() -> None:
    assert short_cpu("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == \
        "Intel Xeon Platinum 8375C"
    assert short_cpu("AMD EPYC 7B13 64-Core Processor") == "AMD EPYC 7B13"
    assert short_cpu(None) == "unknown CPU"
