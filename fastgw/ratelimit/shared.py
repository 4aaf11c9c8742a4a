"""The shared-memory file of the in-process limiter: made once per instance, mapped by every worker.

What it owns
    ``create_table_fd``: a memfd sized for ``max_keys`` and initialised as an empty
    ``LimitTable``; ``open_table``: a process's own mapping of it.

Invariants
    * The master makes the file before it forks the first worker, so every worker of every
      generation maps the same table (a reload keeps the limits' state; the size is the one the
      instance started with). A gateway run in one process (tests, ``fastgw demo`` workers=1)
      makes its own.
    * The memfd's pages are zero until written and the kernel allocates them on first touch,
      so an idle table costs nothing; a full one costs ``table_bytes`` (about 33 bytes a key).
    * A ``LimitTable`` object is made in the process that uses it (it records that process's
      pid for its locks): never inherit one across a fork, inherit the fd.
"""

from __future__ import annotations

import os

from fastgw._speedups import LimitTable, sets_for_keys, table_bytes

__all__ = ["create_table_fd", "open_table"]


def create_table_fd(max_keys: int) -> int:
    """A new, empty table for at least ``max_keys`` keys; the caller owns the fd."""
    fd = os.memfd_create("fastgw-limits", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, table_bytes(sets_for_keys(max_keys)))
        LimitTable(fd, create=True).close()
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_table(fd: int) -> LimitTable:
    """This process's mapping of the table in ``fd``."""
    return LimitTable(fd)
