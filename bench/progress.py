"""The live progress line shown while a run is under way.

On a terminal one status line is rewritten about once a second (elapsed time, requests so far
when the generator reports them, the proxy's CPU use and memory); when stderr is not a terminal
(CI, a log file) nothing is drawn, so logs hold only the per-run result lines. The line is
drawn from a daemon thread that reads ``/proc``: the process under test is never asked for
anything, so watching it costs it nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, TextIO

from bench.procs import CLK_TCK, cpu_snapshot, memory_of, tree_pids

TICK_S: Final = 1.0


class LiveLine:
    """One rewritable status line on ``stream`` (stderr by default), only on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        pad = " " * max(0, self._width - len(text))
        self._stream.write(f"\r{text}{pad}")
        self._stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


class RunProgress:
    """While a run lasts: ``label  12.0/30 s  45,000 req  fastgw 97% CPU  62 MB`` every tick.

    ``completed`` (optional) returns the requests done so far when the load generator can say
    (the open-loop generator can; wrk reports only at its end)."""

    def __init__(self, label: str, duration_s: float, root_pid: int,
                 completed: Callable[[], int | None] | None = None,
                 line: LiveLine | None = None) -> None:
        self._label = label
        self._duration_s = duration_s
        self._root_pid = root_pid
        self._completed = completed
        self._line = line if line is not None else LiveLine()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunProgress:
        if self._line.enabled:
            self._thread = threading.Thread(target=self._loop, name="bench-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * TICK_S)
        self._line.clear()

    def _loop(self) -> None:
        started = time.monotonic()
        pids = tree_pids(self._root_pid)
        last_ticks, last_at = cpu_snapshot(pids).total_ticks, started
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            pids = tree_pids(self._root_pid)
            ticks = cpu_snapshot(pids).total_ticks
            cpu_pct = 100 * (ticks - last_ticks) / CLK_TCK / max(1e-6, now - last_at)
            last_ticks, last_at = ticks, now
            parts = [self._label, f"{now - started:5.1f}/{self._duration_s:g} s"]
            done = self._completed() if self._completed is not None else None
            if done is not None:
                parts.append(f"{done:,} req")
            parts.append(f"{cpu_pct:4.0f}% CPU  {memory_of(pids).rss_mb:.0f} MB")
            self._line.show("  ".join(parts))
