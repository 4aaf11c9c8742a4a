"""The customer context: who is calling, what they may do, and where they are routed.

Built once per verified token (then cached with it), read by every later stage: limits read
``tier`` and ``quotas``, permissions read ``permissions`` and ``features``, routing reads
``pool``, the upstream writer appends ``headers`` (the X-Customer-* block) as it is.

Every value that ends up in a header is checked against a narrow pattern here, so a signed
but hostile claim (a CR/LF, a comma in a permission) is a 401, never a header injection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from fastgw.auth.errors import TokenError
from fastgw.limits import CUSTOMER_ID
from fastgw.ratelimit.decision import check_overrides

if TYPE_CHECKING:
    from fastgw.config.gateway import ClaimNamesConfig
    from fastgw.ratelimit.policy import CustomerLimits

_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
# Permissions and feature names: a little wider than names (``vm:create``, ``admin/*``), never
# a comma (the X-Customer-Permissions separator), space or anything outside printable ASCII.
_PERMISSION: Final = r"[A-Za-z0-9_.:*/\-]{1,128}"
# One match checks a whole list joined by commas (one regex call instead of one per item).
_PERMISSION_LIST: Final = re.compile(rf"{_PERMISSION}(?:,{_PERMISSION})*\Z")
MAX_LIST_ITEMS: Final = 256
# What development tokens say upstream: tier ``dev`` (reserved: no configured tier may take the
# name) and permission ``*`` (no JWT may claim it), so a backend can always tell them apart.
DEV_TIER: Final = "dev"
EVERY_PERMISSION: Final = b"*"
MAX_QUOTA_ITEMS: Final = 64


class CustomerContext:
    """One customer as one token describes it. Immutable by convention (shared by cache hits).

    ``permissions`` and ``features`` are None for "every one" (development tokens), else the
    sets the token grants; ``headers`` is the pre-encoded block sent upstream.
    ``jti`` and ``iat`` are kept for revocation, ``valid_until`` (epoch seconds) for the cache.
    """

    __slots__ = (
        "customer_id",
        "features",
        "headers",
        "iat",
        "jti",
        "permissions",
        "pool",
        "quotas",
        "rate_limits",
        "tier",
        "valid_until",
    )

    def __init__(
        self,
        customer_id: bytes,
        tier: bytes,
        permissions: frozenset[bytes] | None,
        features: frozenset[bytes] | None = frozenset(),
        *,
        pool: bytes | None = None,
        quotas: Mapping[str, float] | None = None,
        jti: str | None = None,
        iat: int | None = None,
        valid_until: float = float("inf"),
        permission_list: tuple[bytes, ...] = (),
    ) -> None:
        self.customer_id = customer_id
        self.tier = tier
        self.permissions = permissions
        self.features = features
        self.pool = pool
        self.quotas = quotas
        self.jti = jti
        self.iat = iat
        self.valid_until = valid_until
        # This customer's resolved limit numbers, filled by the rate-limit stage on first use
        # (fastgw.ratelimit.policy.LimitPolicy.customer_limits): the one mutable slot.
        self.rate_limits: CustomerLimits | None = None
        listed = EVERY_PERMISSION if permissions is None else b",".join(permission_list)
        self.headers = b"".join(
            (
                b"X-Customer-ID: ",
                customer_id,
                b"\r\nX-Customer-Tier: ",
                tier,
                b"\r\nX-Customer-Permissions: ",
                listed,
                b"\r\n",
            )
        )


def context_from_claims(
    claims: Mapping[str, Any],
    names: ClaimNamesConfig,
    tiers: frozenset[str],
    default_tier: str,
    valid_until: float,
) -> CustomerContext:
    """The context a verified token's claims describe; TokenError when a claim is unusable.

    A missing or unknown tier becomes ``default_tier`` (ARCHITECTURE A2); a tier of the wrong
    type or shape is an error, because it can only come from a broken issuer.
    """
    customer = claims.get(names.customer_id)
    if isinstance(customer, int) and not isinstance(customer, bool) and customer >= 0:
        customer = str(customer)  # numeric ids are common in identity providers
    if not isinstance(customer, str) or CUSTOMER_ID.match(customer) is None:
        raise TokenError("customer id claim is not a valid customer id")
    tier = claims.get(names.tier)
    if tier is not None and (type(tier) is not str or _NAME.match(tier) is None):
        raise TokenError("tier claim is not a name")
    if tier not in tiers:
        tier = default_tier
    permission_list = _names(claims.get(names.permissions), "permissions claim")
    features = _feature_names(claims.get(names.features))
    pool = claims.get(names.pool)
    if pool is not None and (not isinstance(pool, str) or _NAME.match(pool) is None):
        raise TokenError("pool claim is not a name")
    jti = claims.get("jti")
    iat = claims.get("iat")
    return CustomerContext(
        customer.encode("ascii"),
        tier.encode("ascii"),
        frozenset(permission_list),
        features,
        pool=None if pool is None else pool.encode("ascii"),
        quotas=_quotas(claims.get(names.quotas)),
        jti=jti if isinstance(jti, str) else None,
        iat=iat if isinstance(iat, int) else None,
        valid_until=valid_until,
        permission_list=permission_list,
    )


def _names(value: object, what: str) -> tuple[bytes, ...]:
    """A list of permission-like names, or one string of them separated by spaces (the OAuth
    ``scope`` form); duplicates dropped, order kept."""
    if value is None:
        return ()
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_LIST_ITEMS:
        raise TokenError(f"{what} is not a list of names")
    if not items:
        return ()
    try:
        joined = ",".join(items)  # TypeError for an item that is not a string
    except TypeError:
        raise TokenError(f"{what} holds an invalid name") from None
    # One comma per join, or an item held one ("a,b" would read as two permissions upstream).
    if joined.count(",") != len(items) - 1 or _PERMISSION_LIST.match(joined) is None:
        raise TokenError(f"{what} holds an invalid name")
    if "*" in items:  # the development tokens' "every permission": never from a JWT
        raise TokenError(f"{what} holds the reserved name '*'")
    return tuple(dict.fromkeys(joined.encode("ascii").split(b",")))


def _feature_names(value: object) -> frozenset[bytes]:
    """Feature flags: a list of names, or an object mapping names to true/false."""
    if isinstance(value, dict):
        if len(value) > MAX_LIST_ITEMS or any(type(flag) is not bool for flag in value.values()):
            raise TokenError("features claim is not a map of flags")
        value = [name for name, flag in value.items() if flag]
    return frozenset(_names(value, "features claim"))


def _quotas(value: object) -> Mapping[str, float] | None:
    """Per-customer quota overrides (read by the rate-limit stage): names to numbers."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_QUOTA_ITEMS:
        raise TokenError("quotas claim is not a map")
    for name, amount in value.items():
        if (
            _NAME.match(name) is None
            or isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not 0 <= amount < 2**53
        ):
            raise TokenError("quotas claim holds an invalid entry")
    try:
        check_overrides(value)
    except ValueError as exc:
        raise TokenError(f"quotas claim: {exc}") from None
    return value


def development_context(customer_id: bytes) -> CustomerContext:
    """A ``dev_customer_<id>`` token's context: every permission, the dev tier (no limits)."""
    return CustomerContext(customer_id, DEV_TIER.encode("ascii"), None, None)
