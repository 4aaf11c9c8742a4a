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
    sources.SEVERAL_TOKEN_SOURCES,
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
        (b"x=1;access_token=abc", b"abc"),  # ";" separates parameters too
        (b"a=1;access_token=abc&b=2", b"abc"),
        (b"a=1&b=2;c=3;access_token=abc", b"abc"),
        (b"access_token=" + b"a" * MAX, b"a" * MAX),
        (b"q=access_token&x=1", None),  # the name as a value is not the parameter
        (b"xaccess_token=abc&access_tokenx=def", None),
        (b"ACCESS_TOKEN=abc", None),  # names are case-sensitive
        (b"", None),
        (b"a=1&b=2", None),
        (b"%7A=1", None),  # an encoded name that is not ours
        (b"x=access_token;y=1", None),
        (b"x=1;xaccess_token=abc;access_tokenx=def", None),
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
        # a value that ";" ends: an "&"-only parser reads "a;b" where we would read "a"
        (b"access_token=a;b", sources.BAD_QUERY_TOKEN),
        (b"access_token=abc;x=1", sources.BAD_QUERY_TOKEN),
        (b";access_token=abc;", sources.BAD_QUERY_TOKEN),
        (b"x=1;access_token=abc;&y=2", sources.BAD_QUERY_TOKEN),
        (b"access_token==abc", sources.BAD_QUERY_TOKEN),
        (b"access_token=" + b"a" * (MAX + 1), sources.BAD_QUERY_TOKEN),
        (b"access_token=abc&access_token=abc", sources.DUPLICATE_QUERY_TOKEN),
        (b"access_token=abc&x=1&access_token=def", sources.DUPLICATE_QUERY_TOKEN),
        # ";"-separated duplicates: backends that split on ";" see two values
        (b"access_token=abc;access_token=def", sources.DUPLICATE_QUERY_TOKEN),
        (b"x=1;access_token=F&access_token=G", sources.DUPLICATE_QUERY_TOKEN),
        (b"access_token=F&x=1;access_token=G", sources.DUPLICATE_QUERY_TOKEN),
        (b"x=1;access_token=F;y=2;access_token=G", sources.DUPLICATE_QUERY_TOKEN),
        (b"x=1;access_token=;access_token=G", sources.BAD_QUERY_TOKEN),  # first error wins
        (b"acc%65ss_token=abc", sources.ENCODED_QUERY_NAME),
        (b"access_token=abc&acc%65ss_token=def", sources.ENCODED_QUERY_NAME),
        (b"acc%65ss_token=def&access_token=abc", sources.ENCODED_QUERY_NAME),
        (b"%61%63%63%65%73%73%5F%74%6F%6B%65%6E=abc", sources.ENCODED_QUERY_NAME),
        (b"access_token=abc&x=1;acc%65ss_token=def", sources.ENCODED_QUERY_NAME),
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


# ---------------------------------------------------------------------------- several sources

ALL = ("cookie:session", "query:access_token", "header")
FORGED = b"eyJhbGciOiJFZERTQSJ9.eyJjdXN0b21lcl9pZCI6ImIifQ.Zm9yZ2Vk"  # customer "b", unsigned


def test_valid_header_with_forged_query_and_cookie_is_refused(speedups: Build) -> None:
    # The review's attack: the header authenticates customer A, while the query string and
    # the Cookie field (forwarded unchanged) carry customer B's token for the backend.
    read = token_reader(("header", "query:access_token", "cookie:tok"), MAX)
    request = head(speedups, authorization=b"Bearer " + JWT, cookies=(b"tok=" + FORGED,))
    assert refused(read, request, b"access_token=" + FORGED) == sources.SEVERAL_TOKEN_SOURCES
    # each of the two smuggled copies alone is refused as well
    assert refused(read, request, b"") == sources.SEVERAL_TOKEN_SOURCES
    alone = head(speedups, authorization=b"Bearer " + JWT)
    assert refused(read, alone, b"access_token=" + FORGED) == sources.SEVERAL_TOKEN_SOURCES
    assert read(alone, b"x=1") == JWT


