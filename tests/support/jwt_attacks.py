"""A catalogue of hostile and broken JWTs, each one a 401 for the gateway.

Where the entries come from: RFC 8725 (JWT Best Current Practices), RFC 7515/7519 (JWS, JWT),
the pyjwt documentation and its changelog, and published CVEs. Each entry is a function of the
legitimate key material (``Material``: the issuer's RSA-2048 key pair and an attacker's own
keys) that returns the token bytes; its docstring says where the attack comes from.

Each entry also records what ``jwt.decode`` (pyjwt) does with the token when called with the
equivalent options (``pyjwt_decode``: the public key, ``algorithms=["RS256"]``, the same leeway,
issuer and audience, ``require=["exp", <customer id claim>]``): ``"reject"`` or ``"accept"``.
Where pyjwt accepts, ``stricter`` says why the gateway refuses anyway, so the catalogue
documents exactly where we are stricter than pyjwt; the tests check that pyjwt really behaves
as recorded (at ``Material.now``, see ``frozen_pyjwt_clock``) and that our verifier refuses
every entry.

``layer`` says which part of the gateway refuses the token: ``"verifier"`` (TokenVerifier) or
``"reader"`` (the token source, which bounds the size before any decoding).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from unittest import mock

import jwt
import jwt.api_jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from fastgw.keys import default_kid, public_jwk

ISSUER: Final = "https://issuer.fastgw.test"
AUDIENCE: Final = "fastgw-api"
LEEWAY_S: Final = 30
MAX_TOKEN_BYTES: Final = 16 * 1024  # the gateway under test is configured with this
CUSTOMER: Final = "cust_42"
TIERS: Final = frozenset({"free", "pro", "enterprise"})
DEFAULT_TIER: Final = "free"
DROP: Final = object()  # a claim or header member to leave out

Outcome = Literal["accept", "reject"]

# --------------------------------------------------------------------------- key material


def b64u(data: bytes) -> bytes:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def sign(key: object, alg: str, data: bytes) -> bytes:
    """A JWS signature (RFC 7518 §3) of ``data`` by ``key`` (a private key or HMAC bytes)."""
    bits = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
    if isinstance(key, bytes):
        return hmac.digest(key, data, f"sha{alg[2:]}")
    if isinstance(key, rsa.RSAPrivateKey):
        digest = bits[alg[2:]]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(digest), digest.digest_size)
            if alg.startswith("PS")
            else padding.PKCS1v15()
        )
        return key.sign(data, pad, digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(bits[alg[2:]]())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise TypeError(f"cannot sign with {type(key).__name__}")


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    start = _dt.datetime(2020, 1, 1, tzinfo=_dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Material:
    """The issuer's key pair (the gateway trusts its public half) and an attacker's keys."""

    key: rsa.RSAPrivateKey
    attacker: rsa.RSAPrivateKey
    attacker_ec: ec.EllipticCurvePrivateKey
    now: int
    kid: str = field(init=False)
    public_pem: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", default_kid(self.key))
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "public_pem", pem)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.key.public_key()

    def claims(self, **changes: object) -> dict[str, Any]:
        """The claims of a legitimate token, with ``changes`` (``DROP`` removes one)."""
        claims: dict[str, Any] = {
            "customer_id": CUSTOMER,
            "tier": "pro",
            "permissions": ["vm:create", "vm:read"],
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": self.now - 10,
            "exp": self.now + 3600,
            "jti": "jti-0001",
        }
        return _changed(claims, changes)

    def header(self, **changes: object) -> dict[str, Any]:
        return _changed({"alg": "RS256", "typ": "JWT", "kid": self.kid}, changes)

    def compact(
        self, header: bytes, payload: bytes, *, key: object = None, alg: str = "RS256"
    ) -> bytes:
        """``header`` and ``payload`` (raw JSON bytes) encoded, joined and signed."""
        signing_input = b64u(header) + b"." + b64u(payload)
        return self.signed(signing_input, key=key, alg=alg)

    def signed(self, signing_input: bytes, *, key: object = None, alg: str = "RS256") -> bytes:
        signature = sign(self.key if key is None else key, alg, signing_input)
        return signing_input + b"." + b64u(signature)

    def token(
        self,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        *,
        key: object = None,
        alg: str = "RS256",
    ) -> bytes:
        head = self.header() if header is None else header
        body = self.claims() if claims is None else claims
        return self.compact(compact_json(head), compact_json(body), key=key, alg=alg)

    def valid(self, **claim_changes: object) -> bytes:
        """A legitimate token (with ``claim_changes``), signed by the issuer."""
        return self.token(claims=self.claims(**claim_changes))

    def with_claims_json(self, payload: str) -> bytes:
        """A token signed by the issuer whose payload is exactly ``payload`` (raw JSON)."""
        return self.compact(compact_json(self.header()), payload.encode("utf-8"))


def _changed(base: dict[str, Any], changes: dict[str, object]) -> dict[str, Any]:
    out = dict(base)
    for name, value in changes.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def make_material(now: int) -> Material:
    """Fresh keys (RSA 2048 for the issuer and the attacker, P-256 for the attacker)."""
    return Material(
        key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        attacker=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        attacker_ec=ec.generate_private_key(ec.SECP256R1()),
        now=now,
    )


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """The JWT settings a gateway is configured with for a part of the catalogue."""

    name: str
    issuer: str | None = ISSUER
    audience: tuple[str, ...] | None = (AUDIENCE,)
    leeway_s: int = LEEWAY_S


PROFILES: Final = {
    "default": Profile("default"),
    "no_audience": Profile("no_audience", audience=None),
}


def pyjwt_decode(token: bytes, material: Material, profile: Profile) -> dict[str, Any]:
    """``jwt.decode`` with the options equivalent to the gateway's configuration."""
    audience = None if profile.audience is None else list(profile.audience)
    claims: dict[str, Any] = jwt.decode(
        token,
        key=material.public_key,
        algorithms=["RS256"],
        leeway=profile.leeway_s,
        issuer=profile.issuer,
        audience=audience,
        options={"require": ["exp", "customer_id"]},
    )
    return claims


