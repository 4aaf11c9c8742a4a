"""Tracing on the request path: the trace decision, the ``traceparent`` sent upstream, and the
timestamps of a sampled request.

Theory
    Every forwarded request carries a ``traceparent`` to its backend (ARCHITECTURE A3), built
    once per request when its chain starts (``RouteTrace.begin``, called by the connection right
    after routing):

    * a valid client ``traceparent`` continues the client's trace: same trace id; with tracing
      on, the parent id is the gateway's upstream span, in a version 00 value, and the sampled
      flag is the client's (parent-based sampling), honoured for at most
      ``TRACE_PARENT_SAMPLED_PER_S`` requests a second per worker (``Tracing.admit_parent``):
      past that, and with tracing off, the client's value passes through unchanged, a later
      version's appended fields included, as W3C asks of a pass-through service (re-parented
      instead when longer than ``TRACEPARENT_PASS_MAX_BYTES`` or beside an oversized
      ``tracestate``: ``RouteTrace._pass_through``);
    * otherwise (absent, invalid, or sent twice) a new trace starts, sampled when the low 64
      bits of its random trace id fall under ``sample_rate * 2**64`` (the same rule as
      OpenTelemetry's TraceIdRatioBased sampler, so services that sample by ratio agree);
      with tracing off, never.

    ``tracestate`` is forwarded only beside the ``traceparent`` it came with: a restarted trace
    drops it (W3C processing model); beside a re-parented one it is bounded
    (``traceparent.bounded_tracestate``: 32 entries, 512 bytes).

    An unsampled request costs one random draw and one hexlify (~0.5 µs; ~1 µs with a client
    traceparent to read): no clock read, no object. A sampled one gets a ``TraceRecord``
    (``ex.trace``: ``tracing_record.py``) and runs its route's *traced twin*:
    the same stage tuple with the authentication and rate-limit steps wrapped in ``TimedStep``,
    built once at plan time, so untraced chains carry no timing code at all. The forward stage
    marks each upstream try (``try_started`` / ``try_status`` / ``try_failed`` / ``try_done``);
    each try has its own span id, sent as the ``traceparent`` parent id of that try. When the
    exchange ends, ``finish`` hands the record to the span sink (``tracing_export.py``), which
    encodes the spans from these monotonic timestamps and queues them for export. Requests
    that match no route, or are refused before routing (bad framing, IP rules), are not traced;
    the gateway's own endpoints (/health, /ready) are not either (no ``begin_trace``), nor are
    CORS preflights: on a route whose chain starts with the ``Cors`` stage, a request the trace
    decision would sample is first checked for being a preflight (``OPTIONS`` with ``Origin``
    and ``Access-Control-Request-Method``), which the stage answers itself; unsampled requests
    skip that check.
"""

from __future__ import annotations

import time
from binascii import hexlify
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from fastgw.limits import TRACE_PARENT_SAMPLED_PER_S, TRACEPARENT_PASS_MAX_BYTES
from fastgw.obs.logging_redact import redactor_for
from fastgw.obs.traceparent import (
    SAMPLED,
    ParentContext,
    TraceIds,
    bounded_tracestate,
    parse_traceparent,
    tracestate_fits,
)
from fastgw.obs.tracing_export import start_sink
from fastgw.obs.tracing_record import SAMPLED_HEADERS, TimedStep, TraceRecord, UpstreamTry
from fastgw.stages.auth import Authenticate
from fastgw.stages.cors import OPTIONS, ORIGIN, REQUEST_METHOD, Cors, field_value
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

__all__ = ["RouteTrace", "TimedStep", "TraceRecord", "Tracing", "UpstreamTry", "timed"]

_clock = time.monotonic
LOW_64: Final = (1 << 64) - 1
CRLF: Final = b"\r\n"
_OWS: Final = b" \t"
NEW_PREFIX: Final = b"traceparent: 00-"
UNSAMPLED: Final = b"-00\r\n"
SAMPLED_END: Final = b"-01\r\n"
ONE_EACH: Final = (1 << 64) | 1


def _is_preflight(ex: Exchange) -> bool:
    """``ex`` is a CORS preflight, which the route's ``Cors`` step answers itself (the same
    test as ``Cors.on_request``: ``OPTIONS`` with ``Origin`` and the requested method)."""
    head = ex.head
    if ex.method != OPTIONS or head is None:
        return False
    lowered = head.forward_block.lower()
    return (
        field_value(lowered, lowered, ORIGIN) is not None
        and field_value(lowered, lowered, REQUEST_METHOD) is not None
    )


def _state_line(tracestate: bytes | None) -> bytes:
    """The ``tracestate`` line sent beside a re-parented ``traceparent``: bounded."""
    state = bounded_tracestate(tracestate) if tracestate else b""
    return b"tracestate: " + state + CRLF if state else b""


