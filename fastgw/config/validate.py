"""Rules that relate fields to each other, run once after the generic walk of ``load.py``.

This module owns the problem bookkeeping of a load (``Findings``: problems, which keys the file
gave, where each list item came from) and every check that needs more than one field: files that
must exist when a feature is on, one JWT key source, HS* secrets, ``gateway.routing`` agreeing
with ``routing``, unique instances and routes, endpoint names and the default tier.

Each check first asks ``Findings.tainted`` whether a field it reads already failed: a failed field
holds its default, and a complaint about that default would only be noise. List items that failed
are dropped by the walk, so checks name items by ``Findings.paths_of`` (their place in the file),
never by their position in the tuple, and a check that needs every item asks
``Findings.partial`` first.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Final

from fastgw.auth.context import DEV_TIER
from fastgw.config.model import (
    GatewayConfig,
    GatewayRoutingConfig,
    GlobalLimitConfig,
    JwtConfig,
    RateLimitsConfig,
    RouteConfig,
    RoutingConfig,
    SecurityConfig,
)
from fastgw.config.units import format_duration
from fastgw.errors import Problem
from fastgw.ratelimit.decision import MAX_BURST, MAX_WINDOW_US, window_limit
from fastgw.redis_address import cluster_problems
from fastgw.tls import tls_problems

_SIMPLE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_HS_MIN_SECRET_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}


class Invalid(enum.Enum):
    """The type of ``INVALID``: a value that failed its rules (already reported)."""

    INVALID = "INVALID"


INVALID: Final = Invalid.INVALID


def join(path: str, key: str) -> str:
    """``$.a`` + ``b`` → ``$.a.b``; keys that are not simple names are quoted: ``$.a["b c"]``."""
    return f"{path}.{key}" if _SIMPLE_KEY.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def suggest(word: str, choices: Sequence[str], listing: str | None = None) -> str:
    """`` (did you mean 'x'?)``, else `` (<listing>: a, b)`` when ``listing`` is given."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if listing and choices:
        return f" ({listing}: {', '.join(choices)})"
    return ""


@dataclasses.dataclass(slots=True)
class Findings:
    """What one load found: problems in order, keys the file gave, paths of kept list items."""

    problems: list[Problem] = dataclasses.field(default_factory=list)
    given: set[str] = dataclasses.field(default_factory=set)
    item_paths: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    incomplete: set[str] = dataclasses.field(default_factory=set)

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def tainted(self, *paths: str) -> bool:
        """Whether a problem was found at or under any of ``paths``."""
        prefixes = tuple(p + sep for p in paths for sep in (".", "["))
        return any(p.path in paths or p.path.startswith(prefixes) for p in self.problems)

    def partial(self, path: str) -> bool:
        """Whether the list or mapping at ``path`` failed, or lost an item that failed."""
        return path in self.incomplete or any(p.path == path for p in self.problems)

    def paths_of(self, list_path: str, count: int) -> tuple[str, ...]:
        """The file paths of the items kept in the list at ``list_path``."""
        return self.item_paths.get(list_path) or tuple(f"{list_path}[{i}]" for i in range(count))


def check_config(found: Findings, values: dict[str, Any]) -> dict[str, Any]:
    """Run every cross-field rule on the walked top-level values; returns them, reconciled."""
    gateway: GatewayConfig = values["gateway"]
    _check_server(found, gateway)
    _check_jwt(found, gateway.authentication.jwt)
    _check_observability(found, gateway)
    _check_security(found, gateway.security)
    _check_breaker(found, gateway)
    routing = values["routing"]
    if isinstance(routing, RoutingConfig):
        routing = _reconcile_routing(found, gateway.routing, routing)
        _check_instances(found, routing)
    _check_routes(found, values["routes"])
    _check_rate_limits(found, values["rate_limits"], values["routes"])
    redis = gateway.rate_limiting.redis
    for problem in cluster_problems(redis.address, redis.db, redis.cluster):
        found.add(problem.path, problem.message)
    return {**values, "routing": routing}


def _check_readable(found: Findings, path: str, file: str) -> None:
    if not os.path.exists(file):
        found.add(path, f"file not found: {file}")
    elif not os.path.isfile(file):
        found.add(path, f"not a regular file: {file}")
    else:
        try:
            with open(file, "rb"):
                pass
        except OSError as exc:
            found.add(path, f"cannot read {file}: {exc.strerror or exc}")


