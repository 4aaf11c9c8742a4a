"""Tracing on the request path: the trace decision, the ``traceparent`` sent upstream, and the
timestamps of a sampled request.

Theory
    Every forwarded request carries a ``traceparent`` to its backend (ARCHITECTURE A3), built
    once per request when its chain starts (``RouteTrace.begin``, called by the connection right
    after routing):

    * a valid client ``traceparent`` continues the client's trace: same trace id; with tracing
      on, the parent id is the gateway's upstream span and the sampled flag is the client's
      (parent-based sampling); with tracing off, the client's value passes through unchanged;
    * otherwise (absent, invalid, or sent twice) a new trace starts, sampled when the low 64
      bits of its random trace id fall under ``sample_rate * 2**64`` (the same rule as
      OpenTelemetry's TraceIdRatioBased sampler, so services that sample by ratio agree);
      with tracing off, never.

    ``tracestate`` is forwarded only beside the ``traceparent`` it came with: a restarted trace
    drops it (W3C processing model).

    An unsampled request costs one random draw and one hexlify (~0.5 µs; ~1 µs with a client
    traceparent to read): no clock read, no object. A sampled one gets a ``TraceRecord``
    (``ex.trace``) and runs its route's *traced twin*:
    the same stage tuple with the authentication and rate-limit steps wrapped in ``TimedStep``,
    built once at plan time, so untraced chains carry no timing code at all. The forward stage
    marks each upstream try (``try_started`` / ``try_status`` / ``try_failed`` / ``try_done``);
    each try has its own span id, sent as the ``traceparent`` parent id of that try. When the
    exchange ends, ``finish`` hands the record to the span sink (``tracing_export.py``), which
    encodes the spans from these monotonic timestamps and queues them for export. Requests
    that match no route, or are refused before routing (bad framing, IP rules), are not traced;
    the gateway's own endpoints (/health, /ready) and CORS preflights are not either.
"""

from __future__ import annotations

import time
from binascii import hexlify
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from fastgw.obs.traceparent import SAMPLED, ParentContext, TraceIds, parse_traceparent
from fastgw.obs.tracing_export import start_sink
from fastgw.pipeline import PAUSE, RESPOND
from fastgw.stages.auth import Authenticate
from fastgw.stages.forward import Forward
from fastgw.stages.ratelimit import RateLimit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastgw._speedups import RequestHead
    from fastgw.config import Config
    from fastgw.exchange import Exchange
    from fastgw.obs.tracing_export import SpanSink
    from fastgw.pipeline import Step
    from fastgw.plan import RoutePlan

_clock = time.monotonic
LOW_64: Final = (1 << 64) - 1
CRLF: Final = b"\r\n"
_OWS: Final = b" \t"
NEW_PREFIX: Final = b"traceparent: 00-"
UNSAMPLED: Final = b"-00\r\n"
ONE_EACH: Final = (1 << 64) | 1
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


