"""What runs inside one forked worker process: boot, report, serve, beat, drain, exit; and
both ends of the pipe that tells the master about it.

The master (``supervisor.py``) forks through :meth:`WorkerProcess.fork`, whose child calls
:func:`run_worker`, then leaves through ``os._exit`` with the code it returns: a worker never
returns into the master's code. :class:`WorkerProcess` is the master's handle on the child
(pid, pipe, state) and decodes what the pipe says; the decisions stay in the supervisor.

Life of a worker, and why each step is where it is:

1. **Reset signals.** The child inherits the master's Python-level handlers and its wakeup fd
   (the self-pipe); both belong to the master, so they are dropped first. SIGHUP is ignored
   (reload is the master's business: a terminal hang-up reaches the whole process group, and a
   worker must not die of it). SIGPIPE stays ignored as Python leaves it.
2. **uvloop**, created here, after fork: an event loop (epoll fd, timers, thread pool) must
   never cross a fork, which is why the master starts none.
3. **Boot**: ``bind_listener`` (this worker's own SO_REUSEPORT socket on the port the master
   reserved), then ``GatewayServer.start`` builds this process's plan and pools. Any failure
   here is a *boot error*: one line ``worker <pid>: boot error: <message>`` on stderr, the
   message on the pipe, and exit code :data:`BOOT_ERROR_EXIT`, which tells the master to halt
   instead of respawning (a worker that cannot boot would only crash-loop).
4. **Ready**: one byte ``R`` on the pipe. The master counts a generation as serving only when
   every worker of it has said so; a reload retires the old generation only then.
5. **Heartbeat**: the event loop itself writes ``.`` every ``HEARTBEAT_INTERVAL_S`` through
   ``loop.call_later`` (not a thread, not a timer signal), so the beat proves the *loop* runs:
   a callback stuck in a CPU loop or a blocking call stops the beats and the master kills the
   worker after ``HEARTBEAT_TIMEOUT_S``. The beat also notices an orphaned worker (the master
   died: the parent pid changed or the pipe broke) and drains it.
6. **Stop**: SIGTERM or SIGINT → ``GatewayServer.drain(drain_timeout_s)`` (stop accepting,
   finish in-flight requests with ``Connection: close``, cut the rest at the deadline), exit 0.
   SIGQUIT → ``os._exit(0)`` at once: the kernel resets every open connection. Closing the
   listener resets what waits in its accept queue unless ``net.ipv4.tcp_migrate_req`` is on
   (then the kernel hands it to a sibling listener): see :func:`enable_migrate_req`.

Pipe protocol (worker → master, one pipe per worker, each write a single ``write(2)`` well
under ``PIPE_BUF`` so it is atomic): ``R`` ready, ``.`` heartbeat, ``E<message>\\n`` boot error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import uvloop

from fastgw.errors import BootError
from fastgw.limits import HEARTBEAT_INTERVAL_S
from fastgw.listen import admin_address, bind_listener
from fastgw.obs.logging import LogOutputError, configure_logging
from fastgw.server import GatewayServer

if TYPE_CHECKING:
    from fastgw.config import Config

log = logging.getLogger("fastgw.worker")

BOOT_ERROR_EXIT: Final = 3
"""Exit code of a worker that failed before it was ready: the master halts, never respawns."""

MSG_READY: Final = b"R"
MSG_BEAT: Final = b"."
MSG_BOOT_ERROR: Final = b"E"
MAX_BOOT_MESSAGE_BYTES: Final = 1024  # cut so that the pipe write stays atomic (< PIPE_BUF)
MAX_PIPE_READ_BYTES: Final = 4096  # one read of a worker's pipe by the master
MAX_PIPE_READS_AT_EXIT: Final = 16  # reads of a dead worker's pipe before it is closed
MIGRATE_REQ_PATH: Final = "/proc/sys/net/ipv4/tcp_migrate_req"

BOOTING: Final = "booting"
READY: Final = "ready"
STOPPING: Final = "stopping"

# Signals the master handles for itself; a worker puts each back to its default first.
MASTER_SIGNALS: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a forked worker needs, decided by the master before the fork."""

    config: Config
    host: str
    port: int  # the port the master reserved (already resolved when the config said 0)
    workers: int  # size of this worker's generation: its share of connection limits
    drain_timeout_s: float
    pipe_fd: int  # write end of this worker's pipe to the master
    master_pid: int
    limits_fd: int = -1  # the instance's shared rate-limit table (inherited); -1: make one
    slot: int = 0  # this worker's place in its generation (slot 0 runs the health checks)
    health_fd: int = -1  # the generation's shared health table (inherited); -1: make one
    bans_fd: int = -1  # the generation's ban board (inherited); -1: make one if bans are on
    admin_port: int = 0  # the metrics port to bind (the master reserved it); 0: metrics off
    metrics_fd: int = -1  # the generation's metrics board (inherited); -1: make one if on
    metrics_chain: tuple[int, ...] = ()  # older generations' boards not carried over yet


