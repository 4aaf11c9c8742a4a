"""How requests that do not end with a whole answer are counted, logged and not counted twice:
an in-process gateway on real sockets (plain and TLS), ``GET /metrics`` parsed with
``prometheus_client``'s parser, and the access log read back.

Covered: a try whose response fails after its head (the backend closes, or stalls past the
backend timeout) counts once, under its status; a client that leaves mid-response counts under
the status the response began with, one that leaves before any answer under code 0 (a request
queued behind it too, under its route; a half-received head not at all), each with its access
log line; a 408 for a request whose route was waiting for its body keeps the request's
endpoint, caller and timing; over TLS (no half-close: the close waits for the client's
close_notify), an answer sent before the body ended is not answered or counted again when the
body's read timeout would have fired.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from tests.http.test_metrics_gateway import Samples, pick, scrape, value
from tests.support.client import RawClient, assert_error, get
from tests.support.gateway import ECHO_ROUTES, Running, eventually, merge, running, uvloop_test

NO_RETRY: dict[str, Any] = {
    "gateway": {"routing": {"retry_attempts": 0, "circuit_breaker": {"enabled": False}}}
}
READ_TIMEOUT_S = 0.3


def access_log(path: Path) -> dict[str, Any]:
    return {"gateway": {"observability": {"logging": {"access_log": True, "output": str(path)}}}}


def access_lines(path: Path) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [line for line in lines if line["logger"] == "fastgw.access"]


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


async def settled(gw: Running) -> Samples:
    """A scrape once every client connection has ended (its exchanges with it)."""
    await eventually(lambda: not gw.gateway.context.connections)
    return await scrape(gw)


async def read_to_end(client: RawClient) -> bytes:
    """What the gateway sends until it ends the connection (EOF or reset)."""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(10):
            while data := await client.reader.read(65536):
                client.raw += data
    return client.raw


# -- one try, one count ---------------------------------------------------------------------------


def truncating_backend(stall: bool) -> Any:
    """A backend that answers health checks, and any other request with a 200 head promising
    100 bytes, then 5 bytes, then closes (or, with ``stall``, sends nothing more)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b" /health" in head.split(b"\r\n", 1)[0]:
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"status":"ok"}')
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                await writer.drain()
                if stall:
                    await reader.read()  # until the gateway gives up on it
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize("stall", [False, True], ids=["backend-closes", "backend-stalls"])
@uvloop_test
async def test_a_try_that_fails_after_its_head_is_counted_once(stall: bool) -> None:
    backend = await asyncio.start_server(truncating_backend(stall), "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    extra = merge(NO_RETRY, {"gateway": {"routing": {"backend_timeout": "300ms"}}})
    try:
        async with running(0, extra, dead_ports=[port]) as gw:
            client = await RawClient.connect(gw.port)
            await client.send(get("/echo/x"))
            relayed = await read_to_end(client)  # the head and 5 bytes, then a reset
            await client.close()
            assert relayed.startswith(b"HTTP/1.1 200 OK\r\n") and relayed.endswith(b"short")
            samples = await settled(gw)
    finally:
        backend.close()
    instance = f"127.0.0.1:{port}"
    assert pick(samples, "fastgw_upstream_requests_total") == {
        labels(instance=instance, code="200"): 1  # not also "error" or "timeout"
    }
    assert value(samples, "fastgw_upstream_duration_seconds_count", instance=instance) == 1
    assert pick(samples, "fastgw_requests_total") == {labels(endpoint="Echo", code="200"): 1}
    assert value(samples, "fastgw_retries_total") == 0


# -- the client leaves ----------------------------------------------------------------------------


@uvloop_test
async def test_a_client_gone_mid_response_counts_under_the_status_it_began_with(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "access.log"
    async with running(1, access_log(log_path)) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(get("/stream/50?chunk=10&interval_ms=50"))
        await client.read_until(lambda raw: b"\r\n\r\n" in raw, timeout_s=5)
        await client.close()  # 50 chunks 50 ms apart: the response is far from its end
        samples = await settled(gw)
        assert pick(samples, "fastgw_requests_total") == {labels(endpoint="Stream", code="200"): 1}
        assert value(samples, "fastgw_request_duration_seconds_count", endpoint="Stream") == 1
        assert gw.gateway.context.requests_done == 1
    (line,) = access_lines(log_path)
    assert line["path"] == "/stream/50" and line["endpoint"] == "Stream"
    assert line["status"] == 200 and line["aborted"] is True


@uvloop_test
async def test_a_client_gone_before_any_answer_counts_under_code_0(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with running(1, access_log(log_path)) as gw:
        mock = gw.backends[0]
        mock.behaviour.delay_ms = 10_000  # no answer comes before the client leaves
        client = await RawClient.connect(gw.port)
        # One request at the backend, one queued behind it, and half a head (no request yet).
        partial = b"GET /echo/partial HTTP/1.1\r\nHo"
        await client.send(get("/echo/first") + get("/echo/queued") + partial)
        await eventually(lambda: mock.stats()["requests"] == 1)
        await client.close()
        samples = await settled(gw)
        assert pick(samples, "fastgw_requests_total") == {labels(endpoint="Echo", code="0"): 2}
        assert value(samples, "fastgw_request_duration_seconds_count", endpoint="Echo") == 2
        # The abandoned try has no outcome: nothing is said about the instance.
        assert sum(pick(samples, "fastgw_upstream_requests_total").values()) == 0
        assert gw.gateway.context.requests_done == 2
        backend = f"127.0.0.1:{mock.port}"
    first, queued = access_lines(log_path)
    assert first["path"] == "/echo/first" and queued["path"] == "/echo/queued"
    for line in (first, queued):
        assert line["status"] == 0 and line["aborted"] is True and line["endpoint"] == "Echo"
    assert first["upstream"] == backend and queued["upstream"] is None


# -- a 408 for a routed request -------------------------------------------------------------------


@uvloop_test
async def test_a_body_timeout_while_the_route_waits_keeps_the_request_context(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "access.log"
    checked = {
        "endpoint": "Checked",
        "path_prefix": "/echo/checked",
        "json_schema": {"type": "object"},  # the route PAUSEs until the whole body is read
    }
    extra = merge(
        access_log(log_path),
        {
            "gateway": {"server": {"timeouts": {"read": f"{int(READ_TIMEOUT_S * 1000)}ms"}}},
            "routes": [checked, *ECHO_ROUTES],
        },
    )
    async with running(1, extra) as gw:
        client = await RawClient.connect(gw.port)
        head = (
            "POST /echo/checked/x?q=1 HTTP/1.1\r\nHost: gw\r\nX-Request-ID: slow-body-1\r\n"
            "Authorization: Bearer dev_customer_123\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        await client.send(head.encode() + b'{"a": ')  # 6 of 100 bytes, then nothing
        response = await client.read_one()
        assert_error(response, 408, "request_timeout")
        assert response.header("x-request-id") == b"slow-body-1"
        await client.close()
        samples = await settled(gw)
        assert pick(samples, "fastgw_requests_total") == {labels(endpoint="Checked", code="408"): 1}
        assert gw.backends[0].stats()["requests"] == 0
    (line,) = access_lines(log_path)
    assert line["endpoint"] == "Checked" and line["status"] == 408
    assert line["method"] == "POST" and line["path"] == "/echo/checked/x"
    assert line["client"] == "127.0.0.1" and line["customer_id"] == "123"
    assert line["request_id"] == "slow-body-1" and line["request_bytes"] == 6
    # From the request's first byte; the loop's timers may fire up to a few ms early against
    # time.monotonic (they run on the loop's millisecond clock).
    assert line["duration_ms"] >= READ_TIMEOUT_S * 1000 - 5


# -- TLS: no half-close ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp / "gateway.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "gateway.crt"))
    return ca, tmp / "gateway.crt", tmp / "gateway.key"


def tls_connect(port: int, ca: trustme.CA) -> ssl.SSLSocket:
    """A blocking TLS client: it reads only when asked, so it does not answer the gateway's
    close_notify meanwhile (the gateway's close waits for that answer)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_all(sock: ssl.SSLSocket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while piece := sock.recv(65536):
            data += piece
    return data


@uvloop_test
async def test_tls_an_answer_before_the_body_ended_is_answered_and_counted_once(
    tls_files: tuple[trustme.CA, Path, Path],
) -> None:
    ca, cert_file, key_file = tls_files
    tls = {"enabled": True, "cert_file": str(cert_file), "key_file": str(key_file)}
    timeouts = {"read": f"{int(READ_TIMEOUT_S * 1000)}ms"}
    extra = {"gateway": {"server": {"tls": tls, "timeouts": timeouts}}}
    async with running(1, extra) as gw:
        sock = await asyncio.to_thread(tls_connect, gw.port, ca)
        try:
            # No route: answered 404 at once, 90 body bytes short; the connection closes.
            request = b"POST /nope HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
            await asyncio.to_thread(sock.sendall, request)
            counted = await until_requests(gw, 1)
            # The client reads nothing yet: the gateway's close waits for its close_notify
            # while the body's read timeout passes (what must not happen takes this long).
            await asyncio.sleep(3 * READ_TIMEOUT_S)
            assert gw.gateway.context.requests_done == 1
            later = await scrape(gw)
            received = await asyncio.to_thread(read_all, sock)
        finally:
            sock.close()
    assert pick(counted, "fastgw_requests_total") == {labels(endpoint="(unrouted)", code="404"): 1}
    assert pick(later, "fastgw_requests_total") == pick(counted, "fastgw_requests_total")
    assert received.startswith(b"HTTP/1.1 404 ") and received.count(b"HTTP/1.1 ") == 1


async def until_requests(gw: Running, count: int) -> Samples:
    async with asyncio.timeout(5):
        while gw.gateway.context.requests_done < count:
            await asyncio.sleep(0.005)
    return await scrape(gw)
