"""The suite's scenarios: each is a gateway config plus a traffic shape.

A scenario names the fastgw features it needs (:mod:`fastgw.features`). When one has not
landed, the scenario is reported as *skipped* with that reason: it is never run on a stand-in
config, so a figure in a report always measures what its name says.

- ``passthrough``: the proxy path alone (no auth, no limits) against nginx and HAProxy as plain
  reverse proxies in front of the same backend.
- ``jwt-cached`` / ``jwt-uncached``: one RS256 token on every request; with the verified-token
  cache (it answers after the first request) or with ``cache_size: 0`` (the same token's
  signature verified on every request); limits in memory.
- ``redis-limits``: every request checked against rate limits held in a real Redis.
- ``full``: JWT + Redis limits + consistent hashing over 3 instances + metrics + tracing
  sampled at 10 %; its HAProxy peer is to get ``jwt_verify`` and stick-table limits when the
  scenario lands (until a peer has a config doing the same work, it is not run).
- ``idle-10k``: 10,000 open keep-alive connections: memory, and latency of traffic beside them.

**Setup and request headers.** A scenario whose config needs files, or whose requests need
headers, has a ``setup``: called once per run (:meth:`Scenario.prepare`) with the run's work
dir and how long the run may take, it writes what it needs there (a key pair) and returns a
:class:`ScenarioSetup`: ``config_args``, extra keyword arguments for ``gateway_config`` (the
key file's path), and ``headers`` (a bearer token). Every generator sends those headers on
every request -- wrk as ``-H``, the open-loop generator in its request bytes -- and so does the
readiness probe, which must get 200 with them. Nothing is shared between runs: each mints its
own token, valid for the run plus an hour.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from fastgw import features

Shape = Literal["load", "idle"]
ConfigBuilder = Callable[..., dict[str, Any]]  # (backend ports, port, **config_args) -> config
Headers = tuple[tuple[str, str], ...]  # (name, value), sent on every request in this order


@dataclass(frozen=True)
class ScenarioSetup:
    """What a scenario's ``setup`` made for one run."""

    headers: Headers = ()
    #: extra keyword arguments for the scenario's ``gateway_config`` (paths of files it wrote)
    config_args: Mapping[str, Any] = field(default_factory=dict)


#: (the run's work dir, the longest the run may take in seconds) -> what it made there
SetupFn = Callable[[Path, float], ScenarioSetup]


@dataclass(frozen=True)
class Prepared:
    """A scenario ready for one run: fastgw's config builder and the requests' headers."""

    config: Callable[[list[int], int], dict[str, Any]]
    headers: Headers = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requires: tuple[str, ...]
    shape: Shape = "load"
    backends: int = 1
    path: str = "/echo/x"
    #: peers with a config doing the same work; none until one is written, so that a peer
    #: doing less (a plain proxy against fastgw verifying JWTs) is never compared
    peers: tuple[str, ...] = ()
    #: fastgw's config; None while the scenario's features have not landed (nothing to build)
    gateway_config: ConfigBuilder | None = None
    #: files and request headers the run needs (module docstring); None: none
    setup: SetupFn | None = None

    def prepare(self, workdir: Path, run_s: float) -> Prepared:
        """Run ``setup`` (if any) in ``workdir`` for a run of at most ``run_s`` seconds."""
        assert self.gateway_config is not None, "skip_reason() is checked first"
        if self.setup is None:
            return Prepared(self.gateway_config)
        made = self.setup(workdir, run_s)
        return Prepared(functools.partial(self.gateway_config, **made.config_args),
                        made.headers)

    def skip_reason(self) -> str | None:
        """Why this scenario cannot run in this build, or None when it can."""
        lacking = features.missing(self.requires)
        if lacking:
            names = ", ".join(features.KNOWN[name] for name in lacking)
            return f"needs {names}: not in this build of fastgw yet"
        if self.gateway_config is None:
            return "no gateway config written for it yet"
        return None


HOST: Final = "127.0.0.1"


def passthrough_config(backend_ports: list[int], port: int, *, max_connections: int = 10000,
                       idle_timeout: str = "2m") -> dict[str, Any]:
    """One route ``/`` without auth or limits: only the proxy path is measured."""
    return {
        "gateway": {
            "server": {
                "host": HOST, "port": port,
                "timeouts": {"idle": idle_timeout},
                "limits": {"max_connections": max_connections},
            },
            "observability": {
                "metrics": {"enabled": False},
                "logging": {"level": "warning", "format": "text", "output": "stderr"},
            },
        },
        "routing": {"metald_instances": [{"host": HOST, "port": p} for p in backend_ports]},
        "routes": [{"endpoint": "Passthrough", "path_prefix": "/", "auth": "none"}],
    }


