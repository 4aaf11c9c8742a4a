"""TLS termination end to end: trustme certificates, an in-process gateway on a real socket,
and real TLS clients (the stdlib's blocking ``ssl`` sockets in a thread, or asyncio streams).

What is covered: the handshake (TLS 1.2+, ALPN ``http/1.1``, refusals: TLS 1.1, an untrusted
CA, plain HTTP, a silent client), HSTS on gateway-made and proxied responses only over TLS,
X-Forwarded-Proto, keep-alive and pipelining, large bodies both ways through uvloop's SSL
transport into our ``BufferedProtocol`` (one read buffer shared by every connection), an early
413 during an upload, and the checks that refuse an unusable certificate or key.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from fastgw.config import ConfigError
from fastgw.config.model import TlsConfig
from fastgw.errors import BootError
from fastgw.plan import check_plan
from fastgw.server import GatewayServer
from fastgw.tls import build_context, hsts_field, server_context, tls_problems
from tests.support.client import RawClient, get, post
from tests.support.gateway import eventually, make_config, merge, running, uvloop_test

HSTS_DEFAULT = b"max-age=31536000; includeSubDomains"
IO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    cert_file: Path
    key_file: Path
    dir: Path

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.set_alpn_protocols(alpn or ["http/1.1"])
        return context

    def tls(self, **more: Any) -> dict[str, Any]:
        """``extra`` for ``running``: TLS on with this pair, plus ``more`` under gateway."""
        tls = {"enabled": True, "cert_file": str(self.cert_file), "key_file": str(self.key_file)}
        return merge({"gateway": {"server": {"tls": tls}}}, {"gateway": more} if more else {})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.private_key_pem.write_to_path(str(tmp / "gateway.key"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "gateway.crt"))
    return Pki(ca, tmp / "gateway.crt", tmp / "gateway.key", tmp)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    version: str | None
    alpn: str | None


def https_get(port: int, context: ssl.SSLContext, path: str, **headers: str) -> Answer:
    """One request on a blocking stdlib TLS connection (run it in a thread)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=IO_TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        return Answer(
            reply.status, reply.headers, body, sock.version(), sock.selected_alpn_protocol()
        )
    finally:
        conn.close()


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


async def tls_client(port: int, context: ssl.SSLContext) -> RawClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost", ssl_handshake_timeout=5
    )
    return RawClient(reader, writer)


def echo_headers(body: bytes) -> dict[str, str]:
    data = orjson.loads(body)
    return {name.lower(): value for name, value in data["headers"]}


def no_loop_complaints(caplog: pytest.LogCaptureFixture) -> None:
    """A refused handshake is the client's problem: nothing above INFO in the logs."""
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]


# -- the handshake and HSTS --------------------------------------------------------------------


@uvloop_test
async def test_health_over_tls_has_hsts_and_alpn_http11(pki: Pki) -> None:
    async with running(extra=pki.tls()) as gw:
        answer = await asyncio.to_thread(https_get, gw.port, pki.client_context(), "/health")
        assert answer.status == 200
        assert answer.version in ("TLSv1.2", "TLSv1.3")
        assert answer.alpn == "http/1.1"
        assert answer.headers["Strict-Transport-Security"] == HSTS_DEFAULT.decode()
        assert answer.headers.get_all("Strict-Transport-Security") == [HSTS_DEFAULT.decode()]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"  # still there too
        missing = await asyncio.to_thread(https_get, gw.port, pki.client_context(), "/nowhere")
        assert missing.status == 404  # a gateway-made error carries it as well
        assert missing.headers["Strict-Transport-Security"] == HSTS_DEFAULT.decode()


@uvloop_test
async def test_tls12_client_is_served(pki: Pki) -> None:
    context = pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(extra=pki.tls()) as gw:
        answer = await asyncio.to_thread(https_get, gw.port, context, "/health")
        assert (answer.status, answer.version, answer.alpn) == (200, "TLSv1.2", "http/1.1")


