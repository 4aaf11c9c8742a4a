"""A sampled request's record: its ids, the timestamps of its timed stages and of each upstream
try, from which ``tracing_export.py`` builds its spans when the exchange ends.

What it owns
    ``TraceRecord`` (``ex.trace``, made by ``tracing.Tracing.sample``), ``UpstreamTry`` (one per
    try, marked by the forward stage through ``try_started`` / ``try_status`` / ``try_failed``
    / ``try_done``; each try has its own span id, the ``traceparent`` parent id its backend
    gets) and ``TimedStep`` (the authentication and rate-limit steps of a route's traced
    twin: times the step and records its outcome). Times are ``time.monotonic`` readings.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from fastgw.pipeline import PAUSE, RESPOND

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.obs.tracing import Tracing
    from fastgw.pipeline import Step

__all__ = ["SAMPLED_HEADERS", "TimedStep", "TraceRecord", "UpstreamTry"]

_clock = time.monotonic
SAMPLED_HEADERS: Final = b"traceparent: 00-%032x-%016x-01\r\n%s"


class UpstreamTry:
    """One try of the upstream call: its span id (the backend's parent), which instance, when
    it was sent, when its response head came and with what status, how it ended."""

    __slots__ = ("end_s", "error", "head_s", "instance", "span_id", "start_s", "status")

    def __init__(self, span_id: int, instance: int, start_s: float) -> None:
        self.span_id = span_id
        self.instance = instance
        self.start_s = start_s
        self.head_s = 0.0
        self.end_s = 0.0
        self.status = 0
        self.error = ""


class TraceRecord:
    """A sampled request's ids and timestamps (monotonic seconds); spans are built from it when
    the exchange ends. ``stages``: (span name, result key, result, start, end) per timed stage."""

    __slots__ = (
        "endpoint",
        "engine",
        "parent_id",
        "pending",
        "span_id",
        "stages",
        "start_s",
        "state_line",
        "trace_id",
        "tries",
    )

    def __init__(
        self,
        engine: Tracing,
        trace_id: int,
        parent_id: int,
        *,
        state_line: bytes,
        endpoint: str,
        started_s: float,
    ) -> None:
        self.engine = engine
        self.trace_id = trace_id
        self.parent_id = parent_id  # 0: a new trace (the request span is its root)
        self.span_id = engine.ids.span_id()
        self.state_line = state_line  # "tracestate: ...\r\n" to forward, or b""
        self.endpoint = endpoint
        # When the request began (its first byte was read: ``Exchange.started_s``, monotonic),
        # so the request span includes reading the head and waiting behind pipelined requests.
        now_s = _clock()
        self.start_s = started_s if 0 < started_s <= now_s else now_s
        self.stages: list[tuple[str, str, str, float, float]] = []
        self.pending: TimedStep | None = None  # a timed stage that PAUSEd, with its start
        self.tries: list[UpstreamTry] = []

    # -- called by the forward stage -------------------------------------------------------

    def try_started(self, ex: Exchange) -> None:
        """A try is being sent (``ex.sent_s`` is its start): new span id, new traceparent."""
        tries = self.tries
        if tries:
            last = tries[-1]
            if not last.end_s:  # retried without an ending of its own: a stale connection
                last.end_s = last.head_s or ex.sent_s
                last.error = last.error or "connection_lost"
        span_id = self.engine.ids.span_id()
        tries.append(UpstreamTry(span_id, ex.candidates[ex.attempt], ex.sent_s))
        ex.trace_headers = SAMPLED_HEADERS % (self.trace_id, span_id, self.state_line)

    def try_status(self, status: int) -> None:
        """The try's response head arrived."""
        last = self.tries[-1]
        last.status = status
        last.head_s = _clock()

    def try_failed(self, error: str) -> None:
        """The try failed (``error``: what the client would be told, or the connect failure)."""
        last = self.tries[-1]
        if not last.end_s:
            last.end_s = _clock()
            last.error = error

    def try_done(self) -> None:
        """The try's response is complete."""
        self.tries[-1].end_s = _clock()

    # -- called by TimedStep, Exchange.resume and the connection ---------------------------

    def on_resume(self, ex: Exchange) -> None:
        """A PAUSEd chain resumes: a timed stage that paused ends now."""
        step = self.pending
        if step is not None:
            self.pending = None
            step.ended(self, ex.reply is not None, _clock())

    def finish(self, ex: Exchange) -> None:
        """The exchange ended (answered, or aborted): export its spans. Once only."""
        ex.trace = None
        sink = self.engine.sink
        if sink is not None:
            sink.export(self, ex, _clock())


class TimedStep:
    """A stage step in a traced twin chain: times the step and records its outcome."""

    __slots__ = ("_refused", "_result_key", "_step", "name", "passed")

    def __init__(self, step: Step, name: str, result_key: str, results: tuple[str, str]) -> None:
        self._step = step
        self.name = name
        self._result_key = result_key
        self.passed, self._refused = results

    def on_request(self, ex: Exchange) -> int:
        record = ex.trace
        start_s = _clock()
        verdict = self._step(ex)
        if record is None:  # finished meanwhile (cannot happen on a synchronous path)
            return verdict
        if verdict == PAUSE:
            # Ends when the stage resumes the exchange (TraceRecord.on_resume). The step runs
            # on one exchange at a time per PAUSE, but this object is shared by every traced
            # exchange of the route: keep the start on the record's stage list instead.
            record.pending = self
            record.stages.append((self.name, self._result_key, "", start_s, 0.0))
            return verdict
        self._add(record, verdict == RESPOND, start_s, _clock())
        return verdict

    def _add(self, record: TraceRecord, refused: bool, start_s: float, end_s: float) -> None:
        result = self._refused if refused else self.passed
        record.stages.append((self.name, self._result_key, result, start_s, end_s))

    def ended(self, record: TraceRecord, refused: bool, end_s: float) -> None:
        """The PAUSEd step this record's last stage entry names has ended."""
        start_s = record.stages.pop()[3]
        self._add(record, refused, start_s, end_s)
