"""Compact JWS (RFC 7515 §7.1) taken apart, strictly, before and after the signature check.

Why not ``jwt.decode``: it costs 105-200 µs per RS256 token on our machine while the RSA
verify inside is 21-32 µs; the rest is a per-character base64url check in Python, JSON and
claim handling. Here each step runs at C speed (``bytes.translate``, ``binascii``, the C JSON
scanner) and the order is the safe one: the header is read to pick *our* key, the signature is
checked, and only then is the payload decoded, so no unsigned payload byte is ever parsed.

Strictness (RFC 8725 §3): exactly three segments, none empty (an unsigned JWS is never
accepted, whatever ``alg`` says); base64url alphabet only, no padding, no whitespace; JSON
objects only, UTF-8, no duplicate member names at any depth (RFC 7515 §4 allows refusing
them, and a parser differential is the point of the attack), no NaN/Infinity; a header that
lists ``crit`` extensions (we understand none) or ``b64`` (RFC 7797 unencoded payloads) is
refused. ``jku``, ``x5u``, ``jwk`` and ``x5c`` are never read: keys come from our
configuration only.
"""

from __future__ import annotations

import binascii
import json
from typing import Any, Final

import orjson

from fastgw.auth.errors import TokenError
from fastgw.limits import MAX_CACHED_HEADERS, MAX_HEADER_SEGMENT_BYTES

_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_PADDING: Final = (b"", b"", b"==", b"=")  # by len % 4; a remainder of 1 never decodes
# The last character of an unpadded segment also carries unused bits (4 of them when
# len % 4 == 2, 2 when 3); they must be zero, or two strings would decode to the same bytes
# (a token would have look-alike twins). The characters whose unused bits are zero, by len % 4:
_CANONICAL_LAST: Final = (
    b"",
    b"",
    bytes(c for i, c in enumerate(_ALPHABET) if i % 16 == 0),
    bytes(c for i, c in enumerate(_ALPHABET) if i % 4 == 0),
)
_REFUSED_HEADERS: Final = ("crit", "b64")

# What a header segment says, once read: (alg, kid).
Header = tuple[str, "str | None"]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_refuse_constant
)


def b64url_decode(segment: bytes) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); TokenError on anything else."""
    rest = len(segment) % 4
    if (
        segment.translate(None, _ALPHABET)
        or rest == 1
        or (rest and segment[-1] not in _CANONICAL_LAST[rest])
    ):
        raise TokenError("malformed base64url")
    try:
        return binascii.a2b_base64(
            segment.translate(_TO_STANDARD) + _PADDING[len(segment) % 4], strict_mode=True
        )
    except binascii.Error:
        raise TokenError("malformed base64url") from None


def json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object with unique member names; TokenError for anything else.

    Fast path: orjson parses (0.6 µs for a typical payload), and when serializing the result
    gives back exactly ``raw`` the document cannot have held a duplicate (a dropped member
    would be missing from the output). Compact JSON as issuers write it takes this path.
    Anything else (whitespace, other escapes, a duplicate, an error) is decided by the C
    scanner of ``json`` with a duplicate-refusing hook (2.3 µs), which bounds nesting by the
    interpreter's recursion limit; the token size cap bounds the input.
    """
    try:
        value = orjson.loads(raw)
        if type(value) is dict and orjson.dumps(value) == raw:
            return value
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # dumps: too deep to re-encode
        pass
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise TokenError(f"{what} is not a JSON object") from None
    if type(value) is not dict:
        raise TokenError(f"{what} is not a JSON object")
    return value


class Parts:
    """A token split into what the key lookup and the signature check need."""

    __slots__ = ("alg", "kid", "payload_segment", "signature", "signing_input")

    def __init__(
        self,
        *,
        alg: str,
        kid: str | None,
        signing_input: bytes,
        payload_segment: bytes,
        signature: bytes,
    ) -> None:
        self.alg = alg
        self.kid = kid
        self.signing_input = signing_input
        self.payload_segment = payload_segment
        self.signature = signature


def split(token: bytes, headers: dict[bytes, Header]) -> Parts:
    """Shape, header and signature of a compact JWS; the payload stays encoded (unverified).

    ``headers`` remembers what each header segment said (the caller's, bounded): segments
    repeat (one issuer, a few kids), so most tokens skip the header's base64 and JSON.
    """
    if token.count(b".") != 2:
        raise TokenError("not three segments")
    header_segment, payload_segment, signature_segment = token.split(b".")
    if not header_segment or not payload_segment or not signature_segment:
        raise TokenError("empty segment")
    known = headers.get(header_segment)
    if known is None:
        known = _read_header(header_segment)
        if len(headers) >= MAX_CACHED_HEADERS:
            headers.clear()
        headers[header_segment] = known
    alg, kid = known
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)]
    return Parts(
        alg=alg,
        kid=kid,
        signing_input=signing_input,
        payload_segment=payload_segment,
        signature=b64url_decode(signature_segment),
    )


def _read_header(segment: bytes) -> Header:
    if len(segment) > MAX_HEADER_SEGMENT_BYTES:
        raise TokenError("header too long")
    header = json_object(b64url_decode(segment), "header")
    alg = header.get("alg")
    if type(alg) is not str:
        raise TokenError("header alg missing")
    kid = header.get("kid")
    if "kid" in header and type(kid) is not str:  # "kid": null is not "no kid"
        raise TokenError("header kid is not a string")
    for name in _REFUSED_HEADERS:
        if name in header:
            raise TokenError("header uses an extension we refuse")
    return alg, kid


def payload(parts: Parts) -> dict[str, Any]:
    """The claims, decoded only after the signature over them was verified."""
    return json_object(b64url_decode(parts.payload_segment), "payload")
