"""The OTLP/HTTP client (fastgw/obs/otlp.py) against a real local HTTP server: what it sends,
which answers it retries, how long an unreachable collector can hold it; and what the OTEL_*
environment variables give it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fastgw.listen import free_port
from fastgw.obs.otlp import OtlpHttpClient, env_headers, resource_attributes, traces_url

BODY = b"\x0a\x00"  # an ExportTraceServiceRequest with one empty ResourceSpans
IO_TIMEOUT_S = 10.0


class Collector(ThreadingHTTPServer):
    """Answers each POST with the next status of ``statuses`` (then 200) and keeps bodies."""

    def __init__(self, statuses: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.statuses = statuses
        self.bodies: list[bytes] = []
        self.content_types: list[str] = []
        self.api_keys: list[str | None] = []
        self.connections = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Collector

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        self.server.content_types.append(self.headers["Content-Type"])
        self.server.api_keys.append(self.headers["Api-Key"])
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        elif status == 504:
            self.send_header("Retry-After", "8")  # the longest back-off (MAX_BACKOFF_S)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector(request: pytest.FixtureRequest) -> Iterator[Collector]:
    server = Collector(list(getattr(request, "param", [])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url(server: Collector) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


def test_send_posts_protobuf_on_a_kept_alive_connection(collector: Collector) -> None:
    client = OtlpHttpClient(url(collector), timeout_s=5)
    assert client.send(BODY, 3) and client.send(BODY + BODY, 1)
    assert collector.bodies == [BODY, BODY + BODY]
    assert collector.content_types == ["application/x-protobuf"] * 2
    assert collector.connections == 1
    assert (client.exported, client.failed) == (4, 0)
    client.close()


@pytest.mark.parametrize("collector", [[503, 429]], indirect=True)
def test_retryable_answers_are_retried(collector: Collector, monkeypatch: Any) -> None:
    monkeypatch.setattr("fastgw.obs.otlp.random.uniform", lambda a, b: 0.01)  # short back-off
    client = OtlpHttpClient(url(collector), timeout_s=5)
    assert client.send(BODY, 1)
    assert len(collector.bodies) == 3
    client.close()


@pytest.mark.parametrize("collector", [[400]], indirect=True)
def test_other_answers_drop_the_batch(collector: Collector, caplog: Any) -> None:
    client = OtlpHttpClient(url(collector), timeout_s=5)
    assert not client.send(BODY, 2)
    assert len(collector.bodies) == 1 and client.failed == 2
    assert "trace export to 127.0.0.1" in caplog.text and "400" in caplog.text
    client.close()


def test_failures_are_logged_at_most_once_per_interval(caplog: Any) -> None:
    client = OtlpHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=0.1)
    for _ in range(5):
        assert not client.send(BODY, 1)
    assert caplog.text.count("trace export to") == 1 and client.failed == 5
    client.close()


def test_an_unreachable_collector_fails_within_the_timeout() -> None:
    client = OtlpHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=0.3)
    started = time.monotonic()
    assert not client.send(BODY, 1)
    assert time.monotonic() - started < 2.0
    client.close()


def test_after_begin_shutdown_there_is_one_try_and_no_back_off() -> None:
    client = OtlpHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=30)
    client.begin_shutdown(time.monotonic() + 5)
    started = time.monotonic()
    assert not client.send(BODY, 1)
    assert time.monotonic() - started < 1.0
    client.close()


def sending(client: OtlpHttpClient) -> tuple[threading.Thread, dict[str, Any]]:
    """``client.send(BODY, 1)`` on a thread of its own (the export thread's part)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["sent"] = client.send(BODY, 1)
        outcome["at_s"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("collector", [[504]], indirect=True)
def test_begin_shutdown_ends_a_back_off_wait_and_the_batch_gets_its_last_try(
    collector: Collector,
) -> None:
    client = OtlpHttpClient(url(collector), timeout_s=30)
    thread, outcome = sending(client)
    deadline_s = time.monotonic() + IO_TIMEOUT_S
    while not collector.bodies and time.monotonic() < deadline_s:  # the 504: 8 s of back-off
        time.sleep(0.01)
    assert collector.bodies == [BODY]
    shutdown_s = time.monotonic()
    client.begin_shutdown(shutdown_s + 2.0)
    thread.join(IO_TIMEOUT_S)
    # Taken by the try right after the wake-up (well before the 8 s the collector asked for).
    assert outcome["sent"] is True and outcome["at_s"] - shutdown_s < 2.0
    assert collector.bodies == [BODY, BODY]
    assert client.send(BODY, 1)  # and what was queued behind it still goes, within the deadline
    client.close()


def test_the_flush_deadline_cuts_short_a_back_off_begun_before_it(monkeypatch: Any) -> None:
    backing_off = threading.Event()

    def jitter(low: float, high: float) -> float:
        backing_off.set()  # drawn right before the wait
        return 1.5  # a 1.5 s back-off, then 3 s

    monkeypatch.setattr("fastgw.obs.otlp.random.uniform", jitter)
    client = OtlpHttpClient(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=30)
    thread, outcome = sending(client)
    assert backing_off.wait(IO_TIMEOUT_S)  # refused at once: waiting out the first back-off
    shutdown_s = time.monotonic()
    client.begin_shutdown(shutdown_s + 0.5)
    thread.join(IO_TIMEOUT_S)
    assert outcome["sent"] is False and outcome["at_s"] - shutdown_s < 1.0
    client.close()


def test_abort_cuts_a_post_to_a_collector_that_never_answers() -> None:
    with socket.create_server(("127.0.0.1", 0)) as hung:  # accepts (backlog), never answers
        client = OtlpHttpClient(f"http://127.0.0.1:{hung.getsockname()[1]}/", timeout_s=30)
        thread, outcome = sending(client)
        peer, _ = hung.accept()
        with peer:  # the try began before the shutdown: its socket timeout is 30 s
            peer.settimeout(IO_TIMEOUT_S)
            assert peer.recv(4) == b"POST"  # sent: the sender waits for the answer now
            client.begin_shutdown(time.monotonic())  # the flush deadline, already reached
            aborted_s = time.monotonic()
            client.abort()  # what SpanSink.aclose does at the deadline
            thread.join(IO_TIMEOUT_S)
    assert outcome["sent"] is False and outcome["at_s"] - aborted_s < 1.0
    assert client.failed == 1
    client.close()


def test_traces_url() -> None:
    assert traces_url("http://collector:4318") == ("http", "collector", 4318, "/v1/traces")
    assert traces_url("http://c:4318/") == ("http", "c", 4318, "/v1/traces")
    assert traces_url("https://c/otlp/v1/traces?x=1") == ("https", "c", 443, "/otlp/v1/traces?x=1")
    assert traces_url("http://c") == ("http", "c", 80, "/v1/traces")


def test_a_jaeger_thrift_endpoint_gets_a_hint(caplog: Any) -> None:
    OtlpHttpClient("http://jaeger:14268/api/traces", timeout_s=1).close()
    assert "port 4318, path /v1/traces" in caplog.text


def test_headers_from_the_environment_as_the_sdks_read_them(caplog: Any) -> None:
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D%3D, x = 1 ,bad,evil=a%0Db"}
    assert env_headers(environ) == {"api-key": "abc==", "x": "1"}
    assert "'bad'" in caplog.text and "%0D" not in caplog.text and "a\rb" not in caplog.text
    both = {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_HEADERS": "b=2"}
    assert env_headers(both) == {"a": "1"}  # the traces-only variable wins
    assert env_headers({}) == {}


def test_the_client_sends_them(collector: Collector, monkeypatch: Any) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Api-Key=s3cret")
    client = OtlpHttpClient(url(collector), timeout_s=5)
    assert client.send(BODY, 1)
    assert collector.api_keys == ["s3cret"]
    assert collector.content_types == ["application/x-protobuf"]
    client.close()


def test_resource_attributes() -> None:
    plain = resource_attributes({})
    assert plain["service.name"] == "fastgw" and plain["telemetry.sdk.language"] == "python"
    assert plain["service.instance.id"] != resource_attributes({})["service.instance.id"]
    named = resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": "service.name=edge,region=eu%2D1"})
    assert (named["service.name"], named["region"]) == ("edge", "eu-1")
    both = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=edge", "OTEL_SERVICE_NAME": "gw"}
    assert resource_attributes(both)["service.name"] == "gw"  # OTEL_SERVICE_NAME wins
