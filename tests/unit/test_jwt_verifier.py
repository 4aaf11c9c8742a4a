"""TokenVerifier, our uncached fast path, against the attack catalogue and against pyjwt.

The verifier is ours (not ``jwt.decode``) for speed, so it must apply every check pyjwt would:
every catalogue entry (tests/support/jwt_attacks.py) is a TokenError here, and pyjwt's own
answer to each is checked to be what the catalogue records, so the entries where we are
stricter are exactly the documented ones. A hypothesis test mutates valid tokens and checks
that whenever pyjwt refuses, we refuse too, and whenever we accept, pyjwt accepts with the
same claims. Time is injected (our ``clock``, pyjwt's frozen ``datetime.now``), never waited.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw.auth import verifier as verifier_module
from fastgw.auth.errors import EXPIRED, INVALID, TokenError
from fastgw.auth.keyring import KeyRing, VerifyKey, ring_from_jwks, ring_from_pem, ring_from_secret
from fastgw.auth.sources import token_reader
from fastgw.auth.verifier import TokenVerifier
from fastgw.config.gateway import JwtConfig
from fastgw.keys import default_kid, jwks_document
from tests.support import jwt_attacks as ja

NOW = 1_750_000_000  # a fixed "now" for our clock and pyjwt's
B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class StubKeys:
    """What the verifier needs from a KeySource: a ring, and a record of unknown kids."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.unknown: list[str | None] = []

    def unknown_kid(self, kid: str | None) -> None:
        self.unknown.append(kid)


@functools.cache
def material() -> ja.Material:
    return ja.make_material(NOW)


def jwt_config(profile: ja.Profile = ja.PROFILES["default"], **changes: Any) -> JwtConfig:
    settings_: dict[str, Any] = {
        "issuer": profile.issuer,
        "audience": profile.audience,
        "leeway_s": float(profile.leeway_s),
        "max_token_bytes": ja.MAX_TOKEN_BYTES,
    }
    settings_.update(changes)
    return JwtConfig(**settings_)


def pem_keys(m: ja.Material) -> StubKeys:
    return StubKeys(ring_from_pem(m.public_pem, ["RS256"]))


def jwks_keys(m: ja.Material, *extra: rsa.RSAPrivateKey) -> StubKeys:
    doc = jwks_document(m.public_key, "RS256", m.kid)
    for key in extra:
        doc["keys"].extend(jwks_document(key.public_key(), "RS256", default_kid(key))["keys"])
    ring, warnings = ring_from_jwks(json.dumps(doc).encode(), ["RS256"])
    assert not warnings
    return StubKeys(ring)


def make_verifier(
    keys: StubKeys,
    profile: ja.Profile = ja.PROFILES["default"],
    now: float = NOW,
    **changes: Any,
) -> TokenVerifier:
    return TokenVerifier(
        jwt_config(profile, **changes), keys, ja.TIERS, ja.DEFAULT_TIER, clock=lambda: now
    )


@pytest.fixture(autouse=True)
def pyjwt_at_now() -> Iterator[None]:
    with ja.frozen_pyjwt_clock(NOW):
        yield


def entry_ids(entries: list[ja.Attack]) -> list[Any]:
    return [pytest.param(a, id=a.name) for a in entries]


# ------------------------------------------------------------------------- the catalogue


@pytest.mark.parametrize("ring", ["pem", "jwks"])
@pytest.mark.parametrize("attack", entry_ids(ja.entries(layer="verifier")))
def test_catalogue_entry_is_refused(attack: ja.Attack, ring: str) -> None:
    m = material()
    keys = pem_keys(m) if ring == "pem" else jwks_keys(m)
    verifier = make_verifier(keys, ja.PROFILES[attack.profile])
    token = attack.token(m)
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.result == attack.result, info.value.reason


@pytest.mark.parametrize("attack", entry_ids(ja.entries()))
def test_pyjwt_outcome_is_as_recorded(attack: ja.Attack) -> None:
    m = material()
    outcome = ja.pyjwt_outcome(attack.token(m), m, ja.PROFILES[attack.profile])
    assert outcome == attack.pyjwt, attack.source


@pytest.mark.parametrize("attack", entry_ids(ja.entries(layer="reader")))
def test_reader_layer_entry_is_refused_before_decoding(attack: ja.Attack) -> None:
    token = attack.token(material())
    assert len(token) > ja.MAX_TOKEN_BYTES
    read = token_reader(("header",), ja.MAX_TOKEN_BYTES)
    head = SimpleNamespace(authorization=b"Bearer " + token, cookie=None)
    with pytest.raises(TokenError) as info:
        read(head, b"")  # type: ignore[arg-type]
    assert info.value.result == INVALID


