"""The stage chain: plain synchronous calls that return a verdict.

A stage is any callable ``(Exchange) -> int`` returning one of:

- ``CONTINUE``: go on to the next stage;
- ``RESPOND``: the stage set ``ex.reply`` (an error) or ``ex.respond_local(...)``; the
  connection writes it;
- ``PAUSE``: the stage started I/O and owns the exchange until it calls ``ex.resume()`` exactly
  once, or, for the terminal forward stage, until the upstream completes the response.

Only I/O pauses. On the all-local path no coroutine, Task or Event is created per request:
the chain is a tuple of bound methods resolved when the plan was built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from fastgw.exchange import Exchange

CONTINUE: Final = 0
RESPOND: Final = 1
PAUSE: Final = 2

Step = Callable[["Exchange"], int]


class Stage(Protocol):
    """What the plan builder needs from a stage: its step function."""

    def on_request(self, ex: Exchange) -> int: ...


# HOT PATH: no allocation, no await.
def run_chain(ex: Exchange, steps: tuple[Step, ...]) -> int:
    """Run ``steps`` from ``ex.step`` until one does not CONTINUE; return its verdict.

    The plan guarantees every chain ends in a stage that RESPONDs or PAUSEs, so falling off the
    end is a bug, reported as such rather than hanging the client.
    """
    index = ex.step
    count = len(steps)
    while index < count:
        verdict = steps[index](ex)
        index += 1
        if verdict != CONTINUE:
            ex.step = index
            return verdict
    raise AssertionError("stage chain ended without a terminal stage")