def pyjwt_outcome(token: bytes, material: Material, profile: Profile) -> Outcome:
    try:
        pyjwt_decode(token, material, profile)
    except jwt.PyJWTError:
        return "reject"
    return "accept"


@contextmanager
def frozen_pyjwt_clock(now: float) -> Iterator[None]:
    """pyjwt reads ``datetime.now`` for exp/nbf/iat; make it ``now`` (epoch seconds)."""

    class Frozen(_dt.datetime):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _dt.datetime:  # type: ignore[override]
            return _dt.datetime.fromtimestamp(now, tz)

    with mock.patch.object(jwt.api_jwt, "datetime", Frozen):
        yield


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Attack:
    name: str
    build: Callable[[Material], bytes]
    source: str
    pyjwt: Outcome = "reject"
    stricter: str = ""  # why we refuse what pyjwt accepts
    result: str = "invalid"  # the fastgw_auth_total label of our refusal
    profile: str = "default"
    layer: str = "verifier"

    def token(self, material: Material) -> bytes:
        return self.build(material)


CATALOGUE: dict[str, Attack] = {}


def register(name: str, build: Callable[[Material], bytes], source: str, **options: Any) -> None:
    if name in CATALOGUE:
        raise ValueError(f"duplicate catalogue entry {name}")
    attack = Attack(name, build, source, **options)
    if (attack.pyjwt == "accept") != bool(attack.stricter):
        raise ValueError(f"{name}: an entry pyjwt accepts must say why we are stricter")
    CATALOGUE[name] = attack


def attack(**options: Any) -> Callable[[Callable[[Material], bytes]], Callable[..., bytes]]:
    """Register the decorated builder under its name, its docstring as the source."""

    def add(build: Callable[[Material], bytes]) -> Callable[[Material], bytes]:
        register(build.__name__, build, (build.__doc__ or "").strip(), **options)
        return build

    return add


DUPLICATES = "JSON duplicate member names: RFC 7515 §4 / RFC 7519 §4 allow refusing them"
INJECTION = "header-injection defence: claim values copied into X-Customer-* are narrow"
NUMERIC_DATE = "NumericDate must be a JSON integer in 0..2**53 (pyjwt calls int() on it)"

# ---- alg: none, confusion, substitution ------------------------------------------------

for _alg in ("none", "None", "NONE", "nOnE"):

    def _unsigned(m: Material, alg: str = _alg) -> bytes:
        return b64u(compact_json(m.header(alg=alg))) + b"." + b64u(compact_json(m.claims())) + b"."

    register(
        f"alg_{_alg}_unsigned",
        _unsigned,
        "RFC 8725 §2.1, §3.1; CVE-2015-9235: alg none with an empty signature",
    )

    def _none_signed(m: Material, alg: str = _alg) -> bytes:
        head = b64u(compact_json(m.header(alg=alg))) + b"." + b64u(compact_json(m.claims()))
        return m.signed(head)

    register(
        f"alg_{_alg}_with_valid_rs256_signature",
        _none_signed,
        "RFC 8725 §3.1: alg none, yet a trailing (valid RS256) signature",
    )


@attack()
def alg_none_with_junk_signature(m: Material) -> bytes:
    """RFC 8725 §2.1: alg none with a non-empty junk signature"""
    head = b64u(compact_json(m.header(alg="none"))) + b"." + b64u(compact_json(m.claims()))
    return head + b"." + b64u(b"x")


@attack()
def alg_missing(m: Material) -> bytes:
    """RFC 7515 §4.1.1: alg is required (signed by the issuer)"""
    return m.token(m.header(alg=DROP))


@attack()
def alg_empty(m: Material) -> bytes:
    """RFC 7515 §4.1.1: an empty alg (signed by the issuer)"""
    return m.token(m.header(alg=""))


@attack()
def alg_null(m: Material) -> bytes:
    """RFC 7515 §4.1.1: alg null (signed by the issuer)"""
    return m.token(m.header(alg=None))


@attack()
def alg_list(m: Material) -> bytes:
    """RFC 7515 §4.1.1: alg is a string, not a list (signed by the issuer)"""
    return m.token(m.header(alg=["RS256"]))


@attack()
def hs256_with_public_pem_as_secret(m: Material) -> bytes:
    """CVE-2022-29217 (pyjwt), CVE-2016-10555: HS256 keyed with the RSA public key PEM"""
    return m.token(m.header(alg="HS256"), key=m.public_pem, alg="HS256")


@attack()
def hs512_with_public_pem_as_secret(m: Material) -> bytes:
    """CVE-2022-29217: HS512 keyed with the public key PEM"""
    return m.token(m.header(alg="HS512"), key=m.public_pem, alg="HS512")


@attack()
def hs256_with_public_der_as_secret(m: Material) -> bytes:
    """CVE-2016-10555 variant: HS256 keyed with the DER SubjectPublicKeyInfo bytes"""
    der = m.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return m.token(m.header(alg="HS256"), key=der, alg="HS256")


