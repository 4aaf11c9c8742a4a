"""Minting signed JWTs for ``fastgw token`` (contract A1).

A token carries the claims the gateway reads (``gateway.authentication.jwt.claims``, each under
its default name): ``customer_id``, ``tier``, ``permissions``, ``pool``, plus ``iat``/``exp``,
a random ``jti`` and, when given, ``iss``/``aud``. The signing algorithm follows from the key so
that the usual case needs no ``--alg``; an explicit ``--alg`` must fit the key, because pyjwt
would otherwise fail late with a message about key objects rather than about the choice made.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from typing import Final

import jwt

from fastgw.errors import FastgwError
from fastgw.keys import PrivateKey, b64url, default_kid, describe_key, key_algorithms
from fastgw.limits import CUSTOMER_ID

# The lowest tier of the reference design's rate_limits.customer_tiers, and the default of
# rate_limits.default_tier: a token minted without --tier gets the least, not the most.
DEFAULT_TIER: Final = "free"
DEFAULT_TTL: Final = "1h"


class TokenError(FastgwError):
    """A token that cannot be minted as asked; the message is one line."""


def choose_algorithm(key: PrivateKey, requested: str | None = None) -> str:
    """``requested`` if the key can make it, else the key's natural algorithm; refuse a misfit."""
    allowed = key_algorithms(key)
    if not allowed:
        raise TokenError(f"an {describe_key(key)} key has no algorithm the gateway accepts")
    if requested is None:
        return allowed[0]
    if requested not in allowed:
        choices = allowed[0] if len(allowed) == 1 else f"one of {', '.join(allowed)}"
        raise TokenError(
            f"--alg {requested} does not fit an {describe_key(key)} key (use {choices})"
        )
    return requested


def parse_permissions(text: str | None) -> list[str]:
    """``"a,b"`` → ``["a", "b"]``; blanks around names and empty items are dropped."""
    if text is None:
        return []
    return [item.strip() for item in text.split(",") if item.strip()]


def check_customer_id(customer_id: str) -> str:
    """The id unchanged, or one line saying which characters a customer id may use."""
    if CUSTOMER_ID.match(customer_id) is None:
        raise TokenError(
            f"--customer: {customer_id!r} is not a valid customer id "
            "(1-128 characters from A-Z a-z 0-9 _ . -)"
        )
    return customer_id


def mint_token(
    key: PrivateKey,
    *,
    customer_id: str,
    tier: str = DEFAULT_TIER,
    permissions: Sequence[str] = (),
    pool: str | None = None,
    ttl_s: float = 3600.0,
    kid: str | None = None,
    algorithm: str | None = None,
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT (compact form) for one customer.

    ``exp`` is ``iat`` plus the ttl rounded up to a whole second (NumericDate values are
    conventionally integers, and rounding up never makes a token shorter-lived than asked).
    The header's ``kid`` defaults to the key's RFC 7638 thumbprint, the id keygen's JWKS uses.
    """
    check_customer_id(customer_id)
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise TokenError(f"--ttl: expected a duration > 0, got {ttl_s:g}s")
    if not tier:
        raise TokenError("--tier: must not be empty")
    if pool is not None and not pool:
        raise TokenError("--pool: must not be empty")
    if kid is not None and not kid.strip():
        raise TokenError("--kid: must not be empty")
    alg = choose_algorithm(key, algorithm)
    issued_at = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "customer_id": customer_id,
        "tier": tier,
        "permissions": list(permissions),
        "iat": issued_at,
        "exp": issued_at + math.ceil(ttl_s),
        "jti": b64url(secrets.token_bytes(16)),
    }
    if pool is not None:
        claims["pool"] = pool
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    headers = {"kid": kid if kid is not None else default_kid(key)}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)
