"""A py-spy flame graph of one fastgw worker under wrk load.

    python tools/profile_worker.py [--scenario passthrough] [--duration 10s] [--workers 1]
                                   [--connections 50] [--threads 1] [--rate HZ]
                                   [--path PATH] [--out DIR]

Starts the processes ``python -m bench run`` starts for the scenario (``bench.scenarios``: what
``Scenario.prepare`` makes -- its files, its helper processes such as a Redis, its request
headers such as a bearer token --, its backends, and fastgw with its gateway config), checks
that one GET of the scenario's path (or ``--path``) with those headers answers 200, puts wrk
on fastgw sending the same headers, and records the first worker of the fastgw master
with ``py-spy record --format flamegraph --nonblocking``. Prints the SVG's path and the load's
requests per second. Output: DIR/flame-worker-PID.svg, DIR/logs/ (the services' and wrk's
output), DIR/fastgw.yaml (default DIR: bench/out/profile-<UTC time>). A scenario that is
unknown, that this build cannot run (its ``skip_reason()``), or whose shape is ``idle`` (open
connections without load: nothing to sample) is refused with one line and exit status 2,
before anything is started or written.

What is guaranteed:

- py-spy attaches only once the profiled worker holds at least one ESTABLISHED connection on
  fastgw's port (its sockets, read from /proc, polled for at most ``LOAD_READY_S``): wrk's
  load has reached *that* worker. It is not a guarantee that every sample is taken under full
  load: wrk ramps up its connections, and py-spy's attach takes a moment.
- wrk runs longer than py-spy can (``-d`` covers the wait for connections, the sampling and
  py-spy's own time limit) and is stopped with SIGINT as soon as py-spy is done; wrk then
  prints its summary, so the printed requests per second cover wrk's whole run (waiting for
  connections and py-spy's attach included), not the sampled seconds alone.
- wrk is stopped in every case: on success by SIGINT; on any error or interruption (py-spy
  failing, SIGINT/SIGTERM/SIGHUP to this tool) by SIGKILL to its process group in a
  ``finally``, then reaped. If this tool is killed with SIGKILL, the kernel sends wrk SIGTERM:
  wrk is started through a small Python launcher that sets ``PR_SET_PDEATHSIG``
  (:func:`bench.procs.die_with_parent`), checks that its parent is still this tool and then
  execs wrk (the setting survives the exec). The launcher sets it itself rather than through a
  ``preexec_fn``, which is unsafe where threads run. The services are stopped by
  :class:`bench.procs.Services` in every case but SIGKILL, where their own
  ``PR_SET_PDEATHSIG`` applies (this tool starts no threads).

``--nonblocking`` reads the worker's memory without stopping it: the worker runs at full speed,
at the price of an occasional torn stack. Idle samples (the loop in epoll) are left out by
py-spy's default, so the graph's widths are shares of busy time.

Expected failures (py-spy or wrk missing, no ptrace permission, a service that does not start,
a worker that gets no connection) print ``profile: ...`` on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: bench and fastgw are in ROOT
    sys.path.insert(0, str(ROOT))

from bench.loadgen import LoadResult  # noqa: E402
from bench.peers import python_env, start_backend, start_fastgw  # noqa: E402
from bench.procs import BenchError, Services, tree_pids  # noqa: E402
from bench.profile import RATE_HZ  # noqa: E402
from bench.runner import check_targets  # noqa: E402
from bench.scenarios import ALIASES, SCENARIOS, Headers, Scenario  # noqa: E402
from bench.wrk import parse, wrk_argv, wrk_binary  # noqa: E402
from fastgw.cli import positive_duration, positive_int  # noqa: E402

LOAD_READY_S: Final = 10.0  # wrk's connections must reach the worker within this
LOAD_POLL_S: Final = 0.05
SPY_GRACE_S: Final = 30.0  # py-spy's limit beyond the sampling time
WRK_STOP_S: Final = 10.0  # from SIGINT to wrk's summary
PREPARE_SLACK_S: Final = 120.0  # starting and probing the services (the scenario's token)
TCP_ESTABLISHED: Final = "01"  # the ``st`` column of /proc/net/tcp
#: Runs in a fresh interpreter: PR_SET_PDEATHSIG for itself, then exec wrk (argv[2:]). Set
#: here, not in a preexec_fn; exits if the parent (argv[1]) died before it was set.
LAUNCHER: Final = (
    "import os, sys\n"
    "from bench.procs import die_with_parent\n"
    "die_with_parent()\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _duration(text: str) -> int:
    """Whole seconds (py-spy samples for an integer number of seconds), rounded up."""
    return math.ceil(positive_duration(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tools/profile_worker.py",
        description="py-spy flame graph of one fastgw worker under wrk load")
    parser.add_argument("--scenario", default="passthrough",
                        help=f"the bench scenario whose processes are started (one of "
                             f"{', '.join(SCENARIOS)}; default passthrough)")
    parser.add_argument("--duration", type=_duration, default=10, metavar="DURATION",
                        help="sampling time, e.g. 10s (default 10s)")
    parser.add_argument("--workers", type=positive_int, default=1, help="fastgw workers")
    parser.add_argument("--connections", type=positive_int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=positive_int, default=RATE_HZ,
                        help=f"py-spy samples per second (default {RATE_HZ})")
    parser.add_argument("--path", default=None,
                        help="request path (default: the scenario's, e.g. /echo/x)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default bench/out/profile-<UTC time>)")
    return parser


def choose_scenario(name: str) -> Scenario:
    """The scenario to profile; BenchError (its one line) when there is none to run."""
    scenario = SCENARIOS.get(ALIASES.get(name, name))
    if scenario is None:
        raise BenchError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    reason = scenario.skip_reason()
    if reason is not None:
        raise BenchError(f"scenario {scenario.name!r} cannot run in this build: {reason}")
    if scenario.shape == "idle":
        raise BenchError(f"scenario {scenario.name!r} is an idle scenario (open connections, "
                         "no load): not supported, there is no work to sample")
    if scenario.gateway_config is None:  # skip_reason() says so first; for the type checker
        raise BenchError(f"scenario {scenario.name!r} has no gateway config")
    return scenario


def _out_dir(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()  # the config written there names absolute paths
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return ROOT / "bench" / "out" / f"profile-{stamp}"


# -- wrk ----------------------------------------------------------------------------------


class Wrk:
    """wrk as a child process (its own process group, SIGTERMed by the kernel if this tool
    dies), its output in a log file; :meth:`kill` is safe to call at any time."""

    def __init__(self, url: str, *, duration_s: int, connections: int, threads: int,
                 out: Path, headers: Headers = ()) -> None:
        self.connections = connections
        self.log_path = out / "logs" / "wrk.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.argv = wrk_argv(url, duration_s=duration_s, connections=connections,
                             threads=threads, script_dir=out, headers=headers)
        with open(self.log_path, "wb") as log:
            try:
                self.popen = subprocess.Popen(
                    [sys.executable, "-c", LAUNCHER, str(os.getpid()), *self.argv],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=python_env(), start_new_session=True)
            except OSError as error:
                raise BenchError(f"cannot start wrk: {error}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        if self.popen.poll() is not None:
            raise BenchError(f"wrk exited with status {self.popen.returncode} before the "
                             f"profile was taken; log {self.log_path}:\n{self.output()[-2000:]}")

    def stop(self) -> LoadResult:
        """SIGINT: wrk stops its connections and prints its summary; the parsed result."""
        self.check_running()
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(WRK_STOP_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not stop {WRK_STOP_S:.0f}s after SIGINT") from None
        if self.popen.returncode != 0:
            raise BenchError(f"wrk exited with status {self.popen.returncode}; log "
                             f"{self.log_path}:\n{self.output()[-2000:]}")
        # wrk's CPU is not measured here (nothing reports it): NaN, not a made-up 0
        return parse(self.output(), cpu_s=math.nan)

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    return inodes


def established(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections on local ``port`` among process ``pid``'s sockets."""
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()  # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if (len(fields) > 9 and fields[3] == TCP_ESTABLISHED and fields[9] in inodes
                    and int(fields[1].rpartition(":")[2], 16) == port):
                count += 1
    return count


