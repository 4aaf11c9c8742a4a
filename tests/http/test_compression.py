"""Response compression (gateway.server.compression) through a running gateway, and its rules
as units: which responses are gzipped, how they are framed, and that streaming survives it."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import orjson
import pytest

from fastgw.config.gateway import CompressionConfig
from fastgw.http.compress import Compression, GzipStream, accepts_gzip, field_value
from tests.support.client import RawClient, get, request_once
from tests.support.gateway import running, uvloop_test

ON: dict[str, Any] = {"gateway": {"server": {"compression": {"enabled": True, "min_size": 0}}}}
GZIP = {"Accept-Encoding": "gzip, deflate"}


@uvloop_test
async def test_a_json_answer_is_gzipped_for_a_client_that_accepts_it() -> None:
    async with running(extra=ON) as gw:
        plain = await request_once(gw.port, get("/echo/x"))
        packed = await request_once(gw.port, get("/echo/x", headers=GZIP))
        assert plain.header("content-encoding") is None
        assert packed.status == 200 and packed.chunked
        assert packed.header("content-encoding") == b"gzip"
        assert packed.header("vary") == b"Accept-Encoding"
        assert packed.header("content-length") is None
        echoed = orjson.loads(gzip.decompress(packed.body))
        assert echoed["path"] == "/echo/x"
        # the backend saw the client's Accept-Encoding (it may compress itself; then we do not)
        assert ["Accept-Encoding", "gzip, deflate"] in echoed["headers"]


@uvloop_test
@pytest.mark.parametrize(
    "accept", [None, "identity", "gzip;q=0", "br", "*;q=0", "deflate, gzip;q=0.0"]
)
async def test_no_gzip_unless_the_client_accepts_it(accept: str | None) -> None:
    headers = {} if accept is None else {"Accept-Encoding": accept}
    async with running(extra=ON) as gw:
        response = await request_once(gw.port, get("/echo/x", headers=headers))
        assert response.status == 200 and response.header("content-encoding") is None
        assert orjson.loads(response.body)["path"] == "/echo/x"


@uvloop_test
async def test_off_by_default_small_bodies_and_other_types_are_left_alone() -> None:
    async with running() as gw:  # compression off (the default)
        response = await request_once(gw.port, get("/echo/x", headers=GZIP))
        assert response.header("content-encoding") is None
    big_minimum = {"gateway": {"server": {"compression": {"enabled": True, "min_size": "1MiB"}}}}
    async with running(extra=big_minimum) as gw:
        response = await request_once(gw.port, get("/echo/x", headers=GZIP))
        assert response.header("content-encoding") is None  # Content-Length under min_size
    async with running(extra=ON) as gw:
        response = await request_once(gw.port, get("/stream/3", headers=GZIP))  # octet-stream
        assert response.header("content-encoding") is None
        assert response.body == b"0" * 16 + b"1" * 16 + b"2" * 16


@uvloop_test
async def test_a_streamed_response_keeps_streaming_compressed() -> None:
    types = {"types": ["application/octet-stream"]}
    extra = {"gateway": {"server": {"compression": {"enabled": True, "min_size": 0, **types}}}}
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        try:
            await client.send(get("/stream/3?chunk=1000&interval_ms=400", headers=GZIP))
            # the first chunk arrives, compressed and flushed, long before the last one
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)

            def first_chunk_in(raw: bytes) -> bool:
                _, _, body = raw.partition(b"\r\n\r\n")
                size, _, rest = body.partition(b"\r\n")
                return bool(size) and len(rest) >= int(size, 16)

            await client.read_until(first_chunk_in, timeout_s=0.35)  # the next is 0.4 s away
            _, body = client.raw.split(b"\r\n\r\n", 1)
            size, _, rest = body.partition(b"\r\n")
            first = decoder.decompress(rest[: int(size, 16)])
            assert first == b"0" * 1000
            response = await client.read_one()
            assert gzip.decompress(response.body) == b"0" * 1000 + b"1" * 1000 + b"2" * 1000
        finally:
            await client.close()


@uvloop_test
async def test_an_http_1_0_client_gets_a_close_delimited_gzip_body() -> None:
    async with running(extra=ON) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"GET /echo/old HTTP/1.0\r\nHost: gw\r\nAccept-Encoding: gzip\r\n\r\n")
        assert await client.closed_by_peer()
        head, body = client.raw.split(b"\r\n\r\n", 1)
        assert b"Content-Encoding: gzip" in head and b"Content-Length" not in head
        assert orjson.loads(gzip.decompress(body))["path"] == "/echo/old"


# -- the rules, as units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (b"gzip", True),
        (b"deflate, gzip", True),
        (b"gzip;q=0.5", True),
        (b"gzip; q=0", False),
        (b"x-gzip", True),
        (b"*", True),
        (b"*;q=0", False),
        (b"br, *;q=0.1", True),
        (b"gzip;q=0, *", False),
        (b"identity", False),
        (b"", False),
        (b"gzip;q=abc", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(value: bytes, accepted: bool) -> None:
    assert accepts_gzip(value) is accepted


def test_which_responses_apply() -> None:
    rules = Compression(CompressionConfig(enabled=True, min_size_bytes=100))
    json = b"Content-Type: application/json; charset=utf-8\r\n"
    assert rules.applies(200, 1000, json)
    assert rules.applies(200, -1, json)  # no length: streamed, compressed
    assert not rules.applies(200, 99, json)  # under min_size
    assert not rules.applies(206, 1000, json)  # a range is never re-encoded
    assert not rules.applies(200, 1000, json + b"Content-Encoding: br\r\n")
    assert not rules.applies(200, 1000, b"Content-Type: image/png\r\n")
    assert rules.applies(200, 1000, b"Content-Type: TEXT/html\r\n")  # text/*
    assert not rules.applies(200, 1000, b"X-Other: 1\r\n")  # no type: left alone
    assert field_value(b"content-type: a/b\r\nx: 1\r\n", b"content-type:") == b"a/b"
    assert field_value(b"x-content-type: a/b\r\n", b"content-type:") is None


def test_a_gzip_stream_decodes_piece_by_piece() -> None:
    stream = GzipStream(5)
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = b""
    for piece in (b"alpha " * 100, b"", b"beta"):
        out += decoder.decompress(stream.piece(piece))
        assert out.endswith(piece)  # flushed: every piece is readable as soon as it is sent
    out += decoder.decompress(stream.end())
    assert out == b"alpha " * 100 + b"beta" and decoder.eof
