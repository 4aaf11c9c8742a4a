"""A lazily re-armed deadline: one timer handle per connection, cheap to move later.

Connections move their deadline on nearly every event (a request begins, a body chunk
arrives, a response ends). Cancelling and re-creating a timer each time would cost a heap
operation per event. Instead the deadline is a float: moving it *later* is an assignment, and
when the old timer fires early it re-arms itself for the remaining time. Only moving it
*earlier* than the armed timer creates a new handle. At most one handle is alive per deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_handle", "_loop", "_on_expiry", "kind", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[int], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._handle: asyncio.TimerHandle | None = None
        self.when = 0.0  # 0.0 = no deadline
        self.kind = 0  # caller-defined: what expires (header, body, idle, ...)

    # HOT PATH: usually one float assignment.
    def set(self, kind: int, delay_s: float) -> None:
        when = self._loop.time() + delay_s
        self.kind = kind
        self.when = when
        handle = self._handle
        if handle is None or handle.when() > when:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def clear(self) -> None:
        """Forget the deadline; a pending timer finds nothing to do when it fires."""
        self.when = 0.0
        self.kind = 0

    def cancel(self) -> None:
        """Drop the timer too: the owner is going away."""
        self.when = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when == 0.0:
            return
        if self._loop.time() >= when:
            kind = self.kind
            self.when = 0.0
            self.kind = 0
            self._on_expiry(kind)
        else:
            self._handle = self._loop.call_at(when, self._fire)
