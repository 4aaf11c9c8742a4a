"""fastgw's OTLP protobuf writer (fastgw/obs/otlp_encode.py, and the span sink that uses it)
against the reference: what it writes must decode (opentelemetry-proto) to the very message the
OpenTelemetry SDK's own OTLP encoder builds for the same spans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from fastgw.auth.context import CustomerContext
from fastgw.exchange import ABORTED, Exchange
from fastgw.obs.otlp import OtlpHttpClient
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
)
from fastgw.obs.tracing import TraceRecord, UpstreamTry
from fastgw.obs.tracing_export import SpanSink
from fastgw.plan import Plan
from tests.support.gateway import make_config, uvloop_test

FLAGS = TraceFlags(TraceFlags.SAMPLED)
KINDS = {
    KIND_INTERNAL: SpanKind.INTERNAL,
    KIND_SERVER: SpanKind.SERVER,
    KIND_CLIENT: SpanKind.CLIENT,
}
RESOURCE = {"service.name": "fastgw", "replicas": 3, "debug": False}
SCOPE = ("fastgw", "0.1.0")
# No deadline: CI machines are shared and a slow example is not a wrong one.
BASE = settings(deadline=None, max_examples=200)


def ours(specs: list[dict[str, Any]]) -> ExportTraceServiceRequest:
    spans = []
    for spec in specs:
        parent = spec.get("parent", 0)
        remote = spec.get("remote", False)
        tail = b"".join(attribute_field(k, v) for k, v in spec.get("attributes", {}).items())
        tail += STATUS_ERROR if spec.get("error") else STATUS_UNSET
        tail += FLAGS_REMOTE if parent and remote else FLAGS_LOCAL
        spans.append(
            span_field(
                trace_id_field(spec["trace"]),
                spec["span"],
                parent_field=parent_id_field(parent) if parent else b"",
                head=head_fields(spec["name"], spec["kind"]),
                start_ns=spec["start"],
                end_ns=spec["end"],
                tail=tail,
            )
        )
    body = export_request(resource_field(RESOURCE), scope_field(*SCOPE), spans)
    return ExportTraceServiceRequest.FromString(body)


def reference(specs: list[dict[str, Any]]) -> ExportTraceServiceRequest:
    resource = Resource(RESOURCE)
    scope = InstrumentationScope(*SCOPE)
    spans = []
    for spec in specs:
        parent = spec.get("parent", 0)
        spans.append(
            ReadableSpan(
                spec["name"],
                context=SpanContext(spec["trace"], spec["span"], False, FLAGS),
                parent=SpanContext(spec["trace"], parent, spec.get("remote", False), FLAGS)
                if parent
                else None,
                resource=resource,
                attributes=spec.get("attributes", {}),
                kind=KINDS[spec["kind"]],
                status=Status(StatusCode.ERROR if spec.get("error") else StatusCode.UNSET),
                start_time=spec["start"],
                end_time=spec["end"],
                instrumentation_scope=scope,
            )
        )
    return encode_spans(spans)


def same(specs: list[dict[str, Any]]) -> None:
    mine, theirs = ours(specs), reference(specs)
    assert mine == theirs, f"\nours: {mine}\nreference: {theirs}"


REQUEST = {
    "name": "GET Echo",
    "kind": KIND_SERVER,
    "trace": 0x0AF7651916CD43DD8448EB211C80319C,
    "span": 0x00F067AA0BA902B7,
    "parent": 0xB7AD6B7169203331,
    "remote": True,
    "start": 1_700_000_000_000_000_000,
    "end": 1_700_000_000_001_234_567,
    "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
}


def test_a_request_like_fastgw_sends() -> None:
    same(
        [
            REQUEST,
            {**REQUEST, "name": "auth", "kind": KIND_INTERNAL, "span": 2, "remote": False,
             "parent": REQUEST["span"], "attributes": {"fastgw.auth.result": "ok"}},
            {**REQUEST, "name": "upstream", "kind": KIND_CLIENT, "span": 3, "remote": False,
             "parent": REQUEST["span"], "error": True,
             "attributes": {"server.port": 8080, "error.type": "connect"}},
        ]
    )


def test_a_root_span_and_an_error() -> None:
    same([{**REQUEST, "parent": 0, "error": True, "attributes": {}}])


ATTRIBUTE_VALUES = st.one_of(
    st.text(max_size=200),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
)


@BASE
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=20), ATTRIBUTE_VALUES, max_size=6),
    trace=st.integers(1, 2**128 - 1),
    span=st.integers(1, 2**64 - 1),
    parent=st.integers(0, 2**64 - 1),
    remote=st.booleans(),
    start=st.integers(0, 2**63),
    length=st.integers(0, 10**12),
    name=st.text(max_size=300),
    kind=st.sampled_from(sorted(KINDS)),
    error=st.booleans(),
)
def test_any_span(**spec: Any) -> None:
    spec["end"] = spec["start"] + spec.pop("length")
    same([spec])


# -- the sink's encoding of a real record ---------------------------------------------------


@pytest.fixture
def plan() -> Iterator[Plan]:
    config = make_config([9, 10], {"gateway": {"observability": {"tracing": {
        "enabled": True, "endpoint": "http://127.0.0.1:9/v1/traces", "sample_rate": 1.0}}}})
    built = Plan(config, [], workers=1)
    yield built
    built.limits.close()


def decoded_spans(body: bytes) -> list[Any]:
    request = ExportTraceServiceRequest.FromString(body)
    return list(request.resource_spans[0].scope_spans[0].spans)


def attributes(span: Any) -> dict[str, object]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


@uvloop_test
async def test_the_sink_writes_a_record_as_the_reference_would(plan: Plan) -> None:
    tracing = plan.tracing
    sink = SpanSink(tracing, OtlpHttpClient("http://127.0.0.1:9/v1/traces", 1.0), "https")
    try:
        t0 = time.monotonic() - 1.0  # monotonic instants in the past, as a request's are
        record = TraceRecord(tracing, 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331,
                             state_line=b"", endpoint="Echo", started_s=t0)
        record.stages += [("auth", "fastgw.auth.result", "ok", t0 + 0.001, t0 + 0.002),
                          ("ratelimit", "fastgw.ratelimit.result", "", t0 + 0.002, 0.0)]
        first = UpstreamTry(11, 1, t0 + 0.003)
        first.end_s, first.error = t0 + 0.004, "connect"
        second = UpstreamTry(12, 0, t0 + 0.005)
        second.head_s, second.status = t0 + 0.006, 503
        record.tries += [first, second]
        ex = Exchange(None, t0)  # type: ignore[arg-type]
        ex.method, ex.path, ex.request_id, ex.status = b"POST", b"/echo/\xff", b"r-1", 503
        ex.customer = CustomerContext(b"c42", b"gold", frozenset())
        ex.state = ABORTED
        encoded = sink.encode(record, ex, t0 + 0.010)
        spans = decoded_spans(export_request(b"", b"", [encoded]))
    finally:
        await sink.aclose()

    request, auth, limit, failed, retried = spans
    assert [s.name for s in spans] == ["POST Echo", "auth", "ratelimit", "upstream", "upstream"]
    assert attributes(request) == {
        "http.request.method": "POST",
        "url.scheme": "https",
        "fastgw.endpoint": "Echo",
        "url.path": "/echo/\ufffd",  # not UTF-8: replaced, as OTLP strings must be UTF-8
        "fastgw.request_id": "r-1",
        "http.response.status_code": 503,
        "fastgw.customer.id": "c42",
        "fastgw.customer.tier": "gold",
        "fastgw.aborted": True,
    }
    assert request.status.code == 2 and request.parent_span_id.hex() == "b7ad6b7169203331"
    assert request.end_time_unix_nano - request.start_time_unix_nano == pytest.approx(10e6, abs=2)
    assert attributes(auth) == {"fastgw.auth.result": "ok"}
    assert attributes(limit) == {"fastgw.ratelimit.result": "aborted"}  # paused when it ended
    assert limit.end_time_unix_nano == request.end_time_unix_nano
    assert attributes(failed) == {
        "http.request.method": "POST", "server.address": "127.0.0.1", "server.port": 10,
        "error.type": "connect"}
    assert attributes(retried) == {
        "http.request.method": "POST", "server.address": "127.0.0.1", "server.port": 9,
        "http.response.status_code": 503, "http.request.resend_count": 1,
        "error.type": "503"}
    for child in (auth, limit, failed, retried):
        assert child.parent_span_id == request.span_id and child.trace_id == request.trace_id
        assert child.flags == 0x100  # a local parent
    assert request.flags == 0x300  # a remote parent

    # Re-encoded by the reference encoder from what was decoded: the same message.
    rebuilt = [
        {"name": s.name, "kind": s.kind, "trace": int(s.trace_id.hex(), 16),
         "span": int(s.span_id.hex(), 16), "parent": int(s.parent_span_id.hex() or "0", 16),
         "remote": s is request, "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
         "attributes": attributes(s), "error": s.status.code == 2}
        for s in spans
    ]
    mine = export_request(resource_field(RESOURCE), scope_field(*SCOPE), [encoded])
    assert ExportTraceServiceRequest.FromString(mine) == reference(rebuilt)
