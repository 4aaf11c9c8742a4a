"""What a hot-path Redis command can end in, besides its reply.

What it owns
    The exception classes a ``Callback`` receives (as instances, never raised across
    ``data_received``), ``ReplyError`` (hiredis's own class, so no wrapping per error reply)
    and the ``Callback`` type itself.

Invariants
    * ``RedisOverloaded`` is a ``RedisUnavailable``: a caller that only distinguishes "Redis
      answered" from "it did not" treats both alike; one that wants to tell a local bound from
      an outage can.
    * ``RedisTimeout`` is not a ``ConnectionError``: the command may still have run on the
      server (its late reply is discarded), which matters to a caller that would retry a
      non-idempotent command.
    * ``-MOVED`` and ``-ASK`` replies never reach a callback of the Cluster client unless its
      redirect bound was crossed; every other error reply arrives as a ``ReplyError``.

Why instances and not raises
    A callback runs inside the protocol's ``data_received`` (or a timer). Raising there would
    abort the delivery of every later reply of the same read; passing the error as a value
    keeps one bad reply from touching the others and leaves the failure policy to the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import hiredis

__all__ = [
    "Callback",
    "RedisOverloaded",
    "RedisTimeout",
    "RedisUnavailable",
    "ReplyError",
]


class RedisUnavailable(ConnectionError):
    """No connection to send on: never connected, lost, closed, or the node is unknown."""


class RedisTimeout(TimeoutError):
    """No reply within the command's deadline (``timeout_s`` after it was sent)."""


class RedisOverloaded(RedisUnavailable):
    """Refused before sending: too many commands in flight, or the socket is not draining."""


ReplyError: TypeAlias = hiredis.ReplyError
"""An error reply (``-NOSCRIPT ...``, ``-WRONGTYPE ...``), as hiredis builds it."""

Callback: TypeAlias = Callable[[object], None]
"""Called exactly once per command: with the reply value or an exception instance."""
