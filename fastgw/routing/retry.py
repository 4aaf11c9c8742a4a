"""Retry budget and back-off (``gateway.routing.retry_budget``, ``retry_backoff``).

A retry budget keeps retries a bounded share of traffic, so a failing backend is not hit
harder the more it fails (the "retry storm"): a retry is allowed while the retries of the last
window stay at or below ``share`` x its requests, plus a small floor so that a quiet worker can
still retry now and then (the shape of Finagle's and Envoy's budgets). The window is two
half-window buckets, like the breaker's. Each worker keeps its own budget over the requests it
forwards, so the instance-wide bound is the same share.

Back-off is exponential with full jitter (a uniform draw in ``[0, base * 2^(n-1)]``, capped),
which spreads the retries of many clients that failed together instead of syncing them.
"""

from __future__ import annotations

import random
from typing import Final

RETRY_BUDGET_WINDOW_S: Final = 10.0
"""Span of history the retry budget compares retries with requests over."""

RETRY_BUDGET_FLOOR: Final = 10
"""Retries a window allows whatever the traffic (a quiet worker can still retry)."""

MAX_RETRY_BACKOFF_S: Final = 2.0
"""Longest back-off before one retry (unless ``retry_backoff`` itself is longer)."""


class RetryBudget:
    __slots__ = (
        "_bucket_end_s",
        "_previous_requests",
        "_previous_retries",
        "_share",
        "refused",
        "requests",
        "retries",
    )

    def __init__(self, share: float, now_s: float = 0.0) -> None:
        """``now_s``: when the first bucket begins (monotonic seconds): the requests the
        forward stage counts before the first rotation belong to it."""
        self._share = share
        self.requests = 0  # this bucket's; the forward stage bumps it per request
        self.retries = 0
        self.refused = 0  # retries the budget refused, in all
        self._previous_requests = 0
        self._previous_retries = 0
        self._bucket_end_s = now_s + RETRY_BUDGET_WINDOW_S / 2

    def withdraw(self, now_s: float) -> bool:
        """Take one retry from the budget; False when it is spent."""
        if now_s >= self._bucket_end_s:
            self.rotate(now_s)
        requests = self.requests + self._previous_requests
        retries = self.retries + self._previous_retries
        if retries + 1 > self._share * requests + RETRY_BUDGET_FLOOR:
            self.refused += 1
            return False
        self.retries += 1
        return True

    def refund(self) -> None:
        """Give back the retry last withdrawn (it found no instance to go to)."""
        if self.retries > 0:
            self.retries -= 1

    def rotate(self, now_s: float) -> None:
        """Age the buckets when the current one is over (called on use and by the tick)."""
        if now_s < self._bucket_end_s:
            return
        half = RETRY_BUDGET_WINDOW_S / 2
        if now_s - self._bucket_end_s < half:
            self._previous_requests, self._previous_retries = self.requests, self.retries
            self._bucket_end_s += half
        else:
            self._previous_requests = self._previous_retries = 0
            self._bucket_end_s = now_s + half
        self.requests = self.retries = 0


def backoff_s(base_s: float, retry: int, draw: float | None = None) -> float:
    """The wait before retry number ``retry`` (1-based): full jitter over an exponential
    ceiling; ``draw`` in [0, 1) replaces the random draw (tests)."""
    ceiling = min(max(MAX_RETRY_BACKOFF_S, base_s), base_s * 2.0 ** min(retry - 1, 30))
    return (random.random() if draw is None else draw) * ceiling
