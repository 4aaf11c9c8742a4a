"""OTLP/HTTP: sending encoded span batches to the collector, and what the OpenTelemetry
environment variables say about it.

What it owns
    ``OtlpHttpClient.send``: one POST of an ``ExportTraceServiceRequest`` body
    (``application/x-protobuf``, encoded by ``otlp_encode.py``), on the export thread of
    ``tracing_export.SpanSink``. ``env_headers`` and ``resource_attributes`` read the standard
    ``OTEL_*`` variables, so a hosted collector's API key and the service's name are set the
    way every OpenTelemetry SDK sets them.

Sending: a keep-alive ``http.client`` connection; 429/502/503/504 and connection errors are
retried with exponential back-off (``Retry-After`` honoured) within ``timeout_s``; anything else
drops the batch. Failures are logged at most once per ``TRACE_LOG_INTERVAL_S``, with a count.
``begin_shutdown`` bounds what is left: a back-off wait under way ends at once, and from then on
each batch gets one try, its socket timeout cut to what is left of the flush deadline (the
deadline is read again before every try); ``abort`` cuts a POST still in flight at the deadline
(a collector that accepted the connection and never answers).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote, urlsplit

from fastgw import __version__
from fastgw.limits import TRACE_LOG_INTERVAL_S

log = logging.getLogger("fastgw.tracing")

DEFAULT_PATH: Final = "/v1/traces"
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S: Final = 8.0
SERVICE: Final = "fastgw"
_CONTENT_TYPE: Final = {"Content-Type": "application/x-protobuf"}
_HEADER_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


def _pairs(raw: str, what: str) -> dict[str, str]:
    """``name=value,name2=value2`` with URL-encoded parts (the OpenTelemetry format); an item
    that is not ``name=value`` or holds CR, LF or NUL is skipped with a warning (its value is
    never logged: it may be a secret)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        name, value = unquote(name.strip()), unquote(value.strip())
        if not sep or not name or any(c in name + value for c in "\r\n\0"):
            log.warning("%s item %r... skipped: not name=value", what, name[:20])
            continue
        pairs[name] = value
    return pairs


def env_headers(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Extra request headers for the collector (an API key a hosted one wants), from
    ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` or else ``OTEL_EXPORTER_OTLP_HEADERS``."""
    raw = next((environ[name] for name in _HEADER_VARIABLES if environ.get(name)), "")
    return _pairs(raw, "OTLP header")


def resource_attributes(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The resource every span of this worker belongs to: ``service.name`` fastgw unless
    ``OTEL_SERVICE_NAME`` (first) or ``OTEL_RESOURCE_ATTRIBUTES`` name it; those variables'
    other attributes (``deployment.environment=prod``...) are added; ``service.instance.id``
    is new per worker process (call this after fork)."""
    attributes = {
        "service.name": SERVICE,
        "service.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
        "telemetry.sdk.name": SERVICE,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }
    attributes.update(_pairs(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""), "resource attribute"))
    service = environ.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        attributes["service.name"] = service
    return attributes


def traces_url(endpoint: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) to POST to; a URL without a path gets ``/v1/traces``."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    return scheme, parts.hostname or "", port, path


class OtlpHttpClient:
    """POSTs encoded batches to an OTLP/HTTP collector; used by one thread (the export thread).
    ``exported`` and ``failed`` count spans."""

    def __init__(self, endpoint: str, timeout_s: float) -> None:
        self._scheme, self._host, self._port, self._path = traces_url(endpoint)
        if self._path.endswith("/api/traces"):
            log.warning(
                "tracing.endpoint %s looks like Jaeger's Thrift collector; fastgw sends OTLP/HTTP "
                "(Jaeger accepts it on port 4318, path /v1/traces)",
                endpoint,
            )
        self._headers = {**env_headers(), **_CONTENT_TYPE}
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._stop = threading.Event()  # set by close: nothing more is sent
        # Set by begin_shutdown (from the event loop) and close: a back-off wait ends at once.
        self._hurry = threading.Event()
        self._deadline = float("inf")  # monotonic; set by begin_shutdown, read before each try
        self.exported = 0
        self.failed = 0
        self._unlogged = 0
        self._next_log_s = 0.0

    def send(self, body: bytes, spans: int) -> bool:
        """POST one ``ExportTraceServiceRequest`` holding ``spans`` spans; True when the
        collector took it."""
        problem = self._send(body)
        if problem is not None:
            self._failed(spans, problem)
            return False
        self.exported += spans
        return True

    def begin_shutdown(self, deadline_s: float) -> None:
        """From now on: at most one more try per batch (a back-off wait under way ends at
        once) and none past ``deadline_s`` (monotonic). Called from another thread."""
        self._deadline = deadline_s
        self._hurry.set()  # after the deadline: a woken sender reads the new one

    def abort(self) -> None:
        """Cut a POST in flight (the flush deadline passed): the sender's blocked read or write
        fails at once. Called from another thread; the sender owns and closes the connection."""
        conn = self._conn
        sock = None if conn is None else conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile by the sender
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._hurry.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _send(self, body: bytes) -> str | None:
        """POST ``body``; None when the collector took it, else why not."""
        give_up_s = time.monotonic() + self._timeout_s
        attempt = 0
        while True:
            # The flush deadline is read before each try: begin_shutdown may have come since.
            remaining = min(give_up_s, self._deadline) - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return "export timed out"
            last = self._hurry.is_set()  # shutting down: this try is the batch's last
            status, retry_after, problem = self._post(body, remaining)
            if status is not None and 200 <= status < 300:
                return None
            if (status is not None and status not in RETRY_STATUSES) or last:
                return problem
            if self._hurry.is_set():
                continue  # shutdown began during the try: one last one, at once
            delay = retry_after if retry_after is not None else (2**attempt) * random.uniform(
                0.5, 1.5
            )
            delay = min(delay, MAX_BACKOFF_S)
            if delay >= give_up_s - time.monotonic():
                return problem
            # begin_shutdown ends the wait at once: then one last try within the flush deadline.
            self._hurry.wait(delay)
            attempt += 1

    def _post(self, body: bytes, timeout_s: float) -> tuple[int | None, float | None, str]:
        conn = self._conn
        if conn is None:
            https = self._scheme == "https"
            cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
            conn = self._conn = cls(self._host, self._port, timeout=timeout_s)
        elif conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        else:
            conn.timeout = timeout_s
        try:
            conn.request("POST", self._path, body, self._headers)
            response = conn.getresponse()
            response.read()  # the (partial success) answer is not used; read to reuse the socket
        except (OSError, http.client.HTTPException) as error:
            self._conn = None
            conn.close()
            return None, None, f"{type(error).__name__}: {error}"
        status = response.status
        if response.will_close:
            self._conn = None
            conn.close()
        retry_after: float | None = None
        header = response.getheader("Retry-After")
        if header is not None and header.strip().isdigit():
            retry_after = float(header.strip())
        return status, retry_after, f"collector answered {status} {response.reason}"

    def _failed(self, count: int, problem: str) -> None:
        self.failed += count
        self._unlogged += count
        now = time.monotonic()
        if now >= self._next_log_s:
            log.warning(
                "trace export to %s:%d failed (%s); %d span(s) dropped since the last report",
                self._host,
                self._port,
                problem,
                self._unlogged,
            )
            self._unlogged = 0
            self._next_log_s = now + TRACE_LOG_INTERVAL_S