@attack()
def hs256_with_public_pem_no_kid(m: Material) -> bytes:
    """CVE-2022-29217: key confusion without a kid"""
    return m.token(m.header(alg="HS256", kid=DROP), key=m.public_pem, alg="HS256")


@attack()
def rs384_signed_by_issuer(m: Material) -> bytes:
    """RFC 8725 §3.1: a key verifies one algorithm; RS384 by the right key is still refused"""
    return m.token(m.header(alg="RS384"), alg="RS384")


@attack()
def ps256_signed_by_issuer(m: Material) -> bytes:
    """RFC 8725 §3.1: PS256 by the right key, when RS256 is configured"""
    return m.token(m.header(alg="PS256"), alg="PS256")


@attack()
def alg_rs384_header_with_rs256_signature(m: Material) -> bytes:
    """RFC 8725 §3.1: header says RS384, signature is RS256 over that header"""
    return m.token(m.header(alg="RS384"), alg="RS256")


@attack()
def alg_ps256_header_with_rs256_signature(m: Material) -> bytes:
    """RFC 8725 §3.1: header says PS256, signature is RS256 over that header"""
    return m.token(m.header(alg="PS256"), alg="RS256")


@attack()
def alg_swapped_signature_kept(m: Material) -> bytes:
    """RFC 8725 §3.1: a valid RS256 token whose header alg is rewritten to RS384"""
    _, payload, signature = m.valid().split(b".")
    return b64u(compact_json(m.header(alg="RS384"))) + b"." + payload + b"." + signature


@attack()
def es256_by_attacker(m: Material) -> bytes:
    """RFC 8725 §3.1: ES256 signed by the attacker's own EC key"""
    return m.token(m.header(alg="ES256"), key=m.attacker_ec, alg="ES256")


@attack()
def rs256_by_attacker(m: Material) -> bytes:
    """RFC 7515 §5.2: a well-formed token signed by someone else's key"""
    return m.token(key=m.attacker)


# ---- kid tricks -------------------------------------------------------------------------


@attack()
def kid_unknown_attacker_signed(m: Material) -> bytes:
    """RFC 8725 §3.10: kid naming no key of ours, signed by the attacker"""
    return m.token(m.header(kid="no-such-key"), key=m.attacker)


@attack()
def kid_path_traversal_hs256_empty_key(m: Material) -> bytes:
    """RFC 8725 §2.9, §3.10: kid ../../dev/null, HS256 with an empty secret (PortSwigger)"""
    header = m.header(alg="HS256", kid="../../../../../../dev/null")
    return m.token(header, key=b"", alg="HS256")


@attack()
def kid_path_traversal_attacker_rs256(m: Material) -> bytes:
    """RFC 8725 §3.10: kid path traversal, RS256 by the attacker"""
    return m.token(m.header(kid="../../dev/null"), key=m.attacker)


@attack()
def kid_sql_injection(m: Material) -> bytes:
    """RFC 8725 §2.9, §3.10: kid SQL injection selecting a known secret"""
    header = m.header(alg="HS256", kid="x' UNION SELECT 'secret' -- ")
    return m.token(header, key=b"secret", alg="HS256")


@attack()
def kid_very_long(m: Material) -> bytes:
    """RFC 8725 §3.10: a 4000-character kid (lookup and log amplification), attacker-signed"""
    return m.token(m.header(kid="k" * 4000), key=m.attacker)


@attack()
def kid_with_crlf(m: Material) -> bytes:
    """RFC 8725 §3.10: kid carrying CR/LF (log injection), attacker-signed"""
    return m.token(m.header(kid="a\r\nlevel=admin"), key=m.attacker)


for _kid_name, _kid in (("int", 7), ("list", ["k"]), ("object", {"k": 1}), ("bool", True)):

    def _odd_kid(m: Material, kid: object = _kid) -> bytes:
        return m.token(m.header(kid=kid))

    register(
        f"kid_{_kid_name}",
        _odd_kid,
        "RFC 7515 §4.1.4: kid is a string (signed by the issuer)",
    )


@attack()
def kid_null(m: Material) -> bytes:
    """RFC 7515 §4.1.4: kid null is not a string; pyjwt refuses it (signed by the issuer)"""
    return m.token(m.header(kid=None))


# ---- keys the token brings along ------------------------------------------------------


@attack()
def jwk_header_attacker_key(m: Material) -> bytes:
    """CVE-2018-0114: embedded jwk of the attacker's key, signed with it"""
    header = m.header(jwk=public_jwk(m.attacker.public_key()), kid=default_kid(m.attacker))
    return m.token(header, key=m.attacker)


@attack()
def jwk_header_attacker_hmac(m: Material) -> bytes:
    """CVE-2018-0114 variant: embedded oct jwk, HS256 with that secret"""
    secret = b"attacker-secret-attacker-secret!"
    header = m.header(alg="HS256", jwk={"kty": "oct", "k": b64u(secret).decode()})
    return m.token(header, key=secret, alg="HS256")


@attack()
def jku_header_attacker(m: Material) -> bytes:
    """RFC 8725 §2.9, §3.10: jku pointing at the attacker's JWKS (SSRF, key injection)"""
    header = m.header(jku="https://attacker.example/jwks.json", kid=default_kid(m.attacker))
    return m.token(header, key=m.attacker)


@attack()
def x5u_header_attacker(m: Material) -> bytes:
    """RFC 8725 §3.10: x5u pointing at the attacker's certificate"""
    header = m.header(x5u="https://attacker.example/cert.pem", kid=DROP)
    return m.token(header, key=m.attacker)


