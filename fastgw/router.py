"""Method + path → route, decided from tables built once.

Exact paths are one dict lookup. Prefixes are tried longest first and match on a segment
boundary: ``/api`` matches ``/api`` and ``/api/x`` but not ``/apix`` (a prefix ending in ``/``
matches anything below it). Exact paths win over prefixes. A path that matches but with a
method the route does not allow is treated as no match (404 ``no_route``, contract A3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class Routable(Protocol):
    @property
    def methods(self) -> frozenset[bytes] | None: ...


R = TypeVar("R", bound=Routable)


class Router(Generic[R]):
    __slots__ = ("_exact", "_prefixes")

    def __init__(
        self, exact: Iterable[tuple[bytes, R]], prefixes: Iterable[tuple[bytes, R]]
    ) -> None:
        table: dict[bytes, list[R]] = {}
        for path, route in exact:
            table.setdefault(path, []).append(route)
        self._exact: dict[bytes, tuple[R, ...]] = {k: tuple(v) for k, v in table.items()}
        grouped: dict[bytes, list[R]] = {}
        for prefix, route in prefixes:
            grouped.setdefault(prefix, []).append(route)
        self._prefixes: tuple[tuple[bytes, tuple[R, ...]], ...] = tuple(
            sorted(((p, tuple(r)) for p, r in grouped.items()), key=lambda item: -len(item[0]))
        )

    @staticmethod
    def _pick(routes: tuple[R, ...], method: bytes) -> R | None:
        for route in routes:
            methods = route.methods
            if methods is None or method in methods:
                return route
        return None

    # HOT PATH: one dict lookup for exact routes.
    def match(self, method: bytes, path: bytes) -> R | None:
        routes = self._exact.get(path)
        if routes is not None:
            found = self._pick(routes, method)
            if found is not None:
                return found
        for prefix, routes in self._prefixes:
            if path.startswith(prefix) and (
                len(path) == len(prefix)
                or prefix[-1:] == b"/"
                or path[len(prefix) : len(prefix) + 1] == b"/"
            ):
                found = self._pick(routes, method)
                if found is not None:
                    return found
        return None
