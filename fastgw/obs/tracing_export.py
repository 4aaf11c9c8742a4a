"""From a finished sampled request to OTLP/HTTP: its spans encoded, queued, and sent in batches
by an export thread.

What it owns
    ``SpanSink``: one per worker, started after fork by ``GatewayServer.start`` (threads never
    cross a fork, and the master starts none: ARCHITECTURE B1). On the event loop, ``export``
    encodes a ``TraceRecord`` (``tracing.py``) into its spans' protobuf bytes and queues them;
    the export thread joins what is queued into ``ExportTraceServiceRequest`` bodies of up to
    ``TRACE_BATCH_SPANS`` spans and POSTs them (``otlp.OtlpHttpClient``).

Spans of one request (all in the client's trace when it sent a valid ``traceparent``)::

    "<METHOD> <endpoint>"  SERVER    parent: the client's span (or none: a new trace's root)
    ├── "auth"             INTERNAL  fastgw.auth.result = ok | refused
    ├── "ratelimit"        INTERNAL  fastgw.ratelimit.result = allowed | limited
    └── "upstream"         CLIENT    one per try; its span id is the backend's parent id

Times come from ``time.monotonic`` on the request path and become epoch nanoseconds here,
anchored on one ``time.time_ns()`` read per request, so children nest inside their parent
exactly and a wall-clock step never reorders them.

Why not the OpenTelemetry SDK's span objects and ``BatchSpanProcessor``: measured on this
gateway's request path (``bench/micro_tracing.py``), building the four spans as SDK
``ReadableSpan`` objects and passing them through the batch processor cost ~45 µs a traced
request (object churn, per-span property and queue work, the garbage collector), about 4.5 µs
per request at ``sample_rate: 0.1``: more than the 5 % of a request's CPU tracing may take.
Encoding straight from the record, with what repeats kept encoded, costs a third of that
(~13-15 µs per traced request, the export thread included: docs/observability.md, "What it
costs"). The queue and thread here do what the SDK's do (bounded queue, batch size, schedule
delay, bounded flush at exit), for bytes instead of objects.

Never blocking: the queue is bounded (``TRACE_QUEUE_SPANS``); a request whose spans do not fit
is dropped whole and counted (``dropped``). The loop only appends to a deque and, once per
batch, sets an event. An unreachable or hung collector only fills the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final, TypeVar

from fastgw import __version__
from fastgw.exchange import ABORTED
from fastgw.limits import (
    TRACE_BATCH_SPANS,
    TRACE_EXPORT_TIMEOUT_S,
    TRACE_FLUSH_TIMEOUT_S,
    TRACE_QUEUE_SPANS,
    TRACE_SCHEDULE_DELAY_S,
)
from fastgw.obs.otlp import OtlpHttpClient, resource_attributes
from fastgw.obs.otlp_encode import (
    FLAGS_LOCAL,
    FLAGS_REMOTE,
    KIND_CLIENT,
    KIND_INTERNAL,
    KIND_SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    attribute_field,
    export_request,
    head_fields,
    parent_id_field,
    resource_field,
    scope_field,
    span_field,
    trace_id_field,
    varint,
)

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.obs.tracing import Tracing
    from fastgw.obs.tracing_record import TraceRecord, UpstreamTry

log = logging.getLogger("fastgw.tracing")

SCOPE: Final = "fastgw"
MAX_KEPT_FIELDS: Final = 4096
"""Encoded names and attribute pairs a sink keeps (emptied when full): most attributes take few
values (method, endpoint, tier, instance, status), and a kept one costs a dict lookup instead
of ~1 µs of encoding."""
_SHUTDOWN_MARGIN_S: Final = 0.5
_UPSTREAM_HEAD: Final = head_fields("upstream", KIND_CLIENT)
_ABORTED: Final = attribute_field("fastgw.aborted", True)
_T = TypeVar("_T")


def _key(name: str) -> bytes:
    """A ``KeyValue.key`` field."""
    return b"\x0a" + varint(len(name)) + name.encode("ascii")


_PATH: Final = _key("url.path")
_REQUEST_ID: Final = _key("fastgw.request_id")
_STATUS: Final = _key("http.response.status_code")


# HOT PATH (sampled requests): the per-request attributes, from bytes without a str between.
def _text_attribute(key: bytes, value: bytes) -> bytes:
    """A string attribute from bytes (valid UTF-8 as OTLP requires: others are replaced)."""
    if not value.isascii():
        value = value.decode("utf-8", "replace").encode("utf-8")
    any_value = b"\x0a" + varint(len(value)) + value
    pair = key + b"\x12" + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(pair)) + pair


def _int_attribute(key: bytes, value: int) -> bytes:
    any_value = b"\x18" + varint(value)
    pair = key + b"\x12" + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(pair)) + pair


def _customer_fields(customer_id: bytes, tier: bytes) -> bytes:
    return _text_attribute(_key("fastgw.customer.id"), customer_id) + _text_attribute(
        _key("fastgw.customer.tier"), tier
    )


def _stage_fields(name: str, key: str, result: str) -> tuple[bytes, bytes]:
    """(name and kind, attribute, status and flags) of a timed stage's span."""
    tail = attribute_field(key, result or "aborted") + STATUS_UNSET + FLAGS_LOCAL
    return head_fields(name, KIND_INTERNAL), tail


