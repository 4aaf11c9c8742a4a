"""``python -m bench compare A.json B.json``: what changed between two revisions, with noise.

A difference between two benchmark files means something only when it is larger than the
difference between two runs of the same code. Every ``results.json`` keeps each run's figures,
so for every figure this module puts the run-to-run spread of A and of B beside the change,
and calls a change *better* or *worse* only when it exceeds both that spread and a threshold.

:func:`normalize` also lives here: it turns any results file (schema 1: one scenario, from
before the suite; or schema 2) into the schema-2 shape, read by this module and :mod:`bench.plots`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.report import fmt, md_table, median

#: (figure, higher is better) for a load scenario's targets, in the order the report shows.
LOAD_FIGURES: Final = (("rps", True), ("p50_ms", False), ("p90_ms", False), ("p99_ms", False),
                       ("p999_ms", False), ("cpu_us_per_request", False),
                       ("user_us_per_request", False), ("system_us_per_request", False),
                       ("rss_mb", False), ("errors", False))
IDLE_FIGURES: Final = (("connections_open", True), ("rss_mb", False), ("pss_mb", False),
                       ("per_connection_kb", False), ("probe_p99_ms", False),
                       ("idle_cpu_pct", False))
HIGHER_IS_BETTER: Final = frozenset(
    {k for k, up in LOAD_FIGURES + IDLE_FIGURES if up} | {"best_rate"})
LABELS: Final = {
    "rps": "RPS", "p50_ms": "p50 ms", "p90_ms": "p90 ms", "p95_ms": "p95 ms",
    "p99_ms": "p99 ms", "p999_ms": "p99.9 ms", "cpu_us_per_request": "CPU-µs/req",
    "user_us_per_request": "user CPU-µs/req", "system_us_per_request": "sys CPU-µs/req",
    "rss_mb": "peak RSS MB", "errors": "errors", "best_rate": "best rate req/s",
    "connections_open": "connections open", "pss_mb": "PSS MB",
    "per_connection_kb": "KB per conn", "probe_p99_ms": "probe p99 ms",
    "idle_cpu_pct": "idle CPU %",
}
RATIO_FIGURES: Final = ("cpu_us_per_request", "rps", "p50_ms", "p99_ms")
SHAPES: Final = ("load", "idle", "sweep", "scale")
BETTER, WORSE, NOISE, MISSING = "better", "worse", "within noise", "—"
TIMES, MINUS = "\N{MULTIPLICATION SIGN}", "\N{MINUS SIGN}"  # named: ruff flags the glyphs


# -- one shape for every results file ---------------------------------------------------------


def number(value: object) -> float | None:
    """A finite number, or None: whatever a file holds where a figure should be."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _shape(entry: Mapping[str, Any], kind: object) -> str:
    if entry.get("shape") in SHAPES:
        return str(entry["shape"])
    if kind in ("sweep", "scale"):
        return str(kind)
    targets = [t for t in entry.get("targets", {}).values() if isinstance(t, Mapping)]
    if any("points" in t for t in targets):
        return "scale"
    if any("steps" in t or "best_rate" in t for t in targets):
        return "sweep"
    if any("connections_open" in t or "latency_with_idle" in t for t in targets):
        return "idle"
    return "load"


def normalize(results: object) -> dict[str, Any]:
    """The schema-2 shape of any results file (a copy; idempotent). Raises ValueError when
    ``results`` is not a bench results file at all; missing figures stay missing."""
    if not isinstance(results, dict):
        raise ValueError("not a JSON object")
    out = copy.deepcopy(results)
    if "scenarios" not in out:
        if not isinstance(out.get("targets"), dict):
            raise ValueError("no 'scenarios' (schema 2) nor 'targets' (schema 1): "
                             "not a bench results file")
        name = str(out.get("scenario") or "passthrough")
        out["scenarios"] = {name: {
            "status": "ran", "reason": None, "description": out.get("description", ""),
            "generator": "idle-client" if name == "idle" else "wrk",
            "targets": out["targets"], "ratios": out.get("ratios") or {}, "verdict": None}}
        out["scenario"] = name
    if not isinstance(out["scenarios"], dict):
        raise ValueError("'scenarios' is not an object")
    out["schema"] = 2
    out.setdefault("kind", "run")
    if not isinstance(out.get("machine"), dict):
        out["machine"] = {}
    for name, entry in out["scenarios"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"scenario {name!r} is not an object")
        entry.setdefault("status", "ran")
        if not isinstance(entry.get("targets"), dict):
            entry["targets"] = {}
        if not isinstance(entry.get("ratios"), dict):
            entry["ratios"] = {}
        for target, summary in entry["targets"].items():
            if not isinstance(summary, dict):
                raise ValueError(f"scenario {name!r}: target {target!r} is not an object")
            _upgrade_target(summary)
        entry["shape"] = _shape(entry, out["kind"])
    return out


