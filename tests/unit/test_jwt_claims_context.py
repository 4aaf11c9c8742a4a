"""Verified claims → customer context (context_from_claims), and the registered-claim rules
(ClaimRules) next to pyjwt's.

context_from_claims is what decides the X-Customer-* block a backend trusts, so its refusals
are tested value by value and the header block byte for byte. ClaimRules is checked against
pyjwt's claim validation on the same JSON (hypothesis): whatever pyjwt refuses, we refuse; the
only things we refuse beyond pyjwt are the documented NumericDate and audience-shape rules.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw.auth.claims import MAX_NUMERIC_DATE, ClaimRules
from fastgw.auth.context import (
    MAX_LIST_ITEMS,
    MAX_QUOTA_ITEMS,
    CustomerContext,
    context_from_claims,
    development_context,
)
from fastgw.auth.errors import EXPIRED, INVALID, TokenError
from fastgw.config.gateway import ClaimNamesConfig
from tests.support.jwt_attacks import b64u, frozen_pyjwt_clock, sign

NAMES = ClaimNamesConfig()
TIERS = frozenset({"free", "pro", "enterprise"})
NOW = 1_750_000_000


def context(**claims: Any) -> CustomerContext:
    claims.setdefault("customer_id", "c1")
    return context_from_claims(claims, NAMES, TIERS, "free", NOW + 60.0)


def refused(**claims: Any) -> str:
    with pytest.raises(TokenError) as info:
        context(**claims)
    assert info.value.result == INVALID
    return info.value.reason


# ---------------------------------------------------------------------- customer id


@pytest.mark.parametrize(
    ("value", "expected"),
    [("c1", b"c1"), ("A-z_0.9", b"A-z_0.9"), ("x" * 128, b"x" * 128), (123, b"123"), (0, b"0")],
)
def test_customer_id_accepted(value: object, expected: bytes) -> None:
    assert context(customer_id=value).customer_id == expected


@pytest.mark.parametrize(
    "value",
    [None, "", "x" * 129, "a b", "a,b", "a\r\nX: 1", "müller", -1, True, False, 1.0,
     ["a"], {"id": "a"}, 10**200],
)  # fmt: skip
def test_customer_id_refused(value: object) -> None:
    refused(customer_id=value)


def test_custom_claim_names_are_read() -> None:
    names = ClaimNamesConfig(customer_id="sub", tier="plan", permissions="scope", pool="cell")
    claims = {"sub": "u7", "plan": "enterprise", "scope": "vm:read vm:write", "cell": "eu-1"}
    ctx = context_from_claims(claims, names, TIERS, "free", 1.0)
    assert (ctx.customer_id, ctx.tier, ctx.pool) == (b"u7", b"enterprise", b"eu-1")
    assert ctx.permissions == {b"vm:read", b"vm:write"}
    # the default names are not read when others are configured
    with pytest.raises(TokenError):
        context_from_claims({"customer_id": "c1"}, names, TIERS, "free", 1.0)


# ----------------------------------------------------------------------------- tier


@pytest.mark.parametrize(
    ("tier", "expected"),
    [(None, b"free"), ("pro", b"pro"), ("enterprise", b"enterprise"), ("platinum", b"free"),
     ("PRO", b"free")],
)  # fmt: skip
def test_tier_known_kept_missing_or_unknown_defaulted(tier: str | None, expected: bytes) -> None:
    claims = {} if tier is None else {"tier": tier}
    assert context(**claims).tier == expected


@pytest.mark.parametrize("tier", ["", "gold plated", "pro\r\nX: 1", "x" * 65, 3, True])
def test_tier_of_bad_shape_refused(tier: object) -> None:
    assert refused(tier=tier) == "tier claim is not a name"


@pytest.mark.parametrize("tier", [["pro"], {"pro": 1}])
def test_tier_of_unhashable_type_refused_as_token_error(tier: object) -> None:
    """The docstring: a tier of the wrong type is an error (a TokenError, like every refusal)."""
    assert refused(tier=tier) == "tier claim is not a name"


# ---------------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ([], ()),
        ("", ()),
        (["vm:create"], (b"vm:create",)),
        (["b", "a", "b", "c"], (b"b", b"a", b"c")),  # duplicates dropped, order kept
        ("vm:read  vm:write\tvm:read", (b"vm:read", b"vm:write")),  # OAuth scope form
        (["admin/*", "x.y-z_1"], (b"admin/*", b"x.y-z_1")),
        ([f"p{i}" for i in range(MAX_LIST_ITEMS)], tuple(f"p{i}".encode() for i in range(256))),
    ],
)
def test_permissions_list_or_space_separated(value: object, expected: tuple[bytes, ...]) -> None:
    ctx = context(permissions=value)
    assert ctx.permissions == frozenset(expected)
    listed = b",".join(expected)
    assert ctx.headers.endswith(b"X-Customer-Permissions: " + listed + b"\r\n")


@pytest.mark.parametrize(
    "value",
    [
        ["a,b"],  # the X-Customer-Permissions separator inside one permission
        "vm:create,vm:delete",
        ["a", ""],
        [""],
        ["a b"],
        ["a\r\nX-Evil: 1"],
        ["é"],
        [1],
        [["a"]],
        [None],
        {"vm:create": True},
        7,
        True,
        ["p" * 129],
        [f"p{i}" for i in range(MAX_LIST_ITEMS + 1)],
        ["*"],  # development tokens' "every permission": a backend must tell them apart
        ["vm:read", "*"],
        "vm:read *",
    ],
)
def test_permissions_refused(value: object) -> None:
    refused(permissions=value)


# ------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, set()),
        (["beta", "gamma"], {b"beta", b"gamma"}),
        ("beta gamma", {b"beta", b"gamma"}),
        ({"beta": True, "gamma": False, "delta": True}, {b"beta", b"delta"}),
        ({}, set()),
    ],
)
def test_features_list_or_map_of_flags(value: object, expected: set[bytes]) -> None:
    assert context(features=value).features == expected


@pytest.mark.parametrize(
    "value",
    [{"beta": "yes"}, {"beta": 1}, {"beta": None}, {"a,b": True}, ["a,b"], 5,
     {f"f{i}": True for i in range(MAX_LIST_ITEMS + 1)}],
)  # fmt: skip
def test_features_refused(value: object) -> None:
    refused(features=value)


# --------------------------------------------------------------------- pool, quotas


def test_pool_and_quotas_kept() -> None:
    ctx = context(pool="eu-west_1.a", quotas={"vms": 10, "gb": 2.5})
    assert ctx.pool == b"eu-west_1.a"
    assert ctx.quotas == {"vms": 10, "gb": 2.5}
    bare = context()
    assert bare.pool is None
    assert bare.quotas is None


@pytest.mark.parametrize("pool", ["", "a b", "a\r\nb", "x" * 65, 1, ["a"]])
def test_pool_refused(pool: object) -> None:
    assert refused(pool=pool) == "pool claim is not a name"


@pytest.mark.parametrize(
    "quotas",
    [[1], "vms=1", {"vms": -1}, {"vms": "1"}, {"vms": True}, {"vms": None}, {"a b": 1},
     {"vms": 2**53}, {f"q{i}": 1 for i in range(MAX_QUOTA_ITEMS + 1)}],
)  # fmt: skip
def test_quotas_refused(quotas: object) -> None:
    refused(quotas=quotas)


# ---------------------------------------------------------------- the header block


def test_header_block_bytes_exactly() -> None:
    ctx = context(customer_id=42, tier="pro", permissions=["vm:create", "vm:read", "vm:create"])
    assert ctx.headers == (
        b"X-Customer-ID: 42\r\n"
        b"X-Customer-Tier: pro\r\n"
        b"X-Customer-Permissions: vm:create,vm:read\r\n"
    )
    none = context(customer_id="c9")
    assert none.headers == (
        b"X-Customer-ID: c9\r\nX-Customer-Tier: free\r\nX-Customer-Permissions: \r\n"
    )


def test_development_context_holds_everything() -> None:
    ctx = development_context(b"123")
    assert ctx.permissions is None
    assert ctx.features is None
    assert ctx.headers == (
        b"X-Customer-ID: 123\r\nX-Customer-Tier: dev\r\nX-Customer-Permissions: *\r\n"
    )


def test_jti_iat_and_valid_until_kept_for_revocation_and_cache() -> None:
    ctx = context(jti="j-1", iat=NOW - 5)
    assert (ctx.jti, ctx.iat, ctx.valid_until) == ("j-1", NOW - 5, NOW + 60.0)
    other = context(jti=5, iat="x")  # ClaimRules refuses these first; context stays safe
    assert (other.jti, other.iat) == (None, None)


# ======================================================================= ClaimRules

REQUIRED = ("exp", "customer_id")


def rules(**options: Any) -> ClaimRules:
    return ClaimRules(REQUIRED, **options)


def base(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"customer_id": "c1", "exp": NOW + 100}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not _GONE}


_GONE = object()


def check(claims: dict[str, Any], **options: Any) -> str:
    try:
        rules(**options).check(claims, NOW)
    except TokenError as error:
        return error.result
    return "ok"


def test_required_claims() -> None:
    assert check(base()) == "ok"
    assert check(base(exp=_GONE)) == INVALID
    assert check(base(customer_id=_GONE)) == INVALID
    assert ClaimRules(()).check({}, NOW) is None  # nothing required, nothing to check


@pytest.mark.parametrize(
    ("iss", "issuer", "expected"),
    [
        ("https://a", "https://a", "ok"),
        ("https://b", "https://a", INVALID),
        (_GONE, "https://a", INVALID),
        (["https://a"], "https://a", INVALID),
        ("https://a/", "https://a", INVALID),
        ("anything", None, "ok"),
    ],
)
def test_issuer(iss: object, issuer: str | None, expected: str) -> None:
    assert check(base(iss=iss), issuer=issuer) == expected


@pytest.mark.parametrize(
    ("aud", "audience", "expected"),
    [
        ("api", ("api",), "ok"),
        (["x", "api"], ("api",), "ok"),
        ("api", ("other", "api"), "ok"),
        ("x", ("api",), INVALID),
        (["x", "y"], ("api",), INVALID),
        (_GONE, ("api",), INVALID),
        ([], ("api",), INVALID),
        ("", ("api",), INVALID),
        (["api", 1], ("api",), INVALID),
        ({"api": 1}, ("api",), INVALID),
        ("api", None, INVALID),  # a token for someone when we expect no audience
        (["api"], None, INVALID),
        (_GONE, None, "ok"),
        ([], None, "ok"),  # pyjwt: a falsy aud is no aud
        ("", None, "ok"),
    ],
)
def test_audience(aud: object, audience: tuple[str, ...] | None, expected: str) -> None:
    assert check(base(aud=aud), audience=audience) == expected


@pytest.mark.parametrize("name", ["sub", "jti"])
@pytest.mark.parametrize(
    ("value", "expected"), [("s", "ok"), ("", "ok"), (1, INVALID), (["s"], INVALID)]
)
def test_sub_and_jti_are_strings(name: str, value: object, expected: str) -> None:
    assert check(base(**{name: value})) == expected


@pytest.mark.parametrize("name", ["exp", "nbf", "iat", "sub", "jti"])
def test_null_registered_claim_is_refused_as_pyjwt_does(name: str) -> None:
    """pyjwt: a null exp/nbf/iat/sub/jti is invalid."""
    assert check(base(**{name: None})) == INVALID


@pytest.mark.parametrize("name", ["customer_id", "tenant"])
def test_null_required_claim_is_missing_as_pyjwt_says(name: str) -> None:
    """pyjwt ``require``: ``payload.get(claim) is None`` is a missing claim."""
    claims = base(tenant="t1")
    claims[name] = None
    with pytest.raises(TokenError) as info:
        ClaimRules(("exp", "customer_id", "tenant")).check(claims, NOW)
    assert info.value.result == INVALID


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        (base(exp=NOW), EXPIRED),
        (base(exp=NOW + 1), "ok"),
        (base(exp=NOW - 10), EXPIRED),
        (base(nbf=NOW), "ok"),
        (base(nbf=NOW + 1), INVALID),
        (base(iat=NOW), "ok"),
        (base(iat=NOW + 1), INVALID),
        (base(exp=MAX_NUMERIC_DATE - 1), "ok"),
        (base(exp=MAX_NUMERIC_DATE), INVALID),
        (base(exp=NOW + 0.5), INVALID),
        (base(exp=str(NOW + 100)), INVALID),
        (base(exp=True), INVALID),
        (base(nbf=float(NOW)), INVALID),
        (base(iat=-1), INVALID),
    ],
)
def test_numeric_dates(claims: dict[str, Any], expected: str) -> None:
    assert check(claims) == expected


@pytest.mark.parametrize("leeway", [0.0, 30.0, 0.5])
def test_leeway_applies_to_every_date(leeway: float) -> None:
    r = rules(leeway_s=leeway)
    r.check(base(exp=NOW + 1), NOW + leeway)  # exp + leeway > now
    with pytest.raises(TokenError) as info:
        r.check(base(exp=NOW), NOW + leeway)
    assert info.value.result == EXPIRED
    r.check(base(nbf=NOW + 1), NOW + 1 - leeway)
    r.check(base(iat=NOW + 1), NOW + 1 - leeway)
    with pytest.raises(TokenError):
        r.check(base(nbf=NOW + 1), NOW + 0.99 - leeway)


# -------------------------------------------------------------- ClaimRules vs pyjwt

SECRET = b"k" * 64
ISSUER = "https://issuer.test"

_dates = st.one_of(
    st.integers(NOW - 200, NOW + 200),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([None, True, False, "", "x", str(NOW + 50), [NOW + 50], {}]),
)
_strings = st.one_of(
    st.sampled_from(["api", "other", ISSUER, "", "x"]),
    st.none(),
    st.integers(0, 3),
    st.lists(st.sampled_from(["api", "other", "", 1]), max_size=3),
)


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    likely_valid_exp = st.one_of(st.integers(NOW - 200, NOW + 200), _dates)
    for name, values in (
        ("exp", likely_valid_exp), ("nbf", _dates), ("iat", _dates),
        ("iss", st.one_of(st.just(ISSUER), _strings)), ("aud", _strings), ("sub", _strings),
        ("jti", _strings), ("customer_id", st.one_of(st.just("c1"), _strings)),
    ):  # fmt: skip
        if draw(st.booleans()):
            claims[name] = draw(values)
    return claims


def _pyjwt_claims(
    claims: dict[str, Any], audience: list[str] | None, leeway: float
) -> dict[str, Any] | None:
    # Built by hand: jwt.encode refuses some claim shapes (a non-string iss) a token can carry.
    signing_input = b64u(b'{"alg":"HS256"}') + b"." + b64u(json.dumps(claims).encode())
    token = signing_input + b"." + b64u(sign(SECRET, "HS256", signing_input))
    try:
        with frozen_pyjwt_clock(NOW):
            decoded: dict[str, Any] = jwt.decode(
                token, SECRET, algorithms=["HS256"], issuer=ISSUER, audience=audience,
                leeway=leeway, options={"require": list(REQUIRED)},
            )  # fmt: skip
    except jwt.PyJWTError:
        return None
    return decoded


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    claims=claim_sets(),
    audience=st.sampled_from([None, ["api"], ["api", "other"]]),
    leeway=st.sampled_from([0, 30]),
)
@example(claims={"exp": None, "customer_id": "c1", "iss": ISSUER}, audience=None, leeway=0)
@example(claims={"exp": NOW + 5, "customer_id": None, "iss": ISSUER}, audience=None, leeway=0)
@example(
    claims={"exp": NOW + 5, "customer_id": "c1", "iss": ISSUER, "aud": 0},
    audience=None,
    leeway=0,
)
def test_claim_rules_refuse_whatever_pyjwt_refuses(
    claims: dict[str, Any], audience: list[str] | None, leeway: int
) -> None:
    claims = json.loads(json.dumps(claims))  # what a token can carry
    theirs = _pyjwt_claims(claims, audience, leeway)
    try:
        ClaimRules(REQUIRED, ISSUER, None if audience is None else tuple(audience), leeway).check(
            claims, NOW
        )
        ours = True
    except TokenError:
        ours = False
    if theirs is None:
        assert not ours, f"pyjwt refuses {claims}, ClaimRules accepts"
    if ours:
        assert theirs == claims
