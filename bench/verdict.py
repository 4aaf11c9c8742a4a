"""Verdicts: a scenario's figures against the reference design's targets and stricter ones.

The reference design's targets (p50 < 10 ms, p95 < 50 ms, p99 < 100 ms, at least 10k RPS per
instance; 10k+ open connections under 2 GB) are always checked, and so are the suite's own:
at most 0.1 % of requests failed (``error_share``), and an open-loop generator kept its
schedule (``behind_s`` ≤ 0.1 s). Stricter targets come from the
command line (``--target p99_ms=5``, repeatable) or a file (``--targets FILE``, YAML):

    p99_ms: 5            # applies to every scenario
    cpu_vs_nginx: 1.3    # fastgw's CPU-µs per request at most 1.3 x nginx's
    scenarios:
      passthrough: {rps: 20000}

A limit is a maximum (``errors=0`` is allowed), except ``rps`` and ``connections_open``
(minimums). Every check is applied to fastgw's figures; ``cpu_vs_<peer>`` to the ratio against
that peer. A figure that was not measured fails its check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from fastgw.config.units import parse_duration

LOAD_KEYS: Final = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "rps", "errors",
                    "error_share", "cpu_us_per_request", "rss_mb", "behind_s")
IDLE_KEYS: Final = ("connections_open", "rss_mb", "probe_p99_ms")
MINIMUMS: Final = frozenset({"rps", "connections_open"})
RATIO_PREFIX: Final = "cpu_vs_"


@dataclass(frozen=True)
class Limit:
    key: str
    value: float
    source: str  # "reference", "project goal", "suite", "cli" or the targets file's path
    strict: bool = False  # the reference design says "p99 < 100 ms": equal is a miss

    @property
    def is_minimum(self) -> bool:
        return self.key in MINIMUMS


REFERENCE_LOAD: Final = (Limit("p50_ms", 10.0, "reference", strict=True),
                         Limit("p95_ms", 50.0, "reference", strict=True),
                         Limit("p99_ms", 100.0, "reference", strict=True),
                         Limit("rps", 10000.0, "reference"))
#: Always checked: fast answers that are errors are not a pass, and an open-loop run that fell
#: behind its schedule has not offered the load it claims.
SUITE_LOAD: Final = (Limit("error_share", 0.001, "suite"),)
SUITE_OPEN_LOOP: Final = (Limit("behind_s", 0.1, "suite"),)
#: The project's own goals beyond the reference design (docs/architecture.md).
PROJECT: Final = {"passthrough": (Limit("cpu_vs_nginx", 1.3, "project goal"),),
                  "idle-10k": (Limit("rss_mb", 150.0, "project goal"),)}
REFERENCE_IDLE: Final = (Limit("connections_open", 10000.0, "reference"),
                         Limit("rss_mb", 2048.0, "reference"),
                         Limit("probe_p99_ms", 100.0, "reference", strict=True))


def _known(key: str) -> bool:
    return key in LOAD_KEYS or key in IDLE_KEYS or (
        key.startswith(RATIO_PREFIX) and len(key) > len(RATIO_PREFIX))


def parse_value(key: str, raw: object) -> float:
    """A limit's number; ``*_ms`` keys also take a duration (``5ms``, ``0.2s``)."""
    if isinstance(raw, bool):
        raise ValueError(f"{key}: expected a number, got {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str) and key.endswith("_ms") and not _is_number(raw):
        try:
            value = parse_duration(raw) * 1000.0
        except ValueError as error:
            raise ValueError(f"{key}: expected a number or a duration: {error}") from None
    elif isinstance(raw, str) and _is_number(raw):
        value = float(raw)
    else:
        raise ValueError(f"{key}: expected a number, got {raw!r}")
    if value < 0 or (key in MINIMUMS and value == 0):
        raise ValueError(f"{key}: expected a value {'> 0' if key in MINIMUMS else '>= 0'}, "
                         f"got {raw!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_cli(text: str) -> Limit:
    """``NAME=VALUE`` from ``--target``."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _known(key):
        raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(LOAD_KEYS)}, "
                         f"{', '.join(IDLE_KEYS)}, cpu_vs_<peer>; got {text!r}")
    return Limit(key, parse_value(key, raw.strip()), "cli")


@dataclass(frozen=True)
class Targets:
    """Stricter targets: for every scenario, and per scenario name."""

    common: tuple[Limit, ...] = ()
    per_scenario: Mapping[str, tuple[Limit, ...]] | None = None

    def for_scenario(self, name: str) -> tuple[Limit, ...]:
        extra = (self.per_scenario or {}).get(name, ())
        return self.common + extra

    def merged(self, more: Iterable[Limit]) -> Targets:
        return Targets(self.common + tuple(more), self.per_scenario)


def _limits(mapping: Mapping[str, Any], where: str, source: str) -> tuple[Limit, ...]:
    limits = []
    for key, raw in mapping.items():
        if not _known(str(key)):
            raise ValueError(f"{where}.{key}: unknown target (known: {', '.join(LOAD_KEYS)}, "
                             f"{', '.join(IDLE_KEYS)}, cpu_vs_<peer>)")
        try:
            limits.append(Limit(str(key), parse_value(str(key), raw), source))
        except ValueError as error:
            raise ValueError(f"{where}.{error}") from None
    return tuple(limits)


def load_targets(path: Path) -> Targets:
    """A targets file (YAML or JSON); ValueError names the file and the key path."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of target names to limits")
    scenarios = data.pop("scenarios", None) or {}
    if not isinstance(scenarios, dict) or not all(isinstance(v, dict)
                                                  for v in scenarios.values()):
        raise ValueError(f"{path}: $.scenarios: expected a mapping of scenario names to "
                         "mappings of limits")
    from bench.scenarios import ALIASES, SCENARIOS

    unknown = [str(n) for n in scenarios if n not in SCENARIOS and n not in ALIASES]
    if unknown:
        raise ValueError(f"{path}: $.scenarios.{unknown[0]}: unknown scenario (known: "
                         f"{', '.join(SCENARIOS)})")
    try:
        common = _limits(data, "$", str(path))
        per = {ALIASES.get(str(name), str(name)):
               _limits(values, f"$.scenarios.{name}", str(path))
               for name, values in scenarios.items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return Targets(common, per)


def figure(key: str, fastgw: Mapping[str, Any], ratios: Mapping[str, Any]) -> float | None:
    if key.startswith(RATIO_PREFIX):
        pair = ratios.get(f"fastgw/{key[len(RATIO_PREFIX):]}")
        return None if pair is None else pair.get("cpu_us_per_request")
    value = fastgw.get(key)
    return None if value is None else float(value)


def judge(fastgw: Mapping[str, Any], ratios: Mapping[str, Any],
          limits: Iterable[Limit]) -> dict[str, Any]:
    """Every limit checked; a figure the run does not have (a peer not run) fails its check,
    so a verdict never passes by omission."""
    checks = []
    for limit in limits:
        value = figure(limit.key, fastgw, ratios)
        if value is None:
            ok = False
        elif limit.is_minimum:
            ok = value > limit.value if limit.strict else value >= limit.value
        else:
            ok = value < limit.value if limit.strict else value <= limit.value
        kind = ("more than" if limit.strict else "min") if limit.is_minimum else (
            "less than" if limit.strict else "max")
        checks.append({"name": limit.key, "limit": limit.value, "kind": kind,
                       "value": value, "ok": ok, "source": limit.source})
    return {"passed": all(c["ok"] for c in checks), "checks": checks}


def verdict_md(verdict: Mapping[str, Any]) -> str:
    lines = [f"Verdict: **{'PASS' if verdict['passed'] else 'FAIL'}**", ""]
    for c in verdict["checks"]:
        sign = {"min": "≥", "max": "≤", "more than": ">", "less than": "<"}[c["kind"]]
        value = "not measured" if c["value"] is None else f"{c['value']:,.4g}"
        mark = "ok" if c["ok"] else "**missed**"
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(f"- {c['name']} {sign} {c['limit']:,g} ({c['source']}): {value} — "
                     f"{mark}{note}")
    return "\n".join(lines)
