"""Where a request's token is read from: the Bearer header, a query parameter or a cookie.

What it owns
    ``token_reader`` turns ``gateway.authentication.token_sources`` (a tuple of distinct
    ``"header"``, ``"query:<name>"``, ``"cookie:<name>"``, checked by the config model) into one
    callable ``(head, query) -> token | None``, built once per worker by the plan.

Invariants
    * A request carries its token in at most one configured place. With several sources
      configured, a request on which more than one is *present* is a ``TokenError``
      (``SEVERAL_TOKEN_SOURCES``), whatever the values, malformed ones included: the query
      string and the Cookie field go to the backend unchanged, so a second token the gateway
      skipped would reach a backend that may read it instead of the one checked here. The
      order of ``token_sources`` therefore decides nothing.
    * Present means: header, an ``Authorization`` field (``head.authorization is not None``);
      query, a parameter whose name is ours or percent-decodes to ours; cookie, a cookie-pair
      whose name (blanks stripped) is ours. A parameter or cookie without ``=`` is present.
    * The one present source is read strictly. Present but malformed is a ``TokenError``,
      never ``None``: a request whose only token is junk is refused, not taken as anonymous.
    * A token is an RFC 6750 b64token (``[A-Za-z0-9._~+/-]+=*``) of 1..max_token_bytes bytes,
      taken as sent: no percent-decoding, no ``+``-to-space, no trimming inside quotes. JWTs
      (base64url segments joined by ``.``) always fit; anything that would need decoding is
      refused rather than decoded one way here and another way behind us.
    * Query parameters are separated by ``&`` and by ``;`` (some frameworks split on both), for
      finding ours and for duplicates: ``x=1;access_token=t`` carries ``t``. A value that a
      ``;`` ends (``access_token=t;x=1``) is refused, because a backend that splits on ``&``
      alone reads ``t;x=1`` there, a token the gateway never checked.
    * A name present twice (``?access_token=a&access_token=b``, ``?access_token=a;access_token=b``,
      two cookies of the name) is ambiguous, so it is refused: frameworks disagree on whether
      the first or the last wins.
    * A query parameter whose name holds ``%`` and decodes to ours (``acc%65ss_token``) is
      refused too: a backend that decodes names would see a second token the gateway never
      checked.
    * ``TokenError.reason`` is one of the constants below; request bytes are never echoed.

Why like this
    ``token_reader`` runs per request, so everything decidable from config is decided when it
    is built (STYLE principle 1): the default ``("header",)`` returns the header reader itself,
    with no loop over sources, no presence test and no query or cookie code on its path; the
    name each reader looks for is encoded once. With several sources, each source's presence
    test runs first and only the present source is then read; query and cookie tests start with
    a substring test, so a request that does not carry the name costs one ``in`` over the query
    or cookie bytes per source.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final
from urllib.parse import unquote_to_bytes

from fastgw._speedups import RequestHead, extract_bearer
from fastgw.auth.errors import TokenError

__all__ = [
    "BAD_AUTHORIZATION",
    "BAD_COOKIE_TOKEN",
    "BAD_QUERY_TOKEN",
    "DUPLICATE_COOKIE_TOKEN",
    "DUPLICATE_QUERY_TOKEN",
    "ENCODED_QUERY_NAME",
    "SEVERAL_TOKEN_SOURCES",
    "TokenReader",
    "token_reader",
]

TokenReader = Callable[[RequestHead, bytes], bytes | None]
# Whether a source is present on a request: (head, query) -> bool.
_Presence = Callable[[RequestHead, bytes], bool]

# TokenError reasons: constant text for logs (errors.TokenError never carries request bytes).
BAD_AUTHORIZATION: Final = "Authorization is not a valid Bearer credential"
BAD_QUERY_TOKEN: Final = "query token is empty, too long or not a b64token"
DUPLICATE_QUERY_TOKEN: Final = "query token parameter given more than once"
ENCODED_QUERY_NAME: Final = "query token parameter name is percent-encoded"
BAD_COOKIE_TOKEN: Final = "cookie token is empty, too long or not a b64token"
DUPLICATE_COOKIE_TOKEN: Final = "cookie token given more than once"
SEVERAL_TOKEN_SOURCES: Final = "token given in more than one place"

# RFC 6750 section 2.1 b64token; the same characters extract_bearer accepts in the header.
_B64TOKEN: Final = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
# RFC 6265 section 5.4 joins cookie-pairs with "; "; user agents and our kernel (several
# Cookie fields) may leave other blanks around them, which section 5.2 says to strip.
_COOKIE_OWS: Final = b" \t"
# What the config model allows after "query:" / "cookie:". Checked again here because a name
# holding "=", ";", "&" or "%" would make the parsing below mean something else.
_SOURCE_NAME: Final = re.compile(r"[A-Za-z0-9_-]+")
_DQUOTE: Final = 0x22
# Query parameter separators: "&" everywhere, ";" in some frameworks (and HTML 4's advice).
_AMP: Final = b"&"
_SEMI: Final = b";"


def token_reader(sources: tuple[str, ...], max_token_bytes: int) -> TokenReader:
    """The reader for ``sources``: ``(head, query) -> token | None``.

    ``head`` is the kernel's ``RequestHead`` (``authorization``, ``cookie``); ``query`` is the
    raw query string without ``?`` (``b""`` when none). None means no source is present; a
    source that is present but malformed, or more than one present source, raises
    ``TokenError``.
    """
    if not sources:
        raise ValueError("token_sources must name at least one source")
    if max_token_bytes < 1:
        raise ValueError(f"max_token_bytes must be at least 1, got {max_token_bytes}")
    if len(set(sources)) != len(sources):
        # Because every request carrying that source would be "present twice" and refused.
        raise ValueError(f"token_sources must not repeat a source, got {sources!r}")
    if len(sources) == 1:
        # The usual case: no loop, no presence test, no extra call frame per request.
        return _source_reader(sources[0], max_token_bytes)
    checks = tuple(
        (_source_presence(source), _source_reader(source, max_token_bytes)) for source in sources
    )

    def read_the_one_present(head: RequestHead, query: bytes) -> bytes | None:
        chosen: TokenReader | None = None
        for present, read in checks:
            if present(head, query):
                if chosen is not None:
                    raise TokenError(SEVERAL_TOKEN_SOURCES)
                chosen = read
        return None if chosen is None else chosen(head, query)

    return read_the_one_present


def _source_name(source: str) -> tuple[str, bytes]:
    """``("header", b"")``, ``("query", name)`` or ``("cookie", name)``; else ``ValueError``."""
    if source == "header":
        return source, b""
    kind, _, name = source.partition(":")
    if kind not in ("query", "cookie") or _SOURCE_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid token source {source!r}")
    return kind, name.encode("ascii")


def _source_reader(source: str, max_token_bytes: int) -> TokenReader:
    kind, name = _source_name(source)
    if kind == "header":
        return _header_reader(max_token_bytes)
    if kind == "query":
        return _query_reader(name, max_token_bytes)
    return _cookie_reader(name, max_token_bytes)


def _source_presence(source: str) -> _Presence:
    kind, name = _source_name(source)
    if kind == "header":
        return _header_present
    if kind == "query":
        return _query_presence(name)
    return _cookie_presence(name)


# ------------------------------------------------------------------------------ presence
# Each test answers True exactly when the matching reader would not return None (it returns a
# token or raises), so "present" means the same thing to both.


def _header_present(head: RequestHead, query: bytes) -> bool:
    return head.authorization is not None


def _query_presence(name: bytes) -> _Presence:
    def query_present(head: RequestHead, query: bytes) -> bool:
        if name not in query and b"%" not in query:
            return False
        for param in query.replace(_SEMI, _AMP).split(_AMP):
            key = param.partition(b"=")[0]
            if key == name or (b"%" in key and unquote_to_bytes(key) == name):
                return True
        return False

    return query_present


def _cookie_presence(name: bytes) -> _Presence:
    def cookie_present(head: RequestHead, query: bytes) -> bool:
        cookie = head.cookie
        if cookie is None or name not in cookie:
            return False
        for pair in cookie.split(b";"):
            if pair.partition(b"=")[0].strip(_COOKIE_OWS) == name:
                return True
        return False

    return cookie_present


# ------------------------------------------------------------------------------- readers


def _header_reader(max_token_bytes: int) -> TokenReader:
    # Default arguments bind the kernel function and the limit as fast locals.
    def read_header(
        head: RequestHead,
        query: bytes,
        _extract: Callable[[bytes, int], bytes | None] = extract_bearer,
        _max: int = max_token_bytes,
    ) -> bytes | None:
        # HOT PATH: one attribute read and, with a header, one compiled-kernel call.
        value = head.authorization
        if value is None:
            return None
        token = _extract(value, _max)
        if token is None:
            raise TokenError(BAD_AUTHORIZATION)
        return token

    return read_header


def _query_reader(name: bytes, max_token_bytes: int) -> TokenReader:
    def read_query(head: RequestHead, query: bytes) -> bytes | None:
        # Neither the name nor a "%" that could spell it: not present, and no split needed.
        if name not in query and b"%" not in query:
            return None
        found: bytes | None = None
        cut_by_semicolon = False
        # Split on "&" first, then on ";", so we know what an "&"-only parser reads.
        for chunk in query.split(_AMP):
            params = chunk.split(_SEMI)
            last = len(params) - 1
            for index, param in enumerate(params):
                key, _, value = param.partition(b"=")
                if key != name:
                    if b"%" in key and unquote_to_bytes(key) == name:
                        raise TokenError(ENCODED_QUERY_NAME)
                    continue
                if found is not None:
                    raise TokenError(DUPLICATE_QUERY_TOKEN)
                found = _checked(value, max_token_bytes, BAD_QUERY_TOKEN)
                # Refused after the loop, so a ";"-separated duplicate still reads as one.
                cut_by_semicolon = index != last
        if cut_by_semicolon:
            raise TokenError(BAD_QUERY_TOKEN)  # an "&"-only parser reads the value with ";..."
        return found

    return read_query


def _cookie_reader(name: bytes, max_token_bytes: int) -> TokenReader:
    def read_cookie(head: RequestHead, query: bytes) -> bytes | None:
        cookie = head.cookie
        if cookie is None or name not in cookie:
            return None
        found: bytes | None = None
        for pair in cookie.split(b";"):
            key, _, value = pair.partition(b"=")
            if key.strip(_COOKIE_OWS) != name:
                continue
            if found is not None:
                raise TokenError(DUPLICATE_COOKIE_TOKEN)
            value = value.strip(_COOKIE_OWS)
            # cookie-value may be wrapped in DQUOTEs (RFC 6265 section 4.1.1); the quotes are
            # not part of the token, and a lone quote is left for the charset test to refuse.
            if len(value) >= 2 and value[0] == _DQUOTE and value[-1] == _DQUOTE:
                value = value[1:-1]
            found = _checked(value, max_token_bytes, BAD_COOKIE_TOKEN)
        return found

    return read_cookie


def _checked(value: bytes, max_token_bytes: int, reason: str) -> bytes:
    """``value`` when it is a b64token of 1..max_token_bytes bytes, else ``TokenError(reason)``."""
    # Length first: the regex never runs over an oversized value.
    if len(value) > max_token_bytes or _B64TOKEN.fullmatch(value) is None:
        raise TokenError(reason)
    return value
