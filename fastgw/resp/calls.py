"""What a command is on its way in, and how its end is counted and awaited.

What it owns
    ``Args`` and ``pack_command`` (RESP encoding by hiredis, typed), ``Counters`` (the error
    count a pool's connections share) and ``future_callback`` (the adapter behind every
    awaitable ``execute``: a closure and a Future per command, so never on the hot path).

Invariants
    * ``future_callback``'s callback tolerates a Future its awaiter cancelled: the reply is
      dropped, and the connection's reply order is untouched (the callback is still called).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeAlias, cast

import hiredis

from fastgw.resp.errors import Callback

__all__ = ["Arg", "Args", "Counters", "future_callback", "pack_command"]

Arg: TypeAlias = bytes | str | int | float | memoryview
Args: TypeAlias = tuple[Arg, ...]

# hiredis's stub types the argument as a 1-tuple and leaves the return untyped.
pack_command: Final = cast(Callable[[Args], bytes], hiredis.pack_command)


class Counters:
    """Counts shared by the connections of one pool (exported as metrics by the owner)."""

    __slots__ = ("errors",)

    def __init__(self) -> None:
        self.errors = 0
        """Commands whose callback got an exception: error reply, timeout, refused, lost."""


def future_callback(future: asyncio.Future[object]) -> Callback:
    """A callback that resolves ``future`` with the reply, or fails it with the error."""

    def resolve(reply: object) -> None:
        if future.done():  # cancelled by its awaiter
            return
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    return resolve
