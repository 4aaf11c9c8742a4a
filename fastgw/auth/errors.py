"""The refusal every authentication failure becomes."""

from __future__ import annotations

from typing import Final

INVALID: Final = "invalid"
EXPIRED: Final = "expired"


class TokenError(Exception):
    """A token that does not authenticate: always a 401, never a 5xx.

    ``reason`` is a short constant text (for logs; never echoed to the client and never built
    from token bytes); ``result`` is the ``fastgw_auth_total`` label it counts under:
    ``invalid`` or ``expired``.
    """

    __slots__ = ("reason", "result")

    def __init__(self, reason: str, result: str = INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result
