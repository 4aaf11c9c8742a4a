"""Any input gives a Config or a ConfigError: never another exception (hypothesis)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.config import Config, ConfigError, parse_config
from fastgw.config.load import parse_yaml, yaml_fields

DATA = Path(__file__).resolve().parents[1] / "data"
ENV = {"PORT": "8080", "NAME": "a b", "EMPTY": "", "SECRET": "x" * 64}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = st.sampled_from([
    "", "x", "none", "NONE", "RS256", "HS256", "30s", "100ms", "-1s", "1.5", "1MB", "16KiB",
    "1.1KB", "${PORT}", "${MISSING}", "${NAME:-d}", "${EMPTY:-5s}", "$$", "${", "${1}",
    "header", "query:t", "cookie:", "10.0.0.0/8", "::1", "bad/99", "http://h:1/p", "https://",
    "ftp://x", "*", "/", "/health", "redis:6379", "unix:///s", "host:0", "stdout", "a\r\nb",
    "jwt-public.pem", "gateway.crt", "gateway.key", ".", "/etc/passwd", "free", "pro",
    "CreateVM", "ListVMs", "round_robin", "consistent_hash", "redis", "memory", "GET", "post",
])  # fmt: skip
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | WORDS | st.text(max_size=12)
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
    max_leaves=8,
)


def for_type(tp: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Mostly well-shaped data for a model type, often junk, so the walk reaches deep fields."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        optional = {key: for_type(t, depth + 1) for key, (_, t) in yaml_fields(tp).items()}
        shaped = st.fixed_dictionaries({}, optional=optional)
        return shaped | st.builds(lambda d, extra: {**d, **extra}, shaped,
                                  st.dictionaries(WORDS, JUNK, max_size=1))
    if origin is tuple:
        return st.lists(for_type(typing.get_args(tp)[0], depth + 1), max_size=3) | SCALARS
    if origin is Mapping:
        value = for_type(typing.get_args(tp)[1], depth + 1)
        return st.dictionaries(WORDS | st.text(max_size=6), value, max_size=3) | SCALARS
    return SCALARS | JUNK if depth < 6 else SCALARS


def outcome(data: object) -> None:
    try:
        config = parse_config(data, base_dir=DATA, env=ENV)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path.startswith("$") and problem.message
    else:
        assert isinstance(config, Config)


@FUZZ
@given(for_type(Config))
def test_shaped_data(data: object) -> None:
    outcome(data)


@FUZZ
@given(st.dictionaries(st.sampled_from(["gateway", "routing", "rate_limits", "routes"]), JUNK)
       | JUNK)
def test_random_data(data: object) -> None:
    outcome(data)


MINIMAL = {"routing": {"metald_instances": [{"host": "h", "port": 1}]}}


@FUZZ
@given(for_type(Config))
def test_shaped_data_over_a_valid_base(data: object) -> None:
    if isinstance(data, dict):
        outcome({**MINIMAL, **data})


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=100))
def test_yaml_text(text: str | bytes) -> None:
    try:
        data = parse_yaml(text)
    except ConfigError as exc:
        (problem,) = exc.problems
        assert problem.path == "$"
        return
    outcome(data)


@FUZZ
@given(for_type(Config))
def test_yaml_round_trip(data: object) -> None:
    try:
        text = yaml.safe_dump(data)
    except (yaml.YAMLError, ValueError):
        return  # e.g. a surrogate in a string: not a file anyone can write
    outcome(parse_yaml(text))


ENV_EVERYWHERE = {
    "routing": {"metald_instances": [{"host": "${V}", "port": "${V}", "weight": "x${V:-1}"}]},
    "gateway": {
        "server": {"timeouts": {"read": "${V}"}, "limits": {"max_body_size": "${V}"},
                   "tls": {"enabled": "${V}"}},
        "routing": {"retry_budget": "${V}", "strategy": "${V}"},
        "security": {"ip_allow": ["${V}"], "response_headers": {"X-A": "${V}"}},
        "observability": {"tracing": {"endpoint": "${V}"}},
    },
}  # fmt: skip


@FUZZ
@given(st.text(max_size=40) | st.text(alphabet="0123456789.e-", min_size=1, max_size=6000))
def test_any_environment_value(value: str) -> None:
    try:
        parse_config(ENV_EVERYWHERE, base_dir=DATA, env={"V": value})
    except ConfigError as exc:
        assert all(len(str(problem)) < 400 for problem in exc.problems)
