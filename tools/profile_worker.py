"""A py-spy flame graph of one fastgw worker under wrk load.

    python tools/profile_worker.py [--scenario passthrough] [--duration 10s] [--workers 1]
                                   [--connections 50] [--rate HZ] [--path /echo/x] [--out DIR]

Starts the scenario's backend and fastgw (the same processes ``python -m bench`` starts), puts
wrk on fastgw, and records the first worker of the fastgw master with ``py-spy record --format
flamegraph --nonblocking``. Prints the SVG's path and the load's requests per second. Output:
DIR/flame-worker-PID.svg, DIR/logs/, DIR/fastgw.yaml (default DIR:
bench/out/profile-<UTC time>).

Ordering, so that no sample is taken before the load is on and no sleep guesses at readiness:
wrk starts first (in a thread) and runs longer than py-spy by ``LOAD_MARGIN_S``; py-spy then
attaches (a fraction of a second) and samples for the requested duration; both are waited for.
``--nonblocking`` reads the worker's memory without stopping it: the worker runs at full speed,
at the price of an occasional torn stack. Idle samples (the loop in epoll) are left out by
py-spy's default, so the graph's widths are shares of busy time.

Expected failures (py-spy or wrk missing, no ptrace permission, a service that does not start)
print ``profile: ...`` on stderr and exit 2; every started process is stopped in all cases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: bench and fastgw are in ROOT
    sys.path.insert(0, str(ROOT))

from bench.peers import start_backend, start_fastgw  # noqa: E402
from bench.procs import BenchError, Services, tree_pids  # noqa: E402
from bench.profile import RATE_HZ  # noqa: E402
from bench.wrk import WrkResult, run_wrk, wrk_binary  # noqa: E402
from fastgw.cli import positive_duration, positive_int  # noqa: E402

SCENARIOS: Final = ("passthrough",)
LOAD_MARGIN_S: Final = 2  # wrk runs this much longer than py-spy samples: covers its attach
SPY_GRACE_S: Final = 30.0


def _duration(text: str) -> int:
    """Whole seconds (py-spy samples for an integer number of seconds), rounded up."""
    return math.ceil(positive_duration(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/profile_worker.py",
        description="py-spy flame graph of one fastgw worker under wrk load")
    parser.add_argument("--scenario", default="passthrough",
                        help="the bench scenario whose processes are started (passthrough)")
    parser.add_argument("--duration", type=_duration, default=10, metavar="DURATION",
                        help="sampling time, e.g. 10s (default 10s)")
    parser.add_argument("--workers", type=positive_int, default=1, help="fastgw workers")
    parser.add_argument("--connections", type=positive_int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=positive_int, default=RATE_HZ,
                        help=f"py-spy samples per second (default {RATE_HZ})")
    parser.add_argument("--path", default="/echo/x", help="request path (default /echo/x)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default bench/out/profile-<UTC time>)")
    return parser


def _out_dir(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()  # the config written there names absolute paths
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return ROOT / "bench" / "out" / f"profile-{stamp}"


class _Load(threading.Thread):
    """wrk in a thread; its result or its error, for the main thread to pick up."""

    def __init__(self, url: str, args: argparse.Namespace, out: Path) -> None:
        super().__init__(name="wrk", daemon=True)
        self._url, self._args, self._out = url, args, out
        self.result: WrkResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run_wrk(self._url, duration_s=self._args.duration + LOAD_MARGIN_S,
                                  connections=self._args.connections,
                                  threads=self._args.threads, script_dir=self._out)
        except BaseException as error:  # re-raised by the main thread
            self.error = error


def _py_spy_failure(returncode: int, output: str) -> BenchError:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    if "ermission" in output or "ptrace" in output.lower():
        return BenchError(f"py-spy may not attach to the worker (no ptrace permission: run as "
                          f"root, or with CAP_SYS_PTRACE, or kernel.yama.ptrace_scope=0): {last}")
    return BenchError(f"py-spy failed (status {returncode}): {last}")


def _record(spy_binary: str, worker: int, svg: Path, args: argparse.Namespace) -> None:
    argv = [spy_binary, "record", "--format", "flamegraph", "-o", str(svg), "--pid", str(worker),
            "--duration", str(args.duration), "--rate", str(args.rate), "--nonblocking"]
    spy = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = spy.communicate(timeout=args.duration + SPY_GRACE_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"py-spy did not finish {SPY_GRACE_S:.0f}s after its "
                         f"{args.duration}s run") from None
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(5)
    if spy.returncode != 0 or not svg.exists():
        raise _py_spy_failure(spy.returncode, output)


def profile(args: argparse.Namespace) -> tuple[Path, WrkResult]:
    spy_binary = shutil.which("py-spy")
    if spy_binary is None:
        raise BenchError("py-spy not found on PATH (pip install py-spy)")
    wrk_binary()  # BenchError when missing: before anything is started
    out = _out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Services() as services:
        backend = start_backend(services, out)
        fastgw = start_fastgw(services, out, backend, workers=args.workers)
        pids = tree_pids(fastgw.service.pid)
        if len(pids) < 2:
            raise BenchError("fastgw has no worker process to profile")
        worker = pids[1]
        print(f"fastgw pid {fastgw.service.pid} on port {fastgw.port} (backend port "
              f"{backend.port}); recording worker {worker} for {args.duration}s at "
              f"{args.rate} Hz under wrk -c{args.connections}", flush=True)
        load = _Load(fastgw.url(args.path), args, out)
        load.start()
        try:
            svg = out / f"flame-worker-{worker}.svg"
            _record(spy_binary, worker, svg, args)
        finally:
            load.join(args.duration + LOAD_MARGIN_S + 60)
        if load.error is not None:
            raise load.error
        if load.result is None:
            raise BenchError("wrk did not finish")
        return svg, load.result


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenario not in SCENARIOS:
        print(f"profile: scenario {args.scenario!r} is not available yet (available: "
              f"{', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        svg, load = profile(args)
    except BenchError as error:
        print(f"profile: {' / '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("profile: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    errors = f", {load.error_total} errors" if load.error_total else ""
    print(f"flame graph: {svg}")
    print(f"load: {load.rps:,.0f} requests/s ({load.requests} requests in "
          f"{load.duration_s:.1f}s, wrk -c{args.connections}{errors})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
