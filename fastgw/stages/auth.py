"""Authentication: the bearer token becomes a customer context.

This first version knows development tokens only (``Bearer dev_customer_<id>`` when
``gateway.authentication.development.enabled``): customer ``<id>``, every permission, no
limits. Any other token is refused with 401; JWT verification plugs in here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from fastgw._speedups import extract_bearer
from fastgw.limits import CUSTOMER_ID_PATTERN
from fastgw.pipeline import CONTINUE, RESPOND

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.replies import ReplyTable

MAX_TOKEN_BYTES: Final = 8 * 1024
_CUSTOMER_ID: Final = re.compile(CUSTOMER_ID_PATTERN.encode("ascii"))
DEV_TIER: Final = b"dev"


class Authenticate:
    __slots__ = ("_dev_prefix", "_replies")

    def __init__(self, dev_prefix: bytes | None, replies: ReplyTable) -> None:
        self._dev_prefix = dev_prefix
        self._replies = replies

    # HOT PATH
    def on_request(self, ex: Exchange) -> int:
        head = ex.head
        assert head is not None
        token = (
            None
            if head.authorization is None
            else extract_bearer(head.authorization, MAX_TOKEN_BYTES)
        )
        prefix = self._dev_prefix
        if token is not None and prefix is not None and token.startswith(prefix):
            customer = token[len(prefix) :]
            if _CUSTOMER_ID.match(customer) is not None:
                ex.customer_id = customer
                ex.tier = DEV_TIER
                ex.permissions = None  # every permission
                ex.customer_headers = b"".join(
                    (
                        b"X-Customer-ID: ",
                        customer,
                        b"\r\nX-Customer-Tier: dev\r\nX-Customer-Permissions: *\r\n",
                    )
                )
                return CONTINUE
        ex.reply = self._replies.unauthorized
        return RESPOND
