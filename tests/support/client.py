"""A raw HTTP/1.1 client for tests: sends exact bytes, parses responses with httptools.

Tests need to send malformed and pipelined requests byte for byte, and to see exactly what
came back (status, header order, body, whether the server closed), which no polite client
library allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools
import orjson

READ_TIMEOUT_S = 10.0


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False

    def header(self, name: str) -> bytes | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_names(self) -> list[bytes]:
        return [key.lower() for key, _ in self.headers]

    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass
class _Collector:
    responses: list[Response] = field(default_factory=list)
    current: Response | None = None
    parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        assert self.current is not None and self.parser is not None
        self.current.status = self.parser.get_status_code()

    def on_message_begin(self) -> None:
        self.current = Response(0, [])

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_chunk_header(self) -> None:
        assert self.current is not None
        self.current.chunked = True

    def on_eof(self) -> None:
        """httptools cannot be told about EOF: a close-delimited body ends here."""
        if self.current is not None and self.current.status:
            self.on_message_complete()

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.responses.append(self.current)
        self.current = None


class RawClient:
    """One client connection. ``send`` writes bytes; ``read_responses(n)`` parses n answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _Collector()
        self._parser = httptools.HttpResponseParser(self._collector)
        self._collector.parser = self._parser
        self.raw = b""
        self.eof = False

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_responses(self, count: int, timeout_s: float = READ_TIMEOUT_S) -> list[Response]:
        async with asyncio.timeout(timeout_s):
            while len(self._collector.responses) < count and not self.eof:
                data = await self.reader.read(65536)
                if not data:
                    self.eof = True
                    self._collector.on_eof()
                    break
                self.raw += data
                self._feed(data)
        out = self._collector.responses[:count]
        del self._collector.responses[:count]
        return out

    async def read_until(self, done: Callable[[bytes], bool], timeout_s: float) -> None:
        """Read (and parse, as ``read_responses`` does) until ``done(self.raw)``, within the
        bound: for tests that watch bytes arrive before a response is complete."""
        async with asyncio.timeout(timeout_s):
            while not done(self.raw):
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError(f"EOF before the condition held: {self.raw!r}")
                self.raw += data
                self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._parser.feed_data(data)
        # A 1xx is a complete message to httptools; keep it as its own response.

    async def read_one(self, timeout_s: float = READ_TIMEOUT_S) -> Response:
        responses = await self.read_responses(1, timeout_s)
        assert responses, f"no response; connection closed after {self.raw!r}"
        return responses[0]

    async def request(self, data: bytes) -> Response:
        await self.send(data)
        return await self.read_one()

    async def closed_by_peer(self, timeout_s: float = READ_TIMEOUT_S) -> bool:
        """True when the server closes the connection (EOF or reset) within the bound; our end
        is closed too then."""
        closed = await self._wait_closed(timeout_s)
        if closed:
            await self.close()
        return closed

    async def _wait_closed(self, timeout_s: float) -> bool:
        if self.eof:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        self.eof = True
                        return True
                    self.raw += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await self.writer.wait_closed()


def get(path: str, host: str = "gw", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path: str, body: bytes, host: str = "gw", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_error(response: Response, status: int, code: str) -> None:
    """``response`` is the gateway's JSON error (contract A3) with this status and code, and
    its request id is the one in ``X-Request-ID``."""
    assert response.status == status, (response.status, response.body)
    assert response.header("content-type") == b"application/json"
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    request_id = response.header("x-request-id")
    assert request_id is not None
    assert body["error"]["request_id"] == request_id.decode()


async def request_once(port: int, data: bytes) -> Response:
    """One request on a fresh connection, closed after its answer."""
    client = await RawClient.connect(port)
    try:
        return await client.request(data)
    finally:
        await client.close()