def _upgrade_target(summary: dict[str, Any]) -> None:
    """Schema 1 names: wrk was the only load generator; the idle probe's p99 was nested."""
    for record in [summary, *[r for r in summary.get("runs") or [] if isinstance(r, dict)]]:
        if "wrk_cpu_us_per_request" in record:
            record.setdefault("loadgen_cpu_us_per_request", record["wrk_cpu_us_per_request"])
    probe = summary.get("latency_with_idle")
    if isinstance(probe, dict) and "probe_p99_ms" not in summary:
        summary["probe_p99_ms"] = probe.get("p99_ms")


def ran(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The scenarios that ran, of a normalized results dict."""
    return {n: e for n, e in results["scenarios"].items() if e.get("status") == "ran"}


def commit_label(machine: Mapping[str, Any]) -> str:
    git = machine.get("git") if isinstance(machine.get("git"), Mapping) else {}
    commit = git.get("commit")
    label = str(commit)[:10] if commit else "no commit"
    return label + (" + uncommitted" if git.get("dirty") else "")


def machine_label(machine: Mapping[str, Any]) -> str:
    return f"{fmt(machine.get('cpu_count'))} {TIMES} {fmt(machine.get('cpu_model'))}"


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


def _row(scenario: str, target: str, figure: str, ta: Mapping[str, Any],
         tb: Mapping[str, Any], *, threshold_pct: float, where: str = "") -> Row:
    a, b = number(ta.get(figure)), number(tb.get(figure))

    def noise(t: Mapping[str, Any]) -> float | None:
        runs = t.get("runs")
        if not isinstance(runs, list):
            return None
        return noise_pct([r.get(figure) for r in runs if isinstance(r, Mapping)])

    na, nb = noise(ta), noise(tb)
    change, verdict = judge(a, b, na, nb, higher_is_better=figure in HIGHER_IS_BETTER,
                            threshold_pct=threshold_pct)
    return Row(scenario, target, figure, a, b, change, na, nb, verdict, where)


def _points(target: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    points = target.get("points")
    return {int(p["workers"]): p for p in points if isinstance(p, Mapping)
            and number(p.get("workers")) is not None} if isinstance(points, list) else {}


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
                rows.append(_row(name, target, "best_rate", ta, tb,
                                 threshold_pct=threshold_pct))
            elif ea["shape"] == "scale":
                pa, pb = _points(ta), _points(tb)
                for workers in sorted(set(pa) & set(pb)):
                    where = f"{workers} worker{'s' if workers != 1 else ''}"
                    rows += [_row(name, target, key, pa[workers], pb[workers], where=where,
                                  threshold_pct=threshold_pct)
                             for key in ("rps", "cpu_us_per_request")]
            else:
                figures = IDLE_FIGURES if ea["shape"] == "idle" else LOAD_FIGURES
                rows += [_row(name, target, key, ta, tb, threshold_pct=threshold_pct)
                         for key, _ in figures]
    return rows


# -- Markdown ------------------------------------------------------------------------------


def pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "+∞" if value > 0 else f"{MINUS}∞"
    return f"{value:+.1f} %" if signed else f"{value:.1f} %"


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
              f"{r.label}: {fmt(r.a)} → {fmt(r.b)} ({pct(r.change_pct, signed=True)})"
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
        if mine:
            parts += [md_table(
                ["target", "figure", "A", "B", "change", "noise A", "noise B", "verdict"],
                [[r.target, r.label, r.a if r.figure != "errors" or r.a is None else int(r.a),
                  r.b if r.figure != "errors" or r.b is None else int(r.b),
                  pct(r.change_pct, signed=True), pct(r.noise_a), pct(r.noise_b),
                  f"**{r.verdict}**" if r.verdict == WORSE else r.verdict] for r in mine]), ""]
    return "\n".join(parts)


# -- command line --------------------------------------------------------------------------


class CompareError(Exception):
    """A file that cannot be compared; the message is the one line the command prints."""


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CompareError(f"{path}: is a directory (give its results.json)") from None
    except OSError as error:
        raise CompareError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise CompareError(f"{path}: not JSON ({error.msg} at line {error.lineno} column "
                           f"{error.colno})") from None
    try:
        return normalize(data)
    except ValueError as error:
        raise CompareError(f"{path}: {error}") from None


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
    except CompareError as error:
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
