"""CORS at the gateway (``gateway.security.cors``): preflights answered here, and the
``Access-Control-Allow-*`` headers added to the answers of actual cross-origin requests.

What it owns
    ``Cors.on_request``, first in every route's chain when CORS is enabled (before
    authentication: a preflight carries no credentials), and ``cors_routes``, which puts it
    there and adds the routes a preflight needs to reach it on method-restricted paths.

Preflight (Fetch: ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
    Always answered by the gateway, never forwarded and never authenticated: ``204`` with no
    body. When the origin, the requested method and every requested header are allowed, the
    answer carries ``Access-Control-Allow-Origin`` (the origin, or ``*`` for a ``*`` policy
    without credentials), ``-Allow-Methods``, ``-Allow-Headers``, ``-Max-Age``, ``-Allow-
    Credentials: true`` when configured. A preflight that fails a check gets the same ``204``
    *without* any ``Access-Control-*`` header: the browser then refuses the actual request,
    which is how the Fetch spec says no (an error status would fail it the same way, but it
    would also read as a server fault in the browser's console and monitoring); many CORS
    middlewares answer so.

Actual request
    An allowed ``Origin`` adds ``Access-Control-Allow-Origin`` (+ ``-Allow-Credentials``) to
    ``ex.response_headers``, so the answer carries it whether it is proxied or made by the
    gateway (401, 403, 429, 502...): a browser needs it to read the error. Any other origin, or
    none, adds no CORS header and the request goes on unchanged.

``Vary: Origin``
    With a list of origins, every answer that passed this stage varies with ``Origin`` (the
    allowed one gets the header, others do not), so each carries ``Vary: Origin``, those
    without CORS headers too, or a shared cache could hand the answer made for one origin to
    another (Fetch, "CORS protocol and HTTP caches"). A ``*`` policy sends the same header to
    everyone and no ``Vary``.

Method-restricted routes
    The router answers a method a route does not allow with 404, so a preflight
    (``OPTIONS``) would never reach a ``methods: [POST]`` route's chain. ``cors_routes`` adds,
    after the real routes of each such path or prefix, one ``OPTIONS``-only route that
    answers preflights and hands any other ``OPTIONS`` request to the route the router would
    have picked without CORS (or answers 404 ``no_route`` as before). Routing of every other
    request is untouched, and costs nothing more.

Reading the request's fields
    The header kernel does not pick out ``Origin`` (it is forwarded as received), so this stage
    finds it in ``head.forward_block`` (``Name: value\\r\\n`` per kept field; values never
    hold CR or LF): one ``lower()`` of the block and a ``find`` or two. Measured on a 600-byte
    browser-like head: about 0.6 us without ``Origin`` and 1.1 us with it, where the kernel's
    own scan of that head takes 2.5 us (same slow dev machine). Only a gateway with CORS on
    pays it: with CORS off the stage is in no chain and nothing is scanned, which a new
    ``RequestHead`` field set by the kernel for every request would not give.

Everything else is encoded when the plan is built: one header block per configured origin for
actual requests and one for preflights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from fastgw.pipeline import CONTINUE, RESPOND
from fastgw.router import Router

if TYPE_CHECKING:
    from fastgw.config.gateway import CorsConfig
    from fastgw.exchange import Exchange
    from fastgw.pipeline import Step
    from fastgw.plan import RoutePlan
    from fastgw.replies import ErrorReply

OPTIONS: Final = b"OPTIONS"
ONLY_OPTIONS: Final = frozenset({OPTIONS})
VARY_ORIGIN: Final = b"Vary: Origin\r\n"
PREFLIGHT_STATUS: Final = 204
# A field sent twice where one is expected: never an allowed origin, method or header list
# (a field value holds no NUL: the kernel refuses CTLs).
AMBIGUOUS: Final = b"\x00"
_OWS: Final = b" \t"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """The origin as a browser serializes it: scheme and host lowercase, no default port."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    port = parts.port
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# Field names as they start a line of a lowercased forward block: at its very start, or after
# the previous field's CRLF.
ORIGIN: Final = (b"origin:", b"\norigin:")
REQUEST_METHOD: Final = (b"access-control-request-method:", b"\naccess-control-request-method:")
REQUEST_HEADERS: Final = (
    b"access-control-request-headers:",
    b"\naccess-control-request-headers:",
)


