"""The built-in open-loop, constant-rate load generator (the model of wrk2 and Nighthawk).

A closed-loop generator (wrk) keeps one request in flight per connection and sends the next
only when the previous answer is in. When the server stalls for a second, the generator
stalls with it and simply does not send the requests a real population of clients would have
sent meanwhile; those would all have waited, but they are never measured, so one slow second
shows up as a single slow sample. That is *coordinated omission*: the load generator
coordinates with the system under test and omits exactly the bad samples. This generator is
open loop instead: request ``i`` is *intended* at ``start + i / rate`` whatever happened
before; when its time comes and every connection is busy it waits, in FIFO order, for the
first one free; and its latency is always (response complete) - (intended send time). Time a
request spent waiting because earlier requests were slow therefore counts, as it would for a
user, and the percentiles are corrected for coordinated omission.

Shape (:func:`plan`). ``processes`` child processes (``python -m bench.openloop_worker``,
uvloop + httptools, see that module for the schedule and the wire) share the ``connections``
(exactly: the remainder of ``connections / processes`` goes one each to the first processes,
so there must be at least one per process) and the schedule: each offers ``rate / processes``
requests per second, child ``k`` starting ``k / rate`` after the shared start instant, so that
together they send request ``i`` at ``start + i / rate``, evenly spaced, rather than
``processes`` requests at once every ``processes / rate`` seconds. Each child keeps an HDR
histogram (1 µs .. 60 s, 3 significant digits) and sends it back encoded with its counts on one
``RESULT`` JSON line; the
parent adds the histograms up, so percentiles are over all requests, not averages of
per-process percentiles. Children are their own process groups with ``PR_SET_PDEATHSIG`` (set
by the child itself, as the bench may run threads), are stopped through
:meth:`bench.procs.Service.stop` in every case, and are waited on through their pipes with
bounds, never with sleeps.

Accounting, as wrk does: ``requests`` are complete responses (any status; >= 400 also count
as ``status`` errors and, like wrk, are in the histogram); ``connect``, ``read``, ``write`` and
``timeout`` failures have no latency and are counted only as errors. A request that never got
a connection before the schedule ended is neither: it is *unsent* (``LoadResult.unsent``), and
``behind_s`` says how many seconds of schedule that was (the target, or too few connections,
or a generator out of CPU could not keep up). Unsent requests are in the histogram all the
same, each with the latency it had reached when the run stopped waiting for it (the end of the
schedule minus its intended time): leaving them out would bias a run that fell behind towards
its better samples, which is coordinated omission again. That latency is a *lower bound*:
their clients would have waited at least that long, and more. So the percentiles are over
``requests + unsent`` samples. ``cpu_s`` is the children's own CPU from the start instant to
their end (start-up and imports are left out: they are not per-request work); ``hold_ms`` and
``busy_share`` say how long requests held their connections and how busy those were (for
:func:`bench.sweep.judge`).

Bad settings, a worker that fails and the missing optional ``hdrhistogram`` package (the
``[bench]`` extra; :func:`require_hdr`) are :class:`bench.procs.BenchError`, one line each.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from bench.loadgen import ERROR_KINDS, LoadResult
from bench.openloop_worker import histogram
from bench.peers import python_env
from bench.procs import BenchError, Service, ignoring_signals

if TYPE_CHECKING:  # the optional [bench] extra: see require_hdr
    from hdrh.histogram import HdrHistogram

START_DELAY_S: Final = 0.1  # from GO to the start instant: time for the GO lines to arrive
READY_BOUND_S: Final = 30.0  # start-up (imports, connections) beyond the connect timeout
FINISH_GRACE_S: Final = 5.0  # beyond duration + timeout (the children's own grace is 2 s)
STOP_WAIT_S: Final = 2.0  # SIGTERM to SIGKILL when a child must be stopped
BEHIND_WARN_S: Final = 1.0
PERCENTILES: Final = (("p50", 50.0), ("p75", 75.0), ("p90", 90.0), ("p95", 95.0),
                      ("p99", 99.0), ("p999", 99.9))
NO_HDR: Final = "the open-loop generator needs hdrhistogram: pip install 'fastgw[bench]'"


def require_hdr() -> None:
    """BenchError unless ``hdrhistogram`` (the optional ``[bench]`` extra) can be imported;
    :func:`run_open_loop` checks it too, a CLI can check it before starting anything."""
    try:
        import hdrh.histogram  # noqa: F401
    except ImportError:
        raise BenchError(NO_HDR) from None


@dataclass(frozen=True)
class WorkerPlan:
    """One process's share of a run (see :func:`plan`)."""

    index: int
    offset_s: float  # its first request, after the shared start instant
    rate: float  # requests/s: the run's rate over the processes
    total: int  # its requests: the run's indices ``index, index + processes, ...``
    connections: int