class SpanSink:
    """One worker's span export (module docstring). ``offered``/``taken``: spans queued by the
    loop and taken by the export thread (one writer each); ``dropped``: sampled requests not
    exported for lack of room."""

    __slots__ = (
        "_client",
        "_fields",
        "_instances",
        "_queue",
        "_resource",
        "_scheme",
        "_scope",
        "_stopping",
        "_thread",
        "_tracing",
        "_wake",
        "dropped",
        "offered",
        "taken",
    )

    def __init__(self, tracing: Tracing, client: OtlpHttpClient, scheme: str) -> None:
        self._tracing = tracing
        self._client = client
        self._scheme = scheme
        self._instances = list(tracing.instances)
        self._resource = resource_field(resource_attributes())
        self._scope = scope_field(SCOPE, __version__)
        self._fields: dict[object, Any] = {}
        self._queue: deque[tuple[int, bytes]] = deque()  # (spans, their encoded fields)
        self._wake = threading.Event()
        self._stopping = False
        self.offered = 0
        self.taken = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="fastgw-trace-export", daemon=True)
        self._thread.start()

    # -- on the event loop ----------------------------------------------------------------

    def export(self, record: TraceRecord, ex: Exchange, end_s: float) -> None:
        count = 1 + len(record.stages) + len(record.tries)
        if self.offered - self.taken + count > TRACE_QUEUE_SPANS:
            self.dropped += 1
            return
        self._queue.append((count, self.encode(record, ex, end_s)))
        self.offered += count
        if self.offered - self.taken >= TRACE_BATCH_SPANS and not self._wake.is_set():
            self._wake.set()

    def _keep(self, key: object, value: _T) -> _T:
        fields = self._fields
        if len(fields) >= MAX_KEPT_FIELDS:
            fields.clear()
        fields[key] = value
        return value

    def encode(self, record: TraceRecord, ex: Exchange, end_s: float) -> bytes:
        """The request's spans as encoded ``ScopeSpans.spans`` fields. What repeats from one
        request to the next is kept encoded: per method and route the name, kind and first
        attributes; per status, per customer, per stage outcome, per instance and status."""
        # Epoch ns of a monotonic instant: ``wall_ns - (end_s - at_s) * 1e9``, inlined below.
        wall_ns = time.time_ns()
        trace = trace_id_field(record.trace_id)
        fields = self._fields
        endpoint = record.endpoint
        route = fields.get((ex.method, endpoint))
        if route is None:
            route = self._route_fields(ex.method, endpoint)
        status = ex.status
        tail = [
            route[1],
            _text_attribute(_PATH, self._scrubbed(ex.path)),
            _text_attribute(_REQUEST_ID, self._scrubbed(ex.request_id)),
        ]
        if status:
            tail.append(fields.get(status) or self._keep(status, _int_attribute(_STATUS, status)))
        customer = ex.customer
        if customer is not None:
            who = (customer.customer_id, customer.tier)
            tail.append(fields.get(who) or self._keep(who, _customer_fields(*who)))
        aborted = ex.state == ABORTED
        if aborted:
            tail.append(_ABORTED)  # the client went away first
        tail += (
            STATUS_ERROR if status >= 500 else STATUS_UNSET,
            FLAGS_REMOTE if record.parent_id else FLAGS_LOCAL,
        )
        spans = [
            span_field(
                trace,
                record.span_id,
                parent_field=parent_id_field(record.parent_id) if record.parent_id else b"",
                head=route[0],
                start_ns=wall_ns - int((end_s - record.start_s) * 1e9),
                end_ns=wall_ns,
                tail=b"".join(tail),
            )
        ]
        child_of = parent_id_field(record.span_id)
        span_id = self._tracing.ids.span_id
        for name, key, result, start_s, stage_end_s in record.stages:
            stage = fields.get((name, key, result))
            if stage is None:
                stage = self._keep((name, key, result), _stage_fields(name, key, result))
            spans.append(
                span_field(
                    trace,
                    span_id(),
                    parent_field=child_of,
                    head=stage[0],
                    start_ns=wall_ns - int((end_s - start_s) * 1e9),
                    end_ns=wall_ns - int((end_s - (stage_end_s or end_s)) * 1e9),
                    tail=stage[1],
                )
            )
        for resend, upstream in enumerate(record.tries):
            spans.append(
                span_field(
                    trace,
                    upstream.span_id,
                    parent_field=child_of,
                    head=_UPSTREAM_HEAD,
                    start_ns=wall_ns - int((end_s - upstream.start_s) * 1e9),
                    end_ns=wall_ns - int((end_s - (upstream.end_s or end_s)) * 1e9),
                    tail=self._upstream_tail(upstream, ex.method, resend, aborted),
                )
            )
        return b"".join(spans)

    def _scrubbed(self, value: bytes) -> bytes:
        """A client-controlled attribute as the access log shows it: a token carried in a path
        or a request id is replaced (``logging_redact``; a substring test when it cannot hold
        one, ~0.3 µs)."""
        text = value.decode("utf-8", "replace")
        redactor = self._tracing.redactor
        return redactor.scrub(text).encode("utf-8") if redactor.suspect(text) else value

    def _route_fields(self, method: bytes, endpoint: str) -> tuple[bytes, bytes]:
        """(name and kind, the attributes every request of ``method`` on the route shares)."""
        text = method.decode("ascii", "replace")
        shared = (
            attribute_field("http.request.method", text)
            + attribute_field("url.scheme", self._scheme)
            + attribute_field("fastgw.endpoint", endpoint)
        )
        return self._keep((method, endpoint), (head_fields(f"{text} {endpoint}", KIND_SERVER),
                                                shared))

    def _upstream_tail(self, upstream: UpstreamTry, method: bytes, resend: int,
                       aborted: bool) -> bytes:
        """A try's attributes, status and flags (kept when the try went well: the usual)."""
        code = upstream.status
        error = upstream.error
        if not upstream.end_s and not error and code < 500 and aborted:
            error = "client_aborted"  # cut off by the client, not by the backend
        failed = bool(error) or code >= 500
        kept = ("upstream", upstream.instance, method, code)
        if not (resend or failed):
            found = self._fields.get(kept)
            if found is not None:
                return found  # type: ignore[no-any-return]
        host, port = self._instances[upstream.instance]
        tail = [
            attribute_field("http.request.method", method.decode("ascii", "replace")),
            attribute_field("server.address", host),
            attribute_field("server.port", port),
        ]
        if code:
            tail.append(attribute_field("http.response.status_code", code))
        if resend:
            tail.append(attribute_field("http.request.resend_count", resend))
        if failed:
            tail.append(attribute_field("error.type", error or str(code)))
        tail += (STATUS_ERROR if failed else STATUS_UNSET, FLAGS_LOCAL)
        encoded = b"".join(tail)
        return encoded if resend or failed else self._keep(kept, encoded)

    # -- on the export thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(TRACE_SCHEDULE_DELAY_S)
            self._wake.clear()
            self._send_queued()
        self._send_queued()  # what the loop queued before it asked us to stop

    def _send_queued(self) -> None:
        queue = self._queue
        while queue:
            batch: list[bytes] = []
            spans = 0
            while queue and spans < TRACE_BATCH_SPANS:
                count, encoded = queue.popleft()
                batch.append(encoded)
                spans += count
            self.taken += spans
            try:
                self._client.send(export_request(self._resource, self._scope, batch), spans)
            except Exception:  # a bug must not end the thread: every later span would be lost
                log.exception("trace export failed")

    # -- stopping -------------------------------------------------------------------------

    @property
    def exporting(self) -> bool:
        """The export thread is still running (after ``aclose``: it was left behind)."""
        return self._thread.is_alive()

    async def aclose(self) -> bool:
        """Send what is queued within ``TRACE_FLUSH_TIMEOUT_S`` (one try per batch, a back-off
        under way cut short), then stop the export thread; at the deadline a POST still in
        flight is cut (``OtlpHttpClient.abort``: a hung collector), and the thread gets
        ``_SHUTDOWN_MARGIN_S`` more to end. True when it stopped in time; otherwise it is left
        behind (a daemon thread: the worker exits anyway). So this takes at most
        ``TRACE_FLUSH_TIMEOUT_S + _SHUTDOWN_MARGIN_S``. The event loop keeps running meanwhile
        (a collector may live in this very loop: in-process tests, the demo)."""
        self._client.begin_shutdown(time.monotonic() + TRACE_FLUSH_TIMEOUT_S)
        self._stopping = True
        self._wake.set()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def watch() -> None:
            self._thread.join()
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody waits
                loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=watch, name="fastgw-trace-stop", daemon=True).start()
        try:
            try:
                await asyncio.wait_for(asyncio.shield(done), TRACE_FLUSH_TIMEOUT_S)
            except TimeoutError:
                self._client.abort()  # a POST past the deadline: its thread ends at once
                await asyncio.wait_for(done, _SHUTDOWN_MARGIN_S)
        except TimeoutError:
            return False
        finally:
            self._client.close()
        return True


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def start_sink(
    tracing: Tracing, *, scheme: str, client: OtlpHttpClient | None = None
) -> SpanSink:
    """Start ``tracing``'s span export in this process (after fork): the client (to
    ``tracing.endpoint`` unless given) and the export thread."""
    if client is None:
        assert tracing.endpoint is not None, "config validation requires it when enabled"
        client = OtlpHttpClient(tracing.endpoint, TRACE_EXPORT_TIMEOUT_S)
    sink = tracing.sink = SpanSink(tracing, client, scheme)
    return sink