def test_the_legitimate_token_passes_every_profile_it_is_made_for() -> None:
    """The catalogue's refusals mean something only if its base token is accepted."""
    m = material()
    context = make_verifier(pem_keys(m)).verify(m.valid())
    assert context.customer_id == ja.CUSTOMER.encode()
    assert ja.pyjwt_outcome(m.valid(), m, ja.PROFILES["default"]) == "accept"
    open_profile = ja.PROFILES["no_audience"]
    make_verifier(pem_keys(m), open_profile).verify(m.valid(aud=ja.DROP))
    assert ja.pyjwt_outcome(m.valid(aud=ja.DROP), m, open_profile) == "accept"


def test_catalogue_covers_the_issue_list() -> None:
    names = set(ja.CATALOGUE)
    required = {
        "alg_none_unsigned", "alg_None_unsigned", "alg_NONE_unsigned",
        "alg_none_with_valid_rs256_signature", "hs256_with_public_pem_as_secret",
        "alg_rs384_header_with_rs256_signature", "alg_ps256_header_with_rs256_signature",
        "kid_unknown_attacker_signed", "kid_path_traversal_hs256_empty_key", "kid_sql_injection",
        "kid_very_long", "kid_int", "kid_list", "kid_object", "jku_header_attacker",
        "x5u_header_attacker", "jwk_header_attacker_key", "x5c_header_attacker",
        "crit_unknown_extension", "b64_false_detached", "expired_long_ago",
        "expired_beyond_leeway", "nbf_in_future", "iat_in_future", "exp_missing",
        "customer_id_missing", "iss_wrong", "aud_wrong", "aud_when_none_configured",
        "payload_tampered_customer", "signature_stripped", "signature_from_other_token",
        "b64_padded_payload", "b64_standard_alphabet_header", "b64_space_in_payload",
        "b64_bang_in_payload", "b64_length_mod_4_is_1", "one_segment", "two_segments",
        "four_segments", "five_segments_jwe_shape", "empty_payload_signed", "oversized",
        "header_nested_arrays_5000", "payload_nested_arrays_5000", "header_array",
        "header_string", "header_number", "payload_array", "header_not_utf8",
        "payload_nan_member", "exp_nan", "exp_infinity", "exp_string_numeric", "exp_float",
        "exp_bool", "exp_null", "exp_huge_float", "exp_2_pow_64", "exp_negative",
        "dup_exp_valid_then_expired", "dup_exp_expired_then_valid", "dup_customer_id",
        "dup_alg_none_then_rs256", "customer_id_crlf", "permission_with_comma",
        "tier_with_space", "customer_id_list", "customer_id_object", "customer_id_bool",
    }  # fmt: skip
    assert required <= names, sorted(required - names)
    for attack in ja.CATALOGUE.values():
        assert attack.source, attack.name
        assert attack.result in (INVALID, EXPIRED)
        assert (attack.pyjwt == "accept") == bool(attack.stricter), attack.name


# ------------------------------------------------------------------ valid tokens, every alg


def _private_key(alg: str) -> object:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return b"s" * 64  # HS256: a secret as long as SHA-512's block, beyond the minimum


@pytest.mark.parametrize(
    "alg", ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
)
@pytest.mark.parametrize("with_kid", [True, False])
def test_valid_token_of_every_algorithm(alg: str, with_kid: bool) -> None:
    key = _private_key(alg)
    if isinstance(key, bytes):
        ring, public = ring_from_secret(key, [alg]), key
    else:
        public = key.public_key()  # type: ignore[attr-defined]
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ring = ring_from_pem(pem, [alg])
    claims = material().claims(
        permissions="vm:read vm:list", features={"beta": True, "gamma": False}, sub="user-1"
    )
    headers = {"kid": "some-kid"} if with_kid else None
    token = jwt.encode(claims, key, algorithm=alg, headers=headers).encode()  # type: ignore[arg-type]
    verifier = make_verifier(StubKeys(ring))
    expected = jwt.decode(
        token, public, algorithms=[alg], leeway=ja.LEEWAY_S, issuer=ja.ISSUER,
        audience=ja.AUDIENCE, options={"require": ["exp", "customer_id"]},
    )  # fmt: skip
    assert verifier.claims(token) == expected == claims
    context = verifier.verify(token)
    assert context.customer_id == ja.CUSTOMER.encode()
    assert context.tier == b"pro"
    assert context.permissions == {b"vm:read", b"vm:list"}
    assert context.features == {b"beta"}
    assert context.jti == claims["jti"]


# --------------------------------------------------------------------------- leeway edges


def _decide_ours(verifier: TokenVerifier, token: bytes) -> str:
    try:
        verifier.claims(token)
    except TokenError as error:
        return error.result
    return "ok"