def plan(*, rate: float, duration_s: float, connections: int,
         processes: int) -> tuple[WorkerPlan, ...]:
    """Split a run over the processes: process ``k``'s request ``j`` is the run's request
    ``j * processes + k``, intended at ``start + offset_s + j / rate_k`` = ``start +
    (j * processes + k) / rate``, so the run's requests are evenly spaced, ``1 / rate`` apart;
    the run has ``ceil(rate * duration_s)`` of them, all intended before ``start +
    duration_s``. The connections are shared out exactly (the first ``connections %
    processes`` processes hold one more); fewer connections than processes is a BenchError."""
    _check(rate=rate, duration_s=duration_s, connections=connections, processes=processes)
    intended = max(0, math.ceil(rate * duration_s - 1e-9))
    each, extra = divmod(connections, processes)
    return tuple(WorkerPlan(index=k, offset_s=k / rate, rate=rate / processes,
                            total=len(range(k, intended, processes)),
                            connections=each + (k < extra))
                 for k in range(processes))


def _check(*, rate: float, duration_s: float, connections: int, processes: int,
           timeout_s: float = 1.0) -> None:
    """BenchError, one line naming every bad setting."""
    named = {"rate": rate, "duration_s": duration_s, "timeout_s": timeout_s,
             "connections": connections, "processes": processes}
    bad = [f"{name} must be > 0 (got {value:g})" for name, value in named.items()
           if not value > 0]
    if 0 < connections < processes:
        bad.append(f"connections ({connections}) must be at least processes ({processes}): "
                   "each process needs a connection of its own")
    if bad:
        raise BenchError("bad open-loop settings: " + "; ".join(bad))


@dataclass(frozen=True)
class Traffic:
    """Where to send and what: complete raw HTTP/1.1 keep-alive requests, sent in turn (cycled
    across all processes, so that with ``n`` requests each one is sent every ``n``-th time
    overall); usually one, several when each request must differ (distinct tokens).

    Responses must be delimited by Content-Length or chunked encoding: a close-delimited body
    ends only with the connection and counts as a ``read`` error, and HEAD requests are not
    supported (the response parser cannot know that their Content-Length has no body)."""

    host: str
    port: int
    requests: tuple[bytes, ...]


@dataclass(frozen=True)
class Progress:
    """One tick, about once a second, summed over the processes."""

    elapsed_s: float
    completed: int
    errors: int
    in_flight: int  # due but not yet answered: waiting for a connection or on the wire


class _Child:
    """One worker process and the unread part of its stdout."""

    def __init__(self, index: int, service: Service, stdout: IO[bytes]) -> None:
        self.index = index
        self.service = service
        self.stdout = stdout
        self.buffer = b""
        self.eof = False
        self.ready: dict[str, Any] | None = None
        self.tick: dict[str, Any] = {"tick": 0, "completed": 0, "errors": 0, "in_flight": 0}
        self.result: dict[str, Any] | None = None

    def describe(self) -> str:
        proc = self.service.popen
        code = None if proc is None else proc.poll()
        state = "running" if code is None else f"exited with status {code}"
        tail = self.service.log_tail(20)
        return (f"openloop worker {self.index} (pid {self.service.pid}) {state}"
                + (f"; its stderr:\n{tail}" if tail else ""))


def _start_children(traffic: Traffic, workdir: Path, *, plans: Sequence[WorkerPlan],
                    duration_s: float, timeout_s: float, started: list[_Child]) -> None:
    """Start the workers (appending each to ``started`` at once, so that the caller stops it
    whatever happens next) and hand each its configuration on stdin."""
    env = python_env()
    for share in plans:
        index = share.index
        service = Service(name=f"openloop-{index}",
                          argv=[sys.executable, "-m", "bench.openloop_worker",
                                "--parent", str(os.getpid())],
                          log_path=workdir / f"worker-{index}.log", env=env, preexec=False)
        with open(service.log_path, "wb") as log:
            try:
                service.popen = subprocess.Popen(
                    service.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    env=env, start_new_session=True)
            except OSError as error:
                raise BenchError(f"cannot start the open-loop worker: {error}") from None
        assert service.popen.stdout is not None
        started.append(_Child(index, service, service.popen.stdout))
        config = {"host": traffic.host, "port": traffic.port, "index": index,
                  "processes": len(plans), "rate": share.rate, "offset_s": share.offset_s,
                  "total": share.total, "connections": share.connections,
                  "duration_s": duration_s, "timeout_s": timeout_s,
                  "requests": [base64.b64encode(r).decode("ascii") for r in traffic.requests]}
        _send(started[-1], json.dumps(config))


