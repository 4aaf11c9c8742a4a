"""What /health/detailed says of a failed Redis PING (fastgw/obs/health_probes.py): a category
made from the real exception classes the Redis client hands its callbacks, never their text."""

from __future__ import annotations

import pytest

from fastgw.obs.health_probes import error_category
from fastgw.resp.errors import RedisOverloaded, RedisTimeout, RedisUnavailable, ReplyError


@pytest.mark.parametrize(
    ("error", "category"),
    [
        (RedisTimeout("redis 10.0.0.7:6379: no reply within 200ms"), "timeout"),
        (RedisUnavailable("redis 10.0.0.7:6379: not connected"), "unavailable"),
        (RedisOverloaded("redis 10.0.0.7:6379: 1024 commands in flight"), "overloaded"),
        (ReplyError("NOAUTH Authentication required."), "auth"),
        (ReplyError("WRONGPASS invalid username-password pair or user is disabled."), "auth"),
        (ReplyError("NOPERM User default has no permissions to run the 'ping' command"), "auth"),
        (ReplyError("LOADING Redis is loading the dataset in memory"), "error_reply"),
        (OSError("[Errno 111] Connection refused: 10.0.0.7:6379"), "error"),
    ],
)
def test_a_failure_is_reported_by_category_only(error: BaseException, category: str) -> None:
    assert error_category(error) == category
    assert "10.0.0.7" not in category and "6379" not in category
