"""Cython's annotated HTML of every kernel, and how many of its lines still call into Python.

    python tools/annotate_kernels.py [--out DIR]        (default DIR: build/annotate/)

Each kernel is compiled the way setup.py compiles it: the spec ``<name>_py.py`` under the name
``<name>_c.py`` with ``<name>_c.pxd`` beside it, in package ``fastgw._speedups``, with setup.py's
compiler directives. The kernel list and the directives are read from setup.py itself (its
``KERNELS`` and ``DIRECTIVES`` literals, parsed, not executed: importing setup.py would run
``setup()``), so this tool cannot drift from the build.

The compile happens in a temporary copy of the package, so no ``.c`` or ``.html`` is ever
written under fastgw/; DIR gets ``<name>_c.html`` and the ``<name>_c.c`` it links to.

For each kernel it prints the lines Cython scored above zero -- lines whose C code goes through
the Python C-API (the yellow ones in the HTML) -- split into function bodies (what runs per
call) and the rest (``def`` lines, i.e. argument unpacking of Python-callable functions, and
module-level code that runs once at import), then the heaviest lines in function bodies.
"""

from __future__ import annotations

import argparse
import ast
import html
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
SETUP: Final = ROOT / "setup.py"
SPEEDUPS: Final = ROOT / "fastgw" / "_speedups"
DEFAULT_OUT: Final = ROOT / "build" / "annotate"
TOP_LINES: Final = 3
# One source line in Cython's annotated HTML: its score (how much Python C-API its C code
# uses), then its line number; the source text runs to the closing </pre>.
_LINE: Final = re.compile(
    r'<pre class="cython line score-(\d+)"[^>]*>[^<]*<span class="">(\d+)</span>:(.*?)</pre>',
    re.DOTALL,
)
_TAG: Final = re.compile(r"<[^>]+>")


def build_settings(setup_py: Path = SETUP) -> tuple[tuple[str, ...], dict[str, Any]]:
    """setup.py's ``KERNELS`` and ``DIRECTIVES``, read from its module-level assignments."""
    found: dict[str, Any] = {}
    for node in ast.parse(setup_py.read_text(), str(setup_py)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("KERNELS", "DIRECTIVES"):
                found[target.id] = ast.literal_eval(node.value)
    missing = {"KERNELS", "DIRECTIVES"} - found.keys()
    if missing:
        raise SystemExit(f"annotate: {setup_py} has no literal {', '.join(sorted(missing))}")
    return tuple(found["KERNELS"]), dict(found["DIRECTIVES"])


def _stage_sources(tmp: Path, kernels: Sequence[str]) -> list[Path]:
    """A copy of package fastgw._speedups holding what setup.py compiles: the spec's bytes
    under the ``_c`` name (setup.py makes ``<name>_c.py`` exactly that) and the ``.pxd``."""
    package = tmp / "fastgw" / "_speedups"
    package.mkdir(parents=True)
    (tmp / "fastgw" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    sources = []
    for kernel in kernels:
        source = package / f"{kernel}_c.py"
        source.write_bytes((SPEEDUPS / f"{kernel}_py.py").read_bytes())
        shutil.copyfile(SPEEDUPS / f"{kernel}_c.pxd", package / f"{kernel}_c.pxd")
        sources.append(source)
    return sources


def annotate(kernels: Sequence[str], directives: dict[str, Any], out: Path) -> list[Path]:
    """Cythonize every kernel with annotate=True; the HTML files, copied into ``out``."""
    from Cython.Build import cythonize
    from setuptools import Extension

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="fastgw-annotate-") as tmp:
        sources = _stage_sources(Path(tmp), kernels)
        extensions = [Extension(f"fastgw._speedups.{kernel}_c", [str(source)])
                      for kernel, source in zip(kernels, sources, strict=True)]
        cythonize(extensions, compiler_directives=directives, annotate=True, force=True,
                  quiet=True)
        for source in sources:
            for suffix in (".html", ".c"):
                generated = source.with_suffix(suffix)
                if not generated.exists():
                    raise SystemExit(f"annotate: Cython wrote no {generated.name}")
                shutil.copyfile(generated, out / generated.name)
            written.append(out / source.with_suffix(".html").name)
    return written


@dataclass(frozen=True)
class ScoredLine:
    number: int
    score: int
    text: str


def scored_lines(page: str) -> list[ScoredLine]:
    """Every source line of an annotated HTML page with its score."""
    return [ScoredLine(int(number), int(score), html.unescape(_TAG.sub("", text)).strip())
            for score, number, text in _LINE.findall(page)]


def function_body_lines(source: str) -> set[int]:
    """Line numbers inside the bodies of functions and methods (not their ``def`` lines)."""
    inside: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first, last = node.body[0].lineno, node.body[-1].end_lineno or node.lineno
            inside.update(range(first, last + 1))
    return inside


@dataclass(frozen=True)
class KernelReport:
    kernel: str
    html: Path
    lines: int
    python_lines: int  # score > 0
    python_body_lines: int  # score > 0 inside function bodies
    heaviest: list[ScoredLine]


def report(kernel: str, page_path: Path) -> KernelReport:
    lines = scored_lines(page_path.read_text(encoding="utf-8"))
    if not lines:
        raise SystemExit(f"annotate: no scored lines in {page_path} (Cython's HTML changed?)")
    body = function_body_lines((SPEEDUPS / f"{kernel}_py.py").read_text())
    python = [line for line in lines if line.score > 0]
    in_body = [line for line in python if line.number in body]
    heaviest = sorted(in_body, key=lambda line: -line.score)[:TOP_LINES]
    return KernelReport(kernel, page_path, len(lines), len(python), len(in_body), heaviest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Cython annotate of fastgw's kernels, with a count of Python-touching "
                    "lines per kernel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory for the HTML files (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    kernels, directives = build_settings()
    pages = annotate(kernels, directives, args.out.resolve())
    for kernel, page in zip(kernels, pages, strict=True):
        result = report(kernel, page)
        print(f"{kernel}: {result.python_lines} of {result.lines} lines touch the Python "
              f"C-API, {result.python_body_lines} of them in function bodies  -> {page}")
        for line in result.heaviest:
            print(f"    line {line.number:4d}  score {line.score:4d}  {line.text[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
