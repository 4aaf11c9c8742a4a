"""Verification keys: a PEM key, a JWKS or an HMAC secret, each key bound to ONE algorithm.

This module owns the rules that decide which keys may verify tokens and with what algorithm,
and the per-algorithm signature checks. It does no I/O: builders take bytes, ``refresh.py``
reads files and URLs.

Invariants (each one closes a known JWT attack):

- **The algorithm comes from our configuration, never from the token.** Every ``VerifyKey``
  carries exactly one ``alg``, chosen here when the ring is built; the verifier refuses a token
  whose header ``alg`` differs. A token can therefore never make us check an RSA signature as
  PSS when we meant PKCS#1 v1.5, nor use a public key as an HMAC secret (the classic
  "RS256 → HS256" confusion: the public key is public, so anyone could mint tokens).
- **HMAC secrets come only from ``hs_secret``.** A JWKS is a public document; ``kty: oct`` in it
  is skipped, and a public key never gets an HS* algorithm.
- **Only public halves are kept.** Private members of a JWK (``d``, ``p``, ...) are dropped
  before parsing; RSA below 2048 bits is refused.
- **Ambiguity is refused, never guessed.** A key that several configured algorithms fit, a kid
  that two keys share, a kid-less key among several: skipped (JWKS, with a warning) or an error
  (PEM, secret), because any pick could verify a token with a different key or algorithm than
  the issuer meant.

A ``KeyRing`` is immutable; ``refresh.py`` replaces it as a whole, so a reader always sees a
complete set. Hot path per uncached token: ``ring.find(kid)``, compare ``key.alg`` with the
header's ``alg``, ``key.verify(signing_input, signature)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import load_pem_x509_certificate
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from fastgw.errors import FastgwError
from fastgw.keys import (
    MIN_RSA_BITS,
    describe_key,
    jwk_thumbprint,
    key_algorithms,
)

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)
Verify = Callable[[bytes, bytes], bool]

MAX_KEY_DOCUMENT_BYTES: Final = 1024 * 1024
"""Largest PEM file or JWKS document read (a real one is a few KiB)."""
MAX_JWKS_KEYS: Final = 100
"""Keys considered in one JWKS; later ones are skipped with a warning (parsing is not free)."""

HS_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_JWK_CURVES: Final[dict[str, str]] = {"P-256": "ES256", "P-384": "ES384"}
# Everything that makes a JWK private (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2): dropped unread.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeyConfigError(FastgwError, ValueError):
    """Key material or algorithms that cannot verify tokens; the message is one line.

    ``setting`` says which setting to fix: ``"key"`` (the file or document itself) or
    ``"algorithm"`` (the configured algorithms do not fit the key).
    """

    def __init__(self, message: str, setting: str = "key") -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One verification key: its id, the one algorithm it verifies, and the check itself."""

    kid: str | None
    alg: str
    verify: Verify  # (signing_input, raw_signature) -> valid?; never raises


class KeyRing:
    """An immutable set of ``VerifyKey`` by kid.

    ``find`` rules: an exact kid match; a ring of one key also answers a token without kid; a
    ring built from one configured key (PEM, secret) answers any kid, because there the kid is
    only a hint and the signature is still checked with our key. A JWKS ring of several keys
    answers no token without kid: picking one would be a guess.
    """

    __slots__ = ("_by_kid", "_sole", "_wildcard", "fingerprint", "keys", "kids")

    def __init__(
        self, keys: Iterable[tuple[VerifyKey, bytes]] = (), *, any_kid: bool = False
    ) -> None:
        """``keys``: each key with its identity bytes (what makes it this key, for comparing
        rings). ``any_kid``: answer every kid (a single configured key)."""
        pairs = tuple(keys)
        self.keys: tuple[VerifyKey, ...] = tuple(key for key, _ in pairs)
        self._by_kid: dict[str, VerifyKey] = {k.kid: k for k in self.keys if k.kid is not None}
        if len(self._by_kid) != sum(k.kid is not None for k in self.keys):
            raise ValueError("duplicate kid in a KeyRing")
        if any_kid and len(self.keys) != 1:
            raise ValueError("any_kid needs exactly one key")
        self.kids: frozenset[str] = frozenset(self._by_kid)
        self._sole = self.keys[0] if len(self.keys) == 1 else None
        self._wildcard = self._sole if any_kid else None
        self.fingerprint: frozenset[tuple[str | None, str, bytes]] = frozenset(
            (key.kid, key.alg, identity) for key, identity in pairs
        )

    def find(self, kid: str | None) -> VerifyKey | None:
        """The key for a token's kid, or None."""
        # HOT PATH: no allocation, no await.
        if kid is None:
            return self._sole
        key = self._by_kid.get(kid)
        return self._wildcard if key is None else key

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        listed = ", ".join(f"{k.kid or '-'}:{k.alg}" for k in self.keys)
        return f"KeyRing({listed})"