@attack()
def x5c_header_attacker(m: Material) -> bytes:
    """RFC 7515 §4.1.6: x5c carrying the attacker's self-signed certificate"""
    cert = base64.b64encode(_self_signed(m.attacker)).decode()
    return m.token(m.header(x5c=[cert], kid=DROP), key=m.attacker)


# ---- crit and b64 ---------------------------------------------------------------------


@attack()
def crit_unknown_extension(m: Material) -> bytes:
    """RFC 7515 §4.1.11: crit lists an extension we do not understand (issuer-signed)"""
    return m.token(m.header(crit=["urn:example:must-check"], **{"urn:example:must-check": 1}))


@attack()
def crit_lists_b64_only(m: Material) -> bytes:
    """RFC 7515 §4.1.11: crit ["b64"] without the b64 member it names (issuer-signed)"""
    return m.token(m.header(crit=["b64"]))


@attack()
def b64_false_detached(m: Material) -> bytes:
    """RFC 7797 §3, §6: unencoded detached payload, empty payload segment"""
    header = b64u(compact_json(m.header(b64=False, crit=["b64"])))
    signature = sign(m.key, "RS256", header + b"." + compact_json(m.claims()))
    return header + b".." + b64u(signature)


@attack()
def b64_false_without_crit(m: Material) -> bytes:
    """RFC 7797 §6: b64 false must be listed in crit (issuer-signed)"""
    return m.token(m.header(b64=False))


@attack(pyjwt="accept", stricter="the b64 member (RFC 7797) is refused whatever its value")
def b64_true(m: Material) -> bytes:
    """RFC 7797 §3: b64 true, the default spelled out (issuer-signed)"""
    return m.token(m.header(b64=True))


# ---- time claims ------------------------------------------------------------------------


@attack(result="expired")
def expired_long_ago(m: Material) -> bytes:
    """RFC 7519 §4.1.4; pyjwt docs "Expiration Time Claim": exp a day ago"""
    return m.valid(exp=m.now - 86400)


@attack(result="expired")
def expired_beyond_leeway(m: Material) -> bytes:
    """pyjwt docs "leeway": exp 5 s further back than the leeway allows"""
    return m.valid(exp=m.now - LEEWAY_S - 5)


@attack(result="expired")
def expired_at_leeway_edge(m: Material) -> bytes:
    """pyjwt: expired when exp <= now - leeway (the edge itself is expired)"""
    return m.valid(exp=m.now - LEEWAY_S)


@attack(result="expired")
def exp_zero(m: Material) -> bytes:
    """RFC 7519 §2 NumericDate: 1970-01-01"""
    return m.valid(exp=0)


@attack()
def nbf_in_future(m: Material) -> bytes:
    """RFC 7519 §4.1.5; pyjwt docs "Not Before Time Claim": nbf beyond leeway"""
    return m.valid(nbf=m.now + LEEWAY_S + 600)


@attack()
def iat_in_future(m: Material) -> bytes:
    """RFC 7519 §4.1.6; pyjwt 2.x: iat in the future is ImmatureSignatureError"""
    return m.valid(iat=m.now + LEEWAY_S + 600)


@attack()
def exp_missing(m: Material) -> bytes:
    """ARCHITECTURE A2, pyjwt options require: exp is required"""
    return m.valid(exp=DROP)


for _claim in ("exp", "nbf", "iat", "sub", "jti"):

    def _null_claim(m: Material, claim: str = _claim) -> bytes:
        return m.valid(**{claim: None})

    register(
        f"{_claim}_null",
        _null_claim,
        f"RFC 7519 §4.1: {_claim} null; pyjwt treats a present null as invalid or missing",
    )

_BAD_DATES: dict[str, tuple[str, Outcome, str]] = {
    # name: (raw JSON of exp, pyjwt outcome, why stricter)
    "exp_string_numeric": ('"9999999999"', "accept", NUMERIC_DATE),
    "exp_string_words": ('"tomorrow"', "reject", ""),
    "exp_float": ("{now}.5", "accept", NUMERIC_DATE),
    "exp_bool": ("true", "reject", ""),
    "exp_list": ("[{now}]", "reject", ""),
    "exp_object": ('{{"t":{now}}}', "reject", ""),
    "exp_huge_float": ("1e30", "accept", NUMERIC_DATE + "; 1e30 is a forged 'never'"),
    "exp_2_pow_64": (str(2**64), "accept", NUMERIC_DATE + "; 2**64 is a forged 'never'"),
    "exp_2_pow_53": (str(2**53), "accept", NUMERIC_DATE + "; the bound itself is refused"),
    "exp_negative": ("-1", "reject", ""),
    "exp_nan": ("NaN", "reject", ""),
    "exp_infinity": ("Infinity", "reject", ""),
    "exp_overflow_float": ("1e400", "reject", ""),
}

for _name, (_raw, _outcome, _why) in _BAD_DATES.items():

    def _bad_exp(m: Material, raw: str = _raw) -> bytes:
        base = compact_json(m.claims(exp=DROP)).decode()
        return m.with_claims_json(base[:-1] + ',"exp":' + raw.format(now=m.now + 3600) + "}")

    register(
        _name, _bad_exp, "RFC 7519 §2 NumericDate, §4.1.4: exp " + _raw, pyjwt=_outcome,
        stricter=_why,
    )  # fmt: skip


@attack(pyjwt="accept", stricter=NUMERIC_DATE)
def iat_float(m: Material) -> bytes:
    """RFC 7519 §4.1.6: iat a fraction (in the past)"""
    return m.with_claims_json(compact_json(m.claims(iat=DROP)).decode()[:-1] + ',"iat":1.5}')