class RouteTrace:
    """One forwarding route's tracing: its endpoint, its traced twin, and whether its chain
    answers CORS preflights (those are never sampled: the gateway answers them at once)."""

    __slots__ = ("_engine", "answers_preflights", "endpoint", "traced")

    def __init__(self, engine: Tracing, endpoint: str, answers_preflights: bool) -> None:
        self._engine = engine
        self.endpoint = endpoint
        self.answers_preflights = answers_preflights
        self.traced: RoutePlan | None = None  # set right after (the twin is built from us)

    def _sampled(self, ex: Exchange) -> bool:
        """A sampled request is recorded unless it is a preflight this route answers."""
        return not (self.answers_preflights and _is_preflight(ex))

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
        if trace_id & LOW_64 < engine.bound and self._sampled(ex):
            engine.sample(ex, self, trace_id, 0, b"")
        else:
            ex.trace_headers = NEW_PREFIX + hexlify(bits.to_bytes(24, "big"), b"-", -16) + UNSAMPLED

    def _continue(
        self, ex: Exchange, engine: Tracing, parent: ParentContext, head: RequestHead
    ) -> None:
        """A valid client traceparent: its trace goes on (with its tracestate)."""
        trace_hex, parent_hex, flags = parent
        if not engine.export:  # tracing off: the client's trace passes through as it came
            self._pass_through(ex, engine, parent, head)
            return
        sampled = flags & SAMPLED
        if sampled and self._sampled(ex):
            if not engine.admit_parent():  # over this worker's budget: as with tracing off
                self._pass_through(ex, engine, parent, head)
                return
            state_line = _state_line(head.tracestate)
            engine.sample(ex, self, int(trace_hex, 16), int(parent_hex, 16), state_line)
            return
        # Re-parented, unrecorded: version 00 whatever the client's was; its sampled flag
        # (set only on a preflight, which is answered here anyway).
        span_id = (engine.ids.bits(64) or 1).to_bytes(8, "big")
        ex.trace_headers = b"".join(
            (NEW_PREFIX, trace_hex, b"-", hexlify(span_id), SAMPLED_END if sampled else UNSAMPLED,
             _state_line(head.tracestate))
        )  # fmt: skip

    def _pass_through(
        self, ex: Exchange, engine: Tracing, parent: ParentContext, head: RequestHead
    ) -> None:
        """The client's trace headers unchanged (W3C: a pass-through service forwards them as
        they came, a later version included); when too large (``TRACEPARENT_PASS_MAX_BYTES``,
        ``tracestate_fits``), re-parented instead: version 00, same trace id, a new parent id,
        the client's sampled flag, and the ``tracestate`` truncated by W3C's rule (changing it
        is allowed only beside a changed ``traceparent``)."""
        incoming = head.traceparent
        assert incoming is not None
        incoming = incoming.strip(_OWS)
        tracestate = head.tracestate
        if len(incoming) <= TRACEPARENT_PASS_MAX_BYTES and (
            not tracestate or tracestate_fits(tracestate)
        ):
            state_line = b"tracestate: " + tracestate + CRLF if tracestate else b""
            ex.trace_headers = b"traceparent: " + incoming + CRLF + state_line
            return
        trace_hex, _, flags = parent
        span_id = (engine.ids.bits(64) or 1).to_bytes(8, "big")
        ex.trace_headers = b"".join(
            (NEW_PREFIX, trace_hex, b"-", hexlify(span_id),
             SAMPLED_END if flags & SAMPLED else UNSAMPLED, _state_line(tracestate))
        )  # fmt: skip


class Tracing:
    """One worker's trace decisions (from ``gateway.observability.tracing``), and the span sink
    once the worker started it (``tracing_export.start_sink``; None in the master's throwaway
    plan and until started: sampled requests are then timed but not exported)."""

    __slots__ = (
        "_parent_at_s",
        "_parent_tokens",
        "bound",
        "endpoint",
        "export",
        "ids",
        "instances",
        "parent_refused",
        "redactor",
        "sink",
    )

    def __init__(self, config: Config) -> None:
        tracing = config.gateway.observability.tracing
        self.export = tracing.enabled
        self.endpoint = tracing.endpoint
        # The access log's redaction, for the client-controlled span attributes (path, id).
        self.redactor = redactor_for(config)
        # Sampled iff the trace id's low 64 bits are below this (rate 1: 2**64, always).
        self.bound = round(tracing.sample_rate * 2**64) if tracing.enabled else 0
        self.ids = TraceIds()
        self.instances: Sequence[tuple[str, int]] = [
            (i.host, i.port) for i in config.routing.metald_instances
        ]
        self.sink: SpanSink | None = None
        # Requests sampled because the client said so: a token bucket (admit_parent).
        self._parent_tokens = TRACE_PARENT_SAMPLED_PER_S
        self._parent_at_s = 0.0
        self.parent_refused = 0  # sampled parents passed through for lack of budget

    def admit_parent(self) -> bool:
        """Whether a client's sampled flag may make this request recorded: at most
        ``TRACE_PARENT_SAMPLED_PER_S`` a second (a token bucket holding as many), so a client
        cannot buy every request its +15 µs and the collector its spans. Only requests with a
        sampled ``traceparent`` pay for it (one clock read)."""
        now_s = _clock()
        rate = TRACE_PARENT_SAMPLED_PER_S
        tokens = min(rate, self._parent_tokens + (now_s - self._parent_at_s) * rate)
        self._parent_at_s = now_s
        if tokens < 1.0:
            self._parent_tokens = tokens
            self.parent_refused += 1
            return False
        self._parent_tokens = tokens - 1.0
        return True

    def start(self, scheme: str) -> None:
        """Start exporting (in the worker, after fork: a thread), when tracing is enabled."""
        if self.export and self.sink is None:
            start_sink(self, scheme=scheme)

    async def aclose(self) -> None:
        """Flush and stop the export (bounded: ``TRACE_FLUSH_TIMEOUT_S`` and the thread's
        margin, ``SpanSink.aclose``); idempotent."""
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
        # CORS on: the chain's first step is the Cors stage, which answers preflights itself.
        cors = bool(route.steps) and isinstance(getattr(route.steps[0], "__self__", None), Cors)
        route_trace = RouteTrace(self, route.endpoint, cors)
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
