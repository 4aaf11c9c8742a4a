"""Token sources: every rule of fastgw.auth.sources, on heads from both kernel builds.

Heads come from each build's ``scan_request_head`` (the ``speedups`` fixture, ids ``py``/``c``),
so the reader is exercised on the objects the data plane really hands it. The hypothesis tests
feed arbitrary query and cookie bytes, including ones the kernel would refuse, through a stub
head: the reader must never raise anything but ``TokenError``.
"""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._speedups import Build, RequestHead
from fastgw.auth import sources
from fastgw.auth.errors import INVALID, TokenError
from fastgw.auth.sources import token_reader

MAX = 100
JWT = b"eyJhbGciOiJFZERTQSJ9.eyJjdXN0b21lcl9pZCI6ImEifQ.c2lnbmF0dXJlLWJ5dGVz"
B64TOKEN = re.compile(rb"[A-Za-z0-9._~+/-]+=*")
REASONS = {
    sources.BAD_AUTHORIZATION,
    sources.BAD_QUERY_TOKEN,
    sources.DUPLICATE_QUERY_TOKEN,
    sources.ENCODED_QUERY_NAME,
    sources.BAD_COOKIE_TOKEN,
    sources.DUPLICATE_COOKIE_TOKEN,
}


def head(
    build: Build, *, authorization: bytes | None = None, cookies: tuple[bytes, ...] = ()
) -> Any:
    fields = [b"Host", b"api.example.com"]
    if authorization is not None:
        fields += [b"Authorization", authorization]
    for cookie in cookies:
        fields += [b"Cookie", cookie]
    return build.headers.scan_request_head(fields, frozenset())


def refused(read: sources.TokenReader, request_head: Any, query: bytes = b"") -> str:
    with pytest.raises(TokenError) as info:
        read(request_head, query)
    assert info.value.result == INVALID
    assert info.value.reason in REASONS
    return info.value.reason


# ---------------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer " + JWT, JWT),
        (b"bearer abc", b"abc"),
        (b"BEARER\tabc==", b"abc=="),
        (b"Bearer " + b"a" * MAX, b"a" * MAX),  # exactly the limit
    ],
)
def test_header_token(speedups: Build, value: bytes, token: bytes) -> None:
    assert token_reader(("header",), MAX)(head(speedups, authorization=value), b"") == token


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        b"Token abc",
        b"Bearer a b",
        b"Bearer a%41",
        b"Bearer abc,def",
        b"Bearer " + b"a" * (MAX + 1),
        b"Bearer \xc3\xa9",
    ],
)
def test_header_present_but_not_bearer_is_refused(speedups: Build, value: bytes) -> None:
    read = token_reader(("header",), MAX)
    assert refused(read, head(speedups, authorization=value)) == sources.BAD_AUTHORIZATION


def test_header_absent_is_none(speedups: Build) -> None:
    assert token_reader(("header",), MAX)(head(speedups), b"access_token=abc") is None


def test_default_reader_is_the_header_reader_alone(speedups: Build) -> None:
    # No loop over sources on the default path: the reader *is* the header case, and it never
    # looks at the query or the cookie.
    read = token_reader(("header",), MAX)
    assert read.__name__ == "read_header"
    request = head(speedups, cookies=(b"access_token=abc",))
    assert read(request, b"access_token=abc") is None


# ----------------------------------------------------------------------------------- query

QUERY = ("query:access_token",)


