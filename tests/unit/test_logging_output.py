"""fastgw/obs/logging*.py: the JSON and text layouts, redaction, applying the config, and the
sink's promises (whole lines, rotation followed, bounded wait on a refusing output)."""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.config import Config, parse_config
from fastgw.obs import logging_sink
from fastgw.obs.logging import (
    JsonFormatter,
    LineHandler,
    LogOutputError,
    TextFormatter,
    configure_logging,
    installed_handler,
    unconfigure_logging,
)
from fastgw.obs.logging_errors import ThrottledLog
from fastgw.obs.logging_redact import REDACTED, Redactor, redactor_for
from fastgw.obs.logging_sink import LogSink

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJjdXN0b21lcl9pZCI6ImFjbWUiLCJleHAiOjE5MDAwMDAwMDB9."
    "c2lnbmF0dXJlLW5vdC1yZWFsbHktdmFsaWQtYnV0LWxvbmc"
)


def record(msg: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("fastgw.test", logging.WARNING, __file__, 1, msg, args or ("x",), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def config(tmp_path: Path, **logging_settings: Any) -> Config:
    data = {
        "gateway": {
            "authentication": {
                "development": {"enabled": True, "token_prefix": "devtok_"},
                "token_sources": ["header", "query:sig", "cookie:session"],
            },
            "observability": {"logging": logging_settings},
        },
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
    }
    return parse_config(data, base_dir=tmp_path, env={})


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    unconfigure_logging()
    root.setLevel(level)


# -- layouts ---------------------------------------------------------------------------------


def test_json_line_has_the_fields_in_order_with_extras() -> None:
    rec = record(request_id=b"rid-1", upstream="10.0.0.1:80", retries=2, obj=object())
    line = JsonFormatter(Redactor(), worker=3).format(rec)
    data = orjson.loads(line)
    assert list(data)[:6] == ["ts", "level", "logger", "msg", "pid", "worker"]
    assert TS.match(data["ts"]), data["ts"]
    assert data["level"] == "warning" and data["logger"] == "fastgw.test"
    assert data["msg"] == "hello x" and data["pid"] == os.getpid() and data["worker"] == 3
    assert data["request_id"] == "rid-1"  # bytes decoded
    assert data["upstream"] == "10.0.0.1:80" and data["retries"] == 2
    assert data["obj"].startswith("<object object")  # what JSON cannot hold: str()
    assert "\n" not in line


def test_json_line_carries_the_traceback_as_one_string_and_no_worker_in_the_master() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
        rec = logging.LogRecord("fastgw.t", logging.ERROR, __file__, 1, "failed", (), info)
    data = orjson.loads(JsonFormatter(Redactor()).format(rec))
    assert "worker" not in data
    assert data["exc"].startswith("Traceback (most recent call last)")
    assert "ValueError: boom" in data["exc"]


def test_text_line_for_people() -> None:
    line = TextFormatter(Redactor(), worker=1).format(record(upstream="h:1"))
    match = re.fullmatch(r"(\S+) \[(\d+) w1\] WARNING fastgw\.test: hello x upstream=h:1", line)
    assert match is not None, line
    assert TS.match(match.group(1)) and int(match.group(2)) == os.getpid()


# -- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"token {JWT} refused", JWT),
        (f"Authorization: Bearer {JWT}", JWT),
        ("Authorization: Bearer opaque-token_123", "opaque-token_123"),
        ("authorization=garbage!!", "garbage!!"),
        ('{"Authorization":"Basic dXNlcjpwYXNz"}', "dXNlcjpwYXNz"),
        ("GET /x?a=1&access_token=abc.def.ghi", "abc.def.ghi"),
        ("GET /x?sig=s3cr3t&b=2", "s3cr3t"),  # a configured query source
        ("Cookie: session=c00kie; theme=dark", "c00kie"),  # a configured cookie source
        ("customer devtok_123 in", "devtok_123"),  # the configured dev prefix
        ("alg none: eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "eyJzdWIiOiIxIn0"),
    ],
)
def test_secrets_are_scrubbed(tmp_path: Path, text: str, secret: str) -> None:
    scrubbed = redactor_for(config(tmp_path)).scrub(text)
    assert secret not in scrubbed and REDACTED in scrubbed, scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "redis node-1.redis.internal:6379 (cluster) answers again",
        "upstream 127.0.0.1:8080 failed: 504 upstream_timeout",
        "request 5f2b9c1d0e4a7f36-1a2b",
        "any token 'devtok_<id>' in the Authorization header is accepted",
        "/vmprovisioner.v1.VmService/ListVms",
    ],
)
def test_ordinary_text_is_left_alone(tmp_path: Path, text: str) -> None:
    assert redactor_for(config(tmp_path)).scrub(text) == text


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        ("Authorization: Token abc123secret", ["abc123secret"], "Authorization: "),
        ("x-api-key: k1 k2", ["k1", "k2"], "x-api-key: "),
        (
            'Authorization: Digest username="u", nonce="n", response="6629fae49393a053974509"',
            ["6629fae49393a053974509", 'nonce="n"'],
            "Authorization: Digest ",
        ),
        ("Proxy-Authorization: Negotiate YIIabc==\nnext", ["YIIabc"], "\nnext"),
        ("{'authorization': 'Token s3cr3t', 'x': 1}", ["s3cr3t"], "', 'x': 1}"),
        ('{"X-API-Key": "k1 k2", "y": 2}', ["k1", "k2"], '", "y": 2}'),
        (
            '{"authorization": "Digest a=\\"b\\", response=\\"zz9\\"", "y": 2}',
            ["zz9"],
            '"Digest [REDACTED]", "y": 2}',
        ),
    ],
)
def test_the_whole_header_value_is_scrubbed_whatever_its_scheme(
    text: str, secrets: list[str], kept: str
) -> None:
    redactor = Redactor()
    for scrubbed in (
        redactor.scrub(text),  # a text line
        orjson.loads(JsonFormatter(redactor).format(record("%s", text)))["msg"],  # a JSON line
        orjson.loads(JsonFormatter(redactor).format(record(header=text)))["header"],
    ):
        assert REDACTED in scrubbed and kept in scrubbed, scrubbed
        for secret in secrets:
            assert secret not in scrubbed, scrubbed