def _check_server(found: Findings, gateway: GatewayConfig) -> None:
    tls, path = gateway.server.tls, "$.gateway.server.tls"
    if not tls.enabled:
        return
    for key in ("cert_file", "key_file"):
        file: str | None = getattr(tls, key)
        if found.tainted(f"{path}.{key}"):
            continue
        if file is None:
            found.add(f"{path}.{key}", "required when tls.enabled is true")
        else:
            _check_readable(found, f"{path}.{key}", file)
    if not found.tainted(path):  # both files are there: does the pair load?
        for problem in tls_problems(tls):
            found.add(problem.path, problem.message)


def _check_jwt(found: Findings, jwt: JwtConfig) -> None:
    path = "$.gateway.authentication.jwt"
    sources = [
        key for key in ("public_key_file", "jwks_file", "jwks_url") if getattr(jwt, key) is not None
    ]
    for extra in sources[1:]:
        found.add(f"{path}.{extra}", f"only one key source may be set, but {path}.{sources[0]} "
                                     "is set too")
    for key in ("public_key_file", "jwks_file"):
        file: str | None = getattr(jwt, key)
        if file is not None:
            _check_readable(found, f"{path}.{key}", file)
    if found.tainted(f"{path}.algorithm", f"{path}.hs_secret"):
        return
    hs = [alg for alg in jwt.algorithms if alg in _HS_MIN_SECRET_BYTES]
    public = [alg for alg in jwt.algorithms if alg not in _HS_MIN_SECRET_BYTES]
    secret = jwt.hs_secret or None
    if hs and public:
        mixed = f"{', '.join(hs)} cannot be mixed with {', '.join(public)}"
        found.add(f"{path}.algorithm", f"{mixed}: a public key must never serve as an HMAC secret")
    if not hs:
        if secret is not None:
            found.add(f"{path}.hs_secret", "set, but algorithm allows no HS* algorithm")
        _check_jwt_keys(found, jwt, path)
        return
    if len(hs) > 1 and not public:
        # One key, one algorithm (fastgw.auth.keyring): a secret verifies exactly one HS*.
        found.add(f"{path}.algorithm", f"{', '.join(hs)}: an hs_secret verifies one HS* "
                                       "algorithm; list one")
    need = max(_HS_MIN_SECRET_BYTES[alg] for alg in hs)
    if secret is None:
        found.add(f"{path}.hs_secret", f"required when algorithm includes {hs[0]}")
    elif len(secret.encode()) < need:
        found.add(f"{path}.hs_secret",
                  f"too short: {', '.join(hs)} needs at least {need} bytes, got "
                  f"{len(secret.encode())}")
    if sources and not public:
        found.add(f"{path}.{sources[0]}", "key sources verify public-key algorithms, but "
                  "algorithm allows only HS* (which use hs_secret)")


def _check_jwt_keys(found: Findings, jwt: JwtConfig, path: str) -> None:
    """Load public_key_file / jwks_file the way the workers will (``fastgw.auth.keyring``), so
    a key that cannot verify tokens is a config error rather than a boot error. The URL is not
    fetched: check-config never touches the network, and the workers retry it anyway."""
    # Imported here because fastgw.auth.refresh imports the config model this module is part of.
    from fastgw.auth.keyring import KeyConfigError, ring_from_jwks, ring_from_pem
    from fastgw.auth.refresh import read_key_file

    for key in ("public_key_file", "jwks_file"):
        file: str | None = getattr(jwt, key)
        here = f"{path}.{key}"
        if file is None or found.tainted(here):
            continue
        try:
            data = read_key_file(file)
            if key == "public_key_file":
                ring_from_pem(data, jwt.algorithms, source=key)
                continue
            ring, warnings = ring_from_jwks(data, jwt.algorithms)
        except KeyConfigError as error:
            found.add(f"{path}.algorithm" if error.setting == "algorithm" else here, str(error))
            continue
        if not ring:
            found.add(here, "no usable key: " + ("; ".join(warnings) or "the JWKS has no keys"))