def _decide_pyjwt(token: bytes, m: ja.Material, profile: ja.Profile) -> str:
    try:
        ja.pyjwt_decode(token, m, profile)
    except jwt.ExpiredSignatureError:
        return EXPIRED
    except jwt.PyJWTError:
        return INVALID
    return "ok"


@pytest.mark.parametrize("leeway", [0, 30])
@pytest.mark.parametrize("fraction", [0.0, 0.25])
@pytest.mark.parametrize(
    ("claim", "offset", "expected"),
    [
        ("exp", -1, EXPIRED),  # exp == now - leeway - 1
        ("exp", 0, EXPIRED),  # exp == now - leeway: pyjwt says expired (exp <= now - leeway)
        ("exp", 1, "ok"),
        ("nbf", -1, "ok"),
        ("nbf", 0, "ok"),  # nbf == now + leeway is fine (nbf > now + leeway is refused)
        ("nbf", 1, INVALID),
        ("iat", 0, "ok"),
        ("iat", 1, INVALID),
    ],
)
def test_leeway_edges_exactly_as_pyjwt(
    claim: str, offset: int, expected: str, leeway: int, fraction: float
) -> None:
    m = material()
    profile = ja.Profile("edge", leeway_s=leeway)
    base = NOW - leeway if claim == "exp" else NOW + leeway
    token = m.valid(**{claim: base + offset})
    # A fractional clock changes nothing for whole-second offsets: exp + leeway <= now with
    # offset 0 still holds, and nbf - leeway > now with offset 1 still holds.
    now = NOW + fraction
    verifier = make_verifier(pem_keys(m), profile, now=now)
    with ja.frozen_pyjwt_clock(now):
        assert _decide_pyjwt(token, m, profile) == expected
    assert _decide_ours(verifier, token) == expected


# ----------------------------------------------------------------- mutations vs pyjwt


MUTATION_BYTES = st.sampled_from(list(B64URL + b'.=+/ ~!\x00\xff{}"')).map(lambda b: bytes([b]))


@st.composite
def mutations(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "flip", "segments"]))
    if kind == "segments":
        order = draw(st.lists(st.integers(0, 2), min_size=1, max_size=5))
        return (kind, tuple(order))
    index = draw(st.integers(-1000, 1000))
    if kind in ("replace", "insert"):
        return (kind, index, draw(MUTATION_BYTES))
    return (kind, index)


