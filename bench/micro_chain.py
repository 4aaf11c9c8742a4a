"""CPU time and heap allocations per request for each request shape, through the real objects.

Each case is one keep-alive request fed to a real ``DownstreamProtocol`` (and, when the
gateway forwards it, a canned answer fed to the pooled ``UpstreamProtocol``), exactly as in
``bench/micro_pipeline.py``: parsing, header kernels, routing, the stage chain (auth when the
route wants it), re-serialization, bookkeeping -- no sockets, no backend.

Two figures per case and per build of the kernels (``py`` twins, ``c`` compiled; both run in
one process, see ``use_build``):

- **time**: pytest-benchmark's per-call timing (one call = one request), or the CPU time over
  N requests for the table below;
- **allocations**: how many blocks the Python allocators handed out per request (the count of
  malloc/calloc calls of the ``PyMem``/``PyObject`` domains, freed or not) and how many bytes
  they asked for. Neither ``tracemalloc`` nor ``sys.getallocatedblocks()`` can give this: both
  see only the blocks still alive, so a request that frees everything it allocated reads as 0.
  A tiny C hook (``PyMem_SetAllocator`` around the current allocators, the way tracemalloc
  itself installs) counts the calls; it is compiled on first use with the C compiler the
  kernels need anyway. ``retained_blocks_per_request`` (the ``getallocatedblocks`` delta after
  a collection) is reported beside it: it should be ~0, anything else is a per-request leak.

Run: ``python -m pytest bench/micro_chain.py --benchmark-only -q`` (the numbers land in each
benchmark's ``extra_info``), or ``python -m bench.micro_chain`` for a short table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import gc
import itertools
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
import pytest

from bench.micro_pipeline import RESPONSE, Harness, in_loop
from fastgw import _speedups

# HS256 keeps the config free of key files; a cached token costs the same whatever signed it.
_HS_SECRET: Final = "micro-chain-secret-micro-chain-secret!!"
CONFIG: Final = {
    "gateway": {
        # one client connection carries every request: no per-connection quota
        "server": {"limits": {"max_requests_per_connection": 10**12}},
        "authentication": {
            "development": {"enabled": True},
            "jwt": {"algorithm": "HS256", "hs_secret": _HS_SECRET},
        }
    },
    # Every level on (bucket, endpoint bucket, daily quota, global) and never refusing: the
    # memory limiter's whole decision is in get_jwt_cached's figure.
    "rate_limits": {
        "global": {"requests_per_second": 1e9, "burst_size": 1_000_000_000},
        "customer_tiers": {
            "pro": {"requests_per_second": 1e9, "burst_size": 1_000_000_000,
                    "requests_per_day": 10**15},
        },
        "default_tier": "pro",
        "endpoints": {"Account": {"requests_per_second": 1e9}},
    },
    "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
    "routes": [
        {"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"},
        {"endpoint": "Account", "path_prefix": "/account", "auth": "required"},
    ],
}
_HEAD: Final = b"Host: api.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n"
_POST_BODY: Final = b'{"name":"widget","quantity":3,"tags":["a","b"]}'
CREATED: Final = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
    b'{"id":"w-1","ok":1} '
)


@dataclass(frozen=True)
class Case:
    """One request shape; ``response`` is the backend's answer, None when the gateway answers."""

    name: str
    request: bytes
    response: bytes | None
    status: int


_JWT: Final = jwt.encode(
    {"customer_id": "acme-42", "tier": "pro", "permissions": ["vm:read"], "exp": 4_102_444_800},
    _HS_SECRET,
    algorithm="HS256",
).encode("ascii")