def _check_observability(found: Findings, gateway: GatewayConfig) -> None:
    obs, path = gateway.observability, "$.gateway.observability"
    tracing = obs.tracing
    if tracing.enabled and tracing.endpoint is None and not found.tainted(f"{path}.tracing"):
        found.add(f"{path}.tracing.endpoint", "required when tracing.enabled is true")
    port = "$.gateway.server.port"
    metrics = obs.metrics
    clash = metrics.enabled and metrics.port == gateway.server.port != 0
    if clash and not found.tainted(f"{path}.metrics.port", port):
        found.add(f"{path}.metrics.port", f"{metrics.port} is {port} too; metrics need a port "
                  "of their own")


def _check_security(found: Findings, security: SecurityConfig) -> None:
    path = "$.gateway.security"
    cors = security.cors
    if cors.allow_credentials and "*" in cors.allow_origins:
        found.add(f"{path}.cors.allow_credentials",
                  "cannot be true when allow_origins contains '*' (browsers refuse it)")
    if cors.enabled and not cors.allow_origins and not found.tainted(f"{path}.cors"):
        found.add(f"{path}.cors.allow_origins", "must not be empty when cors.enabled is true")
    seen: dict[str, str] = {}
    for name in security.response_headers:
        here = join(f"{path}.response_headers", name)
        if name.lower() in seen:
            found.add(here, f"same header as {seen[name.lower()]} (names ignore case)")
        seen.setdefault(name.lower(), here)


def _reconcile_routing(
    found: Findings, mine: GatewayRoutingConfig, routing: RoutingConfig
) -> RoutingConfig:
    """``gateway.routing`` may repeat two keys of ``routing``: equal, or adopted if absent."""
    pairs = (
        ("strategy", "strategy", lambda v: f"'{v}'"),
        ("health_check_interval_s", "health_check_interval", format_duration),
    )
    for name, key, show in pairs:
        value, theirs = getattr(mine, name), getattr(routing, name)
        here, there = f"$.gateway.routing.{key}", f"$.routing.{key}"
        if value is None or found.tainted(here, there):
            continue
        if there not in found.given:
            routing = dataclasses.replace(routing, **{name: value})
        elif value != theirs and not (isinstance(value, float) and math.isclose(value, theirs)):
            found.add(here, f"{show(value)} disagrees with {there} {show(theirs)}")
    return routing


def _check_breaker(found: Findings, gateway: GatewayConfig) -> None:
    breaker, path = gateway.routing.circuit_breaker, "$.gateway.routing.circuit_breaker"
    if breaker.max_cooldown_s < breaker.cooldown_s and not found.tainted(
        f"{path}.max_cooldown", f"{path}.cooldown"
    ):
        found.add(f"{path}.max_cooldown", f"{breaker.max_cooldown_s:g}s is shorter than "
                  f"{path}.cooldown ({breaker.cooldown_s:g}s)")


def _check_instances(found: Findings, routing: RoutingConfig) -> None:
    path = "$.routing.metald_instances"
    instances = routing.metald_instances
    seen: dict[tuple[str, int], str] = {}
    for instance, here in zip(instances, found.paths_of(path, len(instances)), strict=True):
        address = (instance.host.lower(), instance.port)
        if address in seen:
            found.add(here, f"duplicate of {seen[address]} ({instance.host}:{instance.port})")
        seen.setdefault(address, here)
    bound = routing.bounded_load
    if 0 < bound < 1:
        found.add("$.routing.bounded_load", f"{bound:g} is below 1: every instance would be "
                  "over it; use 0 (off) or a factor >= 1, such as 1.25")
    elif bound and routing.strategy != "consistent_hash":
        found.add("$.routing.bounded_load", f"applies to consistent_hash only, and "
                  f"$.routing.strategy is {routing.strategy}")
    if instances and all(i.weight == 0 for i in instances) and not found.partial(path):
        found.add(path, "every instance has weight 0, so none would get traffic")


