"""Signing keys for ``fastgw keygen`` and ``fastgw token`` (contract A1).

The gateway only ever *verifies* tokens; these helpers exist so that an operator (and the demo,
and the tests) can make a key pair and tokens that the ``gateway.authentication.jwt`` settings
accept, without reaching for openssl. Key material comes from ``cryptography``; the public JWK
members come from pyjwt's ``to_jwk`` so that the JWKS we write is exactly what pyjwt reads back.

The key id defaults to the RFC 7638 JWK thumbprint of the public key: it is derived from the
key alone, so ``keygen`` (which writes it into ``jwks.json``) and ``token`` (which puts it in the
header) agree without sharing any state, and a rotated key gets a new id automatically.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from fastgw.errors import FastgwError

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

KEYGEN_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
MIN_RSA_BITS: Final = 2048
PRIVATE_NAME: Final = "private.pem"
PUBLIC_NAME: Final = "public.pem"
JWKS_NAME: Final = "jwks.json"

RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# RFC 7518 §3.4: a curve has one algorithm (ES256 is P-256 with SHA-256, ES384 P-384 with
# SHA-384); only the curves whose algorithm the gateway accepts (no ES512).
EC_ALGORITHMS: Final[dict[str, str]] = {"secp256r1": "ES256", "secp384r1": "ES384"}
CURVE_NAMES: Final[dict[str, str]] = {"secp256r1": "P-256", "secp384r1": "P-384"}

AnyKey = PrivateKey | PublicKey | ed448.Ed448PrivateKey | ed448.Ed448PublicKey


def key_algorithms(key: AnyKey) -> tuple[str, ...]:
    """The JWS algorithms the gateway knows that this key (either half) can be used with,
    the natural one first; () when none."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        algorithm = EC_ALGORITHMS.get(key.curve.name)
        return () if algorithm is None else (algorithm,)
    return ("EdDSA",)


def describe_key(key: AnyKey) -> str:
    """``RSA 2048-bit``, ``EC P-256``, ``Ed25519``: for one-line messages."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC {CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    return "Ed448" if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey) else "Ed25519"


# RFC 7638 §3.2: the thumbprint hashes only the required members of each key type.
_THUMBPRINT_MEMBERS: Final[dict[str, tuple[str, ...]]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


class KeyFileError(FastgwError):
    """A key that cannot be generated, written or read; the message is one line."""


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """What ``write_key_pair`` wrote, for the CLI to report."""

    private_pem: Path
    public_pem: Path
    jwks_json: Path
    kid: str
    algorithm: str


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2), the encoding of every binary JOSE value."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key(algorithm: str, bits: int | None = None) -> PrivateKey:
    """A fresh private key for one of ``KEYGEN_ALGORITHMS``.

    RSA below 2048 bits is refused (NIST SP 800-57 retired it); ``bits`` means nothing for the
    fixed-size curves, so giving it with them is refused rather than silently ignored.
    """
    if algorithm == "RS256":
        bits = MIN_RSA_BITS if bits is None else bits
        if bits < MIN_RSA_BITS:
            raise KeyFileError(f"--bits: RSA keys need at least {MIN_RSA_BITS} bits, got {bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if bits is not None:
        raise KeyFileError(f"--bits applies to RS256 only, not {algorithm}")
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyFileError(f"--alg: expected one of {', '.join(KEYGEN_ALGORITHMS)}, got {algorithm!r}")


def public_jwk(public_key: PublicKey) -> dict[str, str]:
    """The RFC 7517/7518 public members of a key, as pyjwt writes them.

    pyjwt adds ``key_ops: ["verify"]`` to RSA keys; RFC 7517 §4.3 says not to combine
    ``key_ops`` with ``use``, and our JWKS says ``use: sig``, so it is dropped.
    """
    raw: Mapping[str, object]
    if isinstance(public_key, rsa.RSAPublicKey):
        raw = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        raw = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raw = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {name: value for name, value in raw.items() if isinstance(value, str)}


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of a public JWK.

    Neither pyjwt nor cryptography offers this; the RFC's recipe is short: the required members
    only, sorted, no whitespace, UTF-8, hashed.
    """
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise KeyFileError(f"cannot compute a thumbprint for key type {kty!r}")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def default_kid(key: PrivateKey | PublicKey) -> str:
    """The key id used when none is given: the thumbprint of the (public part of the) key."""
    public = key.public_key() if isinstance(key, PrivateKey) else key
    return jwk_thumbprint(public_jwk(public))


def jwks_document(public_key: PublicKey, algorithm: str, kid: str) -> dict[str, object]:
    """A one-key JWKS (RFC 7517 §5) that the gateway's ``jwks_file`` setting can load."""
    jwk: dict[str, str] = {**public_jwk(public_key), "kid": kid, "alg": algorithm, "use": "sig"}
    return {"keys": [jwk]}


def write_key_pair(
    out_dir: str | os.PathLike[str],
    algorithm: str,
    kid: str | None = None,
    bits: int | None = None,
) -> KeyFiles:
    """Generate a key pair and write ``private.pem``, ``public.pem`` and ``jwks.json``.

    The private key is created with ``O_CREAT | O_EXCL`` and mode 0600: an existing key is
    never overwritten (it may be the one production tokens are signed with), and there is no
    moment at which the new key is readable by others. The public files are derived from the
    private one, so replacing them is harmless.
    """
    if kid is not None and not kid.strip():
        raise KeyFileError("--kid: must not be empty")
    key = generate_private_key(algorithm, bits)
    directory = Path(out_dir)
    private_path = directory / PRIVATE_NAME
    public_path = directory / PUBLIC_NAME
    jwks_path = directory / JWKS_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KeyFileError(f"{directory}: cannot create directory: {error.strerror}") from None
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new_secret(private_path, private_pem)
    public = key.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = kid if kid is not None else default_kid(public)
    jwks = json.dumps(jwks_document(public, algorithm, kid), indent=2) + "\n"
    try:
        public_path.write_bytes(public_pem)
        jwks_path.write_text(jwks, encoding="utf-8")
    except OSError as error:
        raise KeyFileError(f"{error.filename}: cannot write: {error.strerror}") from None
    return KeyFiles(private_path, public_path, jwks_path, kid, algorithm)


def _write_new_secret(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; not overwritten") from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot create: {error.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may only remove bits, but be explicit
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as error:
        path.unlink(missing_ok=True)  # never leave a truncated key behind
        raise KeyFileError(f"{path}: cannot write: {error.strerror}") from None


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read an unencrypted PEM private key (RSA, EC or Ed25519) for signing.

    Every failure is one line naming the file; a public key gets a pointed hint because
    ``public.pem`` sits right next to ``private.pem`` and is the likely mix-up.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read key: {error.strerror}") from None
    if b"-----BEGIN PUBLIC KEY-----" in data or b"-----BEGIN RSA PUBLIC KEY-----" in data:
        raise KeyFileError(
            f"{path}: this is a public key; --key needs the private key (private.pem)"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(key, PrivateKey):
        raise KeyFileError(f"{path}: unsupported key type; use an RSA, EC or Ed25519 key")
    return key