@attack(pyjwt="accept", stricter=NUMERIC_DATE)
def nbf_string(m: Material) -> bytes:
    """RFC 7519 §4.1.5: nbf as a numeric string (in the past)"""
    return m.valid(nbf=str(m.now - 100))


@attack()
def iat_string_future(m: Material) -> bytes:
    """RFC 7519 §4.1.6: iat as a string, in the future"""
    return m.valid(iat=str(m.now + 86400))


# ---- who and for whom -----------------------------------------------------------------


@attack()
def customer_id_missing(m: Material) -> bytes:
    """ARCHITECTURE A2: the customer id claim is always required"""
    return m.valid(customer_id=DROP)


@attack()
def customer_id_null(m: Material) -> bytes:
    """ARCHITECTURE A2; pyjwt require: a null claim counts as missing"""
    return m.valid(customer_id=None)


@attack(pyjwt="accept", stricter="a customer id is 1-128 of [A-Za-z0-9_.-]")
def customer_id_empty(m: Material) -> bytes:
    """ARCHITECTURE A2: an empty customer id"""
    return m.valid(customer_id="")


@attack()
def iss_wrong(m: Material) -> bytes:
    """RFC 8725 §3.8, RFC 7519 §4.1.1: another issuer"""
    return m.valid(iss="https://evil.example")


@attack()
def iss_missing(m: Material) -> bytes:
    """RFC 8725 §3.8: no iss when one is configured"""
    return m.valid(iss=DROP)


@attack()
def iss_prefix(m: Material) -> bytes:
    """RFC 8725 §3.8: our issuer with a suffix (prefix-matching bug)"""
    return m.valid(iss=ISSUER + ".evil.example")


@attack()
def iss_list(m: Material) -> bytes:
    """RFC 7519 §4.1.1: iss is a StringOrURI, not a list"""
    return m.valid(iss=[ISSUER])


@attack()
def aud_wrong(m: Material) -> bytes:
    """RFC 8725 §3.9, RFC 7519 §4.1.3: a token for another audience"""
    return m.valid(aud="other-api")


@attack()
def aud_missing(m: Material) -> bytes:
    """RFC 8725 §3.9: no aud when one is configured"""
    return m.valid(aud=DROP)


@attack()
def aud_list_without_ours(m: Material) -> bytes:
    """RFC 7519 §4.1.3: a list of other audiences"""
    return m.valid(aud=["a-api", "b-api"])


@attack()
def aud_list_with_non_string(m: Material) -> bytes:
    """RFC 7519 §4.1.3: aud list holding a number"""
    return m.valid(aud=[AUDIENCE, 1])


@attack()
def aud_empty_list(m: Material) -> bytes:
    """RFC 7519 §4.1.3: an empty audience list"""
    return m.valid(aud=[])


@attack(profile="no_audience")
def aud_when_none_configured(m: Material) -> bytes:
    """RFC 7519 §4.1.3, pyjwt docs: aud present but the application expects none"""
    return m.valid(aud="other-api")


@attack()
def sub_not_string(m: Material) -> bytes:
    """RFC 7519 §4.1.2; pyjwt 2.10 InvalidSubjectError: sub a number"""
    return m.valid(sub=123)


@attack()
def jti_not_string(m: Material) -> bytes:
    """RFC 7519 §4.1.7; pyjwt 2.10 InvalidJTIError: jti a number"""
    return m.valid(jti=123)


# ---- signature ----------------------------------------------------------------------------


@attack()
def payload_tampered_customer(m: Material) -> bytes:
    """RFC 7515 §5.2: customer id changed, signature kept"""
    header, _, signature = m.valid().split(b".")
    return header + b"." + b64u(compact_json(m.claims(customer_id="victim"))) + b"." + signature


@attack()
def payload_tampered_exp(m: Material) -> bytes:
    """RFC 7515 §5.2: exp extended, signature kept"""
    header, _, signature = m.valid().split(b".")
    claims = m.claims(exp=m.now + 10**6)
    return header + b"." + b64u(compact_json(claims)) + b"." + signature


@attack()
def header_tampered(m: Material) -> bytes:
    """RFC 7515 §5.2: a header member added, signature kept"""
    _, payload, signature = m.valid().split(b".")
    return b64u(compact_json(m.header(typ="at+jwt"))) + b"." + payload + b"." + signature


@attack()
def signature_stripped(m: Material) -> bytes:
    """RFC 8725 §3.1: header.payload. (empty signature, alg RS256)"""
    return m.valid().rsplit(b".", 1)[0] + b"."


@attack()
def signature_from_other_token(m: Material) -> bytes:
    """RFC 7515 §5.2: another customer's valid signature spliced on"""
    signature = m.valid(customer_id="other").rsplit(b".", 1)[1]
    return m.valid().rsplit(b".", 1)[0] + b"." + signature


@attack()
def signature_bit_flipped(m: Material) -> bytes:
    """RFC 8725 §3.3: one bit of the signature flipped"""
    head, signature = m.valid().rsplit(b".", 1)
    raw = bytearray(base64.urlsafe_b64decode(signature + b"=="))
    raw[100] ^= 0x01
    return head + b"." + b64u(bytes(raw))


@attack()
def signature_truncated(m: Material) -> bytes:
    """RFC 8017 §8.2.2: a signature one byte short"""
    head, signature = m.valid().rsplit(b".", 1)
    return head + b"." + b64u(base64.urlsafe_b64decode(signature + b"==")[:-1])