def reset_signals() -> None:
    """Drop the master's handlers and wakeup fd (first thing after fork, before any fd closes:
    the C handler must not write to a closed, maybe reused, fd number)."""
    signal.set_wakeup_fd(-1)
    for signum in MASTER_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_worker(spec: WorkerSpec) -> int:
    """The body of a worker process; returns its exit code (0, or :data:`BOOT_ERROR_EXIT`)."""
    reset_signals()
    os.set_blocking(spec.pipe_fd, False)
    worker = Worker(spec)
    try:  # this generation's logging config, and the slot on every line (obs/logging.py)
        configure_logging(spec.config, worker=spec.slot)
    except LogOutputError as error:  # the master opened it a moment ago: the disk changed
        return worker.boot_failed(str(error), None)
    # SIGINT is SIG_DFL here, so the Runner installs no KeyboardInterrupt handler of its own.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(worker.serve())


class Worker:
    """One worker's event-loop side: boot, the heartbeat chain, and the signal handlers."""

    __slots__ = ("_beat", "_loop", "_server", "_spec", "_stop")

    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = spec
        self._server: GatewayServer | None = None
        self._beat: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def serve(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        # Installed before booting, so a SIGTERM that arrives during boot drains right after it.
        loop.add_signal_handler(signal.SIGTERM, self.handle_term)
        loop.add_signal_handler(signal.SIGINT, self.handle_int)
        loop.add_signal_handler(signal.SIGQUIT, self.handle_quit)
        spec = self._spec
        sock: socket.socket | None = None
        try:
            sock = bind_listener(spec.host, spec.port)
            at = admin_address(spec.config)
            admin = bind_listener(at[0], spec.admin_port) if at and spec.admin_port else None
            server = GatewayServer(
                spec.config,
                spec.workers,
                spec.limits_fd,
                health_fd=spec.health_fd,
                bans_fd=spec.bans_fd,
                slot=spec.slot,
                admin_sock=admin,
                metrics_fd=spec.metrics_fd,
                metrics_chain=spec.metrics_chain,
            )
            await server.start(sock)
        except BootError as error:
            return self.boot_failed(str(error), sock)
        except Exception as error:  # any failure to build the plan is a boot error, not a crash
            return self.boot_failed(f"{type(error).__name__}: {error}", sock)
        self._server = server
        self._send(MSG_READY)
        log.info("worker %d ready on %s:%d", os.getpid(), spec.host, spec.port)
        self._beat = loop.call_later(HEARTBEAT_INTERVAL_S, self.on_beat_due)
        await stop.wait()
        clean = await server.drain(spec.drain_timeout_s)
        if self._beat is not None:
            self._beat.cancel()
        if clean:
            log.info("worker %d drained", os.getpid())
        else:
            log.warning(
                "worker %d: drain deadline (%.1fs) cut open connections",
                os.getpid(),
                spec.drain_timeout_s,
            )
        return 0

    def boot_failed(self, message: str, sock: socket.socket | None) -> int:
        if sock is not None and sock.fileno() >= 0:
            sock.close()
        message = " ".join(message.split())  # one line, whatever the exception said
        print(f"worker {os.getpid()}: boot error: {message}", file=sys.stderr, flush=True)
        data = message.encode("utf-8", "replace")[:MAX_BOOT_MESSAGE_BYTES]
        self._send(MSG_BOOT_ERROR + data + b"\n")
        return BOOT_ERROR_EXIT

    def _send(self, message: bytes) -> bool:
        """One atomic write to the master; False when the master is gone."""
        try:
            os.write(self._spec.pipe_fd, message)
        except BlockingIOError:
            return True  # the master is busy and the pipe is full: a lost beat is harmless
        except OSError:
            return False
        return True

    def on_beat_due(self) -> None:
        """Timer callback: beat, unless the master is gone (then drain: nobody supervises us)."""
        if os.getppid() != self._spec.master_pid or not self._send(MSG_BEAT):
            log.warning(
                "worker %d: master %d is gone; draining", os.getpid(), self._spec.master_pid
            )
            self._request_stop()
            return
        loop = self._loop
        assert loop is not None
        self._beat = loop.call_later(HEARTBEAT_INTERVAL_S, self.on_beat_due)

    def _request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def handle_term(self) -> None:
        self._request_stop()

    def handle_int(self) -> None:
        self._request_stop()

    def handle_quit(self) -> None:
        os._exit(0)


def enable_migrate_req() -> bool:
    """Have the kernel hand a closing listener's queued connections to a sibling listener
    (Linux >= 5.14) instead of resetting them. Returns whether it is on; never raises."""
    try:
        with open(MIGRATE_REQ_PATH, "r+", encoding="ascii") as file:
            if file.read().strip() == "1":
                return True
            file.seek(0)
            file.write("1\n")
    except OSError as error:
        log.warning(
            "%s cannot be set (%s): connections queued on a draining worker's listener "
            "may be reset during a reload",
            MIGRATE_REQ_PATH,
            error.strerror,
        )
        return False
    log.info("enabled %s for a loss-free listener handoff", MIGRATE_REQ_PATH)
    return True


# -- the master's side of the pipe ------------------------------------------------------------


class WorkerProcess:
    """The master's handle on one forked worker: its pid, the read end of its pipe and what
    the pipe said. The supervisor owns the decisions; this class only forks and decodes."""

    __slots__ = (
        "boot_error",
        "fd",
        "generation",
        "kill_at",
        "last_beat",
        "pid",
        "ready_at",
        "slot",
        "started",
        "state",
    )

    def __init__(self, pid: int, fd: int, generation: int, slot: int) -> None:
        self.pid = pid
        self.fd = fd  # read end of the worker's pipe; -1 once closed
        self.generation = generation
        self.slot = slot
        self.state = BOOTING
        self.started = self.last_beat = time.monotonic()
        self.ready_at = 0.0
        self.kill_at: float | None = None  # SIGKILL deadline once asked to stop
        self.boot_error: str | None = None

    @classmethod
    def fork(
        cls, spec: WorkerSpec, generation: int, slot: int, close_in_child: Iterable[int]
    ) -> WorkerProcess:
        """Fork a worker that runs :func:`run_worker` and exits; ``spec.pipe_fd`` is ignored
        (a fresh pipe is made). ``close_in_child`` are the master's fds the worker must not
        hold: its self-pipe, other workers' pipes, the port reservations."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()  # or the child would flush the master's buffered output again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never return into the master's code
            code = 1
            try:
                reset_signals()
                os.close(read_fd)
                for fd in close_in_child:
                    os.close(fd)
                code = run_worker(dataclasses.replace(spec, pipe_fd=write_fd))
            except BaseException:
                log.exception("worker %d crashed", os.getpid())
            finally:
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return cls(pid, read_fd, generation, slot)

    def read_pipe(self) -> bool:
        """Read what the worker wrote; True when this read made it ready."""
        try:
            data = os.read(self.fd, MAX_PIPE_READ_BYTES)
        except BlockingIOError:
            return False
        if not data:  # EOF: the worker exited; the reap decides what that means
            self.close_pipe()
            return False
        self.last_beat = time.monotonic()
        if MSG_BOOT_ERROR in data:
            self.boot_error = data.split(MSG_BOOT_ERROR, 1)[1].decode("utf-8", "replace").strip()
        elif MSG_READY in data and self.state == BOOTING:
            self.state = READY
            self.ready_at = self.last_beat
            return True
        return False

    def read_last_words(self) -> None:
        """After the worker died: read what is left in its pipe (ready, boot error), close it."""
        for _ in range(MAX_PIPE_READS_AT_EXIT):
            if self.fd < 0:
                return
            self.read_pipe()
        self.close_pipe()

    def close_pipe(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
