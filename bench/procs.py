"""Processes for benchmarks: start services, stop them for sure, read their CPU and memory.

Theory.

- **Every service is a process group of its own** (``start_new_session``): a Ctrl-C on the
  terminal reaches only the bench, which then stops the services in order (SIGTERM to the
  leader, a bounded wait, then SIGKILL to the whole group, so that a worker or an nginx child
  left behind dies too). Each direct child also gets ``PR_SET_PDEATHSIG=SIGTERM``: if the bench
  itself is SIGKILLed, the kernel sends SIGTERM to the masters, which stop their workers.
- **CPU** is ``utime + stime`` from ``/proc/PID/stat`` (clock ticks, usually 10 ms), summed over
  a process tree (master + workers), read before and after a measurement. A process that exits
  in between takes its last ticks with it, and one that starts in between counts whole: both
  are reported (``exited``/``started``) so that a respawned worker is never silently averaged
  in.
- **Memory** is ``VmRSS`` summed over a tree (shared copy-on-write pages count once per
  process, so this over-counts a pre-forked server a little) and, where the kernel has it,
  ``Pss`` from ``smaps_rollup`` (shared pages split between their users: the fair share).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG: Final = 1
READY_POLL_S: Final = 0.05
STOP_TIMEOUT_S: Final = 10.0
KILL_WAIT_S: Final = 3.0
LOG_TAIL_LINES: Final = 40


class BenchError(Exception):
    """An expected failure of a benchmark (a service that did not start, a tool missing...):
    printed as one line per problem, without a traceback."""


# -- /proc readers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    start_ticks: int  # since boot: with the pid, identifies a process across pid reuse
    user_ticks: int  # utime
    system_ticks: int  # stime

    @property
    def cpu_ticks(self) -> int:
        return self.user_ticks + self.system_ticks


def read_stat(pid: int) -> ProcStat | None:
    """One process's ``/proc/PID/stat``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    head, _, rest = text.rpartition(")")  # comm may hold spaces and parentheses
    comm = head.partition("(")[2]
    fields = rest.split()  # fields[0] is field 3 (state) of proc(5)
    return ProcStat(pid=pid, ppid=int(fields[1]), comm=comm, start_ticks=int(fields[19]),
                    user_ticks=int(fields[11]), system_ticks=int(fields[12]))


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (one scan of /proc), root first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is not None:
            children.setdefault(stat.ppid, []).append(stat.pid)
    if read_stat(root) is None:
        return []
    found, queue = [root], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def read_status_kb(pid: int, keys: Sequence[str] = ("VmRSS", "VmHWM")) -> dict[str, int]:
    """Fields of ``/proc/PID/status`` that are in kB (missing ones are left out)."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return out
    for line in lines:
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0])
    return out


def read_pss_kb(pid: int) -> int | None:
    """Proportional set size from ``smaps_rollup`` (None where the kernel lacks it)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def count_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


@dataclass(frozen=True)
class Memory:
    rss_kb: int  # sum of VmRSS
    hwm_kb: int  # sum of VmHWM (per-process peaks)
    pss_kb: int | None  # sum of Pss, None if unavailable
    per_process: dict[int, int]  # pid -> VmRSS kB

    @property
    def rss_mb(self) -> float:
        return self.rss_kb / 1024

    def as_json(self) -> dict[str, object]:
        return {"rss_mb": round(self.rss_kb / 1024, 2), "hwm_mb": round(self.hwm_kb / 1024, 2),
                "pss_mb": None if self.pss_kb is None else round(self.pss_kb / 1024, 2),
                "per_process_rss_mb": {str(pid): round(kb / 1024, 2)
                                       for pid, kb in self.per_process.items()}}


def memory_of(pids: Iterable[int]) -> Memory:
    rss = hwm = 0
    pss: int | None = 0
    per: dict[int, int] = {}
    for pid in pids:
        status = read_status_kb(pid)
        if not status:
            continue
        rss += status.get("VmRSS", 0)
        hwm += status.get("VmHWM", 0)
        per[pid] = status.get("VmRSS", 0)
        one = read_pss_kb(pid)
        pss = None if one is None or pss is None else pss + one
    return Memory(rss_kb=rss, hwm_kb=hwm, pss_kb=pss, per_process=per)


@dataclass(frozen=True)
class CpuSnapshot:
    procs: dict[int, ProcStat]

    @property
    def total_ticks(self) -> int:
        return sum(stat.cpu_ticks for stat in self.procs.values())


def cpu_snapshot(pids: Iterable[int]) -> CpuSnapshot:
    stats = (read_stat(pid) for pid in pids)
    return CpuSnapshot({s.pid: s for s in stats if s is not None})


