"""The hot-path kernels, bound to the compiled build when it loaded, else to the pure twins.

What it owns
    The choice between the two builds of every kernel (ARCHITECTURE A5, B3), made once at
    import: ``<name>_py`` is the readable spec, ``<name>_c`` is the same source compiled by
    Cython with ``<name>_c.pxd`` adding C types (see setup.py). The data plane imports kernel
    names from here and never from a ``_py`` or ``_c`` module directly.

Invariants
    * ``IMPLEMENTATION`` is ``"c"`` only when all four compiled modules loaded and each one is a
      real extension module; one missing or stale-as-source module is a broken build, and the
      whole set falls back to ``"py"`` (``EXTENSION_ERROR`` says why). Never a mix.
    * ``FASTGW_NO_EXTENSIONS`` set to anything but "" or "0" forces ``"py"``.
    * Both builds can be loaded side by side (``load_build("py")``, ``load_build("c")``) so tests
      can run each and compare them; the exported names below are the chosen build's.
    * ``HeaderError`` is the chosen build's class: each build raises its own (both subclass
      ValueError), so catch the name exported here.

Why the source check
    In a plain checkout ``<name>_c.py`` is a symlink to the spec, so ``import <name>_c`` would
    quietly succeed as pure Python when nothing was compiled. ``load_build("c")`` therefore looks
    at the import spec and accepts only an extension module.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING, Final, NamedTuple

from fastgw._speedups import bucket_py, counters_py, hashring_py, headers_py

__all__ = [
    "EXTENSION_ERROR",
    "IMPLEMENTATION",
    "KERNELS",
    "MAX_RING_POINTS",
    "Build",
    "HashRing",
    "HeaderError",
    "LimitTable",
    "MetricCounters",
    "RequestHead",
    "ResponseHead",
    "both_builds",
    "bucket_py",
    "counters_py",
    "customer_fingerprint",
    "extract_bearer",
    "hash64",
    "hashring_py",
    "headers_py",
    "load_build",
    "lower_ascii",
    "no_extensions_requested",
    "scan_request_head",
    "scan_response_head",
    "sets_for_keys",
    "table_bytes",
]

KERNELS: Final = ("headers", "hashring", "bucket", "counters")


class Build(NamedTuple):
    """One build of every kernel: ``name`` is ``"py"`` or ``"c"``."""

    name: str
    headers: ModuleType
    hashring: ModuleType
    bucket: ModuleType
    counters: ModuleType


def no_extensions_requested() -> bool:
    """True when ``FASTGW_NO_EXTENSIONS`` asks for the pure-Python kernels."""
    return os.environ.get("FASTGW_NO_EXTENSIONS", "") not in ("", "0")


def load_build(name: str) -> Build:
    """The ``"py"`` or ``"c"`` build; ImportError (with the reason) when ``"c"`` is unusable."""
    if name == "py":
        return Build("py", headers_py, hashring_py, bucket_py, counters_py)
    if name != "c":
        raise ValueError(f"unknown build {name!r}: expected 'py' or 'c'")
    modules = [_load_extension(f"{__name__}.{kernel}_c") for kernel in KERNELS]
    return Build("c", *modules)


def both_builds() -> tuple[Build, Build]:
    """``(py, c)``; ImportError when the compiled build is not there."""
    return load_build("py"), load_build("c")


def _load_extension(fullname: str) -> ModuleType:
    spec = importlib.util.find_spec(fullname)
    if spec is None:
        raise ImportError(
            f"{fullname} is not built (the install found no C compiler? see setup.py;"
            " in a checkout: python setup.py build_ext --inplace)"
        )
    if not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        raise ImportError(
            f"{fullname} would load from source {spec.origin}, not from a compiled extension"
            " (run: python setup.py build_ext --inplace)"
        )
    return importlib.import_module(fullname)


def _choose() -> tuple[Build, str | None]:
    if no_extensions_requested():
        return load_build("py"), "disabled by FASTGW_NO_EXTENSIONS"
    try:
        return load_build("c"), None
    except ImportError as exc:  # not built, or built for another Python: run on the twins
        return load_build("py"), str(exc)


_ACTIVE, EXTENSION_ERROR = _choose()
IMPLEMENTATION: Final[str] = _ACTIVE.name
MAX_RING_POINTS: Final = hashring_py.MAX_RING_POINTS

if TYPE_CHECKING:  # the spec's types; at run time the chosen build's objects (same API)
    from fastgw._speedups.bucket_py import (
        LimitTable,
        customer_fingerprint,
        sets_for_keys,
        table_bytes,
    )
    from fastgw._speedups.counters_py import MetricCounters
    from fastgw._speedups.hashring_py import HashRing, hash64
    from fastgw._speedups.headers_py import (
        HeaderError,
        RequestHead,
        ResponseHead,
        extract_bearer,
        lower_ascii,
        scan_request_head,
        scan_response_head,
    )
else:
    HeaderError = _ACTIVE.headers.HeaderError
    RequestHead = _ACTIVE.headers.RequestHead
    ResponseHead = _ACTIVE.headers.ResponseHead
    scan_request_head = _ACTIVE.headers.scan_request_head
    scan_response_head = _ACTIVE.headers.scan_response_head
    lower_ascii = _ACTIVE.headers.lower_ascii
    extract_bearer = _ACTIVE.headers.extract_bearer
    hash64 = _ACTIVE.hashring.hash64
    HashRing = _ACTIVE.hashring.HashRing
    LimitTable = _ACTIVE.bucket.LimitTable
    customer_fingerprint = _ACTIVE.bucket.customer_fingerprint
    table_bytes = _ACTIVE.bucket.table_bytes
    sets_for_keys = _ACTIVE.bucket.sets_for_keys
    MetricCounters = _ACTIVE.counters.MetricCounters
