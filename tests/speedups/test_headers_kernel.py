"""Behaviour of the header kernel, on both builds: every error, every dropped name, each result."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._speedups import Build

HOP_BY_HOP = [
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Transfer-Encoding",
    b"Trailer",
    b"Upgrade",
    b"Proxy-Authorization",
    b"Proxy-Authenticate",
]
HOP_VALUES = {b"Connection": b"keep-alive", b"Transfer-Encoding": b"chunked"}


def flat(*pairs: tuple[bytes, bytes]) -> list[bytes]:
    return [item for pair in pairs for item in pair]


def scan(build: Build, *pairs: tuple[bytes, bytes], strip: frozenset[bytes] = frozenset()) -> Any:
    return build.headers.scan_request_head(flat(*pairs), strip)


def scan_error(build: Build, fields: list[bytes]) -> str:
    with pytest.raises(build.headers.HeaderError) as info:
        build.headers.scan_request_head(fields, frozenset())
    assert isinstance(info.value, ValueError)
    error: Any = info.value
    assert str(error) == error.reason
    return str(error.reason)


HOST = (b"Host", b"example.com")

REQUEST_ERRORS = [
    pytest.param([b"Host"], "odd number of header fields", id="odd-fields"),
    pytest.param(flat(HOST, HOST), "duplicate Host header", id="dup-host"),
    pytest.param(
        flat((b"host", b"a.example"), (b"HOST", b"b.example")),
        "duplicate Host header",
        id="dup-host-case",
    ),
    pytest.param(flat((b"Host", b"")), "empty Host header", id="empty-host"),
    *(
        pytest.param(flat((b"Host", bad)), "invalid Host header", id=f"bad-host-{i}")
        for i, bad in enumerate(
            [
                b"exa mple.com",
                b"user@example.com",
                b"example.com/path",
                b"example.com\\x",
                b"example.com\t",
                b"\xc3\xa9xample.com",
                b"example.com:80:80",
                b"example.com:http",
                b"example.com:123456",
                b"[::1",
                b"::1]",
                b"[]",
                b":80",
                b"example.com#x",
                b'ex"ample.com',
            ]
        )
    ),
    pytest.param(
        flat((b"Content-Length", b"1"), (b"content-length", b"1")),
        "duplicate Content-Length",
        id="dup-cl-same",
    ),
    pytest.param(
        flat((b"Content-Length", b"1"), (b"Content-Length", b"2")),
        "duplicate Content-Length",
        id="dup-cl-differ",
    ),
    *(
        pytest.param(flat((b"Content-Length", bad)), "invalid Content-Length", id=f"bad-cl-{i}")
        for i, bad in enumerate(
            [
                b"",
                b" ",
                b"12a",
                b"-1",
                b"+5",
                b"0x10",
                b"1,1",
                b"1 1",
                b"1.0",
                b"1" * 19,
                b"\xd9\xa3",
            ]  # the last is ARABIC-INDIC DIGIT THREE in UTF-8
        )
    ),
    pytest.param(
        flat((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")),
        "duplicate Transfer-Encoding",
        id="dup-te",
    ),
    *(
        pytest.param(
            flat((b"Transfer-Encoding", bad)), "unsupported Transfer-Encoding", id=f"bad-te-{i}"
        )
        for i, bad in enumerate(
            [
                b"gzip",
                b"chunked, gzip",
                b"gzip, chunked",
                b"identity",
                b"",
                b"chunked;x=1",
                b"xchunked",
            ]
        )
    ),
    pytest.param(
        flat((b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")),
        "Content-Length with Transfer-Encoding",
        id="cl-then-te",
    ),
    pytest.param(
        flat((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")),
        "Content-Length with Transfer-Encoding",
        id="te-then-cl",
    ),
    pytest.param(
        flat((b"Authorization", b"Bearer a"), (b"authorization", b"Bearer b")),
        "duplicate Authorization header",
        id="dup-auth",
    ),
    *(
        pytest.param(flat(HOST, (bad, b"v")), "invalid header name", id=f"bad-name-{i}")
        for i, bad in enumerate(
            [
                b"",
                b"Bad Name",
                b"Host:",
                b"na\x00me",
                b"n\xc3\xa4me",
                b"(x)",
                b"a@b",
                b"{x}",
                b"a/b",
                b"a\tb",
                b"\x7f",
                b'"q"',
                b"a,b",
                b"a;b",
                b"a=b",
                b"[x]",
                b"a\\b",
            ]
        )
    ),
    *(
        pytest.param(flat(HOST, (b"X-Thing", bad)), "invalid header value", id=f"bad-value-{i}")
        for i, bad in enumerate(
            [b"a\x00b", b"a\rb", b"a\nb", b"\r\n", b"a\x01", b"\x1f", b"del\x7f", b"\x0b"]
        )
    ),
    pytest.param(flat((b"Expect", b"gzip")), "unsupported Expect", id="bad-expect"),
    pytest.param(
        flat((b"Expect", b"100-continue, foo")), "unsupported Expect", id="bad-expect-list"
    ),
]


@pytest.mark.parametrize(("fields", "reason"), REQUEST_ERRORS)
def test_request_errors(speedups: Build, fields: list[bytes], reason: str) -> None:
    assert scan_error(speedups, fields) == reason


@pytest.mark.parametrize(
    "host",
    [
        b"example.com",
        b"Example.COM.",
        b"example.com:8080",
        b"example.com:",
        b"127.0.0.1:80",
        b"[::1]",
        b"[::1]:443",
        b"[fe80::1%25en0]",
        b"[v1.fe80::a+en1]",
        b"xn--bcher-kva.example",
        b"a_b-c~d!$&'()*+,;=.example",
        b"%41.example",
    ],
)
def test_valid_hosts(speedups: Build, host: bytes) -> None:
    assert scan(speedups, (b"Host", host)).host == host


def test_defaults_with_no_fields(speedups: Build) -> None:
    head = scan(speedups)
    assert head.host is None  # HTTP/1.0 without Host: the caller decides
    assert head.content_length == -1
    assert head.chunked is False
    assert head.expect_continue is False
    assert head.authorization is None
    assert head.cookie is None
    assert head.request_id is None
    assert head.traceparent is None
    assert head.tracestate is None
    assert head.forwarded_for is None
    assert head.close is False
    assert head.forward_block == b""


def test_typical_request(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"Host", b"api.example.com"),
        (b"User-Agent", b"curl/8.5.0"),
        (b"Accept", b"*/*"),
        (b"Authorization", b"Bearer abc.def"),
        (b"X-Request-ID", b"req-1"),
        (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Content-Length", b" 42 "),
        (b"Connection", b"keep-alive"),
        (b"Content-Type", b"application/json"),
    )
    assert head.host == b"api.example.com"
    assert head.content_length == 42
    assert head.chunked is False
    assert head.authorization == b"Bearer abc.def"
    assert head.request_id == b"req-1"
    assert head.traceparent == b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert head.forwarded_for == b"10.0.0.1"
    assert head.close is False
    assert head.forward_block == (
        b"Host: api.example.com\r\n"
        b"User-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n"
        b"Authorization: Bearer abc.def\r\n"
        b"Content-Type: application/json\r\n"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"0", 0), (b"007", 7), (b"\t12\t", 12), (b"9" * 18, 10**18 - 1)],
)
def test_content_length(speedups: Build, value: bytes, expected: int) -> None:
    assert scan(speedups, (b"content-LENGTH", value)).content_length == expected


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b" CHUNKED\t"])
def test_chunked(speedups: Build, value: bytes) -> None:
    head = scan(speedups, (b"Transfer-Encoding", value))
    assert head.chunked is True
    assert head.content_length == -1
    assert head.forward_block == b""


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue", b" 100-CONTINUE "])
def test_expect_continue(speedups: Build, value: bytes) -> None:
    head = scan(speedups, (b"Expect", value))
    assert head.expect_continue is True
    assert head.forward_block == b""


@pytest.mark.parametrize(
    ("values", "close"),
    [
        ([b"close"], True),
        ([b"Keep-Alive, Close"], True),
        ([b"keep-alive", b" CLOSE "], True),
        ([b"keep-alive"], False),
        ([b"closed"], False),
        ([b""], False),
    ],
)
def test_connection_close(speedups: Build, values: list[bytes], close: bool) -> None:
    head = scan(speedups, *((b"Connection", value) for value in values))
    assert head.close is close
    assert head.forward_block == b""


def test_first_request_id_wins_and_two_traceparents_are_invalid(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"X-Request-Id", b"one"),
        (b"x-request-id", b"two"),
        (b"Traceparent", b"tp-one"),
        (b"TRACEPARENT", b"tp-two"),
        (b"traceparent", b"tp-three"),
    )
    assert head.request_id == b"one"
    # W3C Trace Context: two traceparent fields are ambiguous; b"" never parses as valid.
    assert head.traceparent == b""
    assert head.forward_block == b""


def test_tracestate_fields_are_joined_and_never_forwarded(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"tracestate", b"rojo=00f067aa0ba902b7"),
        (b"Accept", b"*/*"),
        (b"TraceState", b"congo=t61rcWkgMzE"),
    )
    assert head.tracestate == b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert head.forward_block == b"Accept: */*\r\n"


@pytest.mark.parametrize(
    ("values", "cookie"),
    [
        ([b"a=1"], b"a=1"),
        ([b""], b""),  # present but empty is not absent
        ([b"a=1; b=2", b"c=3"], b"a=1; b=2; c=3"),
        ([b"a=1", b"", b'b="x y"'], b'a=1; ; b="x y"'),  # bytes as sent, no parsing here
    ],
)
def test_cookie_fields_are_read_joined_and_still_forwarded(
    speedups: Build, values: list[bytes], cookie: bytes
) -> None:
    names = [b"Cookie", b"cookie", b"COOKIE"]
    pairs = [(names[i % 3], value) for i, value in enumerate(values)]
    head = scan(speedups, (b"Accept", b"*/*"), *pairs, (b"Via", b"1.1 p"))
    assert head.cookie == cookie
    assert (
        head.forward_block
        == b"Accept: */*\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in pairs)
        + b"Via: 1.1 p\r\n"
    )


def test_cookie_is_read_even_when_not_forwarded(speedups: Build) -> None:
    # The strip set and a Connection option drop the field on the way out; it was still sent
    # to the gateway, so the token sources see it.
    head = scan(speedups, (b"Cookie", b"a=1"), strip=frozenset({b"cookie"}))
    assert (head.cookie, head.forward_block) == (b"a=1", b"")
    head = scan(speedups, (b"Cookie", b"a=1"), (b"Connection", b"cookie"))
    assert (head.cookie, head.forward_block) == (b"a=1", b"")


@pytest.mark.parametrize("name", [b"Cookie_", b"Cookies", b"Set-Cookie", b"Cookie2"])
def test_cookie_lookalikes_are_plain_kept_fields(speedups: Build, name: bytes) -> None:
    head = scan(speedups, (name, b"a=1"))
    assert head.cookie is None
    assert head.forward_block == name + b": a=1\r\n"


@pytest.mark.parametrize("bad", [b"a=1\r\nX: y", b"a=\x00", b"a=\x7f"])
def test_cookie_value_is_checked_like_any_value(speedups: Build, bad: bytes) -> None:
    assert scan_error(speedups, flat((b"Cookie", bad))) == "invalid header value"


def test_forwarded_for_fields_are_joined(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"),
        (b"x-forwarded-for", b"3.3.3.3"),
    )
    assert head.forwarded_for == b"1.1.1.1, 2.2.2.2, 3.3.3.3"


DROPPED_REQUEST_NAMES = [
    *HOP_BY_HOP,
    b"Content-Length",
    b"Expect",
    b"X-Customer-ID",
    b"x-customer-tier",
    b"X-CUSTOMER-PERMISSIONS",
    b"X-Customer-",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"x-forwarded-host",
    b"X-Forwarded-",
    b"X-Request-ID",
    b"traceparent",
    b"TraceState",
]


@pytest.mark.parametrize("name", DROPPED_REQUEST_NAMES)
def test_dropped_names(speedups: Build, name: bytes) -> None:
    value = HOP_VALUES.get(name, b"100-continue" if name == b"Expect" else b"1")
    head = scan(speedups, (b"Accept", b"*/*"), (name, value), (b"Via", b"1.1 proxy"))
    assert head.forward_block == b"Accept: */*\r\nVia: 1.1 proxy\r\n"


@pytest.mark.parametrize(
    "name",
    [
        b"X-Customer",
        b"X-Customers-Note",
        b"X-Forwarded",
        b"X-Forwardedfor",
        b"trace-state",  # not tracestate: that one is consumed (fastgw/obs/tracing.py)
        b"X-Request",
        b"Host",
        b"Authorization",
        b"Cookie",
        b"x",
    ],
)
def test_kept_names(speedups: Build, name: bytes) -> None:
    head = scan(speedups, (name, b"v"))
    assert head.forward_block == name + b": v\r\n"


def test_strip_set_drops_names_in_any_case(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"Cookie", b"a=1"),
        (b"X-Debug", b"1"),
        (b"Host", b"example.com"),
        (b"Accept", b"*/*"),
        strip=frozenset({b"cookie", b"x-debug", b"host"}),
    )
    assert head.host == b"example.com"  # still read, only not forwarded
    assert head.forward_block == b"Accept: */*\r\n"


def test_connection_listed_names_are_dropped_wherever_they_are(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"X-Before", b"1"),
        (b"Accept", b"*/*"),
        (b"Connection", b"x-before, X-AFTER , ,keep-alive"),
        (b"x-after", b"2"),
        (b"X-Kept", b"3"),
    )
    assert head.forward_block == b"Accept: */*\r\nX-Kept: 3\r\n"
    assert head.close is False


def test_forward_block_keeps_order_case_and_bytes(speedups: Build) -> None:
    head = scan(
        speedups,
        (b"x-LOWER-upper", b"MiXeD"),
        (b"Accept", b""),
        (b"X-Obs-Text", b"caf\xc3\xa9\tand\x80\xff"),
        (b"X-Tab", b"\ta\t"),
    )
    assert head.forward_block == (
        b"x-LOWER-upper: MiXeD\r\nAccept: \r\nX-Obs-Text: caf\xc3\xa9\tand\x80\xff\r\n"
        b"X-Tab: \ta\t\r\n"
    )


# ---------------------------------------------------------------------------- responses


def scan_response(build: Build, *pairs: tuple[bytes, bytes]) -> Any:
    return build.headers.scan_response_head(flat(*pairs))


def test_response_typical(speedups: Build) -> None:
    head = scan_response(
        speedups,
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"17"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Set-Cookie", b"a=1"),
        (b"X-Customer-ID", b"42"),  # responses keep x-customer-*: only requests drop them
    )
    assert head.content_length == 17
    assert head.chunked is False
    assert head.close is False
    assert head.forward_block == (
        b"Content-Type: application/json\r\nSet-Cookie: a=1\r\nX-Customer-ID: 42\r\n"
    )


def test_response_defaults(speedups: Build) -> None:
    head = scan_response(speedups)
    assert (head.content_length, head.chunked, head.close, head.forward_block) == (
        -1,
        False,
        False,
        b"",
    )


def test_response_chunked_close_and_listed(speedups: Build) -> None:
    head = scan_response(
        speedups,
        (b"X-Hop", b"1"),
        (b"Transfer-Encoding", b"Chunked"),
        (b"Connection", b"close, x-hop"),
        (b"Server", b"metald"),
    )
    assert head.chunked is True
    assert head.close is True
    assert head.content_length == -1
    assert head.forward_block == b"Server: metald\r\n"


@pytest.mark.parametrize("name", [*HOP_BY_HOP, b"Content-Length"])
def test_response_dropped_names(speedups: Build, name: bytes) -> None:
    head = scan_response(speedups, (b"Server", b"s"), (name, HOP_VALUES.get(name, b"1")))
    assert head.forward_block == b"Server: s\r\n"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([b"Server"], "odd number of header fields"),
        (flat((b"Content-Length", b"1"), (b"Content-Length", b"1")), "duplicate Content-Length"),
        (flat((b"Content-Length", b"x")), "invalid Content-Length"),
        (flat((b"Transfer-Encoding", b"gzip")), "unsupported Transfer-Encoding"),
        (
            flat((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")),
            "duplicate Transfer-Encoding",
        ),
        (
            flat((b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"1")),
            "Content-Length with Transfer-Encoding",
        ),
        (flat((b"Bad Name", b"x")), "invalid header name"),
        (flat((b"Server", b"a\r\nInjected: 1")), "invalid header value"),
    ],
)
def test_response_errors(speedups: Build, fields: list[bytes], reason: str) -> None:
    with pytest.raises(speedups.headers.HeaderError) as info:
        speedups.headers.scan_response_head(fields)
    assert info.value.reason == reason


# ---------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("name", "lowered"),
    [
        (b"Content-TYPE", b"content-type"),
        (b"", b""),
        (b"\xc3\x84A-z", b"\xc3\x84a-z"),  # non-ASCII bytes are left alone
        (b"@[`{", b"@[`{"),  # the neighbours of A-Z and a-z
    ],
)
def test_lower_ascii(speedups: Build, name: bytes, lowered: bytes) -> None:
    assert speedups.headers.lower_ascii(name) == lowered


@pytest.mark.parametrize(
    ("value", "max_len", "token"),
    [
        (b"Bearer abc", 10, b"abc"),
        (b"bearer abc", 10, b"abc"),
        (b"BEARER abc", 10, b"abc"),
        (b"Bearer   \t abc", 10, b"abc"),
        (b"Bearer aZ09-._~+/==", 64, b"aZ09-._~+/=="),
        (b"Bearer eyJ.eyJ.sig", 64, b"eyJ.eyJ.sig"),
        (b"Bearer abc", 3, b"abc"),
        (b"Bearer abcd", 3, None),
        (b"Bearer abc", 0, None),
        (b"Bearer", 10, None),
        (b"Bearer ", 10, None),
        (b"Bearerabc", 10, None),
        (b"Basic abc", 10, None),
        (b" Bearer abc", 10, None),
        (b"Bearer abc ", 10, None),
        (b"Bearer a bc", 10, None),
        (b"Bearer ===", 10, None),
        (b"Bearer a=b", 10, None),
        (b"Bearer a,b", 10, None),
        (b"Bearer a\x00", 10, None),
        (b"Bearer \xc3\xa9", 10, None),
        (b"Bearer abc\n", 10, None),
        (b"", 10, None),
    ],
)
def test_extract_bearer(speedups: Build, value: bytes, max_len: int, token: bytes | None) -> None:
    assert speedups.headers.extract_bearer(value, max_len) == token


# The definition extract_bearer implements without a regex (RFC 6750 section 2.1 credentials).
BEARER_SPEC = re.compile(rb"(?i:bearer)[ \t]+([A-Za-z0-9._~+/-]+=*)")


def bearer_by_spec(value: bytes, max_len: int) -> bytes | None:
    match = BEARER_SPEC.fullmatch(value)
    if match is None or len(match.group(1)) > max_len:
        return None
    return match.group(1)


bearer_inputs = st.lists(
    st.one_of(
        st.sampled_from(
            [b"Bearer", b"bEaReR", b"BEARE", b"bearer\xc5", b" ", b"\t", b"\x0b", b"=", b"=="]
        ),
        st.from_regex(rb"\A[A-Za-z0-9._~+/-]{0,12}\Z"),
        st.binary(max_size=4),
    ),
    max_size=6,
).map(b"".join)


@given(value=bearer_inputs, max_len=st.integers(-1, 40))
@settings(deadline=None, max_examples=500)
def test_extract_bearer_matches_the_rfc_6750_regex(
    speedups: Build, value: bytes, max_len: int
) -> None:
    assert speedups.headers.extract_bearer(value, max_len) == bearer_by_spec(value, max_len)


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEARER", b"BeArEr"])
@pytest.mark.parametrize("separator", [b" ", b"\t", b" \t ", b"\t\t"])
def test_extract_bearer_scheme_in_any_case(
    speedups: Build, scheme: bytes, separator: bytes
) -> None:
    assert speedups.headers.extract_bearer(scheme + separator + b"t0k.en==", 64) == b"t0k.en=="


@pytest.mark.parametrize(
    "value",
    [b"Bearer=abc", b"Bearer\x0babc", b"Bearer\xa0abc", b"Bearerr abc", b"Beare abc",
     b"Bearer\x00abc", b"Bearer =", b"Bearer =abc", b"Bearer a==b", b"Bearer ab%"],
)  # fmt: skip
def test_extract_bearer_refuses(speedups: Build, value: bytes) -> None:
    assert speedups.headers.extract_bearer(value, 64) is None