def _send(child: _Child, line: str) -> None:
    stdin = child.service.popen.stdin if child.service.popen is not None else None
    try:
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
    except (BrokenPipeError, OSError):
        raise BenchError(f"cannot talk to {child.describe()}") from None


def _read_until(children: Sequence[_Child], deadline: float, done: Callable[[], bool],
                on_line: Callable[[_Child, str, dict[str, Any]], None], waiting_for: str) -> None:
    """Read the children's lines until ``done()``; BenchError if the deadline passes first or
    a child closes its stdout without a RESULT."""
    with selectors.DefaultSelector() as selector:
        for one in children:
            if not one.eof:
                selector.register(one.stdout, selectors.EVENT_READ, one)
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                late = [c.describe() for c in children if c.result is None]
                raise BenchError(f"open-loop generator: no {waiting_for} before the deadline; "
                                 + "; ".join(late))
            for key, _ in selector.select(min(left, 1.0)):
                child: _Child = key.data
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    child.eof = True
                    selector.unregister(child.stdout)
                    if child.result is None:
                        if child.service.popen is not None:  # for its exit status
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                child.service.popen.wait(STOP_WAIT_S)
                        raise BenchError(f"open-loop generator failed: {child.describe()}")
                    continue
                child.buffer += chunk
                *lines, child.buffer = child.buffer.split(b"\n")
                for raw in lines:
                    word, _, payload = raw.decode(errors="replace").partition(" ")
                    if word in ("READY", "TICK", "RESULT"):
                        on_line(child, word, json.loads(payload))


def run_open_loop(traffic: Traffic, *, rate: float, duration_s: float, connections: int,
                  processes: int = 1, timeout_s: float = 5.0,
                  progress: Callable[[Progress], None] | None = None) -> LoadResult:
    """Offer ``rate`` requests/s for ``duration_s`` (see the module docstring). Bad settings
    and a missing ``hdrhistogram`` are BenchError, before anything starts."""
    if not traffic.requests:
        raise BenchError("bad open-loop settings: no request to send")
    _check(timeout_s=timeout_s, rate=rate, duration_s=duration_s, connections=connections,
           processes=processes)
    plans = plan(rate=rate, duration_s=duration_s, connections=connections,
                 processes=processes)
    require_hdr()
    children: list[_Child] = []
    shown = 0

    def on_line(child: _Child, word: str, data: dict[str, Any]) -> None:
        nonlocal shown
        if word == "READY":
            child.ready = data
        elif word == "TICK":
            child.tick = data
        else:
            child.result = data
        tick = min((c.tick["tick"] for c in children if c.result is None), default=shown)
        if progress is not None and word == "TICK" and tick > shown:
            shown = tick
            progress(Progress(elapsed_s=float(tick),
                              completed=sum(_now(c, "completed") for c in children),
                              errors=sum(_now(c, "errors") for c in children),
                              in_flight=sum(c.tick["in_flight"] for c in children
                                            if c.result is None)))

    with tempfile.TemporaryDirectory(prefix="fastgw-openloop-") as tmp:  # the workers' stderr
        try:
            _start_children(traffic, Path(tmp), plans=plans, duration_s=duration_s,
                            timeout_s=timeout_s, started=children)
            _read_until(children, time.monotonic() + READY_BOUND_S + timeout_s,
                        lambda: all(c.ready is not None for c in children), on_line, "READY")
            start = time.monotonic() + START_DELAY_S
            for child in children:
                _send(child, f"GO {start!r}")
            deadline = start + duration_s + timeout_s + FINISH_GRACE_S
            _read_until(children, deadline, lambda: all(c.result is not None for c in children),
                        on_line, "RESULT")
        finally:
            with ignoring_signals():  # a second Ctrl-C must not leave a worker behind
                for child in reversed(children):
                    _stop(child)
    results = [c.result for c in children if c.result is not None]
    return merge(results, rate=rate, duration_s=duration_s, connections=connections,
                 processes=processes, timeout_s=timeout_s)


def _stop(child: _Child) -> None:
    """A worker that sent its RESULT is exiting by itself: give it a moment before SIGTERM
    (then SIGKILL to its group, from Service.stop); close our ends of its pipes."""
    proc = child.service.popen
    if proc is None:
        return
    if child.result is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_WAIT_S)
    child.service.stop(STOP_WAIT_S)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _now(child: _Child, key: str) -> int:
    return int((child.result or child.tick)[key])


