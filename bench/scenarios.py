"""The suite's scenarios: each is a gateway config plus a traffic shape.

A scenario names the fastgw features it needs (:mod:`fastgw.features`). When one has not
landed, the scenario is reported as *skipped* with that reason: it is never run on a stand-in
config, so a figure in a report always measures what its name says.

- ``passthrough``: the proxy path alone (no auth, no limits) against nginx and HAProxy as plain
  reverse proxies in front of the same backend.
- ``jwt-cached`` / ``jwt-uncached``: one RS256 token on every request; with the verified-token
  cache (it answers after the first request) or with ``cache_size: 0`` (the same token's
  signature verified on every request); limits in memory.
- ``redis-limits``: jwt-cached with its limits held in a real Redis (``backend: redis``): a
  redis-server the bench starts for the run, on a unix socket in the run's work dir, measured
  as a process group of its own (``redis``) so that the gateway's CPU per request and Redis's
  are shown apart; and Redis's own count of the limiter's commands per request.
- ``jwt-routed``: jwt-cached in front of 3 instances by consistent hash (health checks,
  breakers, failover orders on): what routing and resilience cost on the request path.
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

**Helper processes.** A scenario whose gateway needs a process beside it (a Redis) has a
``start``: called by :meth:`Scenario.prepare` with the run's :class:`~bench.procs.Services`, it
starts that process there -- so it is stopped with the others at the end of the run, also when
the run fails -- waits until it serves (a bounded wait) and returns a :class:`Started`: more
``config_args`` (its address) and the :class:`Helper` records. The runner reads each helper's
CPU around every measured run like the gateway's, reports it as the helper's own group
(``redis_cpu_us_per_request`` beside ``cpu_us_per_request``, which stays the gateway's
alone) and records the difference of its ``counters`` per request
(``redis_commands_per_request``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from bench.procs import BenchError, Service, Services
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
class Helper:
    """A process a scenario started for its run (a Redis), measured as a group of its own."""

    #: the group's name in results: ``<name>_cpu_us_per_request``, ``<name>_rss_mb`` ...
    name: str
    service: Service
    #: counters read before and after each measured run; each one's growth per request is
    #: recorded as ``<name>_<counter>_per_request``. None: no counters
    counters: Callable[[], Mapping[str, float]] | None = None


@dataclass(frozen=True)
class Started:
    """What a scenario's ``start`` started for one run."""

    helpers: tuple[Helper, ...]
    #: extra keyword arguments for the scenario's ``gateway_config`` (the helpers' addresses)
    config_args: Mapping[str, Any] = field(default_factory=dict)


#: (the run's services, the run's work dir) -> what it started there
StartFn = Callable[[Services, Path], Started]


@dataclass(frozen=True)
class Prepared:
    """A scenario ready for one run: fastgw's config builder, the requests' headers and the
    helper processes started for it."""

    config: Callable[[list[int], int], dict[str, Any]]
    headers: Headers = ()
    helpers: tuple[Helper, ...] = ()


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
    #: processes the run needs beside the gateway (module docstring); None: none
    start: StartFn | None = None

    def prepare(self, workdir: Path, run_s: float, services: Services | None = None, *,
                overrides: Sequence[tuple[str, Any]] = ()) -> Prepared:
        """Run ``setup`` (if any) in ``workdir`` for a run of at most ``run_s`` seconds, and
        ``start`` (if any) into ``services``, the run's: a scenario with helper processes
        cannot be prepared without them. ``overrides``: ``(dotted.path, value)`` pairs set in
        the config built (``--set``)."""
        assert self.gateway_config is not None, "skip_reason() is checked first"
        headers: Headers = ()
        args: dict[str, Any] = {}
        if self.setup is not None:
            made = self.setup(workdir, run_s)
            headers = made.headers
            args.update(made.config_args)
        helpers: tuple[Helper, ...] = ()
        if self.start is not None:
            if services is None:
                raise BenchError(f"{self.name} starts processes for its run: prepare() needs "
                                 "the run's Services")
            started = self.start(services, workdir)
            helpers = started.helpers
            args.update(started.config_args)
        config = functools.partial(self.gateway_config, **args) if args else self.gateway_config
        if overrides:
            config = functools.partial(_overridden, config, tuple(overrides))
        return Prepared(config, headers, helpers)

    def skip_reason(self) -> str | None:
        """Why this scenario cannot run in this build, or None when it can."""
        lacking = features.missing(self.requires)
        if lacking:
            names = ", ".join(features.KNOWN[name] for name in lacking)
            return f"needs {names}: not in this build of fastgw yet"
        if self.gateway_config is None:
            return "no gateway config written for it yet"
        return None