@attack()
def signature_zero(m: Material) -> bytes:
    """RFC 8725 §3.3: an all-zero signature of the right length"""
    return m.valid().rsplit(b".", 1)[0] + b"." + b64u(bytes(256))


def _noncanonical(segment: bytes) -> bytes:
    """``segment`` with the unused low bits of its last character set (RFC 4648 §3.5)."""
    if len(segment) % 4 not in (2, 3):
        raise ValueError("segment has no unused bits")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(segment[-1:])
    return segment[:-1] + alphabet[last ^ 1 : (last ^ 1) + 1]


@attack()
def signature_noncanonical_base64(m: Material) -> bytes:
    """RFC 4648 §3.5, pyjwt GHSA-hxm8-2xgr-2p9m: signature's last char with unused bits set"""
    head, signature = m.valid().rsplit(b".", 1)
    return head + b"." + _noncanonical(signature)


@attack()
def payload_noncanonical_base64(m: Material) -> bytes:
    """RFC 4648 §3.5: payload's last char with unused bits set, signed over as sent"""
    claims = m.claims()
    while len(b64u(compact_json(claims))) % 4 not in (2, 3):
        claims["pad"] = claims.get("pad", "") + "x"
    header = b64u(compact_json(m.header()))
    return m.signed(header + b"." + _noncanonical(b64u(compact_json(claims))))


# ---- base64url ----------------------------------------------------------------------------


def _padded(segment: bytes) -> bytes:
    return segment + b"=" * (-len(segment) % 4)


def _needs_padding(claims: dict[str, Any]) -> dict[str, Any]:
    while len(compact_json(claims)) % 3 == 0:
        claims["pad"] = claims.get("pad", "") + "x"
    return claims


@attack(pyjwt="accept", stricter="RFC 7515 §2: base64url without padding")
def b64_padded_payload(m: Material) -> bytes:
    """RFC 7515 §2; pyjwt accepts padding since AWS ALB tokens carry it"""
    header = b64u(compact_json(m.header()))
    payload = _padded(b64u(compact_json(_needs_padding(m.claims()))))
    return m.signed(header + b"." + payload)


@attack(pyjwt="accept", stricter="RFC 7515 §2: base64url without padding")
def b64_padded_signature(m: Material) -> bytes:
    """RFC 7515 §2: signature segment padded with '=' (a 256-byte signature needs two)"""
    head, signature = m.valid().rsplit(b".", 1)
    return head + b"." + _padded(signature)


@attack()
def b64_standard_alphabet_header(m: Material) -> bytes:
    """RFC 7515 §2, RFC 4648 §4 vs §5: '+' and '/' instead of '-' and '_'"""
    header = b64u(compact_json(m.header(note="???~~~>>>")))
    assert b"-" in header or b"_" in header
    standard = header.translate(bytes.maketrans(b"-_", b"+/"))
    return m.signed(standard + b"." + b64u(compact_json(m.claims())))


@attack()
def b64_standard_alphabet_signature(m: Material) -> bytes:
    """RFC 4648 §4 vs §5: the signature in the standard alphabet"""
    nonce = 0
    while True:
        head, signature = m.valid(jti=f"jti-{nonce}").rsplit(b".", 1)
        if b"-" in signature or b"_" in signature:
            return head + b"." + signature.translate(bytes.maketrans(b"-_", b"+/"))
        nonce += 1


for _where, _junk in (("space", b" "), ("tab", b"\t"), ("tilde", b"~"), ("bang", b"!")):

    def _junk_in_payload(m: Material, junk: bytes = _junk) -> bytes:
        header, payload = b64u(compact_json(m.header())), b64u(compact_json(m.claims()))
        return m.signed(header + b"." + payload[:20] + junk + payload[20:])

    register(
        f"b64_{_where}_in_payload",
        _junk_in_payload,
        f"RFC 7515 §2, RFC 4648 §5: a {_where} inside the payload segment (signed over)",
    )


@attack()
def b64_length_mod_4_is_1(m: Material) -> bytes:
    """RFC 4648 §5: a segment of 4n+1 characters never decodes (signed over)"""
    payload = b64u(compact_json(m.claims()))
    while len(payload) % 4 != 1:
        payload += b"A"
    return m.signed(b64u(compact_json(m.header())) + b"." + payload)


# ---- segments ---------------------------------------------------------------------------


def _segments(m: Material) -> list[bytes]:
    return m.valid().split(b".")


register("one_segment", lambda m: _segments(m)[0], "RFC 7515 §7.1: one segment")
register("two_segments", lambda m: b".".join(_segments(m)[:2]), "RFC 7515 §7.1: two segments")
register(
    "four_segments",
    lambda m: b".".join([*_segments(m), _segments(m)[2]]),
    "RFC 7515 §7.1: four segments",
)
register(
    "five_segments_jwe_shape",
    lambda m: b".".join([*_segments(m), b"AAAA", b"AAAA"]),
    "RFC 7516 §7.1, RFC 8725 §2.8: five segments (JWE compact shape)",
)
register(
    "empty_header_segment",
    lambda m: b"." + b".".join(_segments(m)[1:]),
    "RFC 7515 §7.1: empty header segment",
)
register(
    "empty_payload_signed",
    lambda m: m.signed(b64u(compact_json(m.header())) + b"."),
    "RFC 7515 §7.1: empty payload, validly signed",
)
register("only_dots", lambda m: b"..", "RFC 7515 §7.1: three empty segments")
register("many_dots", lambda m: b"....", "RFC 7515 §7.1: five empty segments")
register("empty_token", lambda m: b"", "RFC 6750 §2.1: nothing at all")


