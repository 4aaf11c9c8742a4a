"""Shared fixtures: run a test on both builds of the Cython kernels (ids ``py`` and ``c``).

``speedups`` gives one ``fastgw._speedups.Build`` per parameter; ``speedups_pair`` gives
``(py, c)`` for tests that compare the builds. When the compiled build is not there (a plain
checkout, or ``FASTGW_NO_EXTENSIONS`` is set) the ``c`` cases are skipped, except under
``FASTGW_REQUIRE_EXTENSIONS=1`` (CI's compiled leg), where they fail: a missing C build must
never turn into a quiet skip.
"""

from __future__ import annotations

import os

import pytest

from fastgw import _speedups
from tests.support.redis_server import redis_clean, redis_server  # noqa: F401 (fixtures)


def load_speedups_build(name: str) -> _speedups.Build:
    """The named build, or skip / fail (see the module docstring) when it cannot be used."""
    required = os.environ.get("FASTGW_REQUIRE_EXTENSIONS", "") not in ("", "0")
    if name == "c" and _speedups.no_extensions_requested() and not required:
        pytest.skip("FASTGW_NO_EXTENSIONS is set")
    try:
        return _speedups.load_build(name)
    except ImportError as exc:
        if required:
            pytest.fail(f"FASTGW_REQUIRE_EXTENSIONS=1 but the {name} build is unusable: {exc}")
        pytest.skip(f"{name} build not available: {exc}")


@pytest.fixture(scope="session", params=["py", "c"])
def speedups(request: pytest.FixtureRequest) -> _speedups.Build:
    return load_speedups_build(request.param)


@pytest.fixture(scope="session")
def speedups_pair() -> tuple[_speedups.Build, _speedups.Build]:
    return load_speedups_build("py"), load_speedups_build("c")