@dataclass(frozen=True)
class CpuDelta:
    user_s: float
    system_s: float
    exited: list[int]  # in the first snapshot only: their last ticks are lost
    started: list[int]  # in the second only: counted from their start

    @property
    def seconds(self) -> float:
        return self.user_s + self.system_s

    def as_json(self) -> dict[str, object]:
        return {"cpu_s": round(self.seconds, 3), "user_s": round(self.user_s, 3),
                "system_s": round(self.system_s, 3), "exited": self.exited,
                "started": self.started}


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> CpuDelta:
    user = system = 0
    exited, started = [], []
    for pid, now in after.procs.items():
        was = before.procs.get(pid)
        if was is not None and was.start_ticks == now.start_ticks:
            user += now.user_ticks - was.user_ticks
            system += now.system_ticks - was.system_ticks
        else:
            user += now.user_ticks
            system += now.system_ticks
            started.append(pid)
    for pid, was in before.procs.items():
        now_ = after.procs.get(pid)
        if now_ is None or now_.start_ticks != was.start_ticks:
            exited.append(pid)
    return CpuDelta(user_s=user / CLK_TCK, system_s=system / CLK_TCK, exited=exited,
                    started=started)


@dataclass(frozen=True)
class MachineCpu:
    """Whole-machine jiffies from ``/proc/stat`` (the noise around a measurement)."""

    busy: int
    steal: int
    total: int


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return MachineCpu(busy=busy, steal=steal, total=busy + idle + iowait + steal)


class RssSampler:
    """Samples the summed VmRSS of named pid sets every ``interval_s`` in a thread; keeps the
    peak of each. Reads a handful of small files per sample: negligible next to the load."""

    def __init__(self, groups: Mapping[str, Sequence[int]], interval_s: float = 0.5) -> None:
        self._groups = {name: list(pids) for name, pids in groups.items()}
        self._interval_s = interval_s
        self.peak_kb: dict[str, int] = dict.fromkeys(self._groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, pids in self._groups.items():
            total = sum(read_status_kb(pid, ("VmRSS",)).get("VmRSS", 0) for pid in pids)
            self.peak_kb[name] = max(self.peak_kb[name], total)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


# -- services -------------------------------------------------------------------------------


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL: Final = _load_prctl()  # looked up once here: the preexec_fn only calls it


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL (Linux only). Used as the
    ``preexec_fn`` of services (one C call, nothing that takes a lock), and called by bench
    clients that start while the bench runs threads."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Service:
    """One long-running process (and its process group) with its output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    ready_pattern: str | None = None  # regex searched in the log; None: ready once started
    preexec: bool = True  # PR_SET_PDEATHSIG in the child; False where the bench runs threads
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise BenchError(f"{self.name} is not running")
        return self.popen.pid

    def start(self, timeout_s: float = 30.0) -> re.Match[str] | None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            try:
                self.popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=self.env, start_new_session=True,
                    preexec_fn=die_with_parent if self.preexec else None)  # noqa: PLW1509
            except OSError as error:
                raise BenchError(f"{self.name}: cannot start {self.argv[0]}: {error}") from None
        if self.ready_pattern is None:
            return None
        pattern = re.compile(self.ready_pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = pattern.search(self.log_path.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                raise BenchError(f"{self.name} exited with status {self.popen.returncode} "
                                 f"before it was ready; log {self.log_path}:\n{self.log_tail()}")
            time.sleep(READY_POLL_S)
        raise BenchError(f"{self.name} not ready after {timeout_s:.0f}s; log {self.log_path}:\n"
                         f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the leader, wait, then SIGKILL the whole group; the exit status."""
        proc = self.popen
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray workers, or a leader that hung
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_WAIT_S)
        return proc.returncode


class Services:
    """Started services, stopped in reverse order on exit -- also on errors and Ctrl-C, with
    SIGINT/SIGTERM ignored meanwhile so that a second Ctrl-C cannot leave orphans."""

    def __init__(self) -> None:
        self._started: list[Service] = []

    def start(self, service: Service, timeout_s: float = 30.0) -> re.Match[str] | None:
        self._started.append(service)
        return service.start(timeout_s)

    def __iter__(self) -> Iterator[Service]:
        return iter(self._started)

    def __enter__(self) -> Services:
        return self

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        with ignoring_signals():
            while self._started:
                service = self._started.pop()
                codes[service.name] = service.stop()
        return codes

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


@contextlib.contextmanager
def ignoring_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (children inherit it);
    the new (soft, hard)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