EMPTY_RING: Final = KeyRing()

# ----------------------------------------------------------------------- signature checks


def _rsa_verify(key: rsa.RSAPublicKey, alg: str) -> Verify:
    hash_alg = _HASHES[alg[2:]]()
    pad: padding.AsymmetricPadding
    if alg.startswith("PS"):
        # RFC 7518 §3.5: MGF1 with the same hash; salt as long as the digest (pyjwt does so too).
        pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    else:
        pad = padding.PKCS1v15()
    size = (key.key_size + 7) // 8  # RFC 8017 §8.2.2: a signature is exactly k octets
    check = key.verify

    def verify(data: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            check(signature, data, pad, hash_alg)
        except Exception:
            return False
        return True

    return verify


def _ec_verify(key: ec.EllipticCurvePublicKey, alg: str) -> Verify:
    ecdsa = ec.ECDSA(_HASHES[alg[2:]]())
    half = (key.curve.key_size + 7) // 8
    size = 2 * half
    check = key.verify

    def verify(data: bytes, signature: bytes) -> bool:
        # RFC 7518 §3.4: JWS carries R || S, each exactly the curve size; cryptography wants DER.
        if len(signature) != size:
            return False
        try:
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            check(der, data, ecdsa)
        except Exception:
            return False
        return True

    return verify


def _eddsa_verify(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> Verify:
    size = 64 if isinstance(key, ed25519.Ed25519PublicKey) else 114  # RFC 8032 §5.1.6, §5.2.6
    check = key.verify

    def verify(data: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            check(signature, data)
        except Exception:
            return False
        return True

    return verify


def _hmac_verify(secret: bytes, alg: str) -> Verify:
    name = f"sha{alg[2:]}"
    size = hashlib.new(name).digest_size
    digest, equal = hmac.digest, hmac.compare_digest

    def verify(data: bytes, signature: bytes) -> bool:
        if len(signature) != size:
            return False
        try:
            return equal(digest(secret, data, name), signature)  # constant time
        except Exception:
            return False

    return verify


def _verifier(key: PublicKey, alg: str) -> Verify:
    if isinstance(key, rsa.RSAPublicKey):
        return _rsa_verify(key, alg)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _ec_verify(key, alg)
    return _eddsa_verify(key)


# --------------------------------------------------------------------- algorithm choice


def _listing(names: Sequence[str]) -> str:
    if len(names) == 2:
        return f"both {names[0]} and {names[1]}"
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _choose(key: PublicKey, declared: str | None, algorithms: Sequence[str], where: str) -> str:
    """The one algorithm ``key`` verifies, or KeyConfigError saying why there is none.

    ``declared``: the JWK's own ``alg``, binding, but only within the configuration.
    ``where``: `` in <file>`` for messages, or empty.
    """
    kind, fits = describe_key(key), key_algorithms(key)
    subject = f"the {kind} key{where}"
    if declared is not None:
        if declared not in fits:
            raise KeyConfigError(f"alg {declared} does not fit {subject}")
        if declared not in algorithms:
            raise KeyConfigError(
                f"alg {declared} is not among the configured algorithms ({', '.join(algorithms)})",
                "algorithm",
            )
        return declared
    candidates = [alg for alg in algorithms if alg in fits]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        needs = fits[0] if len(fits) == 1 else f"one of {', '.join(fits)}"
        raise KeyConfigError(
            f"{subject} fits none of the configured algorithms "
            f"({', '.join(algorithms)}); it needs {needs}",
            "algorithm",
        )
    # Several fit (RS256 and PS256 for one RSA key): which one the issuer signs with is not
    # ours to guess, and accepting both would let a token choose.
    raise KeyConfigError(f"{subject} fits {_listing(candidates)}; list one", "algorithm")


def _identity(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_strength(key: PublicKey) -> None:
    # NIST SP 800-57 retired RSA below 2048 bits; such a key may be factorable.
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise KeyConfigError(
            f"RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})"
        )


# ------------------------------------------------------------------------------- builders


def ring_from_pem(pem: bytes, algorithms: Sequence[str], *, source: str = "") -> KeyRing:
    """A one-key ring from a PEM public key (or certificate).

    Its kid is the key's RFC 7638 thumbprint (what ``fastgw keygen`` writes), and it answers any
    kid: with one configured key the kid is only a hint, the signature is still checked with
    our key. ``source`` names the file in algorithm messages ("the RSA key in <source>");
    messages about the key itself do not name it (the caller knows where it read it).
    """
    key = _load_pem(pem)
    _check_strength(key)
    alg = _choose(key, None, algorithms, f" in {source}" if source else "")
    members = (
        RSAAlgorithm.to_jwk(key, as_dict=True)
        if isinstance(key, rsa.RSAPublicKey)
        else ECAlgorithm.to_jwk(key, as_dict=True)
        if isinstance(key, ec.EllipticCurvePublicKey)
        else OKPAlgorithm.to_jwk(key, as_dict=True)
    )
    kid = jwk_thumbprint(members)
    return KeyRing([(VerifyKey(kid, alg, _verifier(key, alg)), _identity(key))], any_kid=True)


def _load_pem(pem: bytes) -> PublicKey:
    if len(pem) > MAX_KEY_DOCUMENT_BYTES:
        raise KeyConfigError(f"not a PEM public key (larger than {MAX_KEY_DOCUMENT_BYTES} bytes)")
    if b"PRIVATE KEY-----" in pem:
        # Refused rather than reduced to its public half: a private key has no business on a
        # gateway host, and it is most likely the wrong file of a keygen pair.
        raise KeyConfigError(
            "not a PEM public key (it holds a private key; give the public "
            "key, public.pem from fastgw keygen)"
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            loaded: object = load_pem_x509_certificate(pem).public_key()
        else:
            loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        reason = "no -----BEGIN line" if b"-----BEGIN" not in pem else "unreadable PEM block"
        raise KeyConfigError(f"not a PEM public key ({reason})") from None
    if not isinstance(loaded, PublicKey):
        name = type(loaded).__name__.lstrip("_")
        raise KeyConfigError(f"unsupported key type {name}; use RSA, EC P-256/P-384 or Ed25519")
    return loaded


def ring_from_secret(secret: bytes, algorithms: Sequence[str]) -> KeyRing:
    """A one-key HMAC ring for the single configured HS* algorithm (answers any kid)."""
    hs = [alg for alg in algorithms if alg in HS_ALGORITHMS]
    if len(hs) != 1:
        problem = "no HS* algorithm" if not hs else f"{_listing(hs)}"
        raise KeyConfigError(
            f"an HMAC secret verifies exactly one HS* algorithm, but algorithm lists {problem}",
            "algorithm",
        )
    alg = hs[0]
    need = int(alg[2:]) // 8  # RFC 7518 §3.2: a key at least as long as the hash output
    if len(secret) < need:
        raise KeyConfigError(f"the secret has {len(secret)} bytes; {alg} needs at least {need}")
    identity = hashlib.sha256(b"fastgw-hs-identity\0" + secret).digest()
    return KeyRing(
        [(VerifyKey(None, alg, _hmac_verify(bytes(secret), alg)), identity)], any_kid=True
    )


def ring_from_jwks(document: bytes, algorithms: Sequence[str]) -> tuple[KeyRing, list[str]]:
    """The usable keys of a JWKS (RFC 7517 §5), and one warning per skipped key.

    A document that is not a JWKS at all raises KeyConfigError; a JWKS whose keys are all
    skipped gives an empty ring (the caller decides whether that is an error).
    """
    if len(document) > MAX_KEY_DOCUMENT_BYTES:
        raise KeyConfigError(f"not a JWKS: larger than {MAX_KEY_DOCUMENT_BYTES} bytes")
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError) as error:
        raise KeyConfigError(f"not a JWKS: invalid JSON ({error})") from None
    entries = parsed.get("keys") if isinstance(parsed, dict) else None
    if not isinstance(entries, list):
        raise KeyConfigError('not a JWKS: expected an object with a "keys" list')
    warnings: list[str] = []
    if len(entries) > MAX_JWKS_KEYS:
        warnings.append(
            f"keys[{MAX_JWKS_KEYS}:]: more than {MAX_JWKS_KEYS} keys; "
            f"{len(entries) - MAX_JWKS_KEYS} skipped"
        )
    usable: list[tuple[str, VerifyKey, bytes]] = []
    for index, entry in enumerate(entries[:MAX_JWKS_KEYS]):
        name = f"keys[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("kid"), str):
            name += f" (kid {entry['kid']!r})"
        try:
            key, identity = _from_jwk(entry, algorithms)
        except KeyConfigError as skipped:
            warnings.append(f"{name}: {skipped}; skipped")
            continue
        usable.append((name, key, identity))
    counts: dict[str, int] = {}
    for _, key, _ in usable:
        if key.kid is not None:
            counts[key.kid] = counts.get(key.kid, 0) + 1
    kept: list[tuple[VerifyKey, bytes]] = []
    for name, key, identity in usable:
        if key.kid is not None and counts[key.kid] > 1:
            # Two keys under one kid: a token naming it could be checked with either.
            warnings.append(f"{name}: {counts[key.kid]} usable keys share this kid; skipped")
        elif key.kid is None and len(usable) > 1:
            warnings.append(
                f"{name}: no kid, and the JWKS has {len(usable)} usable keys, so "
                "no token can select it; skipped"
            )
        else:
            kept.append((key, identity))
    return KeyRing(kept), warnings


def _from_jwk(entry: object, algorithms: Sequence[str]) -> tuple[VerifyKey, bytes]:
    """One JWKS entry as a key, or KeyConfigError saying why it is skipped."""
    if not isinstance(entry, dict):
        raise KeyConfigError("not a JSON object")
    kid, use, ops, declared = (entry.get(m) for m in ("kid", "use", "key_ops", "alg"))
    if kid is not None and not isinstance(kid, str):
        raise KeyConfigError("kid is not a string")
    if use is not None and use != "sig":
        raise KeyConfigError(f"use is {use!r}, not 'sig'")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise KeyConfigError("key_ops does not include 'verify'")
    if declared is not None and not isinstance(declared, str):
        raise KeyConfigError("alg is not a string")
    kty = entry.get("kty")
    if kty == "oct":
        raise KeyConfigError(
            "kty 'oct' (a shared secret) is never taken from a JWKS, which is "
            "public; HMAC secrets come from hs_secret"
        )
    if kty not in ("RSA", "EC", "OKP"):
        raise KeyConfigError(f"unsupported kty {kty!r}")
    crv = entry.get("crv")
    parser = "RS256"  # selects pyjwt's from_jwk for the kty; the alg we verify is chosen below
    if kty == "EC":
        if not isinstance(crv, str) or crv not in _JWK_CURVES:
            raise KeyConfigError(f"unsupported curve {crv!r} (P-256 or P-384)")
        parser = _JWK_CURVES[crv]
    elif kty == "OKP":
        if crv not in ("Ed25519", "Ed448"):
            raise KeyConfigError(f"unsupported curve {crv!r} (Ed25519 or Ed448)")
        parser = "EdDSA"
    public = {name: value for name, value in entry.items() if name not in _PRIVATE_MEMBERS}
    try:
        loaded: object = jwt.PyJWK(public, parser).key
    except Exception as error:
        raise KeyConfigError(f"invalid key material ({str(error)[:120]})") from None
    if not isinstance(loaded, PublicKey):
        raise KeyConfigError("invalid key material (not a public key)")
    _check_strength(loaded)
    alg = _choose(loaded, declared, algorithms, "")
    return VerifyKey(kid, alg, _verifier(loaded, alg)), _identity(loaded)
