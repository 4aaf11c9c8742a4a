"""Loading valid configs: the reference blocks, the minimal file, defaults, env, files, YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from fastgw.config import Config, ConfigError, check_config_file, load_config, parse_config
from fastgw.config.defaults import DEFAULT_METALD_ROUTES
from fastgw.config.model import DEFAULT_TIERS

DATA = Path(__file__).resolve().parents[1] / "data"
MINIMAL: dict[str, Any] = {"routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9001}]}}


def parse(data: object, env: dict[str, str] | None = None) -> Config:
    return parse_config(data, base_dir=DATA, env=env or {})


def with_minimal(**sections: Any) -> dict[str, Any]:
    return {**MINIMAL, **sections}


def test_reference_blocks_load_without_problems() -> None:
    assert check_config_file(DATA / "reference.yaml") == []
    config = load_config(DATA / "reference.yaml")
    assert config.source_path == str(DATA / "reference.yaml")
    server = config.gateway.server
    assert (server.host, server.port) == ("0.0.0.0", 8080)
    assert server.tls.enabled
    assert server.tls.cert_file == str(DATA / "gateway.crt")
    assert server.tls.key_file == str(DATA / "gateway.key")
    timeouts = server.timeouts
    assert (timeouts.read_s, timeouts.write_s, timeouts.idle_s) == (30, 30, 120)
    assert server.limits.max_header_size_bytes == 1024**2
    assert server.limits.max_body_size_bytes == 10 * 1024**2
    assert server.limits.max_connections == 10000
    jwt = config.gateway.authentication.jwt
    assert jwt.public_key_file == str(DATA / "jwt-public.pem")
    assert jwt.algorithms == ("RS256",)
    assert jwt.cache_ttl_s == 300
    assert config.gateway.authentication.development.enabled is False
    limiting = config.gateway.rate_limiting
    assert limiting.backend == "redis"
    assert limiting.redis.address == "redis-cluster:6379"
    assert limiting.redis.pool_size == 100
    routing = config.gateway.routing
    assert routing.strategy == config.routing.strategy == "consistent_hash"
    assert routing.health_check_interval_s == config.routing.health_check_interval_s == 30
    assert (routing.backend_timeout_s, routing.retry_attempts) == (30, 3)
    assert routing.retry_backoff_s == pytest.approx(0.1)
    obs = config.gateway.observability
    assert (obs.metrics.enabled, obs.metrics.port, obs.metrics.path) == (True, 9090, "/metrics")
    assert obs.tracing.enabled and obs.tracing.endpoint == "http://jaeger:14268/api/traces"
    assert obs.tracing.sample_rate == pytest.approx(0.1)
    assert (obs.logging.level, obs.logging.format, obs.logging.output) == ("info", "json", "stdout")
    instances = config.routing.metald_instances
    assert [(i.host, i.port, i.weight) for i in instances] == [
        ("metald-1.internal", 8080, 100), ("metald-2.internal", 8080, 100),
        ("metald-3.internal", 8080, 50),
    ]  # fmt: skip
    assert instances[2].customer_pools == ("overflow",)
    assert (config.routing.unhealthy_threshold, config.routing.recovery_threshold) == (3, 2)
    limits = config.rate_limits
    assert limits.global_limit.requests_per_second == 10000
    assert limits.global_limit.burst_size == 1000
    assert limits.global_limit.window_size_s == 60
    assert limits.customer_tiers["pro"].requests_per_day == 100000
    assert limits.customer_tiers["enterprise"].burst_size == 2000
    assert limits.endpoints["CreateVM"].cost_weight == 10
    assert limits.endpoints["BootVM"].requests_per_second == 20
    assert config.routes == DEFAULT_METALD_ROUTES


def test_minimal_config_and_defaults() -> None:
    config = parse(MINIMAL)
    assert config.routing.metald_instances[0].host == "127.0.0.1"
    assert config.routes == DEFAULT_METALD_ROUTES
    assert config.rate_limits.customer_tiers == DEFAULT_TIERS
    assert config.rate_limits.default_tier == "free"
    assert config.gateway.server.workers is None
    assert config.gateway.server.limits.max_header_size_bytes == 64 * 1024
    assert config.gateway.security.response_headers == {"X-Content-Type-Options": "nosniff"}
    assert config.gateway.authentication.token_sources == ("header",)
    assert config.source_path is None


def test_minimal_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("routing: {metald_instances: [{host: 127.0.0.1, port: 9001}]}")
    assert load_config(tmp_path / "c.yaml").routing.metald_instances[0].port == 9001


def test_default_routes_are_the_metald_service() -> None:
    names = [r.endpoint for r in DEFAULT_METALD_ROUTES]
    assert names == ["CreateVM", "DeleteVM", "BootVM", "ShutdownVM", "PauseVM", "ResumeVM",
                     "RebootVM", "GetVMInfo", "ListVMs"]  # fmt: skip
    for route in DEFAULT_METALD_ROUTES:
        assert route.methods == ("POST",)
        assert route.path is not None and route.path.startswith("/vmprovisioner.v1.VmService/")
        assert route.path_prefix is None and route.auth == "required" and route.permissions == ()
    assert DEFAULT_METALD_ROUTES[7].path == "/vmprovisioner.v1.VmService/GetVmInfo"


def test_explicit_empty_routes_mean_none() -> None:
    assert parse(with_minimal(routes=[])).routes == ()


def test_model_is_immutable() -> None:
    config = parse(with_minimal(rate_limits={"endpoints": {"CreateVM": {"cost_weight": 2}}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway.server.port = 1  # type: ignore[misc]
    assert isinstance(config.rate_limits.endpoints, MappingProxyType)
    with pytest.raises(TypeError):
        config.rate_limits.endpoints["x"] = config.rate_limits.endpoints["CreateVM"]  # type: ignore[index]
    assert isinstance(config.routing.metald_instances, tuple)


def test_conversions() -> None:
    config = parse(with_minimal(
        gateway={
            "server": {"timeouts": {"read": "1.5s", "idle": 90, "header": "100ms"},
                       "limits": {"max_header_size": "16KiB", "max_body_size": 1000}},
            "authentication": {"jwt": {"algorithm": ["RS256", "ES256"], "audience": "api",
                                       "leeway": "30s"},
                               "token_sources": ["header", "cookie:session", "query:access_token"]},
            "security": {"ip_allow": ["10.1.2.3/8", "::1", "192.168.0.0/16"],
                         "response_headers": {"X-Frame-Options": "DENY", "Empty": ""}},
            "observability": {"logging": {"output": "logs/gw.log"}},
        },
        routes=[{"endpoint": "api", "methods": ["get", "Post"], "path_prefix": "/api/",
                 "timeout": "2s"}],
    ))  # fmt: skip
    timeouts = config.gateway.server.timeouts
    assert (timeouts.read_s, timeouts.idle_s, timeouts.header_s) == (1.5, 90.0, 0.1)
    assert isinstance(timeouts.idle_s, float)
    assert config.gateway.server.limits.max_header_size_bytes == 16384
    jwt = config.gateway.authentication.jwt
    assert jwt.algorithms == ("RS256", "ES256")
    assert jwt.audience == ("api",)
    assert jwt.leeway_s == 30
    assert jwt.effective_required_claims == ("exp", "customer_id")
    security = config.gateway.security
    assert security.ip_allow == ("10.0.0.0/8", "::1/128", "192.168.0.0/16")
    assert security.response_headers["Empty"] == ""
    assert config.gateway.observability.logging.output == str(DATA / "logs" / "gw.log")
    route = config.routes[0]
    assert route.methods == ("GET", "POST")
    assert route.timeout_s == 2.0


def test_null_section_means_defaults() -> None:
    config = parse(with_minimal(gateway=None, rate_limits={"global": None}))
    assert config.gateway.server.port == 8080
    assert config.rate_limits.global_limit.requests_per_second is None


def test_effective_burst_sizes() -> None:
    config = parse(with_minimal(rate_limits={
        "global": {"requests_per_second": 2.5},
        "customer_tiers": {"free": {"requests_per_second": 0.5}, "pro": {"requests_per_second": 7}},
    }))  # fmt: skip
    assert config.rate_limits.global_limit.effective_burst_size == 3
    assert config.rate_limits.customer_tiers["free"].effective_burst_size == 1
    assert config.rate_limits.customer_tiers["pro"].effective_burst_size == 7
    assert config.rate_limits.customer_tiers["pro"].requests_per_day is None


def test_gateway_routing_keys_are_adopted_when_routing_omits_them() -> None:
    config = parse(with_minimal(gateway={"routing": {"strategy": "round_robin",
                                                     "health_check_interval": "5s"}}))
    assert config.routing.strategy == "round_robin"
    assert config.routing.health_check_interval_s == 5.0


def test_gateway_routing_keys_may_repeat_routing() -> None:
    config = parse({
        "gateway": {"routing": {"strategy": "least_connections", "health_check_interval": 30}},
        "routing": {**MINIMAL["routing"], "strategy": "least_connections",
                    "health_check_interval": "30s"},
    })  # fmt: skip
    assert config.routing.strategy == "least_connections"


# -- environment ----------------------------------------------------------------------------------


def test_env_substitution() -> None:
    env = {"HOST": "10.0.0.5", "PORT": "9100", "SECRET": "s3cret", "EMPTY": "", "TLS": "false"}
    config = parse({
        "routing": {"metald_instances": [{"host": "${HOST}", "port": "${PORT}"},
                                         {"host": "${MISSING:-fallback}", "port": 1}]},
        "gateway": {
            "rate_limiting": {"redis": {"password": "${SECRET}$$${EMPTY}x",
                                        "address": "${HOST}:6379"}},
            "server": {"host": "${EMPTY:-127.0.0.1}", "timeouts": {"read": "${T:-5s}"},
                       "tls": {"enabled": "${TLS}"}},
        },
    }, env)  # fmt: skip
    instances = config.routing.metald_instances
    assert (instances[0].host, instances[0].port) == ("10.0.0.5", 9100)
    assert instances[1].host == "fallback"
    assert config.gateway.rate_limiting.redis.password == "s3cret$x"
    assert config.gateway.rate_limiting.redis.address == "10.0.0.5:6379"
    assert config.gateway.server.host == "127.0.0.1"
    assert config.gateway.server.timeouts.read_s == 5.0
    assert config.gateway.server.tls.enabled is False


def test_load_config_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTGW_TEST_PORT", "9123")
    (tmp_path / "c.yaml").write_text(
        "routing:\n  metald_instances:\n    - {host: h, port: '${FASTGW_TEST_PORT}'}\n"
    )
    assert load_config(tmp_path / "c.yaml").routing.metald_instances[0].port == 9123
    config = load_config(tmp_path / "c.yaml", env={"FASTGW_TEST_PORT": "1"})
    assert config.routing.metald_instances[0].port == 1


def test_env_text_is_read_as_a_number_only_after_substitution() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"routing": {"metald_instances": [{"host": "h", "port": "9100"}]}})
    assert [str(p) for p in caught.value.problems] == [
        '$.routing.metald_instances[0].port: expected integer 1..65535, got "9100"'
    ]


# -- files --------------------------------------------------------------------------------------


def test_files_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwt.pem").write_bytes((DATA / "jwt-public.pem").read_bytes())
    (tmp_path / "gw.yaml").write_text(
        "routing: {metald_instances: [{host: h, port: 1}]}\n"
        "gateway: {authentication: {jwt: {public_key_file: keys/jwt.pem}}}\n"
    )
    config = load_config(tmp_path / "gw.yaml")
    assert config.gateway.authentication.jwt.public_key_file == str(tmp_path / "keys" / "jwt.pem")


def test_tls_files_are_not_checked_while_tls_is_off() -> None:
    config = parse(with_minimal(gateway={"server": {"tls": {"cert_file": "/nope.crt"}}}))
    assert config.gateway.server.tls.cert_file == "/nope.crt"


def test_jwks_file_and_url() -> None:
    config = parse(with_minimal(gateway={"authentication": {"jwt": {"jwks_url": "https://idp/jwks"}}}))
    assert config.gateway.authentication.jwt.jwks_url == "https://idp/jwks"


def test_hs256_with_a_long_secret() -> None:
    jwt = {"algorithm": "HS256", "hs_secret": "${JWT_SECRET}"}
    config = parse(with_minimal(gateway={"authentication": {"jwt": jwt}}), {"JWT_SECRET": "k" * 32})
    assert config.gateway.authentication.jwt.hs_secret == "k" * 32
