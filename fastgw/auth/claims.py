"""The registered-claim checks of RFC 7519 §4.1, as pyjwt applies them, and a little stricter.

Same as ``jwt.decode`` (2.x) with our options: ``exp`` expired when ``exp <= now - leeway``;
``nbf`` and ``iat`` in the future when ``> now + leeway``; ``iss`` equal to the configured
issuer; ``aud`` (a string or a list of strings) sharing a value with the configured audience,
and refused when none is configured but the token names one; ``sub`` and ``jti`` strings when
present; every required claim present.

Stricter: NumericDate claims (``exp``, ``nbf``, ``iat``) must be JSON integers (no strings,
booleans or fractions: pyjwt would call ``int()`` on them) in ``0 .. 2**53`` — a bigger value
is a forged "never expires" rather than a date.
"""

from __future__ import annotations

from typing import Any, Final

from fastgw.auth.errors import EXPIRED, TokenError

MAX_NUMERIC_DATE: Final = 2**53


class ClaimRules:
    """What the configuration asks of every token's claims, decided once per plan."""

    __slots__ = ("audience", "issuer", "leeway_s", "required")

    def __init__(
        self,
        required: tuple[str, ...],
        issuer: str | None = None,
        audience: tuple[str, ...] | None = None,
        leeway_s: float = 0.0,
    ) -> None:
        self.required = required
        self.issuer = issuer
        self.audience = None if audience is None else frozenset(audience)
        self.leeway_s = leeway_s

    def check(self, claims: dict[str, Any], now: float) -> None:
        """TokenError (``result`` ``expired`` for an expired token) unless every rule holds."""
        for name in self.required:
            if claims.get(name) is None:  # pyjwt's "require": a null claim is a missing one
                raise TokenError("required claim missing")
        # A claim present with the value null is present: it must be valid like any other.
        leeway = self.leeway_s
        if "exp" in claims and _numeric_date(claims["exp"]) <= now - leeway:
            raise TokenError("token expired", EXPIRED)
        if "nbf" in claims and _numeric_date(claims["nbf"]) > now + leeway:
            raise TokenError("token not yet valid")
        if "iat" in claims and _numeric_date(claims["iat"]) > now + leeway:
            raise TokenError("token issued in the future")
        for name in ("sub", "jti"):
            if name in claims and type(claims[name]) is not str:
                raise TokenError("sub or jti is not a string")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise TokenError("wrong issuer")
        self._check_audience(claims.get("aud"))

    def _check_audience(self, aud: object) -> None:
        if self.audience is None:
            if aud is not None and aud not in ([], ""):
                raise TokenError("audience given but none expected")
            return
        if type(aud) is str:
            aud = [aud]
        if type(aud) is not list or not aud or any(type(item) is not str for item in aud):
            raise TokenError("audience missing or malformed")
        if self.audience.isdisjoint(aud):
            raise TokenError("wrong audience")


def _numeric_date(value: object) -> int:
    if type(value) is not int or not 0 <= value < MAX_NUMERIC_DATE:
        raise TokenError("date claim is not an integer date")
    return value