CASES: Final = (
    Case("get", b"GET /echo/x HTTP/1.1\r\n" + _HEAD + b"\r\n", RESPONSE, 200),
    Case("get_dev_token",
         b"GET /account/profile HTTP/1.1\r\n" + _HEAD
         + b"Authorization: Bearer dev_customer_42\r\n\r\n", RESPONSE, 200),
    # The same head as get_jwt_cached on a route without auth: what carrying the token costs
    # (parsing and forwarding ~200 more header bytes), so the auth stage's own cost is the
    # difference between the two.
    Case("get_jwt_unchecked",
         b"GET /echo/x HTTP/1.1\r\n" + _HEAD
         + b"Authorization: Bearer " + _JWT + b"\r\n\r\n", RESPONSE, 200),
    Case("get_jwt_cached",
         b"GET /account/profile HTTP/1.1\r\n" + _HEAD
         + b"Authorization: Bearer " + _JWT + b"\r\n\r\n", RESPONSE, 200),
    Case("post_small_body",
         b"POST /echo/items HTTP/1.1\r\n" + _HEAD + b"Content-Type: application/json\r\n"
         b"Content-Length: %d\r\n\r\n" % len(_POST_BODY) + _POST_BODY, CREATED, 201),
    Case("reject_no_route", b"GET /nowhere HTTP/1.1\r\n" + _HEAD + b"\r\n", None, 404),
    Case("reject_no_token", b"GET /account/profile HTTP/1.1\r\n" + _HEAD + b"\r\n", None, 401),
)
# Past CPython's small-int cache (-5..256): from there on every counter bump (request ids,
# requests done) allocates, as in a worker that has been up for a while.
WARMUP: Final = 500
ALLOC_REQUESTS: Final = 2000


# -- both builds of the kernels in one process ------------------------------------------------


@contextlib.contextmanager
def use_build(name: str) -> Iterator[_speedups.Build]:
    """Rebind every kernel name the gateway's modules imported to build ``name`` (then back).

    The data plane binds kernel names at import (``from fastgw._speedups import ...``), so
    choosing a build means rebinding those globals. Any global of a loaded ``fastgw`` module
    that *is* an object of the active build's kernels is swapped for the same-named object of
    the other build, so a module that starts using a kernel needs no change here.
    ImportError when ``name`` is ``"c"`` and the compiled build is unusable.
    """
    target = _speedups.load_build(name)
    active = _speedups.load_build(_speedups.IMPLEMENTATION)
    swaps: dict[int, tuple[object, object]] = {}
    for kernel in _speedups.KERNELS:
        old_module, new_module = getattr(active, kernel), getattr(target, kernel)
        for attr, old in vars(old_module).items():
            new = getattr(new_module, attr, None)
            if (callable(old) and new is not None and new is not old
                    and getattr(old, "__module__", None) == old_module.__name__):
                swaps[id(old)] = (old, new)
    patched: list[tuple[dict[str, Any], str, object]] = []
    for module in list(sys.modules.values()):
        module_name = getattr(module, "__name__", "")
        if module_name != "fastgw" and not module_name.startswith("fastgw."):
            continue
        if module_name.startswith("fastgw._speedups."):
            continue  # the builds themselves
        namespace = vars(module)
        for attr, value in list(namespace.items()):
            pair = swaps.get(id(value))
            if pair is not None and pair[0] is value:
                namespace[attr] = pair[1]
                patched.append((namespace, attr, value))
    try:
        yield target
    finally:
        for namespace, attr, value in reversed(patched):
            namespace[attr] = value


# -- allocation counting ----------------------------------------------------------------------