@attack(layer="reader", pyjwt="accept", stricter="max_token_size bounds a token before decoding")
def oversized(m: Material) -> bytes:
    """ARCHITECTURE A2 max_token_size; CWE-400: a validly signed token over the limit"""
    return m.valid(pad="x" * MAX_TOKEN_BYTES)


# ---- JSON ---------------------------------------------------------------------------------


@attack()
def header_nested_arrays_5000(m: Material) -> bytes:
    """CWE-674: 5000 levels of arrays in the header (issuer-signed)"""
    raw = '{"alg":"RS256","typ":"JWT","x":' + "[" * 5000 + "]" * 5000 + "}"
    return m.compact(raw.encode(), compact_json(m.claims()))


@attack()
def header_nested_objects_1500(m: Material) -> bytes:
    """CWE-674: 1500 levels of objects in the header (issuer-signed)"""
    raw = '{"alg":"RS256","x":' + '{"a":' * 1500 + "1" + "}" * 1500 + "}"
    return m.compact(raw.encode(), compact_json(m.claims()))


@attack()
def payload_nested_arrays_5000(m: Material) -> bytes:
    """CWE-674: 5000 levels of arrays in the payload (issuer-signed)"""
    base = compact_json(m.claims()).decode()
    return m.with_claims_json(base[:-1] + ',"x":' + "[" * 5000 + "]" * 5000 + "}")


for _shape, _raw in (("array", '["RS256"]'), ("string", '"RS256"'), ("number", "256"),
                     ("null", "null"), ("empty_object", "{}")):  # fmt: skip

    def _odd_header(m: Material, raw: str = _raw) -> bytes:
        return m.compact(raw.encode(), compact_json(m.claims()))

    register(
        f"header_{_shape}",
        _odd_header,
        f"RFC 7515 §4: the JOSE header is a JSON object, not {_shape} (issuer-signed)",
    )

for _shape, _raw in (("array", "[1]"), ("string", '"claims"'), ("number", "1"),
                     ("null", "null"), ("true", "true")):  # fmt: skip

    def _odd_payload(m: Material, raw: str = _raw) -> bytes:
        return m.with_claims_json(raw)

    register(
        f"payload_{_shape}",
        _odd_payload,
        f"RFC 7519 §7.2: the claims are a JSON object, not {_shape} (issuer-signed)",
    )


@attack()
def header_not_utf8(m: Material) -> bytes:
    """RFC 8725 §3.7, RFC 8259 §8.1: header bytes that are not UTF-8 (issuer-signed)"""
    return m.compact(b'{"alg":"RS256","x":"\xff\xfe"}', compact_json(m.claims()))


@attack()
def payload_not_utf8(m: Material) -> bytes:
    """RFC 8725 §3.7: payload bytes that are not UTF-8 (issuer-signed)"""
    base = compact_json(m.claims())
    return m.compact(compact_json(m.header()), base[:-1] + b',"x":"\xc0\xaf"}')


@attack(pyjwt="accept", stricter="RFC 8725 §3.7: JSON in UTF-8 only (json.loads guesses UTF-16)")
def payload_utf16(m: Material) -> bytes:
    """RFC 8725 §2.6, §3.7: claims encoded as UTF-16-LE (issuer-signed)"""
    return m.compact(compact_json(m.header()), json.dumps(m.claims()).encode("utf-16-le"))


@attack(pyjwt="accept", stricter="RFC 8725 §3.7: JSON in UTF-8 only (json.loads guesses UTF-16)")
def header_utf16(m: Material) -> bytes:
    """RFC 8725 §2.6, §3.7: header encoded as UTF-16-BE (issuer-signed)"""
    return m.compact(json.dumps(m.header()).encode("utf-16-be"), compact_json(m.claims()))


@attack(pyjwt="accept", stricter="RFC 8259 §8.1: no byte order mark")
def payload_utf8_bom(m: Material) -> bytes:
    """RFC 8259 §8.1: claims preceded by a UTF-8 BOM (issuer-signed)"""
    return m.compact(compact_json(m.header()), b"\xef\xbb\xbf" + compact_json(m.claims()))


@attack(pyjwt="accept", stricter="RFC 8259 §6: NaN and Infinity are not JSON")
def payload_nan_member(m: Material) -> bytes:
    """RFC 8259 §6: a NaN in an unrelated claim (issuer-signed)"""
    return m.with_claims_json(compact_json(m.claims()).decode()[:-1] + ',"score":NaN}')


@attack(pyjwt="accept", stricter="RFC 8259 §6: NaN and Infinity are not JSON")
def header_infinity_member(m: Material) -> bytes:
    """RFC 8259 §6: -Infinity in the header (issuer-signed)"""
    raw = compact_json(m.header()).decode()[:-1] + ',"x":-Infinity}'
    return m.compact(raw.encode(), compact_json(m.claims()))


@attack()
def header_trailing_garbage(m: Material) -> bytes:
    """RFC 8259 §2: a JSON text followed by more text (issuer-signed)"""
    return m.compact(compact_json(m.header()) + b" x", compact_json(m.claims()))


# ---- duplicate members ----------------------------------------------------------------------


def _dup_payload(m: Material, name: str, first: object, last: object) -> bytes:
    base = compact_json(m.claims(**{name: DROP})).decode()[1:-1]
    raw = f'{{"{name}":{json.dumps(first)},{base},"{name}":{json.dumps(last)}}}'
    return m.with_claims_json(raw)