def field_value(lowered: bytes, block: bytes, name: tuple[bytes, bytes]) -> bytes | None:
    """The value of the field ``name`` (one of the pairs above) in a forward block, sliced from
    ``block``; ``lowered`` is ``block.lower()``. None when the field is absent, ``AMBIGUOUS``
    when it is there twice."""
    first, later = name
    if lowered.startswith(first):
        start = len(first)
    else:
        at = lowered.find(later)
        if at < 0:
            return None
        start = at + len(later)
    end = lowered.find(b"\r\n", start)
    if lowered.find(later, end) >= 0:
        return AMBIGUOUS
    return block[start:end].strip(_OWS)


class Cors:
    """One CORS policy, encoded once per plan; its bound methods are chain steps."""

    __slots__ = (
        "_actual",
        "_any_header",
        "_any_method",
        "_headers",
        "_methods",
        "_no_route",
        "_preflight",
        "_vary",
        "_wildcard_actual",
        "_wildcard_preflight",
    )

    def __init__(self, config: CorsConfig, no_route: ErrorReply) -> None:
        credentials = config.allow_credentials
        origins = [normalize_origin(o) for o in config.allow_origins]
        wildcard = "*" in origins
        if wildcard and credentials:
            # Browsers refuse "*" with credentials; config validation refuses it first.
            raise ValueError("cors: allow_credentials cannot be true with allow_origins '*'")
        self._no_route = no_route
        self._methods = frozenset(m.encode("ascii") for m in config.allow_methods)
        self._headers = frozenset(h.lower().encode("ascii") for h in config.allow_headers)
        # "*" means "any" to browsers only without credentials (Fetch); with them, a name.
        self._any_method = b"*" in self._methods and not credentials
        self._any_header = b"*" in self._headers and not credentials
        common = b"Access-Control-Allow-Credentials: true\r\n" if credentials else b""
        preflight_only = b""
        if config.allow_methods:
            methods = ", ".join(config.allow_methods).encode("ascii")
            preflight_only += b"Access-Control-Allow-Methods: %s\r\n" % methods
        if config.allow_headers:
            headers = ", ".join(config.allow_headers).encode("ascii")
            preflight_only += b"Access-Control-Allow-Headers: %s\r\n" % headers
        preflight_only += b"Access-Control-Max-Age: %d\r\n" % int(config.max_age_s)
        # Header blocks by allowed origin (lowercase, as browsers send it): a bounded set.
        self._actual: dict[bytes, bytes] = {}
        self._preflight: dict[bytes, bytes] = {}
        self._wildcard_actual: bytes | None = None
        self._wildcard_preflight: bytes | None = None
        if wildcard:
            self._vary = b""  # the same answer for every origin
            self._wildcard_actual = b"Access-Control-Allow-Origin: *\r\n" + common
            self._wildcard_preflight = self._wildcard_actual + preflight_only
        else:
            self._vary = VARY_ORIGIN
            for origin in origins:
                key = origin.encode("ascii")
                actual = b"Access-Control-Allow-Origin: %s\r\n%s%s" % (key, VARY_ORIGIN, common)
                self._actual[key] = actual
                self._preflight[key] = actual + preflight_only

    @classmethod
    def from_config(cls, config: CorsConfig, no_route: ErrorReply) -> Cors | None:
        """The policy, or None when CORS is off (no stage in any chain then)."""
        return cls(config, no_route) if config.enabled else None

    # HOT PATH (CORS enabled): one lower() and one or two find()s over the forward block.
    def on_request(self, ex: Exchange) -> int:
        head = ex.head
        assert head is not None
        block = head.forward_block
        lowered = block.lower()
        origin = field_value(lowered, lowered, ORIGIN)
        if origin is None:
            ex.response_headers += self._vary
            return CONTINUE
        if ex.method == OPTIONS:
            method = field_value(lowered, block, REQUEST_METHOD)
            if method is not None:
                return self._answer_preflight(ex, origin, method, lowered)
        headers = self._actual.get(origin)
        if headers is None:
            wildcard = self._wildcard_actual
            headers = self._vary if wildcard is None or origin is AMBIGUOUS else wildcard
        ex.response_headers += headers
        return CONTINUE

    def on_preflight_route(self, ex: Exchange) -> int:
        """First step of the ``OPTIONS``-only routes ``cors_routes`` adds: answer a preflight;
        hand any other request on to the next step (the chain of the route the router would
        have picked without CORS, or ``no_route``)."""
        head = ex.head
        assert head is not None
        block = head.forward_block
        lowered = block.lower()
        origin = field_value(lowered, lowered, ORIGIN)
        if origin is not None:
            method = field_value(lowered, block, REQUEST_METHOD)
            if method is not None:
                return self._answer_preflight(ex, origin, method, lowered)
        return CONTINUE

    def no_route(self, ex: Exchange) -> int:
        ex.reply = self._no_route
        return RESPOND

    def _answer_preflight(self, ex: Exchange, origin: bytes, method: bytes, lowered: bytes) -> int:
        """204, with the CORS headers when origin, method and headers are all allowed."""
        ex.respond_local(PREFLIGHT_STATUS, b"")
        headers = self._preflight.get(origin)
        if headers is None and origin is not AMBIGUOUS:
            headers = self._wildcard_preflight
        if (
            headers is None
            or not (self._any_method or method in self._methods)
            or not self._headers_allowed(field_value(lowered, lowered, REQUEST_HEADERS))
        ):
            headers = self._vary  # refused: no CORS header, the browser stops there
        ex.response_headers += headers
        return RESPOND

    def _headers_allowed(self, requested: bytes | None) -> bool:
        """Every name of an Access-Control-Request-Headers value (lowercased) is allowed."""
        if requested is None:
            return True
        if requested is AMBIGUOUS:
            return False
        if self._any_header:
            return True
        allowed = self._headers
        for item in requested.split(b","):
            name = item.strip(_OWS)
            if name and name not in allowed:
                return False
        return True


