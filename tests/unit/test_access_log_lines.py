"""fastgw/obs/logging_access.py without a gateway: the line's fields in both layouts, the queue
bound (crossed for real), the writer thread, and the hot-path hook when the log is off."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from fastgw.auth.context import CustomerContext
from fastgw.exchange import ABORTED, DONE, Exchange
from fastgw.limits import (
    ACCESS_LOG_MAX_PENDING_LINES,
    ACCESS_LOG_STOP_TIMEOUT_S,
    TRACE_FLUSH_TIMEOUT_S,
)
from fastgw.obs import logging_access
from fastgw.obs.logging_access import AccessLog
from fastgw.obs.logging_redact import REDACTED, Redactor
from fastgw.obs.logging_sink import LogSink
from fastgw.obs.tracing_export import _SHUTDOWN_MARGIN_S
from fastgw.plan import RoutePlan
from fastgw.supervisor import STOP_GRACE_S
from fastgw.worker_context import WorkerContext

LABELS = ["10.0.0.1:8080", "10.0.0.2:8080"]


def exchange(**fields: object) -> Exchange:
    ex = Exchange(None, time.monotonic() - 0.25)  # type: ignore[arg-type]
    ex.method = b"POST"
    ex.path = b"/vmprovisioner.v1.VmService/ListVms"
    ex.query = b"access_token=never-logged"
    ex.client = b"192.0.2.7"
    ex.request_id = b"0123456789abcdef-2a"
    ex.route = RoutePlan("ListVMs", None, ())
    ex.status = 200
    ex.customer = CustomerContext(b"acme", b"free", frozenset())
    ex.candidates = (1, 0)
    ex.attempt = 0
    ex.retries = 1
    ex.sent_s = time.monotonic() - 0.125
    ex.body_bytes = 17
    ex.state = DONE
    for name, value in fields.items():
        setattr(ex, name, value)
    return ex


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_json_line_fields(tmp_path: Path) -> None:
    access = AccessLog(LogSink(str(tmp_path / "a.log")), labels=LABELS, worker=2)
    access(exchange())
    access(exchange(route=None, status=404, customer=None, candidates=(), sent_s=0.0,
                    retries=0, body_bytes=0))  # fmt: skip
    access.close()
    first, second = (orjson.loads(line) for line in lines_of(tmp_path / "a.log"))
    assert first["level"] == "info" and first["logger"] == "fastgw.access"
    assert first["worker"] == 2 and first["request_id"] == "0123456789abcdef-2a"
    assert first["client"] == "192.0.2.7" and first["method"] == "POST"
    assert first["path"] == "/vmprovisioner.v1.VmService/ListVms"  # never the query string
    assert first["endpoint"] == "ListVMs" and first["status"] == 200
    assert first["customer_id"] == "acme" and first["upstream"] == "10.0.0.2:8080"
    assert 250 <= first["duration_ms"] < 5000 and 125 <= first["upstream_ms"] < first["duration_ms"]
    assert first["retries"] == 1 and first["request_bytes"] == 17 and first["aborted"] is False
    assert second["endpoint"] is None and second["status"] == 404
    assert second["customer_id"] is None and second["upstream"] is None
    assert second["upstream_ms"] is None


def test_text_line(tmp_path: Path) -> None:
    access = AccessLog(LogSink(str(tmp_path / "a.log")), labels=LABELS, json=False, worker=0)
    access(exchange(state=ABORTED))
    access.close()
    (line,) = lines_of(tmp_path / "a.log")
    text = line.decode()
    assert " INFO fastgw.access: POST /vmprovisioner.v1.VmService/ListVms 200 " in text
    assert "[" in text and " w0]" in text
    for part in ("request_id=0123456789abcdef-2a", "customer_id=acme", "upstream=10.0.0.2:8080",
                 "aborted=True", "endpoint=ListVMs"):  # fmt: skip
        assert part in text, text
    assert "never-logged" not in text


def test_client_controlled_text_is_scrubbed(tmp_path: Path) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
    access = AccessLog(LogSink(str(tmp_path / "a.log")), labels=LABELS, redactor=Redactor())
    access(exchange(path=f"/echo/{jwt}".encode(), request_id=b"dev_customer_9"))
    access.close()
    data = orjson.loads(lines_of(tmp_path / "a.log")[0])
    assert data["path"] == f"/echo/{REDACTED}" and data["request_id"] == REDACTED


def test_lines_past_the_bound_are_dropped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = AccessLog(LogSink(str(tmp_path / "a.log")), labels=LABELS)
    ex = exchange()
    for _ in range(ACCESS_LOG_MAX_PENDING_LINES + 5):  # no writer thread: nothing drains
        access(ex)
    assert access.dropped == 5
    with caplog.at_level(logging.WARNING, logger="fastgw.access"):
        access.flush()
    assert len(lines_of(tmp_path / "a.log")) == ACCESS_LOG_MAX_PENDING_LINES
    assert "5 lines dropped" in caplog.text
    access(ex)  # room again
    access.close()
    assert len(lines_of(tmp_path / "a.log")) == ACCESS_LOG_MAX_PENDING_LINES + 1


def test_the_writer_thread_writes_without_close_and_stops_on_close(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    access = AccessLog(LogSink(str(path)), labels=LABELS)
    access.start()
    thread = next(t for t in threading.enumerate() if t.name == "fastgw-access-log")
    access(exchange())
    deadline = time.monotonic() + 5
    while not path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)  # bounded poll: the thread writes every ACCESS_LOG_FLUSH_INTERVAL_S
    assert len(lines_of(path)) == 1
    access(exchange())
    access.close()
    assert not thread.is_alive()
    assert len(lines_of(path)) == 2
    access.close()  # idempotent


def test_the_hook_is_a_none_check_when_off() -> None:
    async def main() -> None:
        ctx = WorkerContext(asyncio.get_running_loop())
        ctx.plan = type("P", (), {"metrics": None})()  # type: ignore[assignment]
        assert ctx.access_log is None
        ctx.on_exchange_done(exchange())
        assert ctx.requests_done == 1
        seen: list[Exchange] = []
        ctx.access_log = seen.append
        ex = exchange()
        ctx.on_exchange_done(ex)
        assert seen == [ex]

    asyncio.run(main())


def test_close_gives_up_on_a_stuck_writer_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging_access, "ACCESS_LOG_STOP_TIMEOUT_S", 0.1)
    read_fd, write_fd = os.pipe()  # blocking: a writer on a full pipe waits for a reader
    try:
        while True:  # fill it, without blocking this thread
            os.set_blocking(write_fd, False)
            try:
                os.write(write_fd, b"x" * 4096)
            except BlockingIOError:
                break
        os.set_blocking(write_fd, True)
        sink = LogSink("stdout")
        sink._fd = write_fd
        access = AccessLog(sink, labels=LABELS)
        access.start()
        thread = access._thread
        assert thread is not None
        access(exchange())
        started = time.monotonic()
        while access._pending:  # the thread takes the line within a flush interval
            time.sleep(0.01)
            assert time.monotonic() - started < 5
        access.close()  # the thread is stuck in write(2): close returns after the bound
        assert thread.is_alive()
        while thread.is_alive():  # a reader unblocks it; it then ends by itself
            os.read(read_fd, 1 << 16)
            thread.join(0.05)
            assert time.monotonic() - started < 10
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_what_a_worker_does_after_its_drain_fits_in_the_masters_grace() -> None:
    # docs/observability.md, "The access log": the last access lines, then the trace flush,
    # both after the drain, before the master's SIGKILL (STOP_GRACE_S past the drain deadline).
    assert ACCESS_LOG_STOP_TIMEOUT_S + TRACE_FLUSH_TIMEOUT_S + _SHUTDOWN_MARGIN_S < STOP_GRACE_S
