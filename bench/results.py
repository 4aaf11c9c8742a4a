"""Reading ``results.json`` of any schema, for :mod:`bench.compare` and :mod:`bench.plots`.

:func:`normalize` turns any results file (schema 1: one scenario, written before the suite;
or schema 2) into the schema-2 shape; everything else here reads that shape: which scenarios
ran (:func:`ran`), a figure as a number (:func:`number`), the settings a scenario ran with
(:func:`settings_of`), the machine and commit (:func:`commit_label`, :func:`machine_label`),
and a file from disk with one-line errors (:func:`load`).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from bench.report import fmt

SHAPES: Final = ("load", "idle", "sweep", "scale")
TIMES: Final = "\N{MULTIPLICATION SIGN}"  # named: ruff flags the glyph
#: Settings that were renamed by a mode: read under the name the run mode uses.
SETTING_ALIASES: Final = {"step_duration_s": "duration_s",  # sweep: each step's duration
                          "connections_per_worker": "connections"}  # scale


class ResultsError(Exception):
    """A file that is not a readable results file; the message is one line naming it."""


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


def settings_of(results: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The settings scenario ``name`` of a normalized results dict ran with: the file's
    top-level ``settings`` (all a sweep or scale file has; a run file's suite-wide ones),
    overridden by the scenario's own ``settings`` (run files), the scenario's ``generator``
    where neither names one; a mode's own names read as the run mode's
    (:data:`SETTING_ALIASES`). Settings that are null are left out."""
    entry = results["scenarios"].get(name)
    entry = entry if isinstance(entry, Mapping) else {}
    merged: dict[str, Any] = {}
    if entry.get("generator") is not None:
        merged["generator"] = entry["generator"]
    for source in (results.get("settings"), entry.get("settings")):
        if isinstance(source, Mapping):
            for key, value in source.items():
                if value is not None:
                    merged[SETTING_ALIASES.get(key, key)] = value
    return merged


def commit_label(machine: Mapping[str, Any]) -> str:
    git = machine.get("git") if isinstance(machine.get("git"), Mapping) else {}
    commit = git.get("commit")
    label = str(commit)[:10] if commit else "no commit"
    return label + (" + uncommitted" if git.get("dirty") else "")


def machine_label(machine: Mapping[str, Any]) -> str:
    return f"{fmt(machine.get('cpu_count'))} {TIMES} {fmt(machine.get('cpu_model'))}"


def load(path: Path) -> dict[str, Any]:
    """The normalized contents of ``path``; ResultsError (one line, naming the file) when it
    cannot be read or is not a results file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ResultsError(f"{path}: is a directory (give its results.json)") from None
    except OSError as error:
        raise ResultsError(f"{path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not JSON ({error.msg} at line {error.lineno} column "
                           f"{error.colno})") from None
    try:
        return normalize(data)
    except ValueError as error:
        raise ResultsError(f"{path}: {error}") from None