def test_a_header_value_given_as_an_extra_field_is_scrubbed_in_both_layouts() -> None:
    rec = record(authorization="Token abc123secret", x_api_key="k1")
    json_line = JsonFormatter(Redactor()).format(rec)
    assert orjson.loads(json_line)["authorization"] == REDACTED
    text_line = TextFormatter(Redactor()).format(rec)
    assert "abc123secret" not in text_line and f"authorization={REDACTED}" in text_line


@given(st.text(alphabet="ab \"\\'\n:=,}{Authorizaton-Kyx", max_size=60))
@settings(max_examples=400, deadline=None)
def test_any_scrubbed_json_line_is_still_json(text: str) -> None:
    for prefix in ("Authorization: ", "x-api-key=", '{"authorization": "', "'Authorization': '"):
        line = JsonFormatter(Redactor()).format(record("%s", prefix + text, auth=text))
        orjson.loads(line)  # raises when a replacement broke an escape or a quote


def test_a_scrubbed_json_line_is_still_json() -> None:
    rec = record("header %s", 'authorization="Bearer abc" \\ and "quoted"', auth=f"{JWT}\\")
    line = JsonFormatter(Redactor()).format(rec)
    data = orjson.loads(line)
    assert "abc" not in data["msg"] and JWT not in line
    assert data["msg"].endswith('\\ and "quoted"')


# -- configuration ---------------------------------------------------------------------------


def test_configure_writes_json_lines_at_the_level_to_a_file_relative_to_the_config(
    tmp_path: Path, restore_logging: None
) -> None:
    configure_logging(config(tmp_path, output="logs.jsonl", level="info"), worker=0)
    test_log = logging.getLogger("fastgw.unit")
    test_log.debug("not at info")
    test_log.info("kept %d", 1, extra={"request_id": "r1"})
    test_log.warning("Authorization: Bearer %s", JWT)
    lines = (tmp_path / "logs.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["msg"] for line in lines] == [
        "kept 1",
        f"Authorization: Bearer {REDACTED}",
    ]
    assert orjson.loads(lines[0])["worker"] == 0
    assert oct((tmp_path / "logs.jsonl").stat().st_mode & 0o777) == oct(0o640)