def cors_routes(
    cors: Cors,
    exact: list[tuple[bytes, RoutePlan]],
    prefixes: list[tuple[bytes, RoutePlan]],
) -> tuple[list[tuple[bytes, RoutePlan]], list[tuple[bytes, RoutePlan]]]:
    """``exact`` and ``prefixes`` with ``cors.on_request`` first in every chain, plus one
    ``OPTIONS``-only route after the real ones of each path or prefix whose routes all refuse
    ``OPTIONS``, so that preflights reach the gateway there too.

    That route answers preflights; any other ``OPTIONS`` request goes on to the chain of the
    route the router picks without it (a shorter prefix allowing ``OPTIONS``), or to 404
    ``no_route``: exactly what it got before CORS was enabled. Paths below a prefix match the
    same shorter prefixes as the prefix itself, so that route is found once, here.
    """
    step = cors.on_request
    exact = [(path, replace(route, steps=(step, *route.steps))) for path, route in exact]
    prefixes = [(path, replace(route, steps=(step, *route.steps))) for path, route in prefixes]
    below = Router((), prefixes)  # what OPTIONS gets without the added routes, exact aside
    extra: tuple[list[tuple[bytes, RoutePlan]], list[tuple[bytes, RoutePlan]]] = ([], [])
    for table, added in ((exact, extra[0]), (prefixes, extra[1])):
        grouped: dict[bytes, list[RoutePlan]] = {}
        for path, route in table:
            grouped.setdefault(path, []).append(route)
        for path, routes in grouped.items():
            if any(r.methods is None or OPTIONS in r.methods for r in routes):
                continue  # the real route gets the preflight (its chain starts with Cors)
            fallback = below.match(OPTIONS, path)
            steps: tuple[Step, ...]
            if fallback is None:
                steps = (cors.on_preflight_route, cors.no_route)
                endpoint = routes[0].endpoint
            else:
                steps = (cors.on_preflight_route, *fallback.steps)
                endpoint = fallback.endpoint
            added.append(
                (path, replace(routes[0], endpoint=endpoint, methods=ONLY_OPTIONS, steps=steps))
            )
    return exact + extra[0], prefixes + extra[1]