_COUNTER_SOURCE: Final = r"""
#include <Python.h>

/* Hooks around the PyMem (MEM) and PyObject (OBJ) allocators: count, then delegate. Both
   domains are only called with the GIL held, so plain counters are enough. */
static PyMemAllocatorEx saved_mem, saved_obj;
static unsigned long long allocations, requested_bytes, reallocations;
static int installed;

static void *count_malloc(void *ctx, size_t size) {
    PyMemAllocatorEx *next = ctx;
    allocations++;
    requested_bytes += size;
    return next->malloc(next->ctx, size);
}

static void *count_calloc(void *ctx, size_t count, size_t size) {
    PyMemAllocatorEx *next = ctx;
    allocations++;
    requested_bytes += count * size;
    return next->calloc(next->ctx, count, size);
}

static void *count_realloc(void *ctx, void *block, size_t size) {
    PyMemAllocatorEx *next = ctx;
    if (block == NULL) {
        allocations++;
        requested_bytes += size;
    } else {
        reallocations++;
    }
    return next->realloc(next->ctx, block, size);
}

static void count_free(void *ctx, void *block) {
    PyMemAllocatorEx *next = ctx;
    next->free(next->ctx, block);
}

int fastgw_count_start(void) {
    if (installed) return -1;
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &saved_mem);
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &saved_obj);
    PyMemAllocatorEx mem = {&saved_mem, count_malloc, count_calloc, count_realloc, count_free};
    PyMemAllocatorEx obj = {&saved_obj, count_malloc, count_calloc, count_realloc, count_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &obj);
    installed = 1;
    return 0;
}

void fastgw_count_stop(void) {
    if (!installed) return;
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &saved_mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &saved_obj);
    installed = 0;
}

unsigned long long fastgw_count_allocations(void) { return allocations; }
unsigned long long fastgw_count_bytes(void) { return requested_bytes; }
unsigned long long fastgw_count_reallocations(void) { return reallocations; }
"""


@functools.cache
def _counter_library() -> ctypes.PyDLL:
    """The hook, compiled into a temporary directory and loaded (once per process)."""
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(prefix="fastgw-alloc-") as tmp:
        source, library = Path(tmp, "alloc_counter.c"), Path(tmp, "alloc_counter.so")
        source.write_text(_COUNTER_SOURCE)
        argv = [*compiler, "-shared", "-fPIC", "-O2", f"-I{include}", "-o", str(library),
                str(source)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  check=False)
        except OSError as error:
            raise RuntimeError(f"allocation counting needs a C compiler: {error}") from None
        if done.returncode != 0:
            raise RuntimeError(f"compiling the allocation counter failed: {done.stderr[-500:]}")
        # PyDLL, not CDLL: the GIL stays held while the allocators are swapped. The file may
        # go once loaded: the mapping stays.
        lib = ctypes.PyDLL(str(library))
    for name in ("allocations", "bytes", "reallocations"):
        getattr(lib, f"fastgw_count_{name}").restype = ctypes.c_ulonglong
    return lib


@dataclass(frozen=True)
class Allocations:
    """Per call of the measured function."""

    allocations: float
    bytes: float
    reallocations: float
    retained_blocks: float


def _count(fn: Callable[[], object], calls: int) -> tuple[int, int, int]:
    lib = _counter_library()
    before = (lib.fastgw_count_allocations(), lib.fastgw_count_bytes(),
              lib.fastgw_count_reallocations())
    if lib.fastgw_count_start() != 0:
        raise RuntimeError("the allocation counter is already running")
    try:
        for _ in itertools.repeat(None, calls):  # no int object per iteration, unlike range
            fn()
    finally:
        lib.fastgw_count_stop()
    after = (lib.fastgw_count_allocations(), lib.fastgw_count_bytes(),
             lib.fastgw_count_reallocations())
    return after[0] - before[0], after[1] - before[1], after[2] - before[2]


def _noop() -> None:
    pass


def allocations_per_call(fn: Callable[[], object], calls: int = ALLOC_REQUESTS) -> Allocations:
    """Allocator calls per ``fn()`` over ``calls`` calls, less the counting loop's own (measured
    with a do-nothing ``fn``; calling a function or a ``functools.partial`` of a bound method
    allocates nothing itself). The collector is off meanwhile, so that a collection's own work
    never lands in one case's count."""
    _counter_library()  # compiled and loaded before the block count, not inside it
    gc.collect()
    blocks = sys.getallocatedblocks()
    enabled = gc.isenabled()
    gc.disable()
    try:
        base = _count(_noop, calls)
        measured = _count(fn, calls)
    finally:
        if enabled:
            gc.enable()
    gc.collect()
    retained = sys.getallocatedblocks() - blocks
    count, size, reallocs = (max(0, m - b) / calls for m, b in zip(measured, base, strict=True))
    return Allocations(count, size, reallocs, retained / calls)


