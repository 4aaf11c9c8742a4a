"""Test helpers for callback-style async code (the hot-path Redis client's tests): a uvloop
runner that fails the test when anything reached the loop's exception handler, a recording
callback, and a bounded wait for a condition (no sleep() for readiness: a poll under a
deadline)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

import uvloop

P = ParamSpec("P")
WAIT_S = 5.0  # deadline of one wait for callbacks or a state change


def checked_uvloop(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run the async test on a fresh uvloop; fail if anything reached its exception handler."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        escaped: list[dict[str, Any]] = []

        async def main() -> None:
            asyncio.get_running_loop().set_exception_handler(lambda _, ctx: escaped.append(ctx))
            await fn(*args, **kwargs)

        uvloop.run(main())
        assert not escaped, f"reached the loop's exception handler: {escaped}"

    return wrapper


class Collect:
    """A callback that records each call and when it came; ``wait(n)`` awaits the n-th."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.at: list[float] = []
        self._event = asyncio.Event()

    def __call__(self, reply: object) -> None:
        self.got.append(reply)
        self.at.append(time.monotonic())
        self._event.set()

    async def wait(self, count: int, timeout_s: float = WAIT_S) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < count:
                self._event.clear()
                await self._event.wait()
        return self.got


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)