class RouteTrace:
    """One forwarding route's tracing: its endpoint and its traced twin."""

    __slots__ = ("_engine", "endpoint", "traced")

    def __init__(self, engine: Tracing, endpoint: str) -> None:
        self._engine = engine
        self.endpoint = endpoint
        self.traced: RoutePlan | None = None  # set right after (the twin is built from us)

    # HOT PATH: unsampled without a client traceparent: one random draw, one hexlify.
    def begin(self, ex: Exchange) -> None:
        """Decide ``ex``'s trace and build the header(s) its backend gets."""
        engine = self._engine
        head = ex.head
        if head is not None and head.traceparent is not None:
            parent = parse_traceparent(head.traceparent)
            if parent is not None:
                if parent[2] & SAMPLED or head.tracestate is not None or not engine.export:
                    self._continue(ex, engine, parent, head)
                else:  # the usual continuation, inline: unsampled, no tracestate
                    span_id = (engine.ids.bits(64) or 1).to_bytes(8, "big")
                    ex.trace_headers = NEW_PREFIX + parent[0] + b"-" + hexlify(span_id) + UNSAMPLED
                return
        # 192 random bits: a trace id (the high 128) and the span id sent upstream (the low 64).
        bits = engine.ids.bits(192)
        if not (bits >> 64 and bits & LOW_64):
            bits |= ONE_EACH  # a zero id is invalid (odds: 2**-64)
        trace_id = bits >> 64
        if trace_id & LOW_64 < engine.bound:
            engine.sample(ex, self, trace_id, 0, b"")
        else:
            ex.trace_headers = NEW_PREFIX + hexlify(bits.to_bytes(24, "big"), b"-", -16) + UNSAMPLED

    def _continue(
        self, ex: Exchange, engine: Tracing, parent: ParentContext, head: RequestHead
    ) -> None:
        """A valid client traceparent: its trace goes on (with its tracestate)."""
        trace_hex, parent_hex, flags = parent
        tracestate = head.tracestate
        state_line = b"" if not tracestate else b"tracestate: " + tracestate + CRLF
        if not engine.export:  # tracing off: the client's trace passes through as it came
            incoming = head.traceparent
            assert incoming is not None
            ex.trace_headers = b"traceparent: " + incoming.strip(_OWS) + CRLF + state_line
        elif flags & SAMPLED:
            engine.sample(ex, self, int(trace_hex, 16), int(parent_hex, 16), state_line)
        else:
            span_id = (engine.ids.bits(64) or 1).to_bytes(8, "big")
            ex.trace_headers = b"".join(
                (NEW_PREFIX, trace_hex, b"-", hexlify(span_id), UNSAMPLED, state_line)
            )


class Tracing:
    """One worker's trace decisions (from ``gateway.observability.tracing``), and the span sink
    once the worker started it (``tracing_export.start_sink``; None in the master's throwaway
    plan and until started: sampled requests are then timed but not exported)."""

    __slots__ = ("bound", "endpoint", "export", "ids", "instances", "sink")

    def __init__(self, config: Config) -> None:
        tracing = config.gateway.observability.tracing
        self.export = tracing.enabled
        self.endpoint = tracing.endpoint
        # Sampled iff the trace id's low 64 bits are below this (rate 1: 2**64, always).
        self.bound = round(tracing.sample_rate * 2**64) if tracing.enabled else 0
        self.ids = TraceIds()
        self.instances: Sequence[tuple[str, int]] = [
            (i.host, i.port) for i in config.routing.metald_instances
        ]
        self.sink: SpanSink | None = None

    def start(self, scheme: str) -> None:
        """Start exporting (in the worker, after fork: a thread), when tracing is enabled."""
        if self.export and self.sink is None:
            start_sink(self, scheme=scheme)

    async def aclose(self) -> None:
        """Flush and stop the export (bounded: ``TRACE_FLUSH_TIMEOUT_S``); idempotent."""
        sink, self.sink = self.sink, None
        if sink is not None:
            await sink.aclose()

    def sample(
        self, ex: Exchange, route: RouteTrace, trace_id: int, parent_id: int, state_line: bytes
    ) -> None:
        record = TraceRecord(
            self,
            trace_id,
            parent_id,
            state_line=state_line,
            endpoint=route.endpoint,
            started_s=ex.started_s,
        )
        ex.trace = record
        assert route.traced is not None
        ex.route = route.traced
        # The request span's id until a try replaces it (a backend only sees tries' ids).
        ex.trace_headers = SAMPLED_HEADERS % (trace_id, record.span_id, state_line)

    def route(self, route: RoutePlan) -> RoutePlan:
        """``route`` with tracing, when it forwards (health and preflight answers are not
        traced); its traced twin times the authentication and rate-limit steps."""
        if not any(isinstance(getattr(step, "__self__", None), Forward) for step in route.steps):
            return route
        route_trace = RouteTrace(self, route.endpoint)
        route_trace.traced = replace(route, steps=tuple(map(timed, route.steps)))
        return replace(route, begin_trace=route_trace.begin)


def timed(step: Step) -> Step:
    """``step``, timed when it is one that gets a span of its own."""
    owner = getattr(step, "__self__", None)
    if isinstance(owner, Authenticate):
        return TimedStep(step, "auth", "fastgw.auth.result", ("ok", "refused")).on_request
    if isinstance(owner, RateLimit):
        return TimedStep(
            step, "ratelimit", "fastgw.ratelimit.result", ("allowed", "limited")
        ).on_request
    return step
