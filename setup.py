"""Build fastgw's optional Cython kernels; everything else is declared in pyproject.toml.

What it owns
    The four extension modules ``fastgw._speedups.{headers,hashring,bucket,counters}_c``. Each
    is the kernel's pure-Python spec compiled a second time: ``<name>_c.py`` is a symlink to
    ``<name>_py.py`` and ``<name>_c.pxd`` beside it adds the C types (aiohttp's
    ``reader_py.py`` + ``reader_c.pxd`` scheme, STYLE principle 3).

Fallback (aiohttp's choice, ARCHITECTURE "questions" 4)
    When the C build fails (no compiler, no Python headers, no Cython), the install still
    succeeds without extensions, prints a loud warning, and ``fastgw._speedups.IMPLEMENTATION``
    is ``"py"`` at run time. All four modules or none: a failed build also deletes the ones
    that did build, so no partial (or stale, for ``--inplace``) set is left to be loaded.
    ``FASTGW_REQUIRE_EXTENSIONS=1`` (CI's compiled leg) makes any failure fatal instead.

Why the odd bits
    * Cythonizing happens inside ``build_ext``, not at import, so metadata-only commands
      (egg_info, sdist) need neither Cython nor a compiler.
    * ``annotation_typing=False``: the ``.pxd`` is the only source of C types. Otherwise Cython 3
      would also read the spec's PEP 484 annotations (``list[bytes]``, ``bytes | None``) and
      disagree with the ``.pxd`` about them.
    * ``-ffp-contract=off``: GCC and Clang may fuse ``a + b * c`` into one FMA instruction where
      the CPU has one (aarch64 always does), which rounds once instead of twice and would make
      the C build's token arithmetic differ from CPython's in the last bit.
    * A ``<name>_c.py`` that is not byte-identical to its spec (a checkout where git wrote
      symlinks as small text files, an sdist unpacked without them) is rewritten as a copy.
    * The ``<name>_c.py`` sources are not installed: in an installed fastgw, ``<name>_c`` is the
      extension or nothing, never the spec under a misleading name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SPEEDUPS = Path("fastgw", "_speedups")
KERNELS = ("headers", "hashring", "bucket", "counters")
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "annotation_typing": False,
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _extensions() -> list[Extension]:
    args = [] if sys.platform == "win32" else ["-ffp-contract=off"]
    return [
        Extension(
            f"fastgw._speedups.{kernel}_c",
            [str(SPEEDUPS / f"{kernel}_c.py")],
            extra_compile_args=args,
        )
        for kernel in KERNELS
    ]


def _ensure_compile_sources() -> None:
    """Make every ``<name>_c.py`` an exact twin of its ``<name>_py.py`` spec."""
    for kernel in KERNELS:
        spec = HERE / SPEEDUPS / f"{kernel}_py.py"
        twin = HERE / SPEEDUPS / f"{kernel}_c.py"
        source = spec.read_bytes()
        if twin.exists() and twin.read_bytes() == source:
            continue  # the symlink (or an identical copy)
        if twin.is_symlink() or twin.exists():
            twin.unlink()
        twin.write_bytes(source)
        print(f"setup.py: wrote {twin.relative_to(HERE)} as a copy of {spec.name}", file=sys.stderr)


def _warn(lines: list[str]) -> None:
    bar = "*" * 78
    print("\n".join([bar, *(f"* {line}" for line in lines), bar]), file=sys.stderr)


class BuildExt(build_ext):
    """build_ext that cythonizes first and falls back to pure Python when anything fails."""

    def run(self) -> None:
        try:
            _ensure_compile_sources()
            from Cython.Build import cythonize  # noqa: PLC0415 - needed only to build

            generated = cythonize(
                self.extensions,
                compiler_directives=DIRECTIVES,
                build_dir=str(Path(self.build_temp, "cython")),
                quiet=True,
            )
            # Keep the Extension objects setuptools already finalized; swap in the C sources.
            c_sources = {ext.name: ext.sources for ext in generated}
            for ext in self.extensions:
                ext.sources = c_sources[ext.name]
            super().run()
        except Exception as exc:  # compiler, linker, Cython or a missing header: all the same
            self._remove_built()
            if _flag("FASTGW_REQUIRE_EXTENSIONS"):
                raise
            _warn(
                [
                    "WARNING: fastgw's Cython kernels could not be built:",
                    f"  {type(exc).__name__}: {exc}",
                    "fastgw will run on the pure-Python kernels (IMPLEMENTATION == 'py'),",
                    "correct but slower. Install a C compiler and the Python headers, then",
                    "reinstall; set FASTGW_REQUIRE_EXTENSIONS=1 to make this an error.",
                ]
            )

    def _remove_built(self) -> None:
        for ext in self.extensions:
            path = Path(self.get_ext_fullpath(ext.name))
            if path.exists():
                path.unlink()


class BuildPy(build_py):
    """build_py that leaves the ``<name>_c.py`` compile sources out of the installed package."""

    def build_module(self, module: str, module_file: str, package: str) -> tuple[str, bool]:
        if package == "fastgw._speedups" and module in {f"{k}_c" for k in KERNELS}:
            return module_file, False
        return super().build_module(module, module_file, package)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt, "build_py": BuildPy})
