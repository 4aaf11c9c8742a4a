"""What every scenario writes: machine facts, ``results.json`` and ``report.md``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10,
                              check=False, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_digest() -> str:
    """SHA-256 over fastgw's sources (.py, .pxd, .pyx): identifies the code measured when the
    working tree is not a commit."""
    digest = hashlib.sha256()
    root = REPO_ROOT / "fastgw"
    for path in sorted(root.rglob("*")):
        if path.suffix in {".py", ".pxd", ".pyx"} and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_facts() -> dict[str, object]:
    commit = _run(["git", "rev-parse", "HEAD"])
    ok = len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)
    dirty = _run(["git", "status", "--porcelain", "--", "fastgw", "bench", "setup.py"])
    return {"commit": commit if ok else None, "dirty": bool(dirty),
            "fastgw_source_sha256_16": source_digest()}


def machine_info() -> dict[str, object]:
    from fastgw import _speedups

    def word(text: str, index: int) -> str:  # "HAProxy version 2.6.12-1 ..." -> "2.6.12-1"
        words = text.split()
        return words[index] if len(words) > index else ""

    versions = {
        "nginx": _run(["nginx", "-v"]).replace("nginx version: nginx/", ""),
        "haproxy": word(_run(["haproxy", "-v"]), 2),
        "wrk": word(_run(["wrk", "-v"]), 1),
    }
    try:
        import httptools
        import uvloop

        versions["uvloop"] = str(getattr(uvloop, "__version__", ""))
        versions["httptools"] = str(getattr(httptools, "__version__", ""))
    except ImportError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "speedups": _speedups.IMPLEMENTATION,
        "FASTGW_NO_EXTENSIONS": os.environ.get("FASTGW_NO_EXTENSIONS", ""),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git": git_facts(),
        "versions": versions,
    }


def write_results(out: Path, results: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: NaN is not JSON; a figure that does not exist is written as null
    (out / "results.json").write_text(
        json.dumps(results, indent=2, sort_keys=False, allow_nan=False) + "\n")
    (out / "report.md").write_text(markdown)


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_md(machine: dict[str, Any]) -> str:
    git = machine["git"]
    code = git["commit"] or f"no commit (fastgw sources sha256:{git['fastgw_source_sha256_16']})"
    if git["commit"] and git["dirty"]:
        code += " + uncommitted changes"
    return (f"Machine: {machine['cpu_count']} x {machine['cpu_model']}, Linux "
            f"{machine['kernel']}, Python {machine['python']}, speedups "
            f"`{machine['speedups']}`, load average at start "
            f"{' '.join(machine['loadavg_at_start'])}.  \n"
            f"Code: {code}.  \nTools: " +
            ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v) + ".")