def _check_routes(found: Findings, routes: tuple[RouteConfig, ...]) -> None:
    by_path: dict[tuple[str, str], list[tuple[RouteConfig, str]]] = {}
    for route, here in zip(routes, found.paths_of("$.routes", len(routes)), strict=True):
        for key in ("permissions", "features"):
            if route.auth == "none" and getattr(route, key):
                found.add(f"{here}.{key}", f"needs auth: required (an anonymous request has no "
                                           f"{key})")
        _check_validation(found, route, here)
        if found.tainted(f"{here}.path", f"{here}.path_prefix"):
            continue
        if route.path is not None and route.path_prefix is not None:
            found.add(f"{here}.path_prefix", "set either path or path_prefix, not both")
            continue
        if route.path is None and route.path_prefix is None:
            found.add(here, "one of path or path_prefix is required")
            continue
        target = ("path", route.path) if route.path else ("path_prefix", route.path_prefix or "")
        for other, there in by_path.get(target, []):
            # No methods means any method, so it overlaps with every method of the other route.
            mine, theirs = set(route.methods), set(other.methods)
            shared = mine & theirs if mine and theirs else mine | theirs
            if shared or not (mine and theirs):
                methods = ", ".join(sorted(shared)) or "any method"
                found.add(here, f"same {target[0]} {target[1]} and method ({methods}) as {there}")
                break
        by_path.setdefault(target, []).append((route, here))


def _check_validation(found: Findings, route: RouteConfig, here: str) -> None:
    """``content_types`` distinct ignoring case; ``json_schema`` read and compiled as the plan
    will (``fastgw.stages.validate``), so a schema that cannot validate is a config error."""
    seen: dict[str, str] = {}
    kinds = route.content_types
    for kind, there in zip(kinds, found.paths_of(f"{here}.content_types", len(kinds)), strict=True):
        first = seen.setdefault(kind.lower(), there)
        if first != there:
            found.add(there, f"same media type as {first} (case is ignored)")
    if route.json_schema is None or found.tainted(f"{here}.json_schema"):
        return
    # Imported here: the stage module pulls in jsonschema-rs, which only this check needs.
    from fastgw.stages.validate import SchemaError, compile_schema, load_schema

    try:
        compile_schema(load_schema(route.json_schema))
    except SchemaError as error:
        found.add(f"{here}.json_schema", str(error))


def _check_rate_limits(
    found: Findings, limits: RateLimitsConfig, routes: tuple[RouteConfig, ...]
) -> None:
    path = "$.rate_limits"
    tiers = list(limits.customer_tiers)
    if DEV_TIER in limits.customer_tiers:
        found.add(join(f"{path}.customer_tiers", DEV_TIER), "the tier name 'dev' is reserved for "
                  "development tokens (X-Customer-Tier: dev tells a backend it is one)")
    unknown_tier = limits.default_tier not in limits.customer_tiers
    tiers_known = not found.partial(f"{path}.customer_tiers")
    if unknown_tier and tiers_known and not found.tainted(f"{path}.default_tier"):
        found.add(f"{path}.default_tier", f"'{limits.default_tier}' is not in "
                  f"{path}.customer_tiers" + suggest(limits.default_tier, tiers, "tiers"))
    if not found.partial("$.routes"):
        endpoints = sorted({route.endpoint for route in routes})
        for name in limits.endpoints:
            if name not in endpoints:
                found.add(join(f"{path}.endpoints", name),
                          f"no route has endpoint '{name}'" + suggest(name, endpoints))
    top = limits.global_limit
    lone_burst = top.burst_size is not None and top.requests_per_second is None
    if lone_burst and not found.tainted(f"{path}.global.requests_per_second"):
        found.add(f"{path}.global.burst_size", "needs requests_per_second")
    if top.algorithm == "sliding_window":
        _check_sliding_window(found, top, f"{path}.global")


def _check_sliding_window(found: Findings, top: GlobalLimitConfig, path: str) -> None:
    """``algorithm: sliding_window`` admits ``requests_per_second * window_size`` requests per
    window; it has no burst, and its numbers must stay within what the limiter counts exactly."""
    if top.requests_per_second is None:
        found.add(f"{path}.requests_per_second", "required when algorithm is sliding_window")
        return
    if top.burst_size is not None:
        found.add(f"{path}.burst_size", "not used by sliding_window (the limit per window is "
                  "requests_per_second * window_size): remove it")
    if not 0.001 <= top.window_size_s <= MAX_WINDOW_US / 1e6:
        found.add(f"{path}.window_size", "must be 1ms..1d for sliding_window")
    elif not 1 <= window_limit(top.requests_per_second, top.window_size_s) <= MAX_BURST:
        found.add(f"{path}.requests_per_second", "requests_per_second * window_size must be "
                  f"1..{MAX_BURST} requests for sliding_window")
