"""Per-route authorization: the customer must hold every permission and feature flag the
route lists (``routes[].permissions``, ``routes[].features``), else 403 ``forbidden``.

Only routes that list something get this stage; it runs after authentication, so
``ex.customer`` is set. ``None`` sets (development tokens) hold everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw.pipeline import CONTINUE, RESPOND

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.replies import ReplyTable
    from fastgw.stages.auth import AuthCounts


class RequireGrants:
    __slots__ = ("_counts", "_features", "_permissions", "_replies")

    def __init__(
        self,
        permissions: frozenset[bytes],
        features: frozenset[bytes],
        replies: ReplyTable,
        counts: AuthCounts,
    ) -> None:
        self._permissions = permissions
        self._features = features
        self._replies = replies
        self._counts = counts

    # HOT PATH
    def on_request(self, ex: Exchange) -> int:
        customer = ex.customer
        assert customer is not None, "the permissions stage runs after authentication"
        granted = customer.permissions
        if granted is None or self._permissions <= granted:
            flags = customer.features
            if flags is None or self._features <= flags:
                return CONTINUE
        self._counts.forbidden += 1
        ex.reply = self._replies.forbidden
        return RESPOND
