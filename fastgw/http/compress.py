"""Response compression (``gateway.server.compression``, off by default): gzip of proxied
responses the client accepts, streamed as they arrive.

What it owns
    ``Compression`` (plan-time settings): whether a response gets compressed, decided once at
    its head from the request's ``Accept-Encoding`` and the response's status, framing,
    ``Content-Type``, ``Content-Encoding`` and size; and ``GzipStream``, one per compressed
    response, turning body pieces into compressed pieces.

Rules
    * Only when the client accepts gzip (``Accept-Encoding`` with q > 0, ``*`` included), the
      response is a 200 with a body, its ``Content-Type`` is compressible (``text/*``, JSON,
      XML, JavaScript by default) and it has no ``Content-Encoding`` yet: an encoded body is
      never encoded again, and ranges (206) are left alone.
    * A response whose ``Content-Length`` is under ``min_size`` is sent as it is (the gzip
      framing would outweigh the gain); one without a length (chunked) is compressed.
    * The compressed response loses its ``Content-Length``, gains ``Content-Encoding: gzip``
      and ``Vary: Accept-Encoding``, and is re-chunked (HTTP/1.1) or close-delimited
      (HTTP/1.0). Each backend read is compressed and flushed (``Z_SYNC_FLUSH``) as it comes,
      so streaming responses keep streaming: a long poll or an event stream is never held
      back waiting for more bytes.

Not here: brotli and zstd (neither is installed in our environment; adding one means a
dependency and a second stream class), and request bodies (never decompressed or touched).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fastgw.config.gateway import CompressionConfig

GZIP: Final = b"gzip"
_WBITS_GZIP: Final = 16 + zlib.MAX_WBITS


def accepts_gzip(accept_encoding: bytes) -> bool:
    """Whether an ``Accept-Encoding`` value (lowercased) allows gzip (RFC 9110 §12.5.3)."""
    star = False
    for item in accept_encoding.split(b","):
        coding, _, params = item.strip().partition(b";")
        coding = coding.strip()
        q = 1.0
        for param in params.split(b";"):
            name, _, value = param.strip().partition(b"=")
            if name.strip() == b"q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding in (GZIP, b"x-gzip"):
            return q > 0
        if coding == b"*":
            star = q > 0
    return star


def field_value(block: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lowercase, with its colon: ``b"content-type:"``) in a
    lowercased header block of ``Name: value\\r\\n`` lines, or None."""
    at = block.find(b"\r\n" + name) if not block.startswith(name) else -2
    if at == -1:
        return None
    start = at + 2 + len(name)
    end = block.find(b"\r\n", start)
    return block[start : end if end >= 0 else len(block)].strip()


class Compression:
    __slots__ = ("_min_size", "_types", "level")

    def __init__(self, config: CompressionConfig) -> None:
        self.level = config.level
        self._min_size = config.min_size_bytes
        self._types = tuple(t.lower().encode("ascii") for t in config.types)

    def wanted(self, request_block: bytes) -> bool:
        """At the request: does its client accept gzip? (``request_block``: its forwarded
        header lines, as the header kernel kept them.)"""
        value = field_value(request_block.lower(), b"accept-encoding:")
        return value is not None and accepts_gzip(value)

    def applies(self, status: int, content_length: int, response_block: bytes) -> bool:
        """At the response head of a request that ``wanted`` it."""
        if status != 200 or 0 <= content_length < self._min_size:
            return False
        block = response_block.lower()
        if field_value(block, b"content-encoding:") is not None:
            return False  # already encoded (identity included): never twice
        media = field_value(block, b"content-type:")
        if media is None:
            return False
        media = media.partition(b";")[0].strip()
        return any(
            media == wanted or (wanted.endswith(b"/*") and media.startswith(wanted[:-1]))
            for wanted in self._types
        )


class GzipStream:
    """One response's compressor: every piece in, its compressed bytes out, flushed."""

    __slots__ = ("_zlib",)

    def __init__(self, level: int) -> None:
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, _WBITS_GZIP)

    def piece(self, data: bytes) -> bytes:
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def end(self) -> bytes:
        return self._zlib.flush(zlib.Z_FINISH)