@pytest.mark.parametrize(
    ("query", "token"),
    [
        (b"access_token=" + JWT, JWT),
        (b"a=1&access_token=abc&b=2", b"abc"),
        (b"&&access_token=abc&", b"abc"),
        (b"access_token=abc==", b"abc=="),
        (b"access_token=a+b/c~d-e_f.g", b"a+b/c~d-e_f.g"),
        (b"x=%41&access_token=abc", b"abc"),  # "%" elsewhere is fine
        (b"access_token=" + b"a" * MAX, b"a" * MAX),
        (b"q=access_token&x=1", None),  # the name as a value is not the parameter
        (b"xaccess_token=abc&access_tokenx=def", None),
        (b"ACCESS_TOKEN=abc", None),  # names are case-sensitive
        (b"", None),
        (b"a=1&b=2", None),
        (b"%7A=1", None),  # an encoded name that is not ours
    ],
)
def test_query_token(speedups: Build, query: bytes, token: bytes | None) -> None:
    assert token_reader(QUERY, MAX)(head(speedups), query) == token


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (b"access_token=", sources.BAD_QUERY_TOKEN),
        (b"access_token", sources.BAD_QUERY_TOKEN),
        (b"access_token=abc%2Edef", sources.BAD_QUERY_TOKEN),  # no percent-decoding of tokens
        (b"access_token=%61bc", sources.BAD_QUERY_TOKEN),
        (b"access_token=a b", sources.BAD_QUERY_TOKEN),
        (b"access_token=a;b", sources.BAD_QUERY_TOKEN),
        (b"access_token==abc", sources.BAD_QUERY_TOKEN),
        (b"access_token=" + b"a" * (MAX + 1), sources.BAD_QUERY_TOKEN),
        (b"access_token=abc&access_token=abc", sources.DUPLICATE_QUERY_TOKEN),
        (b"access_token=abc&x=1&access_token=def", sources.DUPLICATE_QUERY_TOKEN),
        (b"acc%65ss_token=abc", sources.ENCODED_QUERY_NAME),
        (b"access_token=abc&acc%65ss_token=def", sources.ENCODED_QUERY_NAME),
        (b"acc%65ss_token=def&access_token=abc", sources.ENCODED_QUERY_NAME),
        (b"%61%63%63%65%73%73%5F%74%6F%6B%65%6E=abc", sources.ENCODED_QUERY_NAME),
    ],
)
def test_query_present_but_malformed_is_refused(speedups: Build, query: bytes, reason: str) -> None:
    assert refused(token_reader(QUERY, MAX), head(speedups), query) == reason


# ---------------------------------------------------------------------------------- cookie

COOKIE = ("cookie:session",)


@pytest.mark.parametrize(
    ("cookies", "token"),
    [
        ((b"session=" + JWT,), JWT),
        ((b"a=1; session=abc; b=2",), b"abc"),
        ((b"a=1;session=abc",), b"abc"),
        ((b"a=1;\t session = abc ",), b"abc"),
        ((b'session="abc=="',), b"abc=="),  # DQUOTEs are not part of the value
        ((b"a=1", b"session=abc"), b"abc"),  # several Cookie fields are one cookie string
        ((b"session=" + b"a" * MAX,), b"a" * MAX),
        ((b"x=session; sessionx=abc; xsession=def",), None),
        ((b"SESSION=abc",), None),  # names are case-sensitive
        ((b"a=1",), None),
        ((b"",), None),
        ((), None),
    ],
)
def test_cookie_token(speedups: Build, cookies: tuple[bytes, ...], token: bytes | None) -> None:
    assert token_reader(COOKIE, MAX)(head(speedups, cookies=cookies), b"") == token


@pytest.mark.parametrize(
    ("cookies", "reason"),
    [
        ((b"session=",), sources.BAD_COOKIE_TOKEN),
        ((b"session",), sources.BAD_COOKIE_TOKEN),
        ((b'session=""',), sources.BAD_COOKIE_TOKEN),
        ((b'session="abc',), sources.BAD_COOKIE_TOKEN),
        ((b'session="',), sources.BAD_COOKIE_TOKEN),
        ((b"session=a b",), sources.BAD_COOKIE_TOKEN),
        ((b"session=a%2Eb",), sources.BAD_COOKIE_TOKEN),
        ((b"session=a,b",), sources.BAD_COOKIE_TOKEN),
        ((b"session=" + b"a" * (MAX + 1),), sources.BAD_COOKIE_TOKEN),
        ((b"session=abc; session=abc",), sources.DUPLICATE_COOKIE_TOKEN),
        ((b"session=abc", b"session=def"), sources.DUPLICATE_COOKIE_TOKEN),
        ((b"session=abc; session=",), sources.DUPLICATE_COOKIE_TOKEN),
    ],
)
def test_cookie_present_but_malformed_is_refused(
    speedups: Build, cookies: tuple[bytes, ...], reason: str
) -> None:
    assert refused(token_reader(COOKIE, MAX), head(speedups, cookies=cookies)) == reason


