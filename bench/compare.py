"""``python -m bench compare A.json B.json``: what changed between two revisions, with noise.

A difference between two benchmark files means something only when it is larger than the
difference between two runs of the same code. Every ``results.json`` keeps each run's figures,
so for every figure this module puts the run-to-run spread of A and of B beside the change,
and calls a change *better* or *worse* only when it exceeds both that spread and a threshold.
A sweep's best rate has no runs: it is known only within the sweep's ``resolution``, which
is its bar instead. A scale point has a spread only where the file keeps its runs' values.

Files of any schema are read through :mod:`bench.results`. The header warns where the two
files cannot tell the code apart from something else: different machines, or a scenario run
with different settings (load generator, rate, connections, workers, duration, runs...).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.report import fmt, md_table, median
from bench.results import (
    TIMES,
    ResultsError,
    commit_label,
    load,
    machine_label,
    normalize,
    number,
    ran,
    settings_of,
)

#: (figure, higher is better) for a load scenario's targets, in the order the report shows.
LOAD_FIGURES: Final = (("rps", True), ("p50_ms", False), ("p90_ms", False), ("p95_ms", False),
                       ("p99_ms", False), ("p999_ms", False), ("cpu_us_per_request", False),
                       ("user_us_per_request", False), ("system_us_per_request", False),
                       ("rss_mb", False), ("errors", False), ("error_share", False),
                       ("unsent", False))
#: Figures only some files have (newer runners; ``unsent``: the open-loop generator): a row
#: only where A or B has the figure.
OPTIONAL_FIGURES: Final = frozenset({"error_share", "unsent"})
IDLE_FIGURES: Final = (("connections_open", True), ("rss_mb", False), ("pss_mb", False),
                       ("per_connection_kb", False), ("probe_p99_ms", False),
                       ("idle_cpu_pct", False))
SCALE_FIGURES: Final = ("rps", "cpu_us_per_request")
HIGHER_IS_BETTER: Final = frozenset(
    {k for k, up in LOAD_FIGURES + IDLE_FIGURES if up} | {"best_rate"})
COUNT_FIGURES: Final = frozenset({"errors", "unsent"})  # shown as integers
LABELS: Final = {
    "rps": "RPS", "p50_ms": "p50 ms", "p90_ms": "p90 ms", "p95_ms": "p95 ms",
    "p99_ms": "p99 ms", "p999_ms": "p99.9 ms", "cpu_us_per_request": "CPU-µs/req",
    "user_us_per_request": "user CPU-µs/req", "system_us_per_request": "sys CPU-µs/req",
    "rss_mb": "peak RSS MB", "errors": "errors", "error_share": "error share",
    "unsent": "unsent", "best_rate": "best rate req/s",
    "connections_open": "connections open", "pss_mb": "PSS MB",
    "per_connection_kb": "KB per conn", "probe_p99_ms": "probe p99 ms",
    "idle_cpu_pct": "idle CPU %",
}
RATIO_FIGURES: Final = ("cpu_us_per_request", "rps", "p50_ms", "p99_ms")
#: Settings that change the load, so that two files differing in one measure different things.
SETTING_KEYS: Final = ("generator", "rate", "connections", "workers", "duration_s", "runs",
                       "threads", "path")
#: The sweep's default ``resolution`` (``python -m bench sweep --resolution``), for files
#: that do not record theirs.
SWEEP_RESOLUTION: Final = 0.05
BETTER, WORSE, NOISE, MISSING = "better", "worse", "within noise", "—"
MINUS: Final = "\N{MINUS SIGN}"  # named: ruff flags the glyph
CompareError = ResultsError  # the name main() caught before bench.results existed


# -- rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    target: str
    figure: str  # a key of the target summary ("rps", "p99_ms", ...) or "best_rate"
    a: float | None
    b: float | None
    change_pct: float | None  # (b - a) / a in %; inf when a is 0 and b is not
    noise_a: float | None  # (max - min) / median of the per-run values, in %
    noise_b: float | None
    verdict: str  # BETTER, WORSE, NOISE or MISSING
    where: str = ""  # scale files: "4 workers"

    @property
    def label(self) -> str:
        name = LABELS.get(self.figure, self.figure)
        return f"{name} @ {self.where}" if self.where else name


def noise_pct(values: Sequence[object]) -> float | None:
    """Relative spread of the per-run values in %; None below two runs or when it has no
    meaning (a median of 0 with a spread)."""
    nums = [v for v in (number(x) for x in values) if v is not None]
    if len(nums) < 2:
        return None
    spread, mid = max(nums) - min(nums), median(nums)
    if mid == 0:
        return 0.0 if spread == 0 else None
    return 100 * spread / abs(mid)


def judge(a: float | None, b: float | None, noise_a: float | None, noise_b: float | None, *,
          higher_is_better: bool, threshold_pct: float) -> tuple[float | None, str]:
    """(change in %, verdict): a verdict only when the change exceeds the noise of both files
    and the threshold; an unknown noise (one run) counts as none, so the threshold decides."""
    if a is None or b is None:
        return None, MISSING
    if a == b:
        return 0.0, NOISE
    change = math.inf * (1 if b > a else -1) if a == 0 else 100 * (b - a) / abs(a)
    bar = max(noise_a or 0.0, noise_b or 0.0, threshold_pct)
    if abs(change) <= bar:
        return change, NOISE
    return change, BETTER if (change > 0) == higher_is_better else WORSE


def run_values(target: Mapping[str, Any], figure: str) -> list[object] | None:
    """The per-run values of ``figure`` that a target summary or a scale point keeps: a list
    of run records (``"runs": [{"rps": ...}, ...]``) or, in scale points, a list per figure
    (``"runs": {"rps": [...]}``); None where it keeps none."""
    runs = target.get("runs")
    if isinstance(runs, list):
        return [r.get(figure) for r in runs if isinstance(r, Mapping)]
    if isinstance(runs, Mapping) and isinstance(runs.get(figure), list):
        return list(runs[figure])
    return None


def _row(scenario: str, target: str, figure: str, ta: Mapping[str, Any],
         tb: Mapping[str, Any], *, threshold_pct: float, where: str = "") -> Row:
    a, b = number(ta.get(figure)), number(tb.get(figure))

    def noise(t: Mapping[str, Any]) -> float | None:
        values = run_values(t, figure)
        return None if values is None else noise_pct(values)

    na, nb = noise(ta), noise(tb)
    change, verdict = judge(a, b, na, nb, higher_is_better=figure in HIGHER_IS_BETTER,
                            threshold_pct=threshold_pct)
    return Row(scenario, target, figure, a, b, change, na, nb, verdict, where)


def _points(target: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    points = target.get("points")
    return {int(p["workers"]): p for p in points if isinstance(p, Mapping)
            and number(p.get("workers")) is not None} if isinstance(points, list) else {}


def sweep_resolution_pct(settings: Mapping[str, Any]) -> float:
    """How precisely a sweep knows its best rate, in %: its ``resolution`` (relative)."""
    resolution = number(settings.get("resolution"))
    return 100 * (resolution if resolution is not None and resolution > 0
                  else SWEEP_RESOLUTION)


def _closed_loop(*entries: Mapping[str, Any]) -> bool:
    """True when every entry names its generator and none is the open-loop one (the only
    one that can leave requests unsent)."""
    return all(e.get("generator") is not None and e.get("generator") != "openloop"
               for e in entries)


def _load_figures(ea: Mapping[str, Any], eb: Mapping[str, Any], ta: Mapping[str, Any],
                  tb: Mapping[str, Any]) -> list[str]:
    shown = []
    for key, _ in IDLE_FIGURES if ea["shape"] == "idle" else LOAD_FIGURES:
        if key in OPTIONAL_FIGURES:
            if number(ta.get(key)) is None and number(tb.get(key)) is None:
                continue
            if key == "unsent" and _closed_loop(ea, eb):
                continue
        shown.append(key)
    return shown


def compare(a: Mapping[str, Any], b: Mapping[str, Any],
            threshold_pct: float = 2.0) -> list[Row]:
    """One row per figure of every target of every scenario that ran in both files."""
    a, b = normalize(a), normalize(b)
    ran_a, ran_b = ran(a), ran(b)
    rows: list[Row] = []
    for name in [n for n in ran_a if n in ran_b]:
        ea, eb = ran_a[name], ran_b[name]
        if ea["shape"] != eb["shape"]:
            continue  # listed by markdown() as not comparable
        for target in [t for t in ea["targets"] if t in eb["targets"]]:
            ta, tb = ea["targets"][target], eb["targets"][target]
            if ea["shape"] == "sweep":
                bar = max(threshold_pct, sweep_resolution_pct(settings_of(a, name)),
                          sweep_resolution_pct(settings_of(b, name)))
                rows.append(_row(name, target, "best_rate", ta, tb, threshold_pct=bar))
            elif ea["shape"] == "scale":
                pa, pb = _points(ta), _points(tb)
                for workers in sorted(set(pa) & set(pb)):
                    where = f"{workers} worker{'s' if workers != 1 else ''}"
                    rows += [_row(name, target, key, pa[workers], pb[workers], where=where,
                                  threshold_pct=threshold_pct)
                             for key in SCALE_FIGURES]
            else:
                rows += [_row(name, target, key, ta, tb, threshold_pct=threshold_pct)
                         for key in _load_figures(ea, eb, ta, tb)]
    return rows


def _setting(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, list[str]]:
    """Scenario -> "key A vs B" for each of :data:`SETTING_KEYS` that both normalized files
    record for it, with different values; only scenarios that ran in both with one shape."""
    ran_a, ran_b = ran(a), ran(b)
    found: dict[str, list[str]] = {}
    for name in [n for n in ran_a if n in ran_b and ran_a[n]["shape"] == ran_b[n]["shape"]]:
        sa, sb = settings_of(a, name), settings_of(b, name)
        differ = [f"{key} {_setting(sa[key])} vs {_setting(sb[key])}" for key in SETTING_KEYS
                  if key in sa and key in sb and sa[key] != sb[key]]
        if differ:
            found[name] = differ
    return found


# -- Markdown ------------------------------------------------------------------------------


def pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "+∞" if value > 0 else f"{MINUS}∞"
    return f"{value:+.1f} %" if signed else f"{value:.1f} %"


def cell(figure: str, value: float | None) -> object:
    """A figure as the table shows it: counts whole, the error share in %."""
    if value is None:
        return None
    if figure in COUNT_FIGURES:
        return int(value)
    if figure == "error_share":
        return f"{100 * value:.3g} %"
    return value


def _header(a: Mapping[str, Any], b: Mapping[str, Any], names: tuple[str, str]) -> list[str]:
    ma, mb = a["machine"], b["machine"]

    def both(get: Any) -> list[object]:
        return [get(a, ma), get(b, mb)]

    rows = [
        ["file", *names],
        ["kind", *both(lambda r, m: r.get("kind"))],
        ["commit", *both(lambda r, m: commit_label(m))],
        ["started", *both(lambda r, m: r.get("started_at"))],
        ["machine", *both(lambda r, m: machine_label(m))],
        ["Python, speedups", *both(lambda r, m: f"{fmt(m.get('python'))}, "
                                                f"{fmt(m.get('speedups'))}")],
        ["command", *both(lambda r, m: f"`{r['command']}`" if r.get("command") else None)],
    ]
    lines = [md_table(["", "A", "B"], rows), ""]
    differ = [key for key in ("cpu_count", "cpu_model") if ma.get(key) is not None
              and mb.get(key) is not None and ma.get(key) != mb.get(key)]
    if differ:
        lines += ["> **Warning: the machines differ** (" + "; ".join(
            f"{k}: {fmt(ma[k])} vs {fmt(mb[k])}" for k in differ) + "): a change below may be "
            "the machine's, not the code's.", ""]
    by_change: dict[str, list[str]] = {}  # one line for scenarios that differ alike
    for name, differ in setting_differences(a, b).items():
        by_change.setdefault(", ".join(differ), []).append(name)
    if by_change:
        lines += ["> **Warning: A and B ran with different settings:** " + "; ".join(
            f"{', '.join(names)}: {change}" for change, names in by_change.items())
            + ": a change may be the load, not the code.", ""]
    if a.get("kind") != b.get("kind"):
        lines += [f"> **Warning:** A is a {fmt(a.get('kind'))} file, B a "
                  f"{fmt(b.get('kind'))} file: only scenarios of the same shape are compared.",
                  ""]
    return lines


def _ratios(ea: Mapping[str, Any], eb: Mapping[str, Any]) -> list[str]:
    pairs = list(dict.fromkeys([*ea["ratios"], *eb["ratios"]]))
    rows = []
    for pair in pairs:
        ra, rb = ea["ratios"].get(pair), eb["ratios"].get(pair)
        for key in RATIO_FIGURES:
            va = number(ra.get(key)) if isinstance(ra, Mapping) else None
            vb = number(rb.get(key)) if isinstance(rb, Mapping) else None
            if va is not None or vb is not None:
                rows.append([pair, LABELS[key], "—" if va is None else f"{TIMES}{va:.2f}",
                             "—" if vb is None else f"{TIMES}{vb:.2f}"])
    return [md_table(["ratio", "figure", "A", "B"], rows), ""] if rows else []


def _verdict_line(entry: Mapping[str, Any]) -> str:
    verdict = entry.get("verdict")
    if not isinstance(verdict, Mapping) or not isinstance(verdict.get("passed"), bool):
        return "—"
    return "PASS" if verdict["passed"] else "FAIL"


def markdown(rows: Sequence[Row], a: Mapping[str, Any], b: Mapping[str, Any], *,
             names: tuple[str, str] = ("A", "B"), threshold_pct: float = 2.0) -> str:
    a, b = normalize(a), normalize(b)
    worse = [r for r in rows if r.verdict == WORSE]
    better = [r for r in rows if r.verdict == BETTER]
    parts = ["# fastgw benchmark: A → B", "", *_header(a, b, names),
             "A change is called better or worse only when it exceeds the run-to-run noise of "
             f"both files (the per-run values' (max {MINUS} min) / median) and "
             f"{threshold_pct:g} %. {len(worse)} worse, {len(better)} better, "
             f"{sum(r.verdict == NOISE for r in rows)} within noise.", ""]
    parts += [f"- {'**worse**' if r.verdict == WORSE else 'better'}: {r.scenario} {r.target} "
              f"{r.label}: {fmt(cell(r.figure, r.a))} → {fmt(cell(r.figure, r.b))} "
              f"({pct(r.change_pct, signed=True)})"
              for r in worse + better]
    if worse or better:
        peers = sorted({r.target for r in worse + better if r.target != "fastgw"})
        if peers:  # the peers' code did not change between A and B: their load or machine did
            parts.append(f"- {', '.join(peers)} changed too: a peer's change says the machine "
                         "or the load differed, not fastgw's code.")
        parts.append("")
    sa, sb = a["scenarios"], b["scenarios"]
    for name in dict.fromkeys([*sa, *sb]):
        parts += [f"## {name}", ""]
        ea, eb = sa.get(name), sb.get(name)
        if ea is None or eb is None:
            only = ea or eb
            why = "" if only["status"] == "ran" else f" (skipped: {only.get('reason') or '?'})"
            parts += [f"Only in {'A' if eb is None else 'B'}{why}.", ""]
            continue
        skipped = [(side, e) for side, e in (("A", ea), ("B", eb)) if e["status"] != "ran"]
        if skipped:
            parts += [f"Skipped in {side}: {e.get('reason') or 'no reason given'}."
                      for side, e in skipped] + [""]
            continue
        if ea["shape"] != eb["shape"]:
            parts += [f"Not comparable: a {ea['shape']} result in A, {eb['shape']} in B.", ""]
            continue
        only = [f"{t} only in {side}" for side, e, other in (("A", ea, eb), ("B", eb, ea))
                for t in e["targets"] if t not in other["targets"]]
        if only:
            parts += ["Targets " + ", ".join(only) + ".", ""]
        if "verdict" in ea or "verdict" in eb:
            parts += [f"Verdict: {_verdict_line(ea)} → {_verdict_line(eb)}.", ""]
        parts += _ratios(ea, eb)
        mine = [r for r in rows if r.scenario == name]
        if ea["shape"] == "sweep" and mine:
            res_a, res_b = (sweep_resolution_pct(settings_of(x, name)) for x in (a, b))
            bar = max(threshold_pct, res_a, res_b)
            parts += ["The sweep knows its best rate only within its resolution "
                      f"({_setting(res_a)} % in A, {_setting(res_b)} % in B): a change of "
                      f"best rate is called better or worse only beyond {_setting(bar)} %.",
                      ""]
        if mine:
            parts += [md_table(
                ["target", "figure", "A", "B", "change", "noise A", "noise B", "verdict"],
                [[r.target, r.label, cell(r.figure, r.a), cell(r.figure, r.b),
                  pct(r.change_pct, signed=True), pct(r.noise_a), pct(r.noise_b),
                  f"**{r.verdict}**" if r.verdict == WORSE else r.verdict] for r in mine]), ""]
    return "\n".join(parts)


# -- command line --------------------------------------------------------------------------


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a percentage ≥ 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description="What changed between two results.json files, beside run-to-run noise.")
    parser.add_argument("a", type=Path, metavar="A.json", help="the baseline")
    parser.add_argument("b", type=Path, metavar="B.json", help="the revision to judge")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.md",
                        help="also write the Markdown to this file")
    parser.add_argument("--threshold", type=_percent, default=2.0, metavar="PCT",
                        help="smallest change in %% called better/worse, whatever the noise "
                             "(default 2)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        a, b = load(args.a), load(args.b)
    except ResultsError as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    text = markdown(compare(a, b, args.threshold), a, b, names=(str(args.a), str(args.b)),
                    threshold_pct=args.threshold)
    print(text)
    if args.out is not None:
        try:
            args.out.write_text(text + "\n", encoding="utf-8")
        except OSError as error:
            print(f"compare: {args.out}: {error.strerror or error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