# -- pytest-benchmark ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["py", "c"])
def build_name(request: pytest.FixtureRequest) -> str:
    try:
        _speedups.load_build(request.param)
    except ImportError as exc:
        pytest.skip(str(exc))
    return str(request.param)


def check_case(harness: Harness, case: Case) -> None:
    """One request of ``case``: the client got ``case.status``, and the backend got the request
    exactly when the gateway should forward it."""
    upstream = harness.upstream_transport
    before = upstream.last
    harness.exchange(case.request, case.response)
    status = harness.client_transport.last_status()
    assert status == case.status, f"{case.name}: status {status}, expected {case.status}"
    forwarded = upstream.last is not before  # each forwarded request is a new list of parts
    assert forwarded == (case.response is not None), f"{case.name}: forwarded={forwarded}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_chain(benchmark: Any, build_name: str, case: Case) -> None:
    def run() -> None:
        harness = Harness(CONFIG)
        one = functools.partial(harness.exchange, case.request, case.response)
        for _ in range(WARMUP):
            one()
        check_case(harness, case)
        counted = allocations_per_call(one)
        benchmark.extra_info["speedups"] = build_name
        benchmark.extra_info["allocations_per_request"] = round(counted.allocations, 2)
        benchmark.extra_info["allocated_bytes_per_request"] = round(counted.bytes, 1)
        benchmark.extra_info["reallocations_per_request"] = round(counted.reallocations, 2)
        benchmark.extra_info["retained_blocks_per_request"] = round(counted.retained_blocks, 3)
        benchmark(one)
        check_case(harness, case)

    with use_build(build_name):
        in_loop(run)


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    case: str
    build: str
    us_per_request: float
    allocations: Allocations


def measure_case(case: Case, requests: int, repeats: int = 5) -> tuple[float, Allocations]:
    """(CPU-µs per request, allocations per request) in the current build: the fastest of
    ``repeats`` batches of ``requests // repeats`` (other work on the machine only ever adds)."""
    batch = max(1, requests // repeats)

    def run() -> tuple[float, Allocations]:
        harness = Harness(CONFIG)
        one = functools.partial(harness.exchange, case.request, case.response)
        for _ in range(WARMUP):
            one()
        check_case(harness, case)
        counted = allocations_per_call(one, min(requests, ALLOC_REQUESTS))
        best = float("inf")
        for _ in range(repeats):
            started = time.process_time()
            for _ in itertools.repeat(None, batch):
                one()
            best = min(best, time.process_time() - started)
        check_case(harness, case)
        return best / batch * 1e6, counted

    return in_loop(run)


def measure_all(requests: int, builds: tuple[str, ...] = ("c", "py")) -> list[Row]:
    rows = []
    for build in builds:
        with use_build(build):
            for case in CASES:
                us, counted = measure_case(case, requests)
                rows.append(Row(case.name, build, us, counted))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| case | speedups | CPU-µs/request | allocations/request | bytes/request |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r.case} | {r.build} | {r.us_per_request:.2f} | "
              f"{r.allocations.allocations:.1f} | {r.allocations.bytes:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000, help="per case and build")
    parser.add_argument("--build", choices=("c", "py", "both"), default="both")
    args = parser.parse_args()
    builds: tuple[str, ...] = ("c", "py") if args.build == "both" else (args.build,)
    try:
        rows = measure_all(args.requests, builds)
    except ImportError as error:
        sys.exit(f"micro_chain: {error} (or pass --build py)")
    print(table(rows))


if __name__ == "__main__":
    main()