# ----------------------------------------------------------------------------------- order

ALL = ("cookie:session", "query:access_token", "header")


def test_first_present_source_wins(speedups: Build) -> None:
    read = token_reader(ALL, MAX)
    both = head(speedups, authorization=b"Bearer fromheader", cookies=(b"session=fromcookie",))
    assert read(both, b"access_token=fromquery") == b"fromcookie"
    header_only = head(speedups, authorization=b"Bearer fromheader")
    assert read(header_only, b"access_token=fromquery") == b"fromquery"
    assert read(header_only, b"") == b"fromheader"
    assert read(head(speedups, cookies=(b"other=1",)), b"x=1") is None


@pytest.mark.parametrize(
    ("authorization", "cookies", "query"),
    [
        # a malformed first source is refused although a later one carries a good token
        (b"Bearer good", (b"session=bad value",), b"access_token=good"),
        (b"Bearer good", (), b"access_token=bad%20value"),
        (b"Bearer good", (), b"access_token=a&access_token=b"),
        (b"Basic bad", (b"other=1",), b"x=1"),
    ],
)
def test_present_but_malformed_never_falls_through(
    speedups: Build, authorization: bytes, cookies: tuple[bytes, ...], query: bytes
) -> None:
    request = head(speedups, authorization=authorization, cookies=cookies)
    refused(token_reader(ALL, MAX), request, query)


def test_a_later_malformed_source_is_never_read(speedups: Build) -> None:
    request = head(speedups, authorization=b"Basic bad", cookies=(b"session=a b",))
    assert token_reader(("query:t", "header"), MAX)(request, b"t=good") == b"good"


@pytest.mark.parametrize(
    ("sources_", "max_bytes"),
    [((), MAX), (("query:",), MAX), (("cookie:a=b",), MAX), (("query:a%62",), MAX),
     (("form:x",), MAX), (("Header",), MAX), (("header",), 0)],
)  # fmt: skip
def test_bad_configuration_is_refused_at_build(sources_: tuple[str, ...], max_bytes: int) -> None:
    with pytest.raises(ValueError):
        token_reader(sources_, max_bytes)


# ------------------------------------------------------------------------------ hypothesis


class StubHead:
    """Only what the reader reads, so cookies the kernel would refuse can be fed too."""

    __slots__ = ("authorization", "cookie")

    def __init__(self, authorization: bytes | None, cookie: bytes | None) -> None:
        self.authorization = authorization
        self.cookie = cookie


NAMES = [b"access_token", b"acc%65ss_token", b"session", b"%73ession", b"x", b""]
pieces = st.one_of(
    st.sampled_from([b"&", b";", b"=", b" ", b"\t", b'"', b"%", b"%65", b"+", b"=="]),
    st.sampled_from(NAMES),
    st.binary(max_size=12),
)
wire = st.lists(pieces, max_size=16).map(b"".join)
authorizations = st.one_of(st.none(), wire, st.builds(lambda t: b"Bearer " + t, wire))


@given(query=wire, cookie=st.one_of(st.none(), wire), authorization=authorizations)
@settings(deadline=None, max_examples=500)
def test_reader_raises_only_token_error(
    query: bytes, cookie: bytes | None, authorization: bytes | None
) -> None:
    stub = cast(RequestHead, StubHead(authorization, cookie))
    for configured in (ALL, ("query:access_token",), ("cookie:session",), ("header",)):
        try:
            token = token_reader(configured, 16)(stub, query)
        except TokenError as error:
            assert error.reason in REASONS
            continue
        if token is not None:
            assert B64TOKEN.fullmatch(token) and 1 <= len(token) <= 16
