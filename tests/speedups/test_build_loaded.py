"""Which build is active, and that CI's compiled leg really runs compiled code.

CI runs the suite twice: with ``FASTGW_REQUIRE_EXTENSIONS=1`` after building the extensions (the
compiled build must have loaded, or this fails) and with ``FASTGW_NO_EXTENSIONS=1`` (the pure
build must be the active one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastgw import _speedups

EXPORTED = {
    "headers": [
        "HeaderError",
        "RequestHead",
        "ResponseHead",
        "scan_request_head",
        "scan_response_head",
        "lower_ascii",
        "extract_bearer",
    ],
    "hashring": ["hash64", "HashRing"],
    "bucket": ["LimitTable", "customer_fingerprint", "sets_for_keys", "table_bytes"],
    "counters": ["MetricCounters"],
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def test_compiled_build_loaded() -> None:
    if _flag("FASTGW_NO_EXTENSIONS"):
        assert _speedups.IMPLEMENTATION == "py"
        assert _speedups.EXTENSION_ERROR == "disabled by FASTGW_NO_EXTENSIONS"
    if _flag("FASTGW_REQUIRE_EXTENSIONS"):
        build = _speedups.load_build("c")  # ImportError here fails the test, with the reason
        for kernel in _speedups.KERNELS:
            module = getattr(build, kernel)
            assert module.__file__.endswith((".so", ".pyd")), module.__file__
        if not _flag("FASTGW_NO_EXTENSIONS"):
            assert _speedups.IMPLEMENTATION == "c", _speedups.EXTENSION_ERROR
    if _speedups.IMPLEMENTATION == "c":
        assert _speedups.EXTENSION_ERROR is None
    else:
        assert _speedups.EXTENSION_ERROR  # a fallback always says why


def test_exports_come_from_the_active_build() -> None:
    active = _speedups.load_build(_speedups.IMPLEMENTATION)
    for kernel, names in EXPORTED.items():
        module = getattr(active, kernel)
        for name in names:
            assert getattr(_speedups, name) is getattr(module, name), name


def test_unknown_build_name() -> None:
    with pytest.raises(ValueError, match="unknown build"):
        _speedups.load_build("rust")


def _implementation_with(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FASTGW_NO_EXTENSIONS"}
    root = str(Path(_speedups.__file__).resolve().parents[2])  # the fastgw under test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    if env_value is not None:
        env["FASTGW_NO_EXTENSIONS"] = env_value
    script = "import fastgw._speedups as s; print(s.IMPLEMENTATION)"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_no_extensions_env_forces_py(value: str) -> None:
    assert _implementation_with(value) == "py"


@pytest.mark.parametrize("value", [None, "", "0"])
def test_no_extensions_env_unset_or_zero(value: str | None) -> None:
    try:
        _speedups.load_build("c")
    except ImportError:
        expected = "py"
    else:
        expected = "c"
    assert _implementation_with(value) == expected


def test_compiled_build_is_not_stale() -> None:
    """An in-place build older than its spec or .pxd would test yesterday's code as "c"."""
    try:
        build = _speedups.load_build("c")
    except ImportError:
        pytest.skip("no compiled build")
    for kernel in _speedups.KERNELS:
        compiled = Path(getattr(build, kernel).__file__)
        spec = compiled.parent / f"{kernel}_py.py"
        if not spec.exists():
            continue  # an installed fastgw: no sources beside the extension to compare
        for source in (spec, compiled.parent / f"{kernel}_c.pxd"):
            assert compiled.stat().st_mtime >= source.stat().st_mtime, (
                f"{compiled.name} is older than {source.name}: "
                "run python setup.py build_ext --inplace"
            )
