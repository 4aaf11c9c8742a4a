"""Keys and tokens with real keys: what keygen writes, token mints, and pyjwt verifies.

The JWK members and RFC 7638 thumbprints are recomputed here from the raw key numbers with
``cryptography`` alone, so a mistake in fastgw.keys (or in how it uses pyjwt) shows up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastgw.errors import FastgwError
from fastgw.keys import (
    PublicKey,
    default_kid,
    generate_private_key,
    jwk_thumbprint,
    load_private_key,
    write_key_pair,
)
from fastgw.tokens import DEFAULT_TIER, choose_algorithm, mint_token

ALGS = ("RS256", "ES256", "EdDSA")

# RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, size: int | None = None) -> bytes:
    return value.to_bytes(size or (value.bit_length() + 7) // 8, "big")


def independent_thumbprint(public: PublicKey) -> str:
    """RFC 7638 by the letter: required members, in order, written out by hand."""
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        text = f'{{"e":"{_b64(_uint(numbers.e))}","kty":"RSA","n":"{_b64(_uint(numbers.n))}"}}'
    elif isinstance(public, ec.EllipticCurvePublicKey):
        point = public.public_numbers()
        x, y = _b64(_uint(point.x, 32)), _b64(_uint(point.y, 32))
        text = f'{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}'
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        text = f'{{"crv":"Ed25519","kty":"OKP","x":"{_b64(raw)}"}}'
    return _b64(hashlib.sha256(text.encode()).digest())


def test_thumbprint_matches_the_rfc_7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_of_an_unknown_key_type_is_refused() -> None:
    with pytest.raises(FastgwError):
        jwk_thumbprint({"kty": "oct", "k": "c2VjcmV0"})


@pytest.mark.parametrize("alg", ALGS)
def test_keygen_writes_a_pair_that_loads_back(tmp_path: Path, alg: str) -> None:
    files = write_key_pair(tmp_path / "keys", alg)
    assert stat.S_IMODE(files.private_pem.stat().st_mode) == 0o600
    assert b"-----BEGIN PRIVATE KEY-----" in files.private_pem.read_bytes()  # PKCS#8
    key = load_private_key(files.private_pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert files.public_pem.read_bytes() == public_pem
    assert files.kid == independent_thumbprint(key.public_key()) == default_kid(key)
    [jwk] = json.loads(files.jwks_json.read_text())["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"]) == (files.kid, alg, "sig")
    assert "d" not in jwk and "key_ops" not in jwk  # public members only
    assert jwk_thumbprint(jwk) == files.kid


@pytest.mark.parametrize("alg", ALGS)
def test_minted_token_verifies_and_carries_the_claims(tmp_path: Path, alg: str) -> None:
    files = write_key_pair(tmp_path, alg)
    key = load_private_key(files.private_pem)
    token = mint_token(
        key,
        customer_id="cust-1",
        tier="pro",
        permissions=["vm:create", "vm:list"],
        pool="gold",
        ttl_s=3600,
        issuer="https://issuer.example",
        audience="fastgw",
    )
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == (alg, files.kid)
    claims = jwt.decode(
        token,
        files.public_pem.read_bytes(),
        algorithms=[alg],
        audience="fastgw",
        issuer="https://issuer.example",
    )
    assert claims["customer_id"] == "cust-1"
    assert claims["tier"] == "pro"
    assert claims["permissions"] == ["vm:create", "vm:list"]
    assert claims["pool"] == "gold"
    assert claims["exp"] == claims["iat"] + 3600
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) == 16
    # The JWKS that keygen wrote verifies it too, found by the header's kid.
    jwks = jwt.PyJWKSet.from_json(files.jwks_json.read_text())
    jwk = jwks[header["kid"]]
    assert jwt.decode(token, jwk, algorithms=[alg], audience="fastgw")["customer_id"] == "cust-1"


@pytest.mark.parametrize("alg", ALGS)
def test_a_different_key_does_not_verify(tmp_path: Path, alg: str) -> None:
    signer = write_key_pair(tmp_path / "a", alg)
    other = write_key_pair(tmp_path / "b", alg)
    token = mint_token(load_private_key(signer.private_pem), customer_id="c1")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other.public_pem.read_bytes(), algorithms=[alg])


def test_defaults_lowest_tier_no_pool_no_iss_aud_fixed_now() -> None:
    key = generate_private_key("EdDSA")
    token = mint_token(key, customer_id="c1", now=1_000_000.7, ttl_s=0.5, kid="k-1")
    assert jwt.get_unverified_header(token)["kid"] == "k-1"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tier"] == DEFAULT_TIER == "free"
    assert claims["permissions"] == []
    assert (claims["iat"], claims["exp"]) == (1_000_000, 1_000_001)  # ttl rounds up
    assert not {"pool", "iss", "aud"} & claims.keys()


def test_jti_is_random() -> None:
    key = generate_private_key("ES256")
    ids = {
        jwt.decode(mint_token(key, customer_id="c"), options={"verify_signature": False})["jti"]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_algorithm_follows_the_key_and_a_fitting_alg_is_honoured(tmp_path: Path) -> None:
    rsa_key = generate_private_key("RS256")
    assert choose_algorithm(rsa_key) == "RS256"
    assert choose_algorithm(generate_private_key("ES256")) == "ES256"
    assert choose_algorithm(generate_private_key("EdDSA")) == "EdDSA"
    assert choose_algorithm(ec.generate_private_key(ec.SECP384R1())) == "ES384"
    token = mint_token(rsa_key, customer_id="c1", algorithm="PS256")
    public = rsa_key.public_key()
    assert jwt.decode(token, public, algorithms=["PS256"])["customer_id"] == "c1"


@pytest.mark.parametrize(
    ("key_alg", "requested"),
    [("RS256", "ES256"), ("RS256", "HS256"), ("RS256", "none"), ("ES256", "ES384"),
     ("ES256", "RS256"), ("EdDSA", "ES256"), ("EdDSA", "RS256")],
)  # fmt: skip
def test_incompatible_alg_is_refused(key_alg: str, requested: str) -> None:
    key = generate_private_key(key_alg)
    with pytest.raises(FastgwError, match=f"--alg {requested} does not fit") as info:
        mint_token(key, customer_id="c1", algorithm=requested)
    assert "\n" not in str(info.value)


def test_unsupported_curve_is_refused() -> None:
    with pytest.raises(FastgwError, match="no algorithm the gateway accepts"):
        mint_token(ec.generate_private_key(ec.SECP521R1()), customer_id="c1")


@pytest.mark.parametrize("customer", ["", "a b", "c/1", "é", "x" * 129, "c1\n"])
def test_bad_customer_id_is_refused(customer: str) -> None:
    with pytest.raises(FastgwError, match="--customer"):
        mint_token(generate_private_key("EdDSA"), customer_id=customer)


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan")])
def test_ttl_must_be_positive_and_finite(ttl: float) -> None:
    with pytest.raises(FastgwError, match="--ttl"):
        mint_token(generate_private_key("EdDSA"), customer_id="c1", ttl_s=ttl)


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    first = write_key_pair(tmp_path, "EdDSA")
    before = first.private_pem.read_bytes()
    with pytest.raises(FastgwError, match=r"private\.pem exists; not overwritten"):
        write_key_pair(tmp_path, "ES256")
    assert first.private_pem.read_bytes() == before
    assert first.kid == default_kid(load_private_key(first.private_pem))


def test_keygen_kid_and_bits(tmp_path: Path) -> None:
    files = write_key_pair(tmp_path / "a", "RS256", kid="2024-key", bits=3072)
    key = load_private_key(files.private_pem)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 3072
    assert json.loads(files.jwks_json.read_text())["keys"][0]["kid"] == "2024-key"
    with pytest.raises(FastgwError, match="at least 2048"):
        write_key_pair(tmp_path / "b", "RS256", bits=1024)
    with pytest.raises(FastgwError, match="RS256 only"):
        write_key_pair(tmp_path / "c", "ES256", bits=4096)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_load_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    files = write_key_pair(tmp_path, "ES256")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    cases = {
        tmp_path / "missing.pem": "cannot read key",
        files.public_pem: "public key",
        garbage: "not a PEM private key",
        encrypted: "encrypted",
        tmp_path: "cannot read key",  # a directory
    }
    for path, reason in cases.items():
        with pytest.raises(FastgwError) as info:
            load_private_key(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message, message
        assert "\n" not in message
