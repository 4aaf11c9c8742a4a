"""A circuit breaker per backend instance, per worker (``gateway.routing.circuit_breaker``).

States (the ``fastgw_circuit_state`` encoding)
    CLOSED (0)    requests flow; outcomes are counted.
    OPEN (1)      no request is sent until ``open_until_s``; then HALF_OPEN.
    HALF_OPEN (2) at most ``half_open_probes`` requests in flight; one success closes the
                  circuit, one failure opens it again for a longer cool-down.

Opening
    ``failure_threshold`` failures in a row, or an error share of at least ``error_rate`` among
    the outcomes of the last ``window_s`` once ``min_requests`` of them were seen. The window is
    two half-window buckets (the current one and the one before), so the share covers between
    half a window and a whole one of history and costs two integer bumps per outcome.

Growing cool-down
    Each opening in a row (a half-open probe that failed again) doubles the cool-down from
    ``cooldown_s`` up to ``max_cooldown_s``; a success in HALF_OPEN resets the streak and
    starts a fresh error window. This is the "growing back-off" of passive ejection: an opening
    is published to the other workers of the gateway instance (``health_table``), which adopt
    it with ``adopt_open``, so one worker's evidence ejects the instance for all of them.

What is a failure is the caller's decision (``stages/forward.py``: connect errors, resets,
timeouts, unparseable responses, 5xx). Time comes in as arguments (monotonic seconds), so the
state machine is testable without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2
STATE_NAMES: Final = ("closed", "open", "half_open")
NOW: Final = float("inf")  # an outcome's send time when the caller does not say: "just now"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    cooldown_s: float = 10.0
    max_cooldown_s: float = 300.0
    half_open_probes: int = 1
    window_s: float = 10.0
    probe_timeout_s: float = 60.0  # a probe with no verdict by then frees its slot

    def cooldown_for(self, streak: int) -> float:
        """The cool-down of the ``streak``-th opening in a row (1-based)."""
        return min(self.max_cooldown_s, self.cooldown_s * 2.0 ** min(streak - 1, 60))


class CircuitBreaker:
    __slots__ = (
        "_bucket_end_s",
        "_failures",
        "_half_open_since_s",
        "_last_probe_s",
        "_previous_failures",
        "_previous_requests",
        "_requests",
        "_settings",
        "consecutive_failures",
        "open_until_s",
        "probes_in_flight",
        "state",
        "streak",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self._settings = settings
        self.state = CLOSED
        self.open_until_s = 0.0
        self.streak = 0  # openings in a row (the cool-down's exponent)
        self.probes_in_flight = 0
        self.consecutive_failures = 0
        self._requests = 0
        self._failures = 0
        self._previous_requests = 0
        self._previous_failures = 0
        self._bucket_end_s = 0.0
        self._last_probe_s = 0.0
        self._half_open_since_s = 0.0

    # -- asked before sending ------------------------------------------------------------------

    def admit(self, now_s: float) -> bool:
        """May a request go to this instance now? A HALF_OPEN admission takes a probe slot,
        which ``on_success``/``on_failure``/``release_probe`` gives back."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN and not self.cool_down_over(now_s):
            return False
        if self.probes_in_flight >= self._settings.half_open_probes:
            if now_s - self._last_probe_s < self._settings.probe_timeout_s:
                return False
            # Probes that never reported (their client left, so no outcome came): free them.
            self.probes_in_flight = 0
        self.probes_in_flight += 1
        self._last_probe_s = now_s
        return True

    def cool_down_over(self, now_s: float) -> bool:
        """OPEN past its deadline turns HALF_OPEN (admit or the worker's refresh asks);
        True when the breaker is HALF_OPEN now."""
        if self.state == OPEN and now_s >= self.open_until_s:
            self.state = HALF_OPEN
            self.probes_in_flight = 0
            self._half_open_since_s = now_s
        return self.state == HALF_OPEN

    def release_probe(self) -> None:
        """A probe ended with no verdict on the instance (the client left first)."""
        if self.state == HALF_OPEN and self.probes_in_flight > 0:
            self.probes_in_flight -= 1

    # -- outcomes ---------------------------------------------------------------------------------

    # HOT PATH: two compares and two bumps when closed and the bucket is current.
    def on_success(self, now_s: float, sent_s: float = NOW) -> bool:
        """Count a success of a try sent at ``sent_s``; True when it closed the circuit. Only
        a try sent while half-open (a probe) can close it: a late answer to a request sent
        before the circuit opened says nothing of the instance now."""
        if now_s >= self._bucket_end_s:
            self._rotate(now_s)
        self._requests += 1
        self.consecutive_failures = 0
        if self.state == CLOSED:
            return False
        if self.state == HALF_OPEN and sent_s >= self._half_open_since_s:
            self.state = CLOSED
            self.streak = 0
            self.probes_in_flight = 0
            # A fresh window: failures counted while open (late answers to requests sent
            # before it opened, or before another worker's opening was adopted) are history.
            self._requests = self._failures = 0
            self._previous_requests = self._previous_failures = 0
            return True
        return False  # a request sent before the circuit opened: no verdict on the probe

    def on_failure(self, now_s: float, sent_s: float = NOW) -> bool:
        """Count a failure of a try sent at ``sent_s``; True when it opened the circuit (the
        caller publishes it). While half-open only a probe's failure re-opens it."""
        if now_s >= self._bucket_end_s:
            self._rotate(now_s)
        self._requests += 1
        self._failures += 1
        self.consecutive_failures += 1
        state = self.state
        if state == HALF_OPEN:
            if sent_s < self._half_open_since_s:
                return False
            self._open(now_s)
            return True
        if state == OPEN:
            return False
        settings = self._settings
        if self.consecutive_failures >= settings.failure_threshold:
            self._open(now_s)
            return True
        requests = self._requests + self._previous_requests
        if requests >= settings.min_requests:
            failures = self._failures + self._previous_failures
            if failures >= settings.error_rate * requests:
                self._open(now_s)
                return True
        return False

    def adopt_open(self, until_s: float, streak: int) -> bool:
        """Another worker opened this instance's circuit until ``until_s``: stay off it too.
        True when that changed this breaker's state or deadline."""
        if self.state == OPEN and self.open_until_s >= until_s:
            return False
        self.state = OPEN
        self.open_until_s = until_s
        self.streak = max(self.streak, streak)
        self.probes_in_flight = 0
        return True

    def _open(self, now_s: float) -> None:
        self.streak += 1
        self.state = OPEN
        self.open_until_s = now_s + self._settings.cooldown_for(self.streak)
        self.probes_in_flight = 0
        self.consecutive_failures = 0
        # A fresh window after the cool-down: old failures must not re-open it at once.
        self._requests = self._failures = 0
        self._previous_requests = self._previous_failures = 0

    def _rotate(self, now_s: float) -> None:
        half = self._settings.window_s / 2
        if now_s - self._bucket_end_s < half:  # the next bucket: the current one ages
            self._previous_requests = self._requests
            self._previous_failures = self._failures
            self._bucket_end_s += half
        else:  # idle for longer than a bucket: all history is too old
            self._previous_requests = self._previous_failures = 0
            self._bucket_end_s = now_s + half
        self._requests = self._failures = 0
