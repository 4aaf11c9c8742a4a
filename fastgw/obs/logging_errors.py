"""Error lines for failures that can repeat once per request: each with its context, at most one
line per interval and worker, and a count of the ones held back.

What it owns
    ``ThrottledLog`` (one line per ``interval_s``; the next line says how many were
    suppressed in between) and ``report_upstream_failure``, called by the client connection
    when a request's last upstream try failed and the client gets 502/504 (or, when half the
    response was already relayed, a reset): the instance, the status and code sent, the
    request id and the retries, as fields of the line.

Why throttled, and why here
    A backend that goes away fails every request routed to it: one line per failure would be
    thousands per second, drowning the line that matters (the breaker opening: routing/
    health.py logs that transition once per instance). One line per second per worker keeps a
    sample with full context and the rate (``suppressed``). Failed tries that a retry recovered
    are not errors and are not logged; the breaker and the metrics count them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastgw.limits import UPSTREAM_ERROR_LOG_INTERVAL_S

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastgw.exchange import Exchange
    from fastgw.replies import ErrorReply

__all__ = ["ThrottledLog", "report_upstream_failure"]


class ThrottledLog:
    """At most one line per ``interval_s``; the next one carries ``suppressed=<count>``.

    ``due()`` first (it counts what it holds back), then build the line and ``log`` it: a
    held-back failure costs one clock read, no formatting."""

    __slots__ = ("_interval_s", "_last_s", "_logger", "suppressed")

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._last_s = -interval_s
        self.suppressed = 0

    def due(self) -> bool:
        """Whether a line may go now; when not, the line is counted as suppressed."""
        if time.monotonic() - self._last_s < self._interval_s:
            self.suppressed += 1
            return False
        return True

    def log(self, level: int, msg: str, *args: object, extra: dict[str, Any]) -> None:
        """Log the line ``due()`` allowed, with the count held back since the last one."""
        self._last_s = time.monotonic()
        if self.suppressed:
            extra["suppressed"] = self.suppressed
            self.suppressed = 0
        self._logger.log(level, msg, *args, extra=extra)


_upstream_errors = ThrottledLog(
    logging.getLogger("fastgw.upstream"), UPSTREAM_ERROR_LOG_INTERVAL_S
)


def report_upstream_failure(ex: Exchange, reply: ErrorReply, labels: Sequence[str]) -> None:
    """The last try of ``ex`` failed; the client gets ``reply`` (or a reset if the response
    had started). One line with context, throttled (module docstring)."""
    if not _upstream_errors.due():
        return
    upstream = labels[ex.candidates[ex.attempt]] if ex.candidates else None
    cut = ex.response_started
    _upstream_errors.log(
        logging.WARNING,
        "upstream %s failed: %s",
        upstream,
        "response cut off after it started" if cut else f"{reply.status} {reply.spec.code}",
        extra={
            "request_id": ex.request_id,
            "upstream": upstream,
            "status": ex.status if cut else reply.status,
            "code": reply.spec.code,
            "retries": ex.retries,
            "endpoint": None if ex.route is None else ex.route.endpoint,
        },
    )