def test_reconfigure_replaces_only_its_own_handler(
    tmp_path: Path, restore_logging: None
) -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        configure_logging(config(tmp_path, output="a.log"))
        configure_logging(config(tmp_path, output="b.log", format="text", level="debug"))
        ours = [h for h in root.handlers if isinstance(h, LineHandler)]
        assert len(ours) == 1 and ours[0] is installed_handler()
        assert foreign in root.handlers and root.level == logging.DEBUG
        logging.getLogger("fastgw.unit").debug("to b")
        assert (tmp_path / "a.log").read_text() == ""
        assert "DEBUG fastgw.unit: to b" in (tmp_path / "b.log").read_text()
    finally:
        root.removeHandler(foreign)


def test_an_output_that_cannot_be_opened_keeps_the_old_one(
    tmp_path: Path, restore_logging: None
) -> None:
    configure_logging(config(tmp_path, output="ok.log"))
    with pytest.raises(LogOutputError, match="no-such-dir"):
        configure_logging(config(tmp_path, output="no-such-dir/x.log"))
    logging.getLogger("fastgw.unit").warning("still here")
    assert "still here" in (tmp_path / "ok.log").read_text()


# -- the sink --------------------------------------------------------------------------------


def test_a_rotated_file_is_reopened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging_sink, "LOG_REOPEN_CHECK_INTERVAL_S", 0.0)
    path = tmp_path / "gw.log"
    sink = LogSink(str(path))
    try:
        sink.write(b"one\n")
        path.rename(tmp_path / "gw.log.1")  # logrotate's create mode
        sink.write(b"two\n")
        path.unlink()  # removed outright
        sink.write(b"three\n")
        assert (tmp_path / "gw.log.1").read_bytes() == b"one\n"
        assert path.read_bytes() == b"three\n"
    finally:
        sink.close()


def test_rotation_is_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "gw.log"
    sink = LogSink(str(path))
    try:
        sink.write(b"one\n")  # the first write checks; the next check is a second away
        path.rename(tmp_path / "gw.log.1")
        sink.write(b"two\n")
        assert (tmp_path / "gw.log.1").read_bytes() == b"one\ntwo\n"
    finally:
        sink.close()


def test_batches_to_a_pipe_like_output_stay_under_pipe_buf_and_end_on_a_line() -> None:
    # SOCK_SEQPACKET keeps each write(2) as one packet: the reader sees the write boundaries.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sink = LogSink("stdout")
        sink._fd = ours.fileno()  # the sink's own rules, on this descriptor
        sink._max_write = LogSink._write_limit(sink, ours.fileno())
        lines = [b"%04d %s\n" % (i, b"x" * 90) for i in range(100)]  # ~9.6 kB in all
        sink.write_lines(lines)
        packets = []
        theirs.settimeout(1)
        received = 0
        while received < sum(map(len, lines)):
            packet = theirs.recv(1 << 16)
            packets.append(packet)
            received += len(packet)
        assert len(packets) >= 3
        assert all(len(p) <= logging_sink.select.PIPE_BUF and p.endswith(b"\n") for p in packets)
        assert b"".join(packets) == b"".join(lines)
    finally:
        ours.close()
        theirs.close()


def test_an_output_that_refuses_writes_is_given_up_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging_sink, "LOG_WRITE_BLOCKED_WAIT_S", 0.05)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        while True:  # fill the pipe
            try:
                os.write(write_fd, b"x" * 4096)
            except BlockingIOError:
                break
        sink = LogSink("stdout")
        sink._fd = write_fd
        with pytest.raises(OSError, match="refused writes"):
            sink.write(b"line\n")
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_closed_sink_fails_loudly_not_silently(tmp_path: Path) -> None:
    sink = LogSink(str(tmp_path / "x.log"))
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(OSError) as caught:
        sink.write(b"late\n")
    assert caught.value.errno == errno.EBADF


def test_a_throttled_error_line_says_how_many_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle = ThrottledLog(logging.getLogger("fastgw.unit.throttle"), 60.0)
    with caplog.at_level(logging.WARNING, logger="fastgw.unit.throttle"):
        for number in range(1, 5):
            if number == 4:
                throttle._last_s -= 60.0  # the interval has passed
            if throttle.due():
                throttle.log(logging.WARNING, "failed %d", number, extra={"request_id": number})
    first, second = caplog.records
    assert first.getMessage() == "failed 1" and not hasattr(first, "suppressed")
    assert second.getMessage() == "failed 4" and second.suppressed == 2  # type: ignore[attr-defined]
    assert second.request_id == 4  # type: ignore[attr-defined]