@attack()
def dup_exp_valid_then_expired(m: Material) -> bytes:
    """RFC 7519 §4, RFC 8725 §2.6: exp twice, the last (pyjwt's pick) expired"""
    return _dup_payload(m, "exp", m.now + 3600, m.now - 86400)


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_exp_expired_then_valid(m: Material) -> bytes:
    """RFC 7519 §4: exp twice, the first expired (a first-wins parser says expired)"""
    return _dup_payload(m, "exp", m.now - 86400, m.now + 3600)


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_customer_id(m: Material) -> bytes:
    """RFC 7519 §4, RFC 8725 §2.6: customer id twice (parser differential)"""
    return _dup_payload(m, "customer_id", "victim", CUSTOMER)


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_exp_via_escape(m: Material) -> bytes:
    """RFC 8259 §7: "\\u0065xp" is "exp" again, expired first (parser differential)"""
    base = compact_json(m.claims(exp=DROP)).decode()[1:-1]
    return m.with_claims_json(f'{{"\\u0065xp":{m.now - 86400},{base},"exp":{m.now + 3600}}}')


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_alg_none_then_rs256(m: Material) -> bytes:
    """RFC 7515 §4: alg twice, none first (a first-wins reader sees none) (issuer-signed)"""
    raw = '{"alg":"none","alg":"RS256","typ":"JWT"}'
    return m.compact(raw.encode(), compact_json(m.claims()))


@attack()
def dup_alg_rs256_then_hs256(m: Material) -> bytes:
    """RFC 7515 §4: alg twice, HS256 last, HMAC keyed with the public PEM"""
    raw = '{"alg":"RS256","alg":"HS256","typ":"JWT"}'
    return m.compact(raw.encode(), compact_json(m.claims()), key=m.public_pem, alg="HS256")


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_kid(m: Material) -> bytes:
    """RFC 7515 §4: kid twice (issuer-signed)"""
    raw = f'{{"alg":"RS256","kid":"other","kid":"{m.kid}"}}'
    return m.compact(raw.encode(), compact_json(m.claims()))


@attack(pyjwt="accept", stricter=DUPLICATES)
def dup_nested_member(m: Material) -> bytes:
    """RFC 8259 §4: a duplicate inside a nested object (issuer-signed)"""
    base = compact_json(m.claims()).decode()
    return m.with_claims_json(base[:-1] + ',"quotas":{"vms":1,"vms":1000}}')


# ---- signed but hostile claim values --------------------------------------------------------

_HOSTILE: dict[str, tuple[str, object, str]] = {
    "customer_id_crlf": ("customer_id", "a\r\nX-Evil: 1", INJECTION),
    "customer_id_lf": ("customer_id", "a\nX-Evil: 1", INJECTION),
    "customer_id_space": ("customer_id", "a b", INJECTION),
    "customer_id_comma": ("customer_id", "a,b", INJECTION),
    "customer_id_non_ascii": ("customer_id", "müller", INJECTION),
    "customer_id_129_chars": ("customer_id", "c" * 129, "a customer id is at most 128 chars"),
    "customer_id_list": ("customer_id", ["a"], "a customer id is a string or integer"),
    "customer_id_object": ("customer_id", {"id": "a"}, "a customer id is a string or integer"),
    "customer_id_bool": ("customer_id", True, "a customer id is a string or integer"),
    "customer_id_float": ("customer_id", 42.0, "a customer id is a string or integer"),
    "customer_id_negative": ("customer_id", -1, "a numeric customer id is >= 0"),
    "permission_with_comma": ("permissions", ["a,b"], INJECTION),
    "permission_with_crlf": ("permissions", ["vm:create\r\nX-Evil: 1"], INJECTION),
    "permissions_string_with_comma": ("permissions", "vm:create,vm:delete", INJECTION),
    "permissions_object": ("permissions", {"vm:create": True}, "permissions is a list"),
    "permissions_number": ("permissions", 7, "permissions is a list"),
    "permissions_257": ("permissions", [f"p{i}" for i in range(257)], "at most 256 items"),
    "tier_with_space": ("tier", "gold plated", INJECTION),
    "tier_with_crlf": ("tier", "pro\r\nX-Evil: 1", INJECTION),
    "tier_number": ("tier", 3, "a tier is a name"),
    "pool_with_crlf": ("pool", "a\r\nb", INJECTION),
    "pool_list": ("pool", ["a"], "a pool is a name"),
    "features_flag_not_bool": ("features", {"beta": "yes"}, "feature flags are booleans"),
    "quotas_negative": ("quotas", {"vms": -1}, "a quota is a number in 0..2**53"),
    "quotas_string": ("quotas", {"vms": "10"}, "a quota is a number in 0..2**53"),
}

for _name, (_claim, _value, _why) in _HOSTILE.items():

    def _hostile(m: Material, claim: str = _claim, value: object = _value) -> bytes:
        return m.valid(**{claim: value})

    register(
        _name,
        _hostile,
        "CWE-113 / ARCHITECTURE A3: a signed claim that would reach an X-Customer-* header",
        pyjwt="accept",
        stricter=_why,
    )


def entries(profile: str | None = None, layer: str | None = None) -> list[Attack]:
    """Catalogue entries, optionally only those of one profile and/or layer."""
    return [
        a
        for a in CATALOGUE.values()
        if (profile is None or a.profile == profile) and (layer is None or a.layer == layer)
    ]


def stricter_than_pyjwt() -> dict[str, str]:
    """Every entry pyjwt accepts, with the reason we refuse it."""
    return {a.name: a.stricter for a in CATALOGUE.values() if a.pyjwt == "accept"}


def fingerprint(token: bytes) -> str:
    """A short printable id of a token for test ids and messages."""
    return hashlib.sha256(token).hexdigest()[:12]
