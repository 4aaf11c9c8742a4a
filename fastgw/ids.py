"""Request ids: keep a client's well-formed X-Request-ID, otherwise make one.

A generated id is a per-process random prefix plus a counter in hex: unique across workers and
instances (the prefix has 64 random bits), costs no syscall and no uuid per request, and sorts
by arrival within one worker, which helps reading logs.
"""

from __future__ import annotations

import os
import re
from typing import Final

from fastgw.limits import MAX_REQUEST_ID_BYTES

_WELL_FORMED: Final = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}\Z" % MAX_REQUEST_ID_BYTES)


class RequestIds:
    """Per-worker id source (create it after fork so workers never share a prefix)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex().encode("ascii") + b"-"
        self._counter = 0

    # HOT PATH: one regex match or one counter bump.
    def accept_or_new(self, client_value: bytes | None) -> bytes:
        if client_value is not None and _WELL_FORMED.match(client_value) is not None:
            return client_value
        self._counter += 1
        return self._prefix + b"%x" % self._counter
