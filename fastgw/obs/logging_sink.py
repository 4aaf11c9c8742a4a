"""Where log lines go: stdout, stderr or a file, written as whole lines with ``write(2)``.

What it owns
    ``LogSink``: one file descriptor and the rules for writing to it from several processes
    (the master and every worker write to the same output) and from two threads of a worker
    (its event loop, and the access log's writer thread).

Invariants
    * **Whole lines, one system call.** ``write`` and ``write_lines`` hand the kernel whole
      lines only. A file is opened ``O_APPEND``, so each write lands at the end as one piece
      whatever the other processes write. A pipe (docker, systemd, a terminal) keeps a write
      in one piece only up to ``PIPE_BUF`` bytes, so batches to a pipe are cut at line
      boundaries below it (a single longer line cannot be helped).
    * **Rotation without signals.** For a file, at most once per
      ``LOG_REOPEN_CHECK_INTERVAL_S`` a write first checks that the path still names the open
      file (same device and inode) and reopens it when not: logrotate's default ``create``
      mode (rename, then a new file) is followed by every process within that interval, with
      no SIGHUP or SIGUSR1 to deliver to each worker; ``copytruncate`` needs nothing (append
      mode). Lines written before the check go to the renamed file, which logrotate's usual
      ``delaycompress`` keeps open for writing.
    * **Never stalls for long.** A blocking descriptor blocks as any logging would. A
      non-blocking one that is full (a stdio pipe a parent made non-blocking) is waited for at
      most ``LOG_WRITE_BLOCKED_WAIT_S``, then the rest of the data is dropped and
      ``OSError`` raised (``logging.Handler.handleError`` reports it, once per line).
    * A lock makes check-reopen-write one step: a thread never writes to a descriptor the
      other thread just closed (and whose number the kernel may have reused). The master never
      has a second thread, so the lock is never held across its ``fork()``.
    * stdout and stderr are file descriptors 1 and 2 themselves, never closed here; Python's
      ``sys.stdout`` buffer is bypassed (``print`` users flush, as ``fastgw serve`` does).
"""

from __future__ import annotations

import os
import select
import stat
import threading
import time
from collections.abc import Sequence
from typing import Final

from fastgw.errors import FastgwError
from fastgw.limits import LOG_REOPEN_CHECK_INTERVAL_S, LOG_WRITE_BLOCKED_WAIT_S

__all__ = ["LogOutputError", "LogSink"]

STDIO_FDS: Final = {"stdout": 1, "stderr": 2}
FILE_MODE: Final = 0o640  # log lines carry client addresses and customer ids: not world-readable
FILE_MAX_WRITE_BYTES: Final = 1 << 20  # one batch to a file; append-mode writes never interleave
OPEN_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class LogOutputError(FastgwError):
    """A log output that cannot be opened (names the path and the reason)."""


class LogSink:
    """``target``: ``"stdout"``, ``"stderr"`` or an absolute file path (see the module
    docstring for what a write guarantees)."""

    __slots__ = ("_fd", "_identity", "_lock", "_max_write", "_next_check_s", "path", "target")

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._next_check_s = 0.0
        self._identity: tuple[int, int] | None = None
        if target in STDIO_FDS:
            self.path: str | None = None
            self._fd = STDIO_FDS[target]
        else:
            self.path = target
            self._fd = self._open(target)
        self._max_write = self._write_limit(self._fd)

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, OPEN_FLAGS, FILE_MODE)
        except OSError as error:
            raise LogOutputError(
                f"cannot open log output {path!r}: {error.strerror or error}"
            ) from None

    def _write_limit(self, fd: int) -> int:
        try:
            info = os.fstat(fd)
        except OSError:  # a closed stdio descriptor: writes will fail and be reported
            return select.PIPE_BUF
        if stat.S_ISREG(info.st_mode):
            if self.path is not None:
                self._identity = (info.st_dev, info.st_ino)
            return FILE_MAX_WRITE_BYTES
        return select.PIPE_BUF

    @property
    def fileno(self) -> int:
        return self._fd

    def write(self, data: bytes) -> None:
        """Write ``data`` (whole lines) in one system call where the output allows."""
        with self._lock:
            self._check_rotated()
            self._write_all(data)

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Write many lines (each ending in a newline) in as few system calls as keep them
        whole on this output (module docstring)."""
        limit = self._max_write
        with self._lock:
            self._check_rotated()
            batch: list[bytes] = []
            size = 0
            for line in lines:
                if batch and size + len(line) > limit:
                    self._write_all(b"".join(batch))
                    batch, size = [], 0
                batch.append(line)
                size += len(line)
            if batch:
                self._write_all(b"".join(batch))

    def _check_rotated(self) -> None:
        path = self.path
        if path is None or self._identity is None:  # stdio, or a device or FIFO path
            return
        now = time.monotonic()
        if now < self._next_check_s:
            return
        self._next_check_s = now + LOG_REOPEN_CHECK_INTERVAL_S
        try:
            info = os.stat(path)
            if (info.st_dev, info.st_ino) == self._identity:
                return
        except OSError:
            pass  # gone (renamed away, not recreated yet): make it again
        try:
            fd = self._open(path)
        except LogOutputError:
            return  # keep writing to the old file; the next check tries again
        old, self._fd = self._fd, fd
        os.close(old)
        self._max_write = self._write_limit(fd)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        deadline_s = 0.0
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                now = time.monotonic()
                if not deadline_s:
                    deadline_s = now + LOG_WRITE_BLOCKED_WAIT_S
                elif now >= deadline_s:
                    raise OSError(
                        f"log output {self.target} refused writes for "
                        f"{LOG_WRITE_BLOCKED_WAIT_S}s; {len(view)} bytes dropped"
                    ) from None
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll(max(1, int((deadline_s - now) * 1000)))
                continue
            view = view[written:]

    def close(self) -> None:
        """Close a file output (stdio stays open); idempotent."""
        with self._lock:
            if self.path is not None and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