@uvloop_test
async def test_proxied_response_over_tls_has_hsts_and_forwarded_proto_https(pki: Pki) -> None:
    async with running(extra=pki.tls()) as gw:
        answer = await asyncio.to_thread(
            https_get, gw.port, pki.client_context(), "/echo/x", **{"X-Forwarded-Proto": "http"}
        )
        assert answer.status == 200
        assert answer.headers["X-Metald-Instance"] == "m0"  # it came from the backend
        assert answer.headers.get_all("Strict-Transport-Security") == [HSTS_DEFAULT.decode()]
        seen = echo_headers(answer.body)
        assert seen["x-forwarded-proto"] == "https"  # ours; the client's own was dropped
        assert "strict-transport-security" not in seen  # a response header, never a request one


@uvloop_test
async def test_no_hsts_over_plain_http_even_when_enabled() -> None:
    async with running(extra={"gateway": {"security": {"hsts": {"enabled": True}}}}) as gw:
        client = await RawClient.connect(gw.port)
        for path in ("/health", "/echo/x", "/nowhere"):
            response = await client.request(get(path))
            assert response.header("strict-transport-security") is None, path
        seen = echo_headers((await client.request(get("/echo/y"))).body)
        assert seen["x-forwarded-proto"] == "http"
        await client.close()


@uvloop_test
async def test_hsts_settings_are_honoured(pki: Pki) -> None:
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"enabled": False}, None),
        ({"max_age": "1h", "include_subdomains": False}, "max-age=3600"),
        ({"max_age": "0s"}, "max-age=0; includeSubDomains"),  # how a site withdraws it
    ]
    for hsts, expected in cases:
        async with running(extra=pki.tls(security={"hsts": hsts})) as gw:
            answer = await asyncio.to_thread(https_get, gw.port, pki.client_context(), "/echo/a")
            assert answer.headers.get("Strict-Transport-Security") == expected, hsts


def test_hsts_field_leaves_an_operator_header_alone(pki: Pki) -> None:
    def gateway(**security: Any) -> Any:
        extra = pki.tls(security=security) if security else pki.tls()
        return make_config([1], extra).gateway

    assert hsts_field(gateway()) == b"Strict-Transport-Security: " + HSTS_DEFAULT + b"\r\n"
    own = {"response_headers": {"strict-transport-security": "max-age=5"}}
    assert hsts_field(gateway(**own)) == b""  # one header, the operator's
    assert hsts_field(make_config([1]).gateway) == b""  # TLS off


# -- refusals ------------------------------------------------------------------------------------


@uvloop_test
async def test_alpn_offering_only_h2_gets_no_protocol_and_http11_still_works(pki: Pki) -> None:
    async with running(extra=pki.tls()) as gw:
        answer = await asyncio.to_thread(https_get, gw.port, pki.client_context(["h2"]), "/health")
        assert answer.alpn is None  # never h2: the parser speaks HTTP/1.x only
        assert answer.status == 200
        both = pki.client_context(["h2", "http/1.1"])
        assert (await asyncio.to_thread(https_get, gw.port, both, "/health")).alpn == "http/1.1"