def latency_ms(hist: HdrHistogram) -> dict[str, float]:
    """mean, stdev, max and percentiles in ms (zeros when nothing was recorded)."""
    if hist.get_total_count() == 0:
        return {k: 0.0 for k in ("mean", "stdev", "max", *(name for name, _ in PERCENTILES))}
    out = {"mean": hist.get_mean_value() / 1000, "stdev": hist.get_stddev() / 1000,
           "max": hist.get_max_value() / 1000}
    for name, q in PERCENTILES:
        out[name] = hist.get_value_at_percentile(q) / 1000
    return out


def merge(results: Sequence[dict[str, Any]], *, rate: float, duration_s: float,
          connections: int, processes: int, timeout_s: float) -> LoadResult:
    """One LoadResult from the children's RESULT lines (histograms added, counts summed).
    ``connections`` is what was asked for; the result has what the children really held."""
    hist = histogram()
    errors = dict.fromkeys(ERROR_KINDS, 0)
    codes: dict[int, int] = {}
    for r in results:
        hist.decode_and_add(r["hist"].encode("ascii"))
        for kind, n in r["errors"].items():
            errors[kind] += int(n)
        for code, n in r["status_codes"].items():
            codes[int(code)] = codes.get(int(code), 0) + int(n)
    intended = sum(int(r["intended"]) for r in results)
    sent = sum(int(r["sent"]) for r in results)
    unsent = sum(int(r["unsent"]) for r in results)
    completed = sum(int(r["completed"]) for r in results)
    user_s = sum(float(r["cpu_user_s"]) for r in results)
    cpu_s = user_s + sum(float(r["cpu_system_s"]) for r in results)
    per_process = [int(r.get("connections", 0))
                   for r in sorted(results, key=lambda r: int(r["index"]))]
    held = sum(per_process) or connections
    dispatched = sum(int(r.get("dispatched", 0)) for r in results)
    busy_s = sum(float(r.get("busy_s", 0.0)) for r in results)
    hold_ms = busy_s * 1000 / dispatched if dispatched else 0.0
    busy_share = busy_s / (held * duration_s)
    latency = latency_ms(hist)
    behind_s = unsent / rate
    split = (f" ({' + '.join(map(str, per_process))})"
             if len(set(per_process)) > 1 else "")
    lines = [
        f"open loop: {rate:,.0f} req/s offered for {duration_s:g} s over {held} "
        f"connection(s){split} in {processes} process(es), timeout {timeout_s:g} s",
        f"  {intended:,} intended, {sent:,} sent, {completed:,} completed "
        f"({completed / duration_s:,.1f} req/s), {sum(errors.values()):,} errors",
        f"  connections: each request held one {hold_ms:.3f} ms on average, "
        f"busy {busy_share:.0%} of the time",
        "  latency from the intended send time (ms)"
        + (f", {completed:,} responses + {unsent:,} unsent (a lower bound for those)"
           if unsent else "") + ": "
        + "  ".join(f"{k} {latency[k]:.3f}" for k in ("mean", "stdev", "max")),
        "    " + "  ".join(f"{name} {latency[name]:.3f}" for name, _ in PERCENTILES),
        "  status codes: " + (", ".join(f"{c} x{n:,}" for c, n in sorted(codes.items()))
                              or "none"),
        "  errors: " + ", ".join(f"{k} {v:,}" for k, v in errors.items()),
        f"  generator CPU: {cpu_s:.2f} s (user {user_s:.2f} + system {cpu_s - user_s:.2f})"
        + (f", {cpu_s * 1e6 / completed:.1f} µs per response" if completed else ""),
    ]
    if unsent:
        lines.append(f"  unsent: {unsent:,} requests ({behind_s:.3f} s of schedule) were still "
                     "waiting for a free connection when the schedule ended; they are in the "
                     "latency figures with the wait they had reached then")
    if behind_s > BEHIND_WARN_S:
        lines.append(f"  WARNING: the run fell {behind_s:.1f} s behind its schedule: the target "
                     "(or too few connections, or a generator short of CPU) did not keep up "
                     f"with {rate:,.0f} req/s")
    return LoadResult(duration_s=duration_s, requests=completed,
                      bytes=sum(int(r["bytes"]) for r in results), errors=errors,
                      latency_ms=latency, cpu_s=cpu_s, output="\n".join(lines),
                      offered_rps=rate, sent=sent, status_codes=codes, generator="openloop",
                      behind_s=behind_s, unsent=unsent, processes=processes, connections=held,
                      hold_ms=hold_ms, busy_share=busy_share)