# What makes each source present: well-formed, malformed, and spelled the ways the reader
# counts as its name. Every one of them counts.
HEADERS_PRESENT = [b"Bearer " + JWT, b"Basic dXNlcjpwYXNz", b"", b"Bearer a b"]
QUERIES_PRESENT = [
    b"access_token=" + FORGED,
    b"x=1;access_token=" + FORGED,
    b"access_token",
    b"access_token=",
    b"access_token=a%20b",
    b"acc%65ss_token=" + FORGED,
    b"access_token=a&access_token=b",
    b"access_token=a;access_token=b",
]
COOKIES_PRESENT = [
    (b"session=" + FORGED,),
    (b"a=1;\t session = " + FORGED,),
    (b"session",),
    (b"session=a b",),
    (b"session=a; session=b",),
    (b"a=1", b"session=" + FORGED),
]
# Absent although the name appears somewhere.
QUERY_DECOYS = [b"", b"q=access_token", b"xaccess_token=abc;access_tokenx=def", b"%7A=1"]
COOKIE_DECOYS = [(), (b"x=session; sessionx=abc",), (b"SESSION=abc",)]


@pytest.mark.parametrize("configured", [ALL, ("header", "query:access_token")])
@pytest.mark.parametrize("authorization", HEADERS_PRESENT)
@pytest.mark.parametrize("query", QUERIES_PRESENT)
def test_header_and_query_present_is_refused(
    speedups: Build, configured: tuple[str, ...], authorization: bytes, query: bytes
) -> None:
    request = head(speedups, authorization=authorization)
    assert refused(token_reader(configured, MAX), request, query) == sources.SEVERAL_TOKEN_SOURCES


@pytest.mark.parametrize("configured", [ALL, ("cookie:session", "header")])
@pytest.mark.parametrize("authorization", HEADERS_PRESENT)
@pytest.mark.parametrize("cookies", COOKIES_PRESENT)
def test_header_and_cookie_present_is_refused(
    speedups: Build, configured: tuple[str, ...], authorization: bytes, cookies: tuple[bytes, ...]
) -> None:
    request = head(speedups, authorization=authorization, cookies=cookies)
    assert refused(token_reader(configured, MAX), request) == sources.SEVERAL_TOKEN_SOURCES


@pytest.mark.parametrize("configured", [ALL, ("query:access_token", "cookie:session")])
@pytest.mark.parametrize("query", QUERIES_PRESENT)
@pytest.mark.parametrize("cookies", COOKIES_PRESENT)
def test_query_and_cookie_present_is_refused(
    speedups: Build, configured: tuple[str, ...], query: bytes, cookies: tuple[bytes, ...]
) -> None:
    request = head(speedups, cookies=cookies)
    assert refused(token_reader(configured, MAX), request, query) == sources.SEVERAL_TOKEN_SOURCES


@pytest.mark.parametrize("configured", [ALL, ALL[::-1]])
def test_only_the_header_present_is_read(speedups: Build, configured: tuple[str, ...]) -> None:
    read = token_reader(configured, MAX)
    for query in QUERY_DECOYS:
        for cookies in COOKIE_DECOYS:
            request = head(speedups, authorization=b"Bearer " + JWT, cookies=cookies)
            assert read(request, query) == JWT
            malformed = head(speedups, authorization=b"Basic x", cookies=cookies)
            assert refused(read, malformed, query) == sources.BAD_AUTHORIZATION


@pytest.mark.parametrize("configured", [ALL, ALL[::-1]])
def test_only_the_query_present_is_read(speedups: Build, configured: tuple[str, ...]) -> None:
    read = token_reader(configured, MAX)
    for cookies in COOKIE_DECOYS:
        request = head(speedups, cookies=cookies)
        assert read(request, b"a=1&access_token=" + JWT) == JWT
        assert read(request, b"a=1;access_token=" + JWT) == JWT
        assert refused(read, request, b"access_token=a b") == sources.BAD_QUERY_TOKEN
        assert refused(read, request, b"access_token=a;access_token=b") == (
            sources.DUPLICATE_QUERY_TOKEN
        )
        assert refused(read, request, b"acc%65ss_token=abc") == sources.ENCODED_QUERY_NAME


