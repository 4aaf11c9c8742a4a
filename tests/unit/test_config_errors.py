"""Every kind of config problem names its exact path, and all of them are reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastgw.config import ConfigError, check_config_file, load_config, parse_config
from fastgw.config.load import parse_yaml

DATA = Path(__file__).resolve().parents[1] / "data"
INSTANCE = {"host": "127.0.0.1", "port": 9001}
ROUTING = {"metald_instances": [INSTANCE]}
JWT = "$.gateway.authentication.jwt"


def errors(data: object, env: dict[str, str] | None = None) -> list[str]:
    try:
        parse_config(data, base_dir=DATA, env=env or {})
    except ConfigError as exc:
        assert exc.problems, "a ConfigError always carries problems"
        assert str(exc) == "\n".join(str(p) for p in exc.problems)
        return [str(p) for p in exc.problems]
    return []


def gw(**gateway: Any) -> dict[str, Any]:
    return {"routing": ROUTING, "gateway": gateway}


D_HINT = '(e.g. "30s", "100ms", "5m" or a number of seconds)'
S_HINT = '(e.g. "64KiB", "1MB" or a number of bytes)'

CASES: list[tuple[str, object, list[str]]] = [
    ("port not an int",
     {"routing": {"metald_instances": [INSTANCE, {"host": "b", "port": "x"}]}},
     ['$.routing.metald_instances[1].port: expected integer 1..65535, got "x"']),
    ("port out of range", {"routing": {"metald_instances": [{"host": "b", "port": 70000}]}},
     ["$.routing.metald_instances[0].port: expected integer 1..65535, got 70000"]),
    ("bool is not an int", {"routing": {"metald_instances": [{"host": "b", "port": True}]}},
     ["$.routing.metald_instances[0].port: expected integer 1..65535, got true"]),
    ("float is not an int", gw(server={"workers": 2.0}),
     ["$.gateway.server.workers: expected integer 1..256, got 2.0"]),
    ("workers 0", gw(server={"workers": 0}),
     ["$.gateway.server.workers: expected integer 1..256, got 0"]),
    ("unknown key, close", gw(server={"prot": 80}),
     ["$.gateway.server.prot: unknown key (did you mean 'port'?)"]),
    ("unknown top-level key", {"routing": ROUTING, "rate_limit": {}},
     ["$.rate_limit: unknown key (did you mean 'rate_limits'?)"]),
    ("unknown key, far", gw(zzz=1),
     ["$.gateway.zzz: unknown key (known keys: server, authentication, rate_limiting, routing, "
      "observability, security)"]),
    ("non-string key", {"routing": ROUTING, 3: "x"}, ["$: key 3 is not a string"]),
    ("int is not a bool", gw(server={"tls": {"enabled": 1}}),
     ["$.gateway.server.tls.enabled: expected true or false, got 1"]),
    ("string is not a bool", gw(observability={"metrics": {"enabled": "true"}}),
     ['$.gateway.observability.metrics.enabled: expected true or false, got "true"']),
    ("bad choice", gw(rate_limiting={"backend": "memcached"}),
     ["$.gateway.rate_limiting.backend: expected one of 'memory', 'redis', got \"memcached\""]),
    ("missing required", {"routing": {"metald_instances": [{"host": "a"}]}},
     ["$.routing.metald_instances[0].port: missing required key"]),
    ("empty file", None, ["$.routing.metald_instances: missing required key"]),
    ("no instances", {"routing": {"metald_instances": []}},
     ["$.routing.metald_instances: expected at least 1 item, got 0"]),
    ("instances not a list", {"routing": {"metald_instances": {"host": "a"}}},
     ["$.routing.metald_instances: expected list, got a mapping"]),
    ("top level not a mapping", [1], ["$: expected mapping, got a list"]),
    ("section not a mapping", {"routing": ROUTING, "gateway": "x"},
     ['$.gateway: expected mapping, got "x"']),
    ("empty host", {"routing": {"metald_instances": [{"host": "", "port": 1}]}},
     ["$.routing.metald_instances[0].host: expected a non-empty string"]),
    ("number is not a string", {"routing": {"metald_instances": [{"host": 10, "port": 1}]}},
     ["$.routing.metald_instances[0].host: expected string, got 10"]),
    ("duration format", gw(server={"timeouts": {"read": "30 seconds"}}),
     [f'$.gateway.server.timeouts.read: expected duration > 0 {D_HINT}, got "30 seconds"']),
    ("duration zero", gw(server={"timeouts": {"idle": 0}}),
     [f"$.gateway.server.timeouts.idle: expected duration > 0 {D_HINT}, got 0"]),
    ("duration negative", gw(routing={"retry_backoff": -1}),
     [f"$.gateway.routing.retry_backoff: expected duration >= 0s {D_HINT}, got -1"]),
    ("duration range", gw(authentication={"jwt": {"leeway": "10m"}}),
     [f'{JWT}.leeway: expected duration 0s..5m {D_HINT}, got "10m"']),
    ("duration infinite", gw(routing={"backend_timeout": float("inf")}),
     [f"$.gateway.routing.backend_timeout: expected duration > 0 {D_HINT}, got inf"]),
    ("size range", gw(server={"limits": {"max_header_size": "100"}}),
     [f'$.gateway.server.limits.max_header_size: expected size 1KiB..16MiB {S_HINT}, got "100"']),
    ("size fraction", gw(server={"limits": {"max_body_size": "1.1KB"}}),
     [f'$.gateway.server.limits.max_body_size: expected size >= 0B {S_HINT}, got "1.1KB"']),
    ("number range", gw(routing={"retry_budget": 1.5}),
     ["$.gateway.routing.retry_budget: expected number 0..1, got 1.5"]),
    ("rate range", {"routing": ROUTING,
                    "rate_limits": {"customer_tiers": {"free": {"requests_per_second": 0}}}},
     ["$.rate_limits.customer_tiers.free.requests_per_second: "
      "expected number 1e-06..1000000000.0, got 0"]),
    ("open-closed range", gw(routing={"circuit_breaker": {"error_rate": 0}}),
     ["$.gateway.routing.circuit_breaker.error_rate: expected number > 0 and <= 1, got 0"]),
    ("nan", gw(observability={"tracing": {"sample_rate": float("nan")}}),
     ["$.gateway.observability.tracing.sample_rate: expected number 0..1, got nan"]),
    ("alg none", gw(authentication={"jwt": {"algorithm": "none"}}),
     [f"{JWT}.algorithm: the 'none' algorithm is never allowed"]),
    ("alg NONE in a list", gw(authentication={"jwt": {"algorithm": ["RS256", "NONE"]}}),
     [f"{JWT}.algorithm[1]: the 'none' algorithm is never allowed"]),
    ("alg unknown", gw(authentication={"jwt": {"algorithm": "RS257"}}),
     [f"{JWT}.algorithm: expected one of 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', "
      "'ES256', 'ES384', 'EdDSA', 'HS256', 'HS384', 'HS512', got \"RS257\""]),
    ("alg duplicate", gw(authentication={"jwt": {"algorithm": ["RS256", "RS256"]}}),
     [f"{JWT}.algorithm[1]: duplicate of {JWT}.algorithm[0]"]),
    ("two key sources", gw(authentication={"jwt": {"public_key_file": "jwt-public.pem",
                                                   "jwks_url": "https://idp.example/jwks"}}),
     [f"{JWT}.jwks_url: only one key source may be set, but {JWT}.public_key_file is set too"]),
    ("key file missing",
     gw(authentication={"jwt": {"public_key_file": "/etc/keys/jwt-public.pem"}}),
     [f"{JWT}.public_key_file: file not found: /etc/keys/jwt-public.pem"]),
    ("key file relative missing", gw(authentication={"jwt": {"jwks_file": "nope.json"}}),
     [f"{JWT}.jwks_file: file not found: {DATA / 'nope.json'}"]),
    ("key file is a directory", gw(authentication={"jwt": {"jwks_file": "."}}),
     [f"{JWT}.jwks_file: not a regular file: {DATA}"]),
    ("jwks url scheme", gw(authentication={"jwt": {"jwks_url": "ftp://idp/jwks"}}),
     [f'{JWT}.jwks_url: expected an http(s) URL like "http://host:4318/v1/traces", '
      'got "ftp://idp/jwks"']),
    ("HS without secret", gw(authentication={"jwt": {"algorithm": "HS256"}}),
     [f"{JWT}.hs_secret: required when algorithm includes HS256"]),
    ("HS short secret", gw(authentication={"jwt": {"algorithm": "HS512", "hs_secret": "x" * 40}}),
     [f"{JWT}.hs_secret: too short: HS512 needs at least 64 bytes, got 40"]),
    ("HS mixed", gw(authentication={"jwt": {"algorithm": ["RS256", "HS256"],
                                            "hs_secret": "x" * 32}}),
     [f"{JWT}.algorithm: HS256 cannot be mixed with RS256: a public key must never serve as an "
      "HMAC secret"]),
    ("unused secret", gw(authentication={"jwt": {"hs_secret": "x" * 32}}),
     [f"{JWT}.hs_secret: set, but algorithm allows no HS* algorithm"]),
    ("HS with key file", gw(authentication={"jwt": {"algorithm": "HS256", "hs_secret": "x" * 32,
                                                    "public_key_file": "jwt-public.pem"}}),
     [f"{JWT}.public_key_file: key sources verify public-key algorithms, but algorithm allows "
      "only HS* (which use hs_secret)"]),
    ("token source", gw(authentication={"token_sources": ["header", "query:", "cookie:a b"]}),
     ["$.gateway.authentication.token_sources[1]: expected 'header', 'query:<name>' or "
      "'cookie:<name>', got \"query:\"",
      "$.gateway.authentication.token_sources[2]: expected 'header', 'query:<name>' or "
      "'cookie:<name>', got \"cookie:a b\""]),
    ("token source duplicate", gw(authentication={"token_sources": ["header", "header"]}),
     ["$.gateway.authentication.token_sources[1]: duplicate of "
      "$.gateway.authentication.token_sources[0]"]),
    ("dev prefix", gw(authentication={"development": {"token_prefix": "dev customer"}}),
     ["$.gateway.authentication.development.token_prefix: expected bearer token characters "
      '[A-Za-z0-9._~+/-], got "dev customer"']),
    ("tls without files", gw(server={"tls": {"enabled": True}}),
     ["$.gateway.server.tls.cert_file: required when tls.enabled is true",
      "$.gateway.server.tls.key_file: required when tls.enabled is true"]),
    ("tls missing file", gw(server={"tls": {"enabled": True, "cert_file": "/etc/ssl/gateway.crt",
                                            "key_file": "gateway.key"}}),
     ["$.gateway.server.tls.cert_file: file not found: /etc/ssl/gateway.crt"]),
    ("strategy disagrees", {"routing": {**ROUTING, "strategy": "consistent_hash"},
                            "gateway": {"routing": {"strategy": "round_robin"}}},
     ["$.gateway.routing.strategy: 'round_robin' disagrees with $.routing.strategy "
      "'consistent_hash'"]),
    ("interval disagrees", {"routing": {**ROUTING, "health_check_interval": "30s"},
                            "gateway": {"routing": {"health_check_interval": "10s"}}},
     ["$.gateway.routing.health_check_interval: 10s disagrees with "
      "$.routing.health_check_interval 30s"]),
    ("duplicate instance", {"routing": {"metald_instances": [
        {"host": "a", "port": 1}, {"host": "b", "port": 1}, {"host": "A", "port": 1}]}},
     ["$.routing.metald_instances[2]: duplicate of $.routing.metald_instances[0] (A:1)"]),
    ("all drained", {"routing": {"metald_instances": [{"host": "a", "port": 1, "weight": 0}]}},
     ["$.routing.metald_instances: every instance has weight 0, so none would get traffic"]),
    ("duplicate pool", {"routing": {"metald_instances": [
        {"host": "a", "port": 1, "customer_pools": ["p", "p"]}]}},
     ["$.routing.metald_instances[0].customer_pools[1]: duplicate of "
      "$.routing.metald_instances[0].customer_pools[0]"]),
    ("cidr", gw(security={"ip_deny": ["10.0.0.0/8", "10.0.0.0/33", "bad"]}),
     ['$.gateway.security.ip_deny[1]: expected an IP network like "10.0.0.0/8" or an address, '
      'got "10.0.0.0/33"',
      '$.gateway.security.ip_deny[2]: expected an IP network like "10.0.0.0/8" or an address, '
      'got "bad"']),
    ("header name", gw(security={"response_headers": {"Bad Header": "x"}}),
     ['$.gateway.security.response_headers["Bad Header"]: key must be an HTTP token']),
    ("header value", gw(security={"response_headers": {"X-A": "a\r\nSet-Cookie: x"}}),
     ["$.gateway.security.response_headers.X-A: expected a header value without CR, LF or NUL, "
      'got "a\\r\\nSet-Cookie: x"']),
    ("header case duplicate", gw(security={"response_headers": {"X-A": "1", "x-a": "2"}}),
     ["$.gateway.security.response_headers.x-a: same header as "
      "$.gateway.security.response_headers.X-A (names ignore case)"]),
    ("cors credentials", gw(security={"cors": {"allow_origins": ["*"], "allow_credentials": True}}),
     ["$.gateway.security.cors.allow_credentials: cannot be true when allow_origins contains '*' "
      "(browsers refuse it)"]),
    ("cors no origins", gw(security={"cors": {"enabled": True}}),
     ["$.gateway.security.cors.allow_origins: must not be empty when cors.enabled is true"]),
    ("cors origin", gw(security={"cors": {"allow_origins": ["https://a.example/path"]}}),
     ["$.gateway.security.cors.allow_origins[0]: expected '*' or an origin like "
      '"https://app.example.com", got "https://a.example/path"']),
    ("tracing endpoint", gw(observability={"tracing": {"enabled": True}}),
     ["$.gateway.observability.tracing.endpoint: required when tracing.enabled is true"]),
    ("tracing endpoint not a URL",
     gw(observability={"tracing": {"enabled": True, "endpoint": "collector:4318"}}),
     ['$.gateway.observability.tracing.endpoint: expected an http(s) URL like '
      '"http://host:4318/v1/traces", got "collector:4318"']),
    ("metrics port clash", gw(server={"port": 9090}),
     ["$.gateway.observability.metrics.port: 9090 is $.gateway.server.port too; metrics need a "
      "port of their own"]),
    ("metrics port 0 twice", gw(server={"port": 0}, observability={"metrics": {"port": 0}}), []),
    ("breaker cool-downs",
     gw(routing={"circuit_breaker": {"cooldown": "1m", "max_cooldown": "30s"}}),
     ["$.gateway.routing.circuit_breaker.max_cooldown: 30s is shorter than "
      "$.gateway.routing.circuit_breaker.cooldown (60s)"]),
    ("bounded load", {"routing": {**ROUTING, "bounded_load": 0.5}},
     ["$.routing.bounded_load: 0.5 is below 1: every instance would be over it; use 0 (off) or a "
      "factor >= 1, such as 1.25"]),
    ("bounded load strategy", {"routing": {**ROUTING, "strategy": "round_robin",
                                           "bounded_load": 1.5}},
     ["$.routing.bounded_load: applies to consistent_hash only, and $.routing.strategy is "
      "round_robin"]),
    ("metrics path", gw(observability={"metrics": {"path": "metrics"}}),
     ["$.gateway.observability.metrics.path: expected a path starting with '/', got \"metrics\""]),
    ("log level", gw(observability={"logging": {"level": "verbose"}}),
     ["$.gateway.observability.logging.level: expected one of 'debug', 'info', 'warning', "
      "'error', got \"verbose\""]),
    ("redis address", gw(rate_limiting={"redis": {"address": "redis"}}),
     ["$.gateway.rate_limiting.redis.address: expected 'host:port' or 'unix:///path', "
      'got "redis"']),
    ("redis db", gw(rate_limiting={"redis": {"db": 16}}),
     ["$.gateway.rate_limiting.redis.db: expected integer 0..15, got 16"]),
    ("secret not shown", gw(rate_limiting={"redis": {"password": 123456}}),
     ["$.gateway.rate_limiting.redis.password: expected string, got <hidden>"]),
    ("tier named dev",
     {"routing": ROUTING, "rate_limits": {"customer_tiers": {
         "free": {"requests_per_second": 1, "burst_size": 1},
         "dev": {"requests_per_second": 1, "burst_size": 1}}}},
     ["$.rate_limits.customer_tiers.dev: the tier name 'dev' is reserved for development tokens"
      " (X-Customer-Tier: dev tells a backend it is one)"]),
    ("default tier", {"routing": ROUTING, "rate_limits": {"default_tier": "fre"}},
     ["$.rate_limits.default_tier: 'fre' is not in $.rate_limits.customer_tiers "
      "(did you mean 'free'?)"]),
    ("tier name", {"routing": ROUTING, "rate_limits": {"customer_tiers": {
        "free": {"requests_per_second": 1}, "pro tier": {"requests_per_second": 1}}}},
     ['$.rate_limits.customer_tiers["pro tier"]: key must be a name of letters, digits, '
      "'_', '.', '-'"]),
    ("tier missing rps", {"routing": ROUTING, "rate_limits": {"customer_tiers": {"free": {}}}},
     ["$.rate_limits.customer_tiers.free.requests_per_second: missing required key"]),
    ("endpoint typo", {"routing": ROUTING, "rate_limits": {"endpoints": {"CreatVM": {}}}},
     ["$.rate_limits.endpoints.CreatVM: no route has endpoint 'CreatVM' "
      "(did you mean 'CreateVM'?)"]),
    ("endpoint without routes", {"routing": ROUTING, "routes": [],
                                 "rate_limits": {"endpoints": {"CreateVM": {}}}},
     ["$.rate_limits.endpoints.CreateVM: no route has endpoint 'CreateVM'"]),
    ("cost weight", {"routing": ROUTING, "rate_limits": {"endpoints": {"ListVMs": {
        "cost_weight": 1.5}}}},
     ["$.rate_limits.endpoints.ListVMs.cost_weight: expected integer 1..1000000, got 1.5"]),
    ("lone burst", {"routing": ROUTING, "rate_limits": {"global": {"burst_size": 10}}},
     ["$.rate_limits.global.burst_size: needs requests_per_second"]),
    ("route without path", {"routing": ROUTING, "routes": [{"endpoint": "a"}]},
     ["$.routes[0]: one of path or path_prefix is required"]),
    ("route with both", {"routing": ROUTING, "routes": [
        {"endpoint": "a", "path": "/a", "path_prefix": "/a/"}]},
     ["$.routes[0].path_prefix: set either path or path_prefix, not both"]),
    ("route path", {"routing": ROUTING, "routes": [{"endpoint": "a", "path": "a"}]},
     ["$.routes[0].path: expected a path starting with '/', got \"a\""]),
    ("route endpoint name", {"routing": ROUTING, "routes": [{"endpoint": "a b", "path": "/"}]},
     ["$.routes[0].endpoint: expected a name of letters, digits, '_', '.', '-', got \"a b\""]),
    ("route method", {"routing": ROUTING, "routes": [
        {"endpoint": "a", "path": "/", "methods": ["GE T"]}]},
     ['$.routes[0].methods[0]: expected an HTTP token, got "GE T"']),
    ("route method duplicate", {"routing": ROUTING, "routes": [
        {"endpoint": "a", "path": "/", "methods": ["get", "GET"]}]},
     ["$.routes[0].methods[1]: duplicate of $.routes[0].methods[0]"]),
    ("route auth", {"routing": ROUTING, "routes": [{"endpoint": "a", "path": "/", "auth": "no"}]},
     ["$.routes[0].auth: expected one of 'required', 'none', got \"no\""]),
    ("route anonymous permissions", {"routing": ROUTING, "routes": [
        {"endpoint": "a", "path": "/", "auth": "none", "permissions": ["x"]}]},
     ["$.routes[0].permissions: needs auth: required (an anonymous request has no permissions)"]),
    ("duplicate routes", {"routing": ROUTING, "routes": [
        {"endpoint": "a", "path": "/x", "methods": ["GET", "POST"]},
        {"endpoint": "b", "path": "/x", "methods": ["PUT"]},
        {"endpoint": "c", "path_prefix": "/x"},
        {"endpoint": "d", "path": "/x", "methods": ["post"]},
        {"endpoint": "e", "path_prefix": "/x", "methods": ["GET"]}]},
     ["$.routes[3]: same path /x and method (POST) as $.routes[0]",
      "$.routes[4]: same path_prefix /x and method (GET) as $.routes[2]"]),
    ("env unset", {"routing": {"metald_instances": [{"host": "${METALD_HOST}", "port": 1}]}},
     ["$.routing.metald_instances[0].host: environment variable METALD_HOST is not set"]),
    ("env malformed", {"routing": {"metald_instances": [{"host": "${METALD_HOST", "port": 1}]}},
     ['$.routing.metald_instances[0].host: malformed environment reference in '
      '"${METALD_HOST"']),
    ("env bad name", {"routing": {"metald_instances": [{"host": "${1X}", "port": 1}]}},
     ['$.routing.metald_instances[0].host: malformed environment reference in "${1X}"']),
    ("env value converted", {"routing": {"metald_instances": [{"host": "a", "port": "${P}"}]}},
     ['$.routing.metald_instances[0].port: expected integer 1..65535, got "80x"']),
]  # fmt: skip


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem(data: object, expected: list[str]) -> None:
    assert errors(data, {"P": "80x"}) == expected


def test_many_problems_are_reported_together() -> None:
    data = {
        "gateway": {
            "server": {"prot": 80, "port": "x", "timeouts": {"read": "soon"}},
            "authentication": {"jwt": {"algorithm": "none", "public_key_file": "missing.pem"}},
            "rate_limiting": {"backend": "memcached"},
            "routing": {"strategy": "round_robin"},
        },
        "routing": {"strategy": "consistent_hash", "metald_instances": [
            {"host": "a", "port": 0}, {"host": "b"}, {"host": "c", "port": 1, "weight": -1}]},
        "rate_limits": {"default_tier": "gold", "endpoints": {"ListVM": {}}},
        "routes": [{"endpoint": "ListVMs", "path": "/x", "extra": 1}],
        "extra": True,
    }  # fmt: skip
    paths = [line.partition(": ")[0] for line in errors(data)]
    assert paths == [
        "$.extra",
        "$.gateway.server.prot",
        "$.gateway.server.port",
        "$.gateway.server.timeouts.read",
        f"{JWT}.algorithm",
        "$.gateway.rate_limiting.backend",
        "$.routing.metald_instances[0].port",
        "$.routing.metald_instances[1].port",
        "$.routing.metald_instances[2].weight",
        "$.routes[0].extra",
        f"{JWT}.public_key_file",
        "$.gateway.routing.strategy",
        "$.rate_limits.default_tier",
        "$.rate_limits.endpoints.ListVM",
    ]


def test_a_failed_item_does_not_shift_later_paths() -> None:
    data = {"routing": {"metald_instances": [
        {"host": "a", "port": "x"}, {"host": "b", "port": 1}, {"host": "b", "port": 1}]}}
    assert errors(data) == [
        '$.routing.metald_instances[0].port: expected integer 1..65535, got "x"',
        "$.routing.metald_instances[2]: duplicate of $.routing.metald_instances[1] (b:1)",
    ]  # fmt: skip


def test_no_knock_on_problem_from_a_replaced_default() -> None:
    # routing.strategy is bad, so its default must not be compared with gateway.routing.strategy
    data = {"routing": {**ROUTING, "strategy": "random"}, "gateway": {"routing": {
        "strategy": "round_robin"}}}
    assert errors(data) == [
        "$.routing.strategy: expected one of 'consistent_hash', 'round_robin', "
        "'least_connections', got \"random\""
    ]


# -- files and YAML -------------------------------------------------------------------------------


def file_errors(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return check_config_file(path)


def test_missing_file(tmp_path: Path) -> None:
    assert check_config_file(tmp_path / "nope.yaml") == [
        f"$: cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    ]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (problem,) = check_config_file(tmp_path)
    assert problem.startswith(f"$: cannot read {tmp_path}: ")


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    assert file_errors(tmp_path, "routing:\n  metald_instances: [1\n  strategy: x\n") == [
        "$: invalid YAML at line 3, column 11: expected ',' or ']', but got ':'"
    ]


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    text = "routing:\n  metald_instances: [{host: a, port: 1}]\n  strategy: a\n  strategy: b\n"
    assert file_errors(tmp_path, text) == [
        "$: invalid YAML at line 4, column 3: found duplicate key 'strategy'"
    ]


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = (
        "routing:\n  metald_instances:\n    - &base {host: a, port: 1, weight: 5}\n"
        "    - {<<: *base, host: b}\n"
    )
    config = load_config_text(tmp_path, text)
    assert [(i.host, i.weight) for i in config.routing.metald_instances] == [("a", 5), ("b", 5)]


def load_config_text(tmp_path: Path, text: str) -> Any:
    (tmp_path / "gw.yaml").write_text(text)
    return load_config(tmp_path / "gw.yaml")


@pytest.mark.parametrize(
    "text",
    [b"a: \xc3\x28 bad\n", "a: 2020-13-45\n", "[" * 10000, "a: !!python/object:os.system x\n",
     "{a: 1}\n---\n{b: 2}\n", "a: [1,\n"],
)  # fmt: skip
def test_hostile_yaml_is_one_problem(text: str | bytes) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_yaml(text)
    (problem,) = caught.value.problems
    assert problem.path == "$" and problem.message.startswith("invalid YAML")


def test_check_config_file_lists_every_line(tmp_path: Path) -> None:
    lines = file_errors(tmp_path, "routing: {metald_instances: [{host: a, port: x}]}\nzz: 1\n")
    assert lines == [
        "$.zz: unknown key (known keys: gateway, routing, rate_limits, routes)",
        '$.routing.metald_instances[0].port: expected integer 1..65535, got "x"',
    ]