def mutate(token: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind = mutation[0]
    if kind == "segments":
        parts = token.split(b".")
        return b".".join(parts[i] for i in mutation[1])
    index = mutation[1] % len(token)
    if kind == "replace":
        return token[:index] + mutation[2] + token[index + 1 :]
    if kind == "insert":
        return token[:index] + mutation[2] + token[index:]
    if kind == "delete":
        return token[:index] + token[index + 1 :]
    if kind == "truncate":
        return token[:index]
    # flip: the neighbouring base64url letter (differs in the lowest bit only)
    char = token[index : index + 1]
    if char not in B64URL:
        return token
    value = B64URL.index(char) ^ 1
    return token[:index] + B64URL[value : value + 1] + token[index + 1 :]


@functools.cache
def mutation_subject() -> tuple[bytes, TokenVerifier]:
    m = material()
    return m.valid(), make_verifier(pem_keys(m))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(mutation=mutations())
@example(mutation=("flip", -1))  # the signature's last letter: only unused bits change
@example(mutation=("segments", (0, 1, 2, 2)))
@example(mutation=("segments", (1, 0, 2)))
def test_mutated_token_we_accept_only_what_pyjwt_accepts(mutation: tuple[Any, ...]) -> None:
    token, verifier = mutation_subject()
    mutated = mutate(token, mutation)
    m = material()
    with ja.frozen_pyjwt_clock(NOW):
        try:
            theirs: dict[str, Any] | None = ja.pyjwt_decode(mutated, m, ja.PROFILES["default"])
        except jwt.PyJWTError:
            theirs = None
    try:
        ours: dict[str, Any] | None = verifier.claims(mutated)
    except TokenError:
        ours = None
    if theirs is None:
        assert ours is None, f"pyjwt refuses {mutated!r}, we accept it"
    if ours is not None:
        assert ours == theirs


# ---------------------------------------------------------------------- unknown kid


def test_unknown_kid_asks_the_key_source_once_per_token() -> None:
    m = material()
    keys = jwks_keys(m)
    verifier = make_verifier(keys)
    for kid in ("rotated-in", "rotated-in", "another"):
        with pytest.raises(TokenError):
            verifier.verify(m.token(m.header(kid=kid)))
    assert keys.unknown == ["rotated-in", "rotated-in", "another"]
    verifier.verify(m.valid())  # our kid: no refetch asked
    with pytest.raises(TokenError):
        verifier.verify(m.token(m.header(kid=7)))  # refused before any lookup
    assert keys.unknown == ["rotated-in", "rotated-in", "another"]


def test_token_without_kid_against_several_keys_is_an_unknown_kid() -> None:
    m = material()
    keys = jwks_keys(m, m.attacker)
    verifier = make_verifier(keys)
    with pytest.raises(TokenError):
        verifier.verify(m.token(m.header(kid=ja.DROP)))
    assert keys.unknown == [None]
    verifier.verify(m.valid())
    assert keys.unknown == [None]


def test_pem_key_answers_any_kid_but_checks_the_signature() -> None:
    m = material()
    keys = pem_keys(m)
    verifier = make_verifier(keys)
    verifier.verify(m.token(m.header(kid="only-a-hint")))
    with pytest.raises(TokenError):
        verifier.verify(m.token(m.header(kid="only-a-hint"), key=m.attacker))
    assert keys.unknown == []


# ------------------------------------------------------ nothing but TokenError escapes


def _raising(error: Exception) -> Callable[..., Any]:
    def boom(*args: object, **kwargs: object) -> Any:
        raise error

    return boom


@pytest.mark.parametrize("error", [RuntimeError("x"), ValueError("x"), KeyError("x")])
def test_exception_in_key_verify_is_a_token_error(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    m = material()
    ring = KeyRing([(VerifyKey(m.kid, "RS256", _raising(error)), b"id")], any_kid=True)
    with caplog.at_level(logging.CRITICAL, logger="fastgw.auth"), pytest.raises(TokenError) as info:
        make_verifier(StubKeys(ring)).verify(m.valid())
    assert info.value.result == INVALID


def test_exception_in_unknown_kid_is_a_token_error(caplog: pytest.LogCaptureFixture) -> None:
    m = material()
    keys = jwks_keys(m)
    keys.unknown_kid = _raising(OSError("x"))  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="fastgw.auth"), pytest.raises(TokenError):
        make_verifier(keys).verify(m.token(m.header(kid="new")))


def test_exception_reading_claims_is_a_token_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    m = material()
    monkeypatch.setattr(verifier_module, "context_from_claims", _raising(AttributeError("x")))
    with caplog.at_level(logging.CRITICAL, logger="fastgw.auth"), pytest.raises(TokenError):
        make_verifier(pem_keys(m)).verify(m.valid())


@pytest.mark.parametrize("tier", [["pro"], {"pro": True}])
def test_unhashable_tier_claim_is_a_token_error(tier: object) -> None:
    m = material()
    with pytest.raises(TokenError):
        make_verifier(pem_keys(m)).verify(m.valid(tier=tier))


def test_configured_required_claim_present_as_null_is_missing() -> None:
    """``required_claims: [exp, tenant]``: pyjwt's ``require`` counts a null claim as missing."""
    m = material()
    token = m.valid(tenant=None)
    with pytest.raises(jwt.MissingRequiredClaimError):
        jwt.decode(
            token, m.public_key, algorithms=["RS256"], audience=ja.AUDIENCE,
            options={"require": ["tenant"]},
        )  # fmt: skip
    verifier = make_verifier(pem_keys(m), required_claims=("exp", "tenant"))
    assert verifier.claims(m.valid(tenant="t-1"))["tenant"] == "t-1"
    with pytest.raises(TokenError):
        verifier.verify(token)


def _b64(raw: bytes) -> bytes:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@pytest.mark.parametrize(
    "header",
    [
        # Past orjson's re-encoding depth (255) but within its parsing depth: the fast path's
        # dumps() refuses it, and the C scanner must decide instead of a traceback.
        b'{"alg":"RS256","x":' + b"[" * 300 + b"]" * 300 + b"}",
        # Longer than any real header: refused before any base64 or JSON work.
        b'{"alg":"RS256","x":"' + b"a" * 2000 + b'"}',
    ],
    ids=["deep-inside-object", "oversized"],
)
def test_hostile_headers_are_plain_refusals_without_a_logged_traceback(
    header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = make_verifier(pem_keys(material()))
    token = _b64(header) + b"." + _b64(b'{"customer_id":"c"}') + b"." + _b64(b"sig")
    with caplog.at_level(logging.ERROR), pytest.raises(TokenError):
        verifier.verify(token)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_unexpected_failures_log_one_traceback_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(data: bytes, signature: bytes) -> bool:
        raise RuntimeError("a key that breaks")

    keys = StubKeys(KeyRing([(VerifyKey(None, "RS256", broken), b"k")], any_kid=True))
    verifier = make_verifier(keys)
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            with pytest.raises(TokenError):
                verifier.verify(material().valid())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