def legacy_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` lowered to TLS 1.0-1.1 at security level 0, so it really offers TLS 1.1."""
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point here
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def tls11_control(pki: Pki, client: ssl.SSLContext) -> str | None:
    """Handshake ``client`` with a stdlib server that allows TLS 1.1: proof that the client
    can speak it, so that the gateway's refusal below is the gateway's."""
    server = legacy_context(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    server.load_cert_chain(pki.cert_file, pki.key_file)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IO_TIMEOUT_S)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as raw:
            accepted, _ = listener.accept()
            errors: list[BaseException] = []

            def serve() -> None:
                try:
                    server.wrap_socket(accepted, server_side=True).close()
                except (OSError, ssl.SSLError) as error:
                    errors.append(error)

            thread = threading.Thread(target=serve)
            thread.start()
            try:
                with client.wrap_socket(raw, server_hostname="localhost") as tls:
                    return tls.version()
            finally:
                thread.join(IO_TIMEOUT_S)
                accepted.close()
                assert not errors, errors


@uvloop_test
async def test_tls11_client_is_refused(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    context = legacy_context(pki.client_context())
    assert await asyncio.to_thread(tls11_control, pki, context) == "TLSv1.1"
    async with running(extra=pki.tls()) as gw:
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.to_thread(handshake, gw.port, context)
        # uvloop drops the connection without sending OpenSSL's protocol_version alert (its
        # handshake failure path aborts the transport before the alert is flushed), so the
        # client sees an EOF; either is a refusal by the server.
        assert isinstance(refused.value, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(
            refused.value
        ).upper().replace(" ", "_"), refused.value
        await eventually(lambda: not gw.gateway.context.connections)
        assert gw.backends[0].stats()["requests"] == 0
    no_loop_complaints(caplog)


@uvloop_test
async def test_client_trusting_another_ca_fails_the_handshake(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    async with running(extra=pki.tls()) as gw:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(handshake, gw.port, stranger)
        assert not gw.gateway.context.connections  # never reached the HTTP layer
        assert gw.backends[0].stats()["requests"] == 0
        answer = await asyncio.to_thread(https_get, gw.port, pki.client_context(), "/health")
        assert answer.status == 200  # and the port is fine for the next client
    no_loop_complaints(caplog)


def plain_request(port: int, data: bytes) -> tuple[bytes, float]:
    """What a plain-TCP client gets back until the server closes (bounded), and how long."""
    started = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as sock:
        if data:
            sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass  # a reset is a close too
    return got, time.monotonic() - started


@uvloop_test
async def test_plain_http_to_the_tls_port_gets_no_http_answer_and_is_closed(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(extra=pki.tls()) as gw:
        got, took = await asyncio.to_thread(plain_request, gw.port, get("/health"))
        assert not got.startswith(b"HTTP/"), got  # at most a TLS alert record
        assert took < 2.0  # closed at once, not at a timeout
        assert gw.backends[0].stats()["requests"] == 0
    no_loop_complaints(caplog)


@uvloop_test
async def test_silent_client_is_closed_after_the_handshake_timeout(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(extra=pki.tls(server={"timeouts": {"header": "300ms"}})) as gw:
        got, took = await asyncio.to_thread(plain_request, gw.port, b"")
        assert got == b""
        assert 0.25 <= took < 3.0, took  # ssl_handshake_timeout = the header timeout
    no_loop_complaints(caplog)


@uvloop_test
async def test_silent_client_after_the_handshake_gets_the_header_timeout(pki: Pki) -> None:
    async with running(extra=pki.tls(server={"timeouts": {"header": "300ms"}})) as gw:
        client = await tls_client(gw.port, pki.client_context())
        started = time.monotonic()
        assert await client.closed_by_peer(timeout_s=3)
        assert 0.25 <= time.monotonic() - started < 3.0
        await eventually(lambda: not gw.gateway.context.connections)


# -- HTTP over TLS -------------------------------------------------------------------------------


@uvloop_test
async def test_keep_alive_and_pipelining_over_tls(pki: Pki) -> None:
    async with running(extra=pki.tls()) as gw:
        client = await tls_client(gw.port, pki.client_context())
        await client.send(get("/echo/1") + get("/health") + get("/echo/3"))
        responses = await client.read_responses(3)
        assert [r.status for r in responses] == [200, 200, 200]
        assert orjson.loads(responses[0].body)["path"] == "/echo/1"
        assert orjson.loads(responses[2].body)["path"] == "/echo/3"
        for response in responses:
            assert response.header("strict-transport-security") == HSTS_DEFAULT
            assert response.header("connection") is None  # kept alive
        again = await client.request(get("/echo/4"))  # the same connection, later
        assert echo_headers(again.body)["x-forwarded-proto"] == "https"
        assert len(gw.gateway.context.connections) == 1
        last = await client.request(get("/echo/5", headers={"Connection": "close"}))
        assert last.header("connection") == b"close"
        assert await client.closed_by_peer(timeout_s=IO_TIMEOUT_S)
        await eventually(lambda: not gw.gateway.context.connections)


def expected_stream(chunks: int, size: int) -> bytes:
    return b"".join(bytes((48 + i % 10,)) * size for i in range(chunks))


@uvloop_test
async def test_large_streamed_response_over_tls_is_intact_with_a_slow_reader(pki: Pki) -> None:
    chunks, size = 64, 65536  # 4 MiB: far over every write buffer's high-water mark
    async with running(extra=pki.tls()) as gw:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, ssl=pki.client_context(), server_hostname="localhost"
        )
        client = RawClient(reader, writer)
        await client.send(get(f"/stream/{chunks}?chunk={size}"))
        await asyncio.sleep(0.3)  # not reading yet: the write buffers fill, writing pauses
        response = await client.read_one(timeout_s=20)
        assert response.status == 200 and response.chunked
        assert (
            hashlib.sha256(response.body).digest()
            == hashlib.sha256(expected_stream(chunks, size)).digest()
        )
        assert response.header("strict-transport-security") == HSTS_DEFAULT
        small = await client.request(get("/echo/after"))  # the connection is still good
        assert small.status == 200
        await client.close()


async def upload(port: int, context: ssl.SSLContext, body: bytes) -> dict[str, Any]:
    client = await tls_client(port, context)
    try:
        response = await client.request(post("/echo/up", body))
        assert response.status == 200, response.body
        data: dict[str, Any] = orjson.loads(response.body)
        return data
    finally:
        await client.close()


@uvloop_test
async def test_large_uploads_on_many_tls_connections_at_once_are_intact(pki: Pki) -> None:
    # Every connection of a worker reads into one shared buffer; uvloop's SSL transport fills
    # it in several SSLObject.read calls and may call back for more when it is full. Twelve
    # concurrent uploads of different bytes prove that nothing leaks between connections.
    extra = pki.tls(server={"limits": {"max_body_size": "8MB"}})
    bodies = [bytes((65 + n,)) * (300_000 + 7919 * n) for n in range(12)]
    async with running(extra=extra) as gw:
        echoes = await asyncio.gather(
            *(upload(gw.port, pki.client_context(), body) for body in bodies)
        )
    for body, echo in zip(bodies, echoes, strict=True):
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


@uvloop_test
async def test_413_during_a_tls_upload_reaches_the_client(pki: Pki) -> None:
    # No write_eof over TLS (can_write_eof() is False), so there is no FIN-then-linger: the
    # TLS shutdown reads and drops what the client still sends while the answer goes out.
    extra = pki.tls(server={"limits": {"max_body_size": "1KB"}})
    async with running(extra=extra) as gw:
        client = await tls_client(gw.port, pki.client_context())
        size = 4 * 1024 * 1024
        head = b"POST /echo/big HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % size

        async def keep_sending() -> str:
            """Send the whole body unless the connection ends first (either is fine)."""
            client.writer.write(head)
            try:
                for _ in range(size // 65536):
                    client.writer.write(b"x" * 65536)
                    await client.writer.drain()
            except (ConnectionError, ssl.SSLError) as error:
                return type(error).__name__
            return "sent"

        sender = asyncio.create_task(keep_sending())
        response = await client.read_one(timeout_s=10)
        assert response.status == 413
        assert response.header("connection") == b"close"
        assert response.header("strict-transport-security") == HSTS_DEFAULT
        await asyncio.wait_for(sender, 15)
        client.writer.transport.abort()
        await eventually(lambda: not gw.gateway.context.connections, timeout_s=10)
        assert gw.backends[0].stats()["requests"] == 0


# -- unusable certificates and keys ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(pki: Pki) -> Iterator[dict[str, Path]]:
    other = pki.ca.issue_cert("other.test")
    files = {
        "other_key": pki.dir / "other.key",
        "encrypted_key": pki.dir / "encrypted.key",
        "junk": pki.dir / "junk.pem",
        "missing": pki.dir / "missing.pem",
    }
    other.private_key_pem.write_to_path(str(files["other_key"]))
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), None)
    files["encrypted_key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    files["junk"].write_text("not a PEM file\n")
    yield files


@pytest.mark.parametrize(
    ("cert", "key", "blamed", "says"),
    [
        ("good", "other_key", "key_file", "does not match the certificate"),
        ("good", "encrypted_key", "key_file", "is encrypted"),
        ("good", "junk", "key_file", "no usable PEM private key"),
        ("junk", "good_key", "cert_file", "no PEM certificate"),
        ("good_key", "good", "cert_file", "no PEM certificate"),  # the two swapped
        ("missing", "good_key", "cert_file", "No such file"),
        ("good", "missing", "key_file", "No such file"),
    ],
)
def test_unusable_pair_is_a_clear_error_naming_the_file(
    pki: Pki, bad_files: dict[str, Path], *, cert: str, key: str, blamed: str, says: str
) -> None:
    paths = {**bad_files, "good": pki.cert_file, "good_key": pki.key_file}
    tls = TlsConfig(enabled=True, cert_file=str(paths[cert]), key_file=str(paths[key]))
    named = str(paths[key] if blamed == "key_file" else paths[cert])
    with pytest.raises(BootError) as boot:
        server_context(tls)
    message = str(boot.value)
    assert message.startswith(f"gateway.server.tls.{blamed}: "), message
    assert says in message and named in message, message
    [problem] = tls_problems(tls)
    assert problem.path == f"$.gateway.server.tls.{blamed}"
    assert says in problem.message


def test_config_validation_and_check_plan_refuse_a_mismatched_key(
    pki: Pki, bad_files: dict[str, Path], tmp_path: Path
) -> None:
    mismatched = {"cert_file": str(pki.cert_file), "key_file": str(bad_files["other_key"])}
    with pytest.raises(ConfigError) as refused:
        make_config([1], {"gateway": {"server": {"tls": {"enabled": True, **mismatched}}}})
    [problem] = refused.value.problems
    assert problem.path == "$.gateway.server.tls.key_file"
    assert "does not match the certificate" in problem.message
    # The master's check before a generation: a key replaced after validation is caught too.
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert.write_bytes(pki.cert_file.read_bytes())
    key.write_bytes(pki.key_file.read_bytes())
    tls = {"enabled": True, "cert_file": str(cert), "key_file": str(key)}
    config = make_config([1], {"gateway": {"server": {"tls": tls}}})
    check_plan(config)
    key.write_bytes(bad_files["other_key"].read_bytes())
    with pytest.raises(ConfigError, match="does not match the certificate") as late:
        check_plan(config)
    assert late.value.problems[0].path == "$.gateway.server.tls.key_file"


@uvloop_test
async def test_gateway_start_with_an_unusable_key_is_a_boot_error(
    pki: Pki, bad_files: dict[str, Path], tmp_path: Path
) -> None:
    key = tmp_path / "gateway.key"
    key.write_bytes(pki.key_file.read_bytes())
    tls = {"enabled": True, "cert_file": str(pki.cert_file), "key_file": str(key)}
    config = make_config([1], {"gateway": {"server": {"tls": tls}}})
    key.write_bytes(bad_files["junk"].read_bytes())  # broken after validation
    with pytest.raises(BootError, match=r"gateway\.server\.tls\.key_file: no usable PEM"):
        await GatewayServer(config).start()


def test_context_settings(pki: Pki) -> None:
    context = build_context(str(pki.cert_file), str(pki.key_file))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.check_hostname and context.verify_mode == ssl.CERT_NONE  # no client certs
    assert server_context(TlsConfig()) is None