def idle_config(backend_ports: list[int], port: int, *,
                max_connections: int = 20000) -> dict[str, Any]:
    """Passthrough with room for every idle connection and an idle timeout longer than the
    scenario holds them."""
    return passthrough_config(backend_ports, port, max_connections=max_connections,
                              idle_timeout="30m")


TOKEN_SLACK_S: Final = 3600.0  # a token outlives the run's planned length by this much


def jwt_config(backend_ports: list[int], port: int, *, public_key_file: str,
               cache_size: int | None = None) -> dict[str, Any]:
    """Passthrough behind RS256 JWT verification: one route ``/`` with ``auth: required``.
    ``cache_size: 0`` turns the verified-token cache off (a signature check per request)."""
    config = passthrough_config(backend_ports, port)
    jwt: dict[str, Any] = {"public_key_file": public_key_file, "algorithm": "RS256"}
    if cache_size is not None:
        jwt["cache_size"] = cache_size
    config["gateway"]["authentication"] = {"jwt": jwt}
    config["routes"] = [{"endpoint": "Passthrough", "path_prefix": "/", "auth": "required"}]
    return config


def jwt_setup(workdir: Path, run_s: float, *, cache_size: int | None = None) -> ScenarioSetup:
    """A 2048-bit RSA pair in ``workdir/keys`` (reused when a previous run into the same
    directory left one: ``write_key_pair`` never overwrites a private key) and one token,
    valid for the run plus :data:`TOKEN_SLACK_S`, sent as ``Authorization: Bearer``."""
    from fastgw.keys import PRIVATE_NAME, PUBLIC_NAME, load_private_key, write_key_pair
    from fastgw.tokens import mint_token

    keys = workdir / "keys"
    private, public = keys / PRIVATE_NAME, keys / PUBLIC_NAME
    if not (private.exists() and public.exists()):
        private.unlink(missing_ok=True)
        files = write_key_pair(keys, "RS256", bits=2048)
        private, public = files.private_pem, files.public_pem
    token = mint_token(load_private_key(private), customer_id="bench",
                       ttl_s=run_s + TOKEN_SLACK_S)
    args: dict[str, Any] = {"public_key_file": str(public.resolve())}
    if cache_size is not None:
        args["cache_size"] = cache_size
    return ScenarioSetup(headers=(("Authorization", f"Bearer {token}"),), config_args=args)


SCENARIOS: Final = {
    s.name: s for s in (
        Scenario("passthrough", "the proxy path alone (no auth, no limits) vs nginx and "
                 "HAProxy as plain reverse proxies", requires=("proxy",),
                 peers=("nginx", "haproxy"), gateway_config=passthrough_config),
        Scenario("jwt-cached", "RS256 JWT on every request, one token reused (the "
                 "verified-token cache answers), limits in memory",
                 requires=("proxy", "jwt", "memory-limits"), gateway_config=jwt_config,
                 setup=jwt_setup),
        Scenario("jwt-uncached", "RS256 JWT on every request, one token reused with the "
                 "verified-token cache off (cache_size: 0: its signature verified on every "
                 "request), limits in memory", requires=("proxy", "jwt", "memory-limits"),
                 gateway_config=jwt_config,
                 setup=functools.partial(jwt_setup, cache_size=0)),
        Scenario("redis-limits", "layered rate limits checked atomically in a real Redis",
                 requires=("proxy", "dev-tokens", "redis-limits")),
        Scenario("full", "JWT + Redis limits + consistent hash over 3 instances + metrics + "
                 "tracing sampled at 10%", backends=3,
                 requires=("proxy", "jwt", "redis-limits", "consistent-hash", "metrics",
                           "tracing")),
        Scenario("idle-10k", "10,000 open keep-alive connections: memory, and latency of "
                 "active traffic beside them", requires=("proxy",), shape="idle",
                 path="/echo/idle", gateway_config=idle_config),
    )
}

ALIASES: Final = {"idle": "idle-10k"}


def resolve(text: str) -> list[Scenario]:
    """``a,b`` (in that order, duplicates dropped) or ``all`` (the suite's order) -> scenarios;
    ValueError names unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(SCENARIOS.values())
    names = [ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown) or '(none)'} "
                         f"(known: {', '.join(SCENARIOS)}, all)")
    return [SCENARIOS[n] for n in dict.fromkeys(names)]