def _overridden(build: ConfigBuilder, overrides: tuple[tuple[str, Any], ...],
                *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``build``'s config with each ``(dotted.path, value)`` set (missing mappings made)."""
    config = build(*args, **kwargs)
    for path, value in overrides:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise BenchError(f"--set {path}: {key!r} is not a mapping in the config")
            node = child
        node[leaf] = value
    return config


HOST: Final = "127.0.0.1"


def passthrough_config(backend_ports: list[int], port: int, *, max_connections: int = 10000,
                       idle_timeout: str = "2m") -> dict[str, Any]:
    """One route ``/`` without auth or limits: only the proxy path is measured."""
    return {
        "gateway": {
            "server": {
                "host": HOST, "port": port,
                "timeouts": {"idle": idle_timeout},
                # like the peers' keepalive_requests: wrk's connections are never recycled
                "limits": {"max_connections": max_connections,
                           "max_requests_per_connection": 10**12},
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
    config["rate_limits"] = BENCH_LIMITS
    return config


#: Every limit level on for the bench customer (bucket, endpoint bucket, daily quota, global)
#: and none ever refusing: each request pays for a whole decision and is still proxied.
BENCH_LIMITS: Final[dict[str, Any]] = {
    "global": {"requests_per_second": 1e9, "burst_size": 1_000_000_000},
    "customer_tiers": {"free": {"requests_per_second": 1e9, "burst_size": 1_000_000_000,
                                "requests_per_day": 10**15}},
    "endpoints": {"Passthrough": {"requests_per_second": 1e9}},
}


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


def redis_limits_config(backend_ports: list[int], port: int, *, public_key_file: str,
                        redis_address: str) -> dict[str, Any]:
    """jwt-cached with the limits in Redis at ``redis_address`` (``unix:///path``); when Redis
    fails the shared in-process table decides (``on_failure: local``, as deployed), which the
    commands per request recorded from Redis would show (fewer than 2)."""
    config = jwt_config(backend_ports, port, public_key_file=public_key_file)
    config["gateway"]["rate_limiting"] = {"backend": "redis",
                                          "redis": {"address": redis_address},
                                          "on_failure": "local"}
    return config


REDIS_READY_S: Final = 10.0  # redis-server must answer PING within this after its start
REDIS_POLL_S: Final = 0.01  # between two PINGs while waiting for it
REDIS_IO_TIMEOUT_S: Final = 5.0  # one PING or INFO of the bench's own
UNIX_PATH_MAX_BYTES: Final = 107  # sockaddr_un.sun_path: 108 bytes with the final NUL


def _redis_client(socket: Path, timeout_s: float) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(unix_socket_path=str(socket), socket_timeout=timeout_s,
                       socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


def wait_for_redis(service: Service, socket: Path, timeout_s: float = REDIS_READY_S) -> None:
    """Until the redis-server of ``service`` answers PING on ``socket``; BenchError with its log
    when it exits first or the deadline passes. Between two PINGs the wait is on the process
    itself, so that an exit is seen at once."""
    import redis

    assert service.popen is not None, "started first"
    deadline = time.monotonic() + timeout_s
    with _redis_client(socket, min(1.0, timeout_s)) as client:
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() >= deadline:
                raise BenchError(f"redis not answering PING on {socket} after {timeout_s:g}s; "
                                 f"log {service.log_path}:\n{service.log_tail()}")
            try:
                status = service.popen.wait(REDIS_POLL_S)
            except subprocess.TimeoutExpired:
                continue
            raise BenchError(f"redis exited with status {status} before answering PING; log "
                             f"{service.log_path}:\n{service.log_tail()}")


def redis_counters(socket: Path) -> dict[str, float]:
    """Redis's own counts so far (``INFO commandstats`` and ``INFO stats``):

    - ``commands``: the limiter's, EVALSHA + EVAL (2 per request: the customer script and the
      global one; fewer means ``on_failure`` decided some requests without Redis);
    - ``all_commands``: every command Redis ran, the ``redis.call()`` inside the scripts
      included (commandstats counts those too) and the bench's own INFO;
    - ``script_us``: the server's time in the scripts (commandstats ``usec``);
    - ``reads``: read events on its connections; one read may bring the commands of several
      requests (the gateway writes what a loop iteration sent at once), so under 1 per
      request means requests shared round trips;
    - ``script_errors``: failed or rejected script calls.
    """
    import redis

    try:
        with _redis_client(socket, REDIS_IO_TIMEOUT_S) as client:
            commands = client.info("commandstats")
            stats = client.info("stats")
    except redis.RedisError as error:
        raise BenchError(f"redis: cannot read INFO on {socket}: {error}") from None
    scripts = [commands.get(f"cmdstat_{name}", {}) for name in ("evalsha", "eval")]
    return {
        "commands": sum(s.get("calls", 0) for s in scripts),
        "all_commands": sum(s.get("calls", 0) for s in commands.values()),
        "script_us": sum(s.get("usec", 0) for s in scripts),
        "reads": stats.get("total_reads_processed", 0),
        "script_errors": sum(s.get("failed_calls", 0) + s.get("rejected_calls", 0)
                             for s in scripts),
    }


def start_redis(services: Services, workdir: Path) -> Started:
    """A redis-server from PATH for one run: no persistence (``--save '' --appendonly no``), no
    TCP, its unix socket ``workdir/redis.sock``; started into ``services`` (stopped with the
    run's other processes, also when the run fails) and serving when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found on PATH (Debian: apt-get install redis-server)")
    workdir = workdir.resolve()
    socket = workdir / "redis.sock"
    if len(os.fsencode(socket)) > UNIX_PATH_MAX_BYTES:
        raise BenchError(f"{socket} is longer than a unix socket path may be "
                         f"({UNIX_PATH_MAX_BYTES} bytes): give a shorter --out")
    workdir.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)  # left by a run that was killed
    service = Service(name="redis", argv=[
        binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        log_path=workdir / "logs" / "redis.log")
    services.start(service)
    wait_for_redis(service, socket)
    return Started(helpers=(Helper("redis", service, functools.partial(redis_counters, socket)),),
                   config_args={"redis_address": f"unix://{socket}"})


OTLP_READY_S: Final = 10.0  # the OTLP sink must say it listens within this after its start
OTLP_IO_TIMEOUT_S: Final = 5.0  # one GET /stats of the bench's own
FULL_SAMPLE_RATE: Final = 0.1


def full_config(backend_ports: list[int], port: int, *, public_key_file: str,
                redis_address: str, otlp_endpoint: str) -> dict[str, Any]:
    """redis-limits in front of the scenario's 3 instances (consistent hash, the default
    strategy), with the Prometheus endpoint on (any free port) and tracing sampled at
    ``FULL_SAMPLE_RATE``, exported to the run's OTLP sink."""
    config = redis_limits_config(backend_ports, port, public_key_file=public_key_file,
                                 redis_address=redis_address)
    config["gateway"]["observability"].update({
        "metrics": {"enabled": True, "port": 0},
        "tracing": {"enabled": True, "endpoint": otlp_endpoint,
                    "sample_rate": FULL_SAMPLE_RATE},
    })
    return config


def otlp_counters(port: int) -> dict[str, float]:
    """The sink's counts so far: ``posts`` (export requests) and ``bytes`` (their bodies)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/stats",
                                    timeout=OTLP_IO_TIMEOUT_S) as answer:
            stats = json.loads(answer.read())
    except OSError as error:
        raise BenchError(f"otlp sink: cannot read /stats on port {port}: {error}") from None
    return {"posts": stats["posts"], "bytes": stats["bytes"]}


def start_otlp_sink(services: Services, workdir: Path) -> Started:
    """``bench/otlp_sink.py`` for one run, on a free loopback port, measured as the helper
    group ``otlp`` (its CPU is never the gateway's)."""
    import sys

    from bench.otlp_sink import READY_PATTERN

    service = Service(name="otlp", argv=[sys.executable, "-m", "bench.otlp_sink", "--host", HOST,
                                         "--port", "0"],
                      log_path=workdir / "logs" / "otlp.log", ready_pattern=READY_PATTERN)
    match = services.start(service, OTLP_READY_S)
    assert match is not None, "a ready_pattern always gives a match"
    port = int(match.group(1))
    return Started(helpers=(Helper("otlp", service, functools.partial(otlp_counters, port)),),
                   config_args={"otlp_endpoint": f"http://{HOST}:{port}/v1/traces"})


def start_full(services: Services, workdir: Path) -> Started:
    """The full scenario's helpers: a Redis (start_redis) and an OTLP sink (start_otlp_sink)."""
    redis = start_redis(services, workdir)
    sink = start_otlp_sink(services, workdir)
    return Started(helpers=redis.helpers + sink.helpers,
                   config_args={**redis.config_args, **sink.config_args})


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
        Scenario("redis-limits", "RS256 JWT on every request, one token reused (the "
                 "verified-token cache answers), every limit level checked in a real Redis "
                 "(its CPU reported apart)", requires=("proxy", "jwt", "redis-limits"),
                 gateway_config=redis_limits_config, setup=jwt_setup, start=start_redis),
        Scenario("jwt-routed", "jwt-cached in front of 3 instances by consistent hash: the "
                 "routing path with its health checks, breakers and failover orders on",
                 backends=3, requires=("proxy", "jwt", "memory-limits", "consistent-hash"),
                 gateway_config=jwt_config, setup=jwt_setup),
        Scenario("full", "JWT + Redis limits + consistent hash over 3 instances + metrics + "
                 "tracing sampled at 10%", backends=3,
                 requires=("proxy", "jwt", "redis-limits", "consistent-hash", "metrics",
                           "tracing"),
                 gateway_config=full_config, setup=jwt_setup, start=start_full),
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
