"""The master of ``fastgw serve``: fork workers, watch them, reload, stop (gunicorn's arbiter).

Theory.

- **No event loop and no threads in the master, ever.** ``fork()`` copies only the calling
  thread: a lock held by another thread, an epoll set or a loop's self-pipe would be inherited
  half-alive by every worker. The master is a plain ``poll()`` loop, so forking from it is
  always safe, also later, for respawns and reloads.
- **Self-pipe.** A Python signal handler runs between two bytecodes of the main thread, so it
  only queues the signal (bounded, like gunicorn's ``SIG_QUEUE``); ``signal.set_wakeup_fd``
  makes the C-level handler write a byte to a pipe that ``poll()`` watches, so a signal landing
  just before ``poll()`` still wakes it. The main loop then runs ``handle_<signal>``.
- **gc.freeze() before forking.** Everything alive in the master (modules, the config) moves to
  the permanent generation, so the workers' collectors never write to those objects' headers
  and the pages stay shared copy-on-write instead of being copied into every worker.
- **Supervision.** Each worker has a pipe to the master (protocol in ``worker.py``). A ready
  worker that dies is respawned after 1 s, 2 s, 4 s ... ``RESPAWN_BACKOFF_MAX_S`` (reset once it
  stayed up ``RESPAWN_STABLE_S``); one whose heartbeat stops for ``HEARTBEAT_TIMEOUT_S`` is
  SIGKILLed, then respawned; a boot error halts everything: respawning cannot bring back a port
  or a file, it only crash-loops.
- **Reload handoff (SIGHUP).** Load and check the new config; if invalid, log each problem and
  keep serving. Else fork a whole new generation on the same reservation (a new one if host or
  port changed): the kernel spreads new connections over old and new listeners alike. Only when
  every new worker is ready do the old ones get SIGTERM and drain; if the new generation fails
  to boot, it is stopped and the old one keeps serving. A closing listener's accept queue is
  reset unless ``net.ipv4.tcp_migrate_req=1`` moves it to a sibling, so the master turns that on
  when it may (docs/process-model.md measures what is left).
- **Stop.** SIGTERM/SIGINT: workers get SIGTERM (they drain), SIGKILL after the drain deadline
  plus ``STOP_GRACE_S``. SIGQUIT or a second SIGTERM/SIGINT: SIGQUIT, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fastgw import worker
from fastgw.config import ConfigError, load_config
from fastgw.errors import BootError
from fastgw.generation import Generation
from fastgw.limits import HEARTBEAT_TIMEOUT_S, RESPAWN_BACKOFF_MAX_S
from fastgw.obs.logging import LogOutputError, configure_logging
from fastgw.obs.metrics_keeper import BoardKeeper
from fastgw.plan import check_plan
from fastgw.ratelimit.shared import create_table_fd, open_table
from fastgw.worker import BOOT_ERROR_EXIT, BOOTING, READY, STOPPING, WorkerProcess, WorkerSpec

if TYPE_CHECKING:
    from types import FrameType


log = logging.getLogger("fastgw.supervisor")

OUTPUT_KEY: Final = "$.gateway.observability.logging.output"

# Bounds of the process model used only here (candidates for limits.py).
WORKER_BOOT_TIMEOUT_S: Final = 30.0  # not ready this long after the fork: a boot error
RESPAWN_STABLE_S: Final = 30.0  # up this long: the slot's respawn back-off restarts at 1 s
STOP_GRACE_S: Final = 5.0  # beyond the drain deadline, before a stopping worker is SIGKILLed
QUICK_STOP_GRACE_S: Final = 2.0  # after SIGQUIT, before SIGKILL
POLL_MAX_WAIT_S: Final = 1.0  # the master loop checks its timers at least this often
MAX_QUEUED_SIGNALS: Final = 8  # more, while the loop is busy, would only repeat an action


def run_serve(
    config_path: str,
    workers: int | None,
    drain_timeout_s: float,
    on_ready: Callable[[str, int], None] | None = None,
) -> int:
    """The whole ``fastgw serve`` command; the exit code: 0 stopped, 2 bad config, 3 boot error.
    ``on_ready(host, port)`` runs once in the master when the first generation serves."""
    try:
        config = load_config(config_path)
        check_plan(config)
    except ConfigError as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        return 2
    except Exception as error:  # the plan refused the config in a way the checks did not see
        print(
            f"fastgw serve: config does not compile: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 2
    try:  # before any fork, starting no thread: the workers inherit it (obs/logging.py)
        configure_logging(config)
    except LogOutputError as error:
        print(f"{OUTPUT_KEY}: {error}", file=sys.stderr)
        return 2
    if config.gateway.authentication.development.enabled:
        # Worded without "Bearer <token>" so that the log redaction leaves it readable.
        log.warning(
            "DEVELOPMENT TOKENS ARE ON: any token '%s<id>' in the Authorization header is "
            "accepted as customer <id> with every permission and no limits. Never run this "
            "in production.",
            config.gateway.authentication.development.token_prefix,
        )
    server = config.gateway.server
    size = workers or server.workers or os.cpu_count() or 1
    try:
        first = Generation.first(config, size)
    except BootError as error:
        print(f"fastgw serve: {error}", file=sys.stderr)
        return BOOT_ERROR_EXIT
    # One limit table for the instance's life: every worker of every generation shares it.
    limits_fd = create_table_fd(config.gateway.rate_limiting.max_keys)
    try:
        return Supervisor(config_path, workers, drain_timeout_s, on_ready, limits_fd).run(
            first
        )
    finally:
        os.close(limits_fd)


def _freeze() -> None:
    """Freeze every live object before forking; unfreeze and collect first, so that what an
    earlier generation left behind (an old config) is freed instead of frozen for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Supervisor:
    """The master's state and its poll loop (see the module docstring)."""

    def __init__(
        self,
        config_path: str,
        workers: int | None,
        drain_timeout_s: float,
        on_ready: Callable[[str, int], None] | None = None,
        limits_fd: int = -1,
    ) -> None:
        self._on_ready_hook = on_ready
        self._limits_fd = limits_fd
        # The master's own view of the table: only to free the locks of a worker that died
        # holding one (nginx does the same for its shared-memory zones).
        self._limits = open_table(limits_fd) if limits_fd >= 0 else None
        self._config_path = config_path
        self._workers_override = workers  # --workers beats the config, across reloads too
        self._drain_timeout_s = drain_timeout_s
        self._children: dict[int, WorkerProcess] = {}
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._current: Generation | None = None
        self._next: Generation | None = None  # the generation a reload is booting
        self._next_deadline = 0.0
        self._reload_pending = False
        self._announced = False
        self._stopping = False
        self._exit_code = 0
        self._metrics = BoardKeeper()  # generations' metrics boards, until carried over
        self._handlers = {
            signal.SIGHUP: self.handle_hup,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGQUIT: self.handle_quit,
            signal.SIGCHLD: self.handle_chld,
        }

    def run(self, first: Generation) -> int:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in self._handlers:
            signal.signal(signum, self._on_signal)
        worker.enable_migrate_req()
        self._current = first
        self._metrics.add(first.number, first.metrics_fd)
        _freeze()
        for slot in range(first.size):
            self._spawn(first, slot)
        try:
            while True:
                while self._signals:
                    self._handlers[signal.Signals(self._signals.popleft())]()
                self._reap()
                if self._stopping and not self._children:
                    break
                self._check_timers(time.monotonic())
                self._wait()
        finally:
            signal.set_wakeup_fd(-1)
            for signum in self._handlers:
                signal.signal(signum, signal.SIG_DFL)
            for generation in {id(g): g for g in (first, self._current, self._next) if g}.values():
                generation.release()
            self._metrics.close_all()
            os.close(self._wake_r)
            os.close(self._wake_w)
        log.info("master %d exiting with code %d", os.getpid(), self._exit_code)
        return self._exit_code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if len(self._signals) < MAX_QUEUED_SIGNALS:
            self._signals.append(signum)

    def _wait(self) -> None:
        """Sleep in ``poll()`` until a signal (the wakeup fd), a worker's pipe or a timer."""
        now = time.monotonic()
        timeout_s = POLL_MAX_WAIT_S
        for child in self._children.values():
            if child.kill_at is not None:
                timeout_s = min(timeout_s, child.kill_at - now)
        if self._current is not None and self._current.respawn_at:
            timeout_s = min(timeout_s, min(self._current.respawn_at.values()) - now)
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd = {child.fd: child for child in self._children.values() if child.fd >= 0}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(max(0, int(timeout_s * 1000) + 1)):
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif by_fd[fd].read_pipe():
                self._on_ready(by_fd[fd])

    # -- workers -----------------------------------------------------------------------------

    def _generation(self, child: WorkerProcess) -> Generation | None:  # None: a retiring one
        for generation in (self._current, self._next):
            if generation is not None and generation.number == child.generation:
                return generation
        return None

    def _spawn(self, generation: Generation, slot: int) -> None:
        host, port = generation.address
        spec = WorkerSpec(
            generation.config,
            host,
            port,
            generation.size,
            self._drain_timeout_s,
            -1,
            os.getpid(),
            self._limits_fd,
            slot=slot,
            health_fd=generation.health_fd,
            bans_fd=generation.bans_fd,
            admin_port=generation.admin_port,
            metrics_fd=generation.metrics_fd,
            metrics_chain=self._metrics.chain(generation.number),
        )
        inherited = {self._wake_r, self._wake_w, *(c.fd for c in self._children.values())}
        inherited |= self._metrics.newer(generation.number)  # boards it must not see
        for held in (self._current, self._next):
            if held is not None:
                inherited |= held.fds()
                if held is not generation:
                    inherited |= {held.health_fd, held.bans_fd}  # another generation's tables
        child = WorkerProcess.fork(spec, generation.number, slot, sorted(inherited - {-1}))
        self._children[child.pid] = child
        log.info("spawned worker %d (generation %d, slot %d)", child.pid, generation.number, slot)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            # Only a signal can end a worker inside a decision (decide releases in finally).
            limits = self._limits
            if limits is not None and os.WIFSIGNALED(status) and limits.release_locks_of(pid):
                log.warning("worker %d died holding a rate-limit table lock; freed it", pid)
            if child is not None:
                self._on_exit(child, status)
                self._carry_metrics(child.generation)

    def _carry_metrics(self, number: int) -> None:
        """Once no worker of retired (or failed) generation ``number`` is left, carry its
        metrics into the serving generation's board (obs/metrics_keeper.py)."""
        current = self._current
        if self._stopping or current is None or number not in self._metrics:
            return
        if number in (current.number, self._next.number if self._next else None):
            return
        if any(c.generation == number for c in self._children.values()):
            return
        self._metrics.fold(number, into=current.number)
        if self._next is None:  # no newer generation its workers cannot see: scrapes resume
            self._metrics.supersede(current.number, False)

    def _on_exit(self, child: WorkerProcess, status: int) -> None:
        child.read_last_words()
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        generation = self._generation(child)
        if child.state == STOPPING or self._stopping or generation is None:
            log.info("worker %d stopped (%s)", child.pid, how)
        elif generation is self._next:
            reason = f"boot error: {child.boot_error}" if child.boot_error else f"died ({how})"
            log.error(
                "reload failed: worker %d %s; generation %d keeps serving",
                child.pid,
                reason,
                generation.number - 1,
            )
            self._abort_reload()
        elif child.boot_error is not None or code == BOOT_ERROR_EXIT:
            message = child.boot_error or f"exited with {how} before it was ready"
            print(
                f"fastgw serve: worker {child.pid} failed to boot: {message}; halting",
                file=sys.stderr,
                flush=True,
            )
            self._exit_code = BOOT_ERROR_EXIT
            self._begin_stop(quick=False)
        else:
            now = time.monotonic()
            if child.state == READY and now - child.ready_at >= RESPAWN_STABLE_S:
                generation.failures[child.slot] = 0
            delay_s = min(2.0 ** generation.failures[child.slot], RESPAWN_BACKOFF_MAX_S)
            generation.failures[child.slot] += 1
            generation.respawn_at[child.slot] = now + delay_s
            log.warning(
                "worker %d died (%s); respawning slot %d in %.0fs",
                child.pid,
                how,
                child.slot,
                delay_s,
            )

    def _signal_children(self, children: list[WorkerProcess], signum: int, grace_s: float) -> None:
        kill_at = time.monotonic() + grace_s
        for child in children:
            child.state = STOPPING
            child.kill_at = kill_at if child.kill_at is None else min(child.kill_at, kill_at)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _kill(self, child: WorkerProcess) -> None:
        with contextlib.suppress(ProcessLookupError):  # already reaped
            os.kill(child.pid, signal.SIGKILL)

    def _check_timers(self, now: float) -> None:
        for child in list(self._children.values()):
            if child.kill_at is not None and now >= child.kill_at:
                log.warning("worker %d did not stop in time: SIGKILL", child.pid)
                child.kill_at = now + POLL_MAX_WAIT_S  # again later if it is still there
                self._kill(child)
            elif child.state == BOOTING and now - child.started > WORKER_BOOT_TIMEOUT_S:
                child.boot_error = f"not ready {WORKER_BOOT_TIMEOUT_S:.0f}s after the fork"
                child.started = now  # one SIGKILL is enough: the reap halts or aborts
                self._kill(child)
            elif child.state == READY and now - child.last_beat > HEARTBEAT_TIMEOUT_S:
                log.error(
                    "worker %d: no heartbeat for %.1fs (event loop blocked): SIGKILL",
                    child.pid,
                    now - child.last_beat,
                )
                child.last_beat = now  # one SIGKILL is enough: the reap respawns it
                self._kill(child)
        current = self._current
        if current is not None and not self._stopping:
            for slot, due in list(current.respawn_at.items()):
                if now >= due:
                    del current.respawn_at[slot]
                    self._spawn(current, slot)
        if self._next is not None and now > self._next_deadline:
            log.error(
                "reload failed: generation %d not ready after %.0fs",
                self._next.number,
                WORKER_BOOT_TIMEOUT_S,
            )
            self._abort_reload()

    # -- generations ----------------------------------------------------------------------

    def _all_ready(self, generation: Generation) -> bool:
        ready = {
            c.slot
            for c in self._children.values()
            if c.generation == generation.number and c.state == READY
        }
        return len(ready) >= generation.size

    def _on_ready(self, child: WorkerProcess) -> None:
        generation = self._generation(child)
        log.info("worker %d ready (generation %d)", child.pid, child.generation)
        if generation is None or not self._all_ready(generation):
            return
        if generation is self._next:
            self._promote(generation)
        elif not self._announced:
            self._announced = True
            host, port = generation.address
            shown = f"[{host}]" if ":" in host else host
            workers = f"{generation.size} worker" + ("s" if generation.size > 1 else "")
            scheme = "https" if generation.config.gateway.server.tls.enabled else "http"
            print(
                f"fastgw listening on {scheme}://{shown}:{port} ({workers}, pid {os.getpid()})",
                flush=True,
            )
            if generation.admin_port:
                log.info("metrics and admin on port %d", generation.admin_port)
            if self._on_ready_hook is not None:
                self._on_ready_hook(shown, port)
        if self._reload_pending and self._next is None:
            self._reload_pending = False
            self.handle_hup()

    def _promote(self, generation: Generation) -> None:
        old, self._current, self._next = self._current, generation, None
        assert old is not None
        retiring = [c for c in self._children.values() if c.generation == old.number]
        self._signal_children(retiring, signal.SIGTERM, self._drain_timeout_s + STOP_GRACE_S)
        old.release(keep=generation)
        log.info(
            "reload complete: generation %d serving (%d workers), generation %d draining",
            generation.number,
            generation.size,
            old.number,
        )

    def _abort_reload(self) -> None:
        failed, self._next = self._next, None
        if failed is None:
            return
        self._restore_logging()
        doomed = [c for c in self._children.values() if c.generation == failed.number]
        self._signal_children(doomed, signal.SIGTERM, self._drain_timeout_s + STOP_GRACE_S)
        failed.release(keep=self._current)
        if failed.number in self._metrics:
            self._carry_metrics(failed.number)  # at once if none of its workers is left
        elif self._current is not None:
            # No board of its own (metrics off in its config): no fold will come to clear the
            # serving generation's 503; nothing newer is hidden from its workers now.
            self._metrics.supersede(self._current.number, False)
        if self._reload_pending:  # a SIGHUP that came meanwhile may bring a fixed config
            self._reload_pending = False
            self.handle_hup()

    def _restore_logging(self) -> None:
        """A reload failed after ``handle_hup`` applied its logging config to the master: back
        to the serving generation's level, format and output."""
        if self._current is not None:
            with contextlib.suppress(LogOutputError):  # it was open a moment ago
                configure_logging(self._current.config)

    def _begin_stop(self, quick: bool) -> None:
        self._stopping = True
        self._reload_pending = False
        signum, grace_s = (
            (signal.SIGQUIT, QUICK_STOP_GRACE_S)
            if quick
            else (signal.SIGTERM, self._drain_timeout_s + STOP_GRACE_S)
        )
        self._signal_children(list(self._children.values()), signum, grace_s)

    # -- signal handlers: run by the main loop, never inside the OS-level handler ------------

    def handle_hup(self) -> None:
        """Reload: check the new config, boot a new generation, then drain the old one."""
        if self._stopping:
            return
        if self._next is not None or not self._announced:
            self._reload_pending = True  # one reload at a time: this one runs after
            return
        log.info("reloading %s", self._config_path)
        try:
            config = load_config(self._config_path)
            check_plan(config)
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload rejected: %s", problem)
            return
        except Exception as error:  # the plan refused the config in some other way
            log.error("reload rejected: %s: %s", type(error).__name__, error)
            return
        try:  # the master's own lines follow at once; each worker configures after its fork
            configure_logging(config)
        except LogOutputError as error:
            log.error("reload rejected: %s: %s", OUTPUT_KEY, error)
            return
        current = self._current
        assert current is not None
        keys, kept = config.gateway.rate_limiting.max_keys, current.config.gateway.rate_limiting
        if keys != kept.max_keys and self._limits is not None:
            log.warning(
                "gateway.rate_limiting.max_keys changed to %d: the rate-limit table keeps its "
                "size (%d keys) and its state until the next restart",
                keys,
                self._limits.capacity,
            )
        size = self._workers_override or config.gateway.server.workers or os.cpu_count() or 1
        try:
            self._next = current.successor(config, size)
        except BootError as error:
            log.error("reload rejected: %s", error)
            self._restore_logging()
            return
        self._next_deadline = time.monotonic() + WORKER_BOOT_TIMEOUT_S
        self._metrics.add(self._next.number, self._next.metrics_fd)
        self._metrics.supersede(current.number, True)  # its workers cannot see the new board
        _freeze()
        for slot in range(size):
            self._spawn(self._next, slot)

    def handle_term(self) -> None:
        self._begin_stop(quick=self._stopping)  # a second TERM or INT means "now"

    handle_int = handle_term

    def handle_quit(self) -> None:
        self._begin_stop(quick=True)

    def handle_chld(self) -> None:
        self._reap()
