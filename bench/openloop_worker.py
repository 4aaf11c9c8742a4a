"""One process of the open-loop generator (started by :func:`bench.openloop.run_open_loop`).

Protocol with the parent, one line each (stdin from the parent, stdout to it):

1. stdin: the configuration, one JSON object (requests base64-encoded; this process's share of
   the schedule and of the connections, from :func:`bench.openloop.plan`).
2. stdout: ``READY {...}`` once the keep-alive connections are open (or failed: a connection
   that cannot be opened now is retried by the first request that needs it, and counted there).
3. stdin: ``GO <start>``: the absolute ``time.monotonic()`` instant, shared by all processes,
   at which the run's request 0 is intended. CLOCK_MONOTONIC is one clock for the whole machine.
4. stdout: ``TICK {...}`` about once a second, then one ``RESULT {...}`` line, then exit 0.

Schedule: this process's request ``i`` is intended at ``start + offset_s + i / rate``, with its
own ``rate`` (the run's rate R over the P processes) and ``offset_s`` (its index over R), so that
the processes interleave: the run's request ``i * P + index`` is this process's ``i``, and over
all processes request ``n`` is intended at ``start + n / R``. Requests are not queued as
objects: the ones whose time has come and that no connection has taken yet are simply the
indices ``head .. due-1``, so a backlog costs nothing to hold, and a free connection always
takes the oldest (FIFO). Waking up for the next intended instant uses a ``timerfd``
(CLOCK_MONOTONIC, absolute, nanoseconds) because uvloop's timers have millisecond
resolution: on loopback, where responses take a few hundred microseconds, a millisecond of
send jitter would be the largest part of the latency measured. A response that frees a
connection also dispatches what is due, so at high rates most requests leave from there.

At the end of the schedule (``start + duration_s``, the same instant for every process)
nothing more is sent; requests still waiting for a connection are reported as ``unsent`` (the
schedule fell behind) and recorded in the histogram with the latency they had reached then
(:func:`record_backlog`); requests on the wire get ``timeout_s`` to finish. A hard deadline
(duration + timeout + grace) ends the process whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import math
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import httptools

from bench.procs import die_with_parent, raise_nofile

if TYPE_CHECKING:  # hdrhistogram is the optional [bench] extra: imported when first needed
    from hdrh.histogram import HdrHistogram

LOWEST_US: Final = 1
HIGHEST_US: Final = 60_000_000
SIGNIFICANT_DIGITS: Final = 3
GO_TIMEOUT_S: Final = 120.0  # the parent waits for every READY well within this
HARD_GRACE_S: Final = 2.0  # beyond duration + timeout before this process gives up on itself
WATCHDOG_S: Final = 0.05  # how often request timeouts are looked for
EXIT_OVERRAN: Final = 3

IDLE, CONNECTING, WAITING = range(3)  # a connection slot's state


def histogram() -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_backlog(hist: HdrHistogram, lowest_s: float, step_s: float, count: int) -> None:
    """Record ``count`` latencies ``lowest_s, lowest_s + step_s, ...`` (seconds), clamped to the
    histogram's range like every other value, with one call per histogram bucket they fall in
    rather than one per value: a backlog can be a million requests long."""
    k = 0
    while k < count:
        value = min(max(int((lowest_s + k * step_s) * 1e6), LOWEST_US), HIGHEST_US)
        if value >= HIGHEST_US:
            n = count - k
        else:  # the values after this one that still fall in its bucket
            top = hist.get_highest_equivalent_value(value)
            end = math.ceil(((top + 1) / 1e6 - lowest_s) / step_s) if step_s > 0 else count
            n = max(1, min(count, end) - k)
        hist.record_value(value, n)
        k += n


# -- precise wake-ups ------------------------------------------------------------------------


class Waker:
    """Calls ``callback`` at an absolute ``time.monotonic()`` instant, to the microsecond where
    Linux timerfd is there (uvloop's own timers round to milliseconds), else via call_later."""

    CLOCK_MONOTONIC: Final = 1
    TFD_TIMER_ABSTIME: Final = 1
    TFD_NONBLOCK_CLOEXEC: Final = os.O_NONBLOCK | os.O_CLOEXEC

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(self.CLOCK_MONOTONIC, self.TFD_NONBLOCK_CLOEXEC)
            self._settime = libc.timerfd_settime
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._fd = fd
            # struct itimerspec: it_interval {sec, nsec} (zero: one-shot), it_value {sec, nsec}
            self._spec = (ctypes.c_long * 4)()
            self._spec_ref = ctypes.byref(self._spec)
            loop.add_reader(fd, self._fired)

    def arm(self, at: float) -> None:
        if self._fd < 0:
            self._handle = self._loop.call_later(max(0.0, at - time.monotonic()), self._callback)
            return
        seconds = int(at)
        self._spec[2] = seconds
        self._spec[3] = max(1, int((at - seconds) * 1e9))  # an all-zero value would disarm
        self._settime(self._fd, self.TFD_TIMER_ABSTIME, self._spec_ref, None)

    def _fired(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)
        self._callback()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


# -- connections -----------------------------------------------------------------------------


class Slot:
    """One of the process's connections, across reconnects: what it carries now."""

    __slots__ = ("conn", "intended", "sent_at", "state", "taken_at")

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.state = IDLE
        self.intended = 0.0
        self.taken_at = 0.0  # when the current request took it (its hold starts)
        self.sent_at = 0.0


class Conn(asyncio.Protocol):
    """One TCP connection; ``httptools`` parses the responses (Content-Length, chunked,
    keep-alive). Only ``on_message_complete`` is defined: every other parser callback would be
    a Python call per response for nothing."""

    __slots__ = ("dead", "gen", "parser", "slot", "transport")

    def __init__(self, gen: Generator, slot: Slot) -> None:
        self.gen = gen
        self.slot = slot
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.gen.bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # a malformed response: the connection is unusable
            if self.slot.conn is self and self.slot.state == WAITING:
                self.gen.fail(self.slot, "read")
            else:
                self.kill()

    def on_message_complete(self) -> None:
        if self.slot.conn is self and self.slot.state == WAITING:
            self.gen.complete(self.slot, self.parser.get_status_code(),
                              self.parser.should_keep_alive())
        else:  # an answer nobody asked for: the connection is out of step, drop it
            self.kill()

    def connection_lost(self, exc: Exception | None) -> None:
        unwritten = self.transport is not None and self.transport.get_write_buffer_size() > 0
        self.dead = True
        self.transport = None
        if self.slot.conn is self and self.slot.state == WAITING:
            self.gen.fail(self.slot, "write" if unwritten else "read")

    def kill(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()


# -- the generator ---------------------------------------------------------------------------


class Generator:
    def __init__(self, cfg: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.host: str = cfg["host"]
        self.port: int = cfg["port"]
        self.requests = [base64.b64decode(r) for r in cfg["requests"]]
        self.index: int = cfg["index"]  # this process's place among the processes
        self.stride: int = cfg["processes"]
        self.rate: float = cfg["rate"]  # this process's share of the run's rate
        self.offset_s: float = cfg["offset_s"]  # its first request, after the shared start
        self.duration_s: float = cfg["duration_s"]
        self.timeout_s: float = cfg["timeout_s"]
        self.total: int = cfg["total"]  # its requests: the run's with its index, modulo stride
        self.slots = [Slot() for _ in range(cfg["connections"])]
        self.idle: deque[Slot] = deque(self.slots)  # FIFO: load spreads over all connections
        self.start = self.end = math.inf
        self.head = 0  # the next request index to hand to a connection
        self.busy: int = 0  # slots not IDLE: connecting, or waiting for an answer
        self.closed = False  # the schedule is over: nothing more is sent
        self.armed = False
        self.waker = Waker(loop, self._woken)
        self.hist = histogram()
        self.sent = self.completed = self.bytes = self.unsent = 0
        self.busy_s = 0.0  # the connections' hold times, summed
        self.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
        self.status_codes: dict[int, int] = {}
        self.finished: asyncio.Future[None] = loop.create_future()

    # -- connecting ------------------------------------------------------------------------

    async def open(self, slot: Slot, timeout_s: float) -> bool:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Conn(self, slot), self.host, self.port),
                timeout_s)
        except (OSError, TimeoutError):
            return False
        slot.conn = conn
        return True

    async def connect_then_send(self, slot: Slot, index: int) -> None:
        ok = await self.open(slot, self.timeout_s)
        if slot.state != CONNECTING:  # given up meanwhile (the drain deadline passed)
            if ok and slot.conn is not None:
                slot.conn.kill()
            return
        if ok:
            self.write(slot, index)
        else:
            self.errors["connect"] += 1
            self.release(slot)

    # -- the schedule ----------------------------------------------------------------------

    def pump(self) -> None:
        """Hand every request whose time has come to a free connection, oldest first; arm the
        waker for the next one if a connection would be free for it."""
        if self.closed:
            return
        now = time.monotonic()
        if now >= self.start:
            due = min(self.total, int((now - self.start) * self.rate) + 1)
            idle = self.idle
            while self.head < due and idle:
                slot = idle.popleft()
                index = self.head
                self.head = index + 1
                slot.intended = self.start + index / self.rate
                slot.taken_at = now
                self.busy += 1
                conn = slot.conn
                if conn is None or conn.dead:
                    slot.state = CONNECTING
                    self.loop.create_task(self.connect_then_send(slot, index))
                else:
                    self.write(slot, index)
        if self.idle and self.head < self.total and not self.armed:
            self.armed = True
            self.waker.arm(self.start + self.head / self.rate)

    def _woken(self) -> None:
        self.armed = False
        self.pump()

    def write(self, slot: Slot, index: int) -> None:
        conn = slot.conn
        assert conn is not None and conn.transport is not None
        conn.transport.write(self.requests[(index * self.stride + self.index)
                                           % len(self.requests)])
        slot.state = WAITING
        slot.sent_at = time.monotonic()
        self.sent += 1

    def complete(self, slot: Slot, status: int, keep_alive: bool) -> None:
        now = time.monotonic()
        latency_us = int((now - slot.intended) * 1e6)
        self.hist.record_value(min(max(latency_us, LOWEST_US), HIGHEST_US))
        self.completed += 1
        codes = self.status_codes
        codes[status] = codes.get(status, 0) + 1
        if status >= 400:
            self.errors["status"] += 1
        if not keep_alive and slot.conn is not None:
            slot.conn.kill()
            slot.conn = None
        self.release(slot, now)

    def fail(self, slot: Slot, kind: str) -> None:
        self.errors[kind] += 1
        if slot.conn is not None:
            slot.conn.kill()
            slot.conn = None
        self.release(slot)

    def release(self, slot: Slot, now: float | None = None) -> None:
        self.busy_s += (time.monotonic() if now is None else now) - slot.taken_at
        slot.state = IDLE
        self.busy -= 1
        self.idle.append(slot)
        if not self.closed:
            self.pump()
        elif self.busy == 0:
            self.finish()

    def in_flight(self) -> int:
        now = time.monotonic()
        if self.closed or now < self.start:
            return self.busy
        due = min(self.total, int((now - self.start) * self.rate) + 1)
        return self.busy + max(0, due - self.head)

    # -- the run ---------------------------------------------------------------------------

    def go(self, start: float) -> None:
        """``start``: the instant shared by all processes (ticks and the end count from it);
        this process's own schedule begins ``offset_s`` later."""
        self.start = start + self.offset_s
        self.end = start + self.duration_s
        self.cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        loop, now = self.loop, time.monotonic()
        loop.call_later(self.end - now, self.close_schedule)
        loop.call_later(self.end + self.timeout_s + HARD_GRACE_S - now, self.overran)
        for tick in range(1, math.ceil(self.duration_s + self.timeout_s) + 2):
            loop.call_later(start + tick - now, self.tick, tick)
        loop.call_later(WATCHDOG_S, self.watchdog)
        self.pump()

    def close_schedule(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        if now < self.end:  # uvloop rounds timers to the millisecond: this one came early
            self.loop.call_later(self.end - now, self.close_schedule)
            return
        self.pump()  # whatever became due since the last wake-up still goes out
        self.closed = True
        self.unsent = self.total - self.head
        # Each one waited from its intended time until now, when the run stopped waiting for
        # it: a lower bound of what its client would have seen. The newest waited least.
        newest = self.start + (self.total - 1) / self.rate
        record_backlog(self.hist, now - newest, 1 / self.rate, self.unsent)
        if self.busy == 0:
            self.finish()

    def watchdog(self) -> None:
        """Requests on the wire longer than timeout_s fail as ``timeout``; their connection is
        dropped and the next request opens a new one."""
        if self.finished.done():
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == WAITING and now - slot.sent_at > self.timeout_s:
                self.fail(slot, "timeout")
            elif slot.state == CONNECTING and self.closed and now > self.end + self.timeout_s:
                self.errors["connect"] += 1  # its connect outlived the drain: give up on it
                self.release(slot)
        self.loop.call_later(WATCHDOG_S, self.watchdog)

    def tick(self, number: int) -> None:
        if not self.finished.done():
            emit("TICK", {"tick": number, "completed": self.completed,
                          "errors": sum(self.errors.values()), "in_flight": self.in_flight()})

    def overran(self) -> None:
        print(f"openloop worker {self.index}: still running {HARD_GRACE_S:g}s after duration + "
              "timeout; giving up", file=sys.stderr, flush=True)
        os._exit(EXIT_OVERRAN)

    def finish(self) -> None:
        if self.finished.done():
            return
        after = resource.getrusage(resource.RUSAGE_SELF)
        user_s = after.ru_utime - self.cpu_before.ru_utime
        system_s = after.ru_stime - self.cpu_before.ru_stime
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.kill()
        self.waker.close()
        emit("RESULT", {
            "index": self.index, "intended": self.total, "sent": self.sent,
            "unsent": self.unsent, "completed": self.completed, "bytes": self.bytes,
            "connections": len(self.slots), "dispatched": self.head, "busy_s": self.busy_s,
            "errors": self.errors,
            "status_codes": {str(k): v for k, v in self.status_codes.items()},
            "cpu_user_s": user_s, "cpu_system_s": system_s,
            "hist": self.hist.encode().decode("ascii")})
        self.finished.set_result(None)


def emit(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload, separators=(',', ':'))}\n")
    sys.stdout.flush()


async def run(cfg: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    gen = Generator(cfg, loop)
    connect_s = min(gen.timeout_s, 10.0)
    opened = await asyncio.gather(*(gen.open(slot, connect_s) for slot in gen.slots))
    emit("READY", {"index": gen.index, "open": sum(opened), "connections": len(gen.slots)})
    stdin = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin.buffer)
    try:
        line = await asyncio.wait_for(stdin.readline(), GO_TIMEOUT_S)
    except TimeoutError:
        line = b""
    finally:
        transport.close()
    word, _, value = line.decode().partition(" ")
    if word != "GO":
        print(f"openloop worker {gen.index}: no GO from the parent ({line!r}); exiting",
              file=sys.stderr, flush=True)
        return 1
    gen.go(float(value))
    await gen.finished
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop_worker")
    parser.add_argument("--parent", type=int, required=True,
                        help="the parent's pid: this process ends if that one is gone")
    args = parser.parse_args(argv)
    die_with_parent()  # here, not in a preexec_fn: the parent may be running threads
    if os.getppid() != args.parent:
        return 1  # the parent died before PR_SET_PDEATHSIG was set: nobody will read us
    cfg = json.loads(sys.stdin.buffer.readline())
    raise_nofile(int(cfg["connections"]) + 64)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(cfg))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