def wait_for_load(wrk: Wrk, worker: int, port: int, timeout_s: float = LOAD_READY_S) -> int:
    """Until ``worker`` holds a connection on ``port`` (wrk's load reached it); how many."""
    deadline = time.monotonic() + timeout_s
    while True:
        wrk.check_running()
        if not Path(f"/proc/{worker}").exists():
            raise BenchError(f"fastgw worker {worker} exited")
        found = established(worker, port)
        if found:
            return found
        if time.monotonic() >= deadline:
            raise BenchError(f"fastgw worker {worker} got no connection from wrk within "
                             f"{timeout_s:.0f}s (wrk -c{wrk.connections}; with several "
                             "workers, give more connections)")
        time.sleep(LOAD_POLL_S)


# -- py-spy --------------------------------------------------------------------------------


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


# -- the profile ---------------------------------------------------------------------------


def profile(args: argparse.Namespace, scenario: Scenario) -> tuple[Path, LoadResult]:
    spy_binary = shutil.which("py-spy")
    if spy_binary is None:
        raise BenchError("py-spy not found on PATH (pip install py-spy)")
    wrk_binary()  # BenchError when missing: before anything is started
    path = args.path or scenario.path
    out = _out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wrk_s = math.ceil(LOAD_READY_S + args.duration + SPY_GRACE_S + WRK_STOP_S)
    with Services() as services:
        # the scenario's files, helpers (started first: stopped last) and request headers
        prepared = scenario.prepare(out, wrk_s + PREPARE_SLACK_S, services)
        backends = [start_backend(services, out, name=f"bench-backend-{i + 1}")
                    for i in range(scenario.backends)]
        fastgw = start_fastgw(services, out, backends, workers=args.workers,
                              config=prepared.config)
        check_targets([fastgw], path, prepared.headers)
        pids = tree_pids(fastgw.service.pid)
        if len(pids) < 2:
            raise BenchError("fastgw has no worker process to profile")
        worker = pids[1]
        ports = ", ".join(str(b.port) for b in backends)
        print(f"{scenario.name}: fastgw pid {fastgw.service.pid} on port {fastgw.port} "
              f"(backend port{'s' if len(backends) > 1 else ''} {ports}); recording worker "
              f"{worker} for {args.duration}s at {args.rate} Hz under wrk -c{args.connections} "
              f"GET {path}", flush=True)
        # wrk's -d is an upper bound: it is stopped (SIGINT) as soon as py-spy is done
        wrk: Wrk | None = None
        try:
            wrk = Wrk(fastgw.url(path), duration_s=wrk_s, connections=args.connections,
                      threads=args.threads, out=out, headers=prepared.headers)
            wait_for_load(wrk, worker, fastgw.port)
            svg = out / f"flame-worker-{worker}.svg"
            _record(spy_binary, worker, svg, args)
            load = wrk.stop()
        finally:
            if wrk is not None:
                wrk.kill()
        return svg, load


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scenario = choose_scenario(args.scenario)
    except BenchError as error:
        print(f"profile: {error}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        svg, load = profile(args, scenario)
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