@pytest.mark.parametrize("configured", [ALL, ALL[::-1]])
def test_only_the_cookie_present_is_read(speedups: Build, configured: tuple[str, ...]) -> None:
    read = token_reader(configured, MAX)
    for query in QUERY_DECOYS:
        request = head(speedups, cookies=(b"theme=dark; session=" + JWT,))
        assert read(request, query) == JWT
        malformed = head(speedups, cookies=(b"session=a b",))
        assert refused(read, malformed, query) == sources.BAD_COOKIE_TOKEN
        twice = head(speedups, cookies=(b"session=a", b"session=b"))
        assert refused(read, twice, query) == sources.DUPLICATE_COOKIE_TOKEN


def test_no_source_present_is_none(speedups: Build) -> None:
    read = token_reader(ALL, MAX)
    for query in QUERY_DECOYS:
        for cookies in COOKIE_DECOYS:
            assert read(head(speedups, cookies=cookies), query) is None


def test_a_source_not_configured_is_not_looked_at(speedups: Build) -> None:
    # Only configured sources count: a header is nobody's business under query/cookie sources.
    read = token_reader(("query:t", "cookie:c"), MAX)
    request = head(speedups, authorization=b"Basic bad", cookies=(b"session=a b",))
    assert read(request, b"t=good&access_token=x") == b"good"


@pytest.mark.parametrize(
    ("sources_", "max_bytes"),
    [((), MAX), (("query:",), MAX), (("cookie:a=b",), MAX), (("query:a%62",), MAX),
     (("form:x",), MAX), (("Header",), MAX), (("header",), 0), (("header", "header"), MAX),
     (("query:a", "cookie:a", "query:a"), MAX)],
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


SUBSETS = [
    ("query:access_token",),
    ("cookie:session",),
    ("header",),
    ("header", "query:access_token"),
    ("cookie:session", "header"),
    ("query:access_token", "cookie:session"),
]


@given(query=wire, cookie=st.one_of(st.none(), wire), authorization=authorizations)
@settings(deadline=None, max_examples=500)
def test_reader_raises_only_token_error(
    query: bytes, cookie: bytes | None, authorization: bytes | None
) -> None:
    stub = cast(RequestHead, StubHead(authorization, cookie))
    for configured in (ALL, *SUBSETS):
        try:
            token = token_reader(configured, 16)(stub, query)
        except TokenError as error:
            assert error.reason in REASONS
            continue
        if token is not None:
            assert B64TOKEN.fullmatch(token) and 1 <= len(token) <= 16


def outcome(configured: tuple[str, ...], stub: RequestHead, query: bytes) -> bytes | str | None:
    """The token, the refusal's reason, or None."""
    try:
        return token_reader(configured, 16)(stub, query)
    except TokenError as error:
        return error.reason


@given(query=wire, cookie=st.one_of(st.none(), wire), authorization=authorizations)
@settings(deadline=None, max_examples=500)
def test_several_sources_read_the_one_present(
    query: bytes, cookie: bytes | None, authorization: bytes | None
) -> None:
    # Model: a source is present exactly when its reader alone does not return None; with
    # several configured, two present is SEVERAL_TOKEN_SOURCES, one present reads as alone.
    stub = cast(RequestHead, StubHead(authorization, cookie))
    alone = {source: outcome((source,), stub, query) for source in ALL}
    assert (alone["header"] is None) == (authorization is None)
    for configured in (ALL, ALL[::-1], *(s for s in SUBSETS if len(s) > 1)):
        present = [alone[source] for source in configured if alone[source] is not None]
        expected = sources.SEVERAL_TOKEN_SOURCES if len(present) > 1 else next(iter(present), None)
        assert outcome(configured, stub, query) == expected
