"""The key ring: one algorithm per key, the per-algorithm signature checks, and the skip rules.

Signatures come from pyjwt and ``cryptography`` (and, for the RFC vectors, from the RFCs), never
from fastgw itself, so a check that agrees with itself but not with the world fails here.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from fastgw.auth.keyring import (
    EMPTY_RING,
    MAX_JWKS_KEYS,
    MAX_KEY_DOCUMENT_BYTES,
    KeyConfigError,
    KeyRing,
    VerifyKey,
    ring_from_jwks,
    ring_from_pem,
    ring_from_secret,
)
from fastgw.config import ConfigError, parse_config
from fastgw.keys import default_kid, public_jwk

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
ED25519_KEY = ed25519.Ed25519PrivateKey.generate()
ED448_KEY = ed448.Ed448PrivateKey.generate()
SECRET = b"0123456789abcdef" * 4  # 64 bytes: enough for HS512

PrivateKey = Any

KEY_FOR: dict[str, PrivateKey] = {
    **{alg: RSA_KEY for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": P256_KEY,
    "ES384": P384_KEY,
    "EdDSA": ED25519_KEY,
}
HS = ("HS256", "HS384", "HS512")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem(key: PrivateKey) -> bytes:
    public = key.public_key()
    return bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def jwk(key: PrivateKey, **members: object) -> dict[str, object]:
    return {**public_jwk(key.public_key()), **members}


def jwks(*keys: Mapping[str, object]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def signed(alg: str, key: PrivateKey | bytes, kid: str | None = None) -> tuple[bytes, bytes]:
    """(signing input, raw signature) of a pyjwt-made token."""
    headers = {} if kid is None else {"kid": kid}
    token = jwt.encode({"sub": "c1", "n": 1}, key, algorithm=alg, headers=headers)
    head, payload, signature = token.split(".")
    return f"{head}.{payload}".encode(), b64d(signature)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def only(ring: KeyRing) -> VerifyKey:
    assert len(ring) == 1
    key = ring.keys[0]
    return key


# --------------------------------------------------------------------- every algorithm


@pytest.mark.parametrize("alg", [*KEY_FOR, *HS])
def test_every_algorithm_verifies_real_signatures(alg: str) -> None:
    if alg in HS:
        ring = ring_from_secret(SECRET, (alg,))
        data, signature = signed(alg, SECRET)
    else:
        ring = ring_from_pem(pem(KEY_FOR[alg]), (alg,))
        data, signature = signed(alg, KEY_FOR[alg])
    key = only(ring)
    assert key.alg == alg
    assert key.verify(data, signature) is True
    for bit in (0, 7, len(signature) * 4, len(signature) * 8 - 1):
        assert key.verify(data, flip(signature, bit)) is False
    for bit in (0, 100, len(data) * 8 - 1):
        assert key.verify(flip(data, bit), signature) is False
    for wrong in (b"", signature[:-1], signature + b"\0", b"\0" + signature, signature * 2):
        assert key.verify(data, wrong) is False
    assert key.verify(data + b".", signature) is False


@pytest.mark.parametrize("alg", list(KEY_FOR))
def test_jwks_keys_verify_like_pem_keys(alg: str) -> None:
    ring, warnings = ring_from_jwks(jwks(jwk(KEY_FOR[alg], kid="k1", alg=alg)), (alg,))
    assert warnings == []
    data, signature = signed(alg, KEY_FOR[alg], kid="k1")
    key = ring.find("k1")
    assert key is not None and key.alg == alg
    assert key.verify(data, signature)
    assert not key.verify(data, flip(signature, 3))


def test_ed448_verifies() -> None:
    ring, _ = ring_from_jwks(jwks(jwk(ED448_KEY, kid="ed448")), ("EdDSA",))
    data, signature = signed("EdDSA", ED448_KEY)
    key = only(ring)
    assert len(signature) == 114 and key.verify(data, signature)
    assert not key.verify(data, flip(signature, 9))
    assert not key.verify(data, signature[:64])


def test_ecdsa_wants_raw_r_s_not_der() -> None:
    data, raw = signed("ES256", P256_KEY)
    der = P256_KEY.sign(data, ec.ECDSA(hashes.SHA256()))
    key = only(ring_from_pem(pem(P256_KEY), ("ES256",)))
    assert key.verify(data, raw)
    assert not key.verify(data, der)  # a valid signature, in the wrong (non-JWS) encoding
    assert not key.verify(data, b"\0" * 64)  # r = s = 0


def test_rsa_signature_by_another_key_fails() -> None:
    data, signature = signed("RS256", RSA_KEY_2)
    assert not only(ring_from_pem(pem(RSA_KEY), ("RS256",))).verify(data, signature)


def test_pkcs1_and_pss_do_not_verify_each_other() -> None:
    data, pkcs1 = signed("RS256", RSA_KEY)
    _, pss = signed("PS256", RSA_KEY)
    assert not only(ring_from_pem(pem(RSA_KEY), ("PS256",))).verify(data, pkcs1)
    assert not only(ring_from_pem(pem(RSA_KEY), ("RS256",))).verify(data, pss)


# ------------------------------------------------------------------------ RFC vectors

# RFC 7515 §A.1-A.3 share this payload: {"iss":"joe",\r\n "exp":1300819380,\r\n
# "http://example.com/is_root":true}
RFC7515_PAYLOAD = (
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
)

# RFC 7515 §A.1: HMAC SHA-256.
A1_KEY = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
A1_INPUT = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." + RFC7515_PAYLOAD
A1_SIGNATURE = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"

# RFC 7515 §A.2: RSASSA-PKCS1-v1_5 SHA-256 (only the public members of the JWK).
A2_JWK = {
    "kty": "RSA",
    "n": (
        "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0B"
        "m4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXnd"
        "S5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5Ih"
        "lJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
    ),
    "e": "AQAB",
}
A2_INPUT = "eyJhbGciOiJSUzI1NiJ9." + RFC7515_PAYLOAD
A2_SIGNATURE = (
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4"
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv"
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB"
    "p0igcN_IoypGlUPQGe77Rw"
)

# RFC 7515 §A.3: ECDSA P-256 SHA-256; the JWK as printed, private "d" included (it is ignored).
A3_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI",
}
A3_INPUT = "eyJhbGciOiJFUzI1NiJ9." + RFC7515_PAYLOAD
A3_SIGNATURE = (
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
)

# RFC 8037 §A.4: Ed25519 signing of "Example of Ed25519 signing" (§A.1 key, "d" included).
A4_JWK = {
    "kty": "OKP",
    "crv": "Ed25519",
    "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
}
A4_INPUT = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
A4_SIGNATURE = (
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def _check_vector(key: VerifyKey, signing_input: str, signature: str) -> None:
    data, raw = signing_input.encode(), b64d(signature)
    assert key.verify(data, raw) is True
    assert key.verify(flip(data, 5), raw) is False
    assert key.verify(data, flip(raw, 5)) is False


def test_rfc7515_a1_hs256() -> None:
    _check_vector(only(ring_from_secret(b64d(A1_KEY), ("HS256",))), A1_INPUT, A1_SIGNATURE)


def test_rfc7515_a2_rs256() -> None:
    ring, warnings = ring_from_jwks(jwks(A2_JWK), ("RS256",))
    assert warnings == []
    _check_vector(only(ring), A2_INPUT, A2_SIGNATURE)


def test_rfc7515_a3_es256_private_part_ignored() -> None:
    ring, warnings = ring_from_jwks(jwks(A3_JWK), ("ES256",))
    public_only, _ = ring_from_jwks(jwks({k: v for k, v in A3_JWK.items() if k != "d"}), ("ES256",))
    assert warnings == []
    assert ring.fingerprint == public_only.fingerprint  # only the public key was kept
    _check_vector(only(ring), A3_INPUT, A3_SIGNATURE)


def test_rfc8037_a4_ed25519() -> None:
    ring, warnings = ring_from_jwks(jwks(A4_JWK), ("EdDSA",))
    assert warnings == []
    _check_vector(only(ring), A4_INPUT, A4_SIGNATURE)


def test_a_vector_under_the_wrong_algorithm_is_refused() -> None:
    # A.2's RSA key configured for PS256 only: its PKCS#1 v1.5 signature must not verify.
    ring, _ = ring_from_jwks(jwks(A2_JWK), ("PS256",))
    assert only(ring).alg == "PS256"
    assert not only(ring).verify(A2_INPUT.encode(), b64d(A2_SIGNATURE))


# ------------------------------------------------------------- algorithm choice (JWKS)


def _skipped(document: bytes, algorithms: tuple[str, ...], *needles: str) -> None:
    ring, warnings = ring_from_jwks(document, algorithms)
    assert len(ring) == 0, ring
    assert len(warnings) == 1, warnings
    for needle in needles:
        assert needle in warnings[0]
    assert warnings[0].endswith("; skipped")


def test_declared_alg_must_be_configured() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="a", alg="RS512")), ("RS256",), "kid 'a'", "RS512",
             "configured")  # fmt: skip


def test_declared_alg_must_fit_the_key_type() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="a", alg="ES256")), ("ES256", "RS256"), "ES256", "RSA")


def test_rsa_key_declared_hs256_is_never_an_hmac_secret() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="a", alg="HS256")), ("HS256",), "HS256")


def test_undeclared_rsa_key_with_two_fitting_algorithms_is_ambiguous() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="rot-1")), ("RS256", "PS256"), "kid 'rot-1'",
             "both RS256 and PS256")  # fmt: skip


@pytest.mark.parametrize(
    ("key", "algorithms", "expected"),
    [
        (RSA_KEY, ("ES256", "RS384"), "RS384"),
        (RSA_KEY, ("PS512", "EdDSA"), "PS512"),
        (P256_KEY, ("RS256", "ES256", "ES384"), "ES256"),
        (P384_KEY, ("ES256", "ES384"), "ES384"),
        (ED25519_KEY, ("RS256", "EdDSA"), "EdDSA"),
    ],
)
def test_undeclared_key_gets_the_one_configured_algorithm_that_fits(
    key: PrivateKey, algorithms: tuple[str, ...], expected: str
) -> None:
    ring, warnings = ring_from_jwks(jwks(jwk(key, kid="k")), algorithms)
    assert warnings == []
    assert only(ring).alg == expected


@pytest.mark.parametrize(
    ("key", "algorithms"),
    [(P256_KEY, ("RS256", "ES384")), (P384_KEY, ("ES256",)), (ED25519_KEY, ("RS256",)),
     (RSA_KEY, ("ES256", "EdDSA"))],
)  # fmt: skip
def test_undeclared_key_with_no_fitting_algorithm_is_skipped(
    key: PrivateKey, algorithms: tuple[str, ...]
) -> None:
    _skipped(jwks(jwk(key, kid="k")), algorithms, "kid 'k'", "fits none")


def test_declared_es256_on_a_p384_key_is_skipped() -> None:
    _skipped(jwks(jwk(P384_KEY, kid="k", alg="ES256")), ("ES256", "ES384"), "ES256", "P-384")


def test_unsupported_curves_are_skipped() -> None:
    p521 = jwk(ec.generate_private_key(ec.SECP521R1()), kid="k")
    _skipped(jwks(p521), ("ES256", "ES384"), "P-521")
    k1 = jwk(ec.generate_private_key(ec.SECP256K1()), kid="k")
    _skipped(jwks(k1), ("ES256",), "secp256k1")
    _skipped(jwks({"kty": "OKP", "crv": "X25519", "x": A4_JWK["x"], "kid": "k"}), ("EdDSA",),
             "X25519")  # fmt: skip
    _skipped(jwks({"kty": "EC", "crv": ["P-256"], "kid": "k"}), ("ES256",), "curve")


# ------------------------------------------------------------------------ skip rules


def test_use_other_than_sig_is_skipped() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="a", use="enc")), ("RS256",), "use")
    ring, warnings = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a", use="sig")), ("RS256",))
    assert len(ring) == 1 and warnings == []


def test_key_ops_without_verify_is_skipped() -> None:
    _skipped(jwks(jwk(RSA_KEY, kid="a", key_ops=["encrypt", "wrapKey"])), ("RS256",), "key_ops")
    _skipped(jwks(jwk(RSA_KEY, kid="a", key_ops="verify")), ("RS256",), "key_ops")
    ring, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a", key_ops=["verify"])), ("RS256",))
    assert len(ring) == 1


def test_symmetric_keys_are_never_taken_from_a_jwks() -> None:
    _skipped(jwks({"kty": "oct", "k": A1_KEY, "kid": "h", "alg": "HS256"}), ("HS256",), "oct")


def test_small_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    _skipped(jwks(jwk(small, kid="old")), ("RS256",), "kid 'old'", "1024 bits")
    with pytest.raises(KeyConfigError, match="1024 bits is too weak"):
        ring_from_pem(pem(small), ("RS256",))


def test_private_members_are_dropped() -> None:
    numbers = RSA_KEY.private_numbers()
    private = {**jwk(RSA_KEY, kid="a"), "d": jwt.utils.to_base64url_uint(numbers.d).decode()}
    ring, warnings = ring_from_jwks(jwks(private), ("RS256",))
    public, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a")), ("RS256",))
    assert warnings == [] and ring.fingerprint == public.fingerprint
    broken = {**private, "p": "AQAB"}  # inconsistent private members: irrelevant, never read
    ring, warnings = ring_from_jwks(jwks(broken), ("RS256",))
    assert warnings == [] and len(ring) == 1


def test_duplicate_kids_are_both_skipped() -> None:
    document = jwks(jwk(RSA_KEY, kid="dup"), jwk(RSA_KEY_2, kid="dup"), jwk(P256_KEY, kid="ok"))
    ring, warnings = ring_from_jwks(document, ("RS256", "ES256"))
    assert ring.kids == {"ok"}
    assert len(warnings) == 2 and all("share this kid" in w for w in warnings)


def test_a_duplicate_that_is_skipped_anyway_does_not_count() -> None:
    document = jwks(jwk(RSA_KEY, kid="a", use="enc"), jwk(RSA_KEY_2, kid="a"))
    ring, warnings = ring_from_jwks(document, ("RS256",))
    assert ring.kids == {"a"} and len(warnings) == 1


def test_kidless_key_among_several_is_skipped() -> None:
    ring, warnings = ring_from_jwks(jwks(jwk(RSA_KEY), jwk(P256_KEY, kid="ec")), ("RS256", "ES256"))
    assert ring.kids == {"ec"}
    assert len(warnings) == 1 and "no kid" in warnings[0]


def test_kidless_key_alone_is_kept_and_answers_tokens_without_kid() -> None:
    ring, warnings = ring_from_jwks(jwks(jwk(RSA_KEY)), ("RS256",))
    assert warnings == [] and ring.kids == frozenset()
    assert ring.find(None) is ring.keys[0]
    assert ring.find("x") is None


def test_malformed_entries_are_skipped_with_a_reason() -> None:
    document = jwks(
        "not an object",  # type: ignore[arg-type]
        jwk(RSA_KEY, kid=7),
        jwk(RSA_KEY, kid="alg", alg=["RS256"]),
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        {"kty": "RSA", "kid": "bad-n", "n": 12, "e": "AQAB"},
        {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kid": "no-kty"},
        {"kty": "XYZ", "kid": "xyz"},
        jwk(P256_KEY, kid="good"),
    )
    ring, warnings = ring_from_jwks(document, ("RS256", "ES256"))
    assert ring.kids == {"good"}
    assert [w.partition(":")[0] for w in warnings] == [
        "keys[0]",
        "keys[1]",
        "keys[2] (kid 'alg')",
        "keys[3] (kid 'no-n')",
        "keys[4] (kid 'bad-n')",
        "keys[5] (kid 'short')",
        "keys[6] (kid 'no-kty')",
        "keys[7] (kid 'xyz')",
    ]
    assert "not a JSON object" in warnings[0] and "kid is not a string" in warnings[1]
    assert "invalid key material" in warnings[3] and "unsupported kty" in warnings[7]


def test_key_count_is_bounded() -> None:
    document = jwks(*[jwk(P256_KEY, kid=f"k{i}") for i in range(MAX_JWKS_KEYS + 3)])
    ring, warnings = ring_from_jwks(document, ("ES256",))
    assert len(ring) == MAX_JWKS_KEYS
    assert warnings == [f"keys[{MAX_JWKS_KEYS}:]: more than {MAX_JWKS_KEYS} keys; 3 skipped"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON"),
        (b"[]", '"keys" list'),
        (b'{"keys": {}}', '"keys" list'),
        (b'{"key": []}', '"keys" list'),
        (b" " * (MAX_KEY_DOCUMENT_BYTES + 1), "larger than"),
    ],
)
def test_a_document_that_is_not_a_jwks_is_an_error(document: bytes, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as caught:
        ring_from_jwks(document, ("RS256",))
    assert caught.value.setting == "key" and "\n" not in str(caught.value)


def test_an_empty_jwks_is_an_empty_ring_not_an_error() -> None:
    ring, warnings = ring_from_jwks(b'{"keys": []}', ("RS256",))
    assert len(ring) == 0 and warnings == []


# ------------------------------------------------------------------------------- PEM


def test_pem_key_gets_its_thumbprint_as_kid_and_answers_any_kid() -> None:
    ring = ring_from_pem(pem(RSA_KEY), ("RS256",))
    key = only(ring)
    assert key.kid == default_kid(RSA_KEY.public_key())
    assert ring.kids == {key.kid}
    assert ring.find(key.kid) is key
    assert ring.find(None) is key
    assert ring.find("someone-elses-kid") is key


def test_pem_ambiguity_is_an_algorithm_error() -> None:
    with pytest.raises(KeyConfigError) as caught:
        ring_from_pem(pem(RSA_KEY), ("RS256", "PS256"), source="public_key_file")
    assert caught.value.setting == "algorithm"
    assert str(caught.value) == (
        "the RSA 2048-bit key in public_key_file fits both RS256 and PS256; list one"
    )
    with pytest.raises(KeyConfigError, match="fits RS256, RS384 and PS256; list one"):
        ring_from_pem(pem(RSA_KEY), ("RS256", "RS384", "PS256"))


def test_pem_with_no_fitting_algorithm_is_an_algorithm_error() -> None:
    with pytest.raises(KeyConfigError) as caught:
        ring_from_pem(pem(P256_KEY), ("RS256", "ES384"), source="k.pem")
    assert caught.value.setting == "algorithm"
    assert str(caught.value) == (
        "the EC P-256 key in k.pem fits none of the configured algorithms (RS256, ES384); "
        "it needs ES256"
    )


def test_pem_certificate_is_accepted() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(P256_KEY.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(P256_KEY, hashes.SHA256())
    )  # fmt: skip
    ring = ring_from_pem(cert.public_bytes(serialization.Encoding.PEM), ("ES256",))
    data, signature = signed("ES256", P256_KEY)
    assert only(ring).verify(data, signature)
    assert ring.fingerprint == ring_from_pem(pem(P256_KEY), ("ES256",)).fingerprint


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a PEM public key (no -----BEGIN line)"),
        (b"hello", "not a PEM public key (no -----BEGIN line)"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
         "not a PEM public key (unreadable PEM block)"),
        (RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()), "it holds a private key"),
        (b"x" * (MAX_KEY_DOCUMENT_BYTES + 1), "larger than"),
    ],
)  # fmt: skip
def test_not_a_pem_public_key(data: bytes, message: str) -> None:
    with pytest.raises(KeyConfigError) as caught:
        ring_from_pem(data, ("RS256",))
    assert message in str(caught.value) and caught.value.setting == "key"


def test_unsupported_pem_key_type() -> None:
    dsa_pem = pem(dsa.generate_private_key(key_size=2048))
    with pytest.raises(KeyConfigError, match="unsupported key type DSAPublicKey"):
        ring_from_pem(dsa_pem, ("RS256",))


# ----------------------------------------------------------------------------- secret


def test_secret_ring_answers_any_kid() -> None:
    ring = ring_from_secret(SECRET, ("HS384",))
    key = only(ring)
    assert key.kid is None and key.alg == "HS384" and ring.kids == frozenset()
    assert ring.find(None) is key and ring.find("whatever") is key


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        (("HS256", "HS384"), "algorithm lists both HS256 and HS384"),
        (("RS256",), "algorithm lists no HS* algorithm"),
    ],
)
def test_secret_needs_exactly_one_hs_algorithm(algorithms: tuple[str, ...], message: str) -> None:
    with pytest.raises(KeyConfigError, match=re.escape(message)) as caught:
        ring_from_secret(SECRET, algorithms)
    assert caught.value.setting == "algorithm"


def test_short_secret_is_refused() -> None:
    with pytest.raises(KeyConfigError, match="HS512 needs at least 64"):
        ring_from_secret(b"x" * 63, ("HS512",))


# ------------------------------------------------------------------------------- find


def test_find_in_a_jwks_of_several_keys() -> None:
    document = jwks(jwk(RSA_KEY, kid="r"), jwk(P256_KEY, kid="e"))
    ring, _ = ring_from_jwks(document, ("RS256", "ES256"))
    assert len(ring) == 2 and ring.kids == {"r", "e"}
    found = ring.find("r")
    assert found is not None and found.alg == "RS256"
    assert ring.find("e") is not None and ring.find("e") is not found
    assert ring.find(None) is None  # several keys: a token without kid selects none
    assert ring.find("x") is None
    assert ring.find("R") is None  # exact match only


def test_one_key_jwks_answers_no_kid_but_not_a_wrong_kid() -> None:
    ring, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="only")), ("RS256",))
    assert ring.find(None) is ring.keys[0]
    assert ring.find("only") is ring.keys[0]
    assert ring.find("other") is None


def test_empty_ring() -> None:
    assert len(EMPTY_RING) == 0 and EMPTY_RING.kids == frozenset()
    assert EMPTY_RING.find(None) is None and EMPTY_RING.find("a") is None


def test_ring_fingerprint_tracks_keys_not_objects() -> None:
    a, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a")), ("RS256",))
    b, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a")), ("RS256",))
    other_material, _ = ring_from_jwks(jwks(jwk(RSA_KEY_2, kid="a")), ("RS256",))
    other_alg, _ = ring_from_jwks(jwks(jwk(RSA_KEY, kid="a")), ("PS256",))
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != other_material.fingerprint  # same kid, rotated material
    assert a.fingerprint != other_alg.fingerprint


def test_verify_key_is_frozen() -> None:
    key = only(ring_from_secret(SECRET, ("HS256",)))
    with pytest.raises(AttributeError):
        key.alg = "none"  # type: ignore[misc]


# ----------------------------------------------------------------------- check-config

JWT = "$.gateway.authentication.jwt"


def config_errors(tmp_path: Path, jwt_section: Mapping[str, object]) -> list[str]:
    data = {
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9001}]},
        "gateway": {"authentication": {"jwt": jwt_section}},
    }
    try:
        parse_config(data, base_dir=tmp_path, env={})
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_check_config_loads_a_good_pem_and_jwks(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(pem(RSA_KEY))
    (tmp_path / "k.json").write_bytes(jwks(jwk(P256_KEY, kid="e"), jwk(RSA_KEY, kid="x")))
    assert config_errors(tmp_path, {"public_key_file": "k.pem"}) == []
    assert config_errors(tmp_path, {"jwks_file": "k.json", "algorithm": ["ES256"]}) == []


def test_check_config_reports_a_bad_pem_at_its_path(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(b"not a key\n")
    assert config_errors(tmp_path, {"public_key_file": "k.pem"}) == [
        f"{JWT}.public_key_file: not a PEM public key (no -----BEGIN line)"
    ]


def test_check_config_reports_an_ambiguous_pem_at_algorithm(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(pem(RSA_KEY))
    both = {"public_key_file": "k.pem", "algorithm": ["RS256", "PS256"]}
    assert config_errors(tmp_path, both) == [
        f"{JWT}.algorithm: the RSA 2048-bit key in public_key_file fits both RS256 and PS256;"
        " list one"
    ]
    assert config_errors(tmp_path, {"public_key_file": "k.pem", "algorithm": "EdDSA"}) == [
        f"{JWT}.algorithm: the RSA 2048-bit key in public_key_file fits none of the configured "
        "algorithms (EdDSA); it needs one of RS256, RS384, RS512, PS256, PS384, PS512"
    ]


def test_check_config_reports_a_jwks_without_usable_keys(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_bytes(jwks(jwk(RSA_KEY, kid="r", use="enc")))
    (tmp_path / "empty.json").write_bytes(b'{"keys": []}')
    (tmp_path / "bad.json").write_bytes(b"{")
    assert config_errors(tmp_path, {"jwks_file": "k.json"}) == [
        f"{JWT}.jwks_file: no usable key: keys[0] (kid 'r'): use is 'enc', not 'sig'; skipped"
    ]
    assert config_errors(tmp_path, {"jwks_file": "empty.json"}) == [
        f"{JWT}.jwks_file: no usable key: the JWKS has no keys"
    ]
    [problem] = config_errors(tmp_path, {"jwks_file": "bad.json"})
    assert problem.startswith(f"{JWT}.jwks_file: not a JWKS: invalid JSON (")


def test_check_config_refuses_two_hs_algorithms(tmp_path: Path) -> None:
    assert config_errors(tmp_path, {"algorithm": ["HS256", "HS384"], "hs_secret": "x" * 48}) == [
        f"{JWT}.algorithm: HS256, HS384: an hs_secret verifies one HS* algorithm; list one"
    ]
