"""The process's log output, from ``gateway.observability.logging``: JSON lines or text, on
stdout, stderr or a file, at the configured level, with secrets scrubbed.

What it owns
    ``configure_logging(config, worker=None)``: one handler on the root logger (replacing the
    one it installed before; handlers others installed, such as pytest's, stay), the root
    level, and the formatter. ``JsonFormatter`` and ``TextFormatter`` (one line per record;
    text lines may carry a traceback below). ``json_line`` / ``text_line``: the same layouts
    for callers that build lines without a ``LogRecord`` (the access log).

A JSON line
    ``{"ts": "2025-06-12T10:30:00.123Z", "level": "info", "logger": "fastgw.worker",
    "msg": "...", "pid": 4242, "worker": 0, ...extra fields..., "exc": "Traceback ..."}``:
    ``ts`` is RFC 3339 UTC with milliseconds, ``level`` lowercase like the config, ``worker``
    the worker's slot in its generation (absent in the master), then every field the caller
    passed with ``extra={...}`` (bytes decoded, anything else JSON cannot hold as ``str()``),
    ``exc`` and ``stack`` as strings when present. orjson writes it: one call per record.

Process model (docs/process-model.md)
    * The master configures before it forks its first workers and starts no thread doing it
      (the sink is a plain file descriptor; logging's own at-fork hook reinitialises handler
      locks in the child), so what a worker logs before it reconfigures still goes to the
      right place.
    * Each worker configures again right after fork, from its own generation's config and
      with its slot: a reload that changed level, format or output reaches the new
      generation, while the old one keeps its output until it has drained.
    * On SIGHUP the master applies the new config to itself once the config checks pass; an
      output that cannot be opened rejects the reload like any other config problem.
    * File rotation needs no signal: see ``logging_sink.py``.

Redaction: every line, whichever format, goes through ``Redactor.scrub`` last (message,
extras and traceback text alike): see ``logging_redact.py``. No code path logs a token or an
Authorization value to begin with; the scrub is the second line of defence.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from fastgw.obs.logging_redact import Redactor, redactor_for
from fastgw.obs.logging_sink import LogOutputError, LogSink

if TYPE_CHECKING:
    from fastgw.config import Config

__all__ = [
    "JsonFormatter",
    "LineHandler",
    "LogOutputError",
    "TextFormatter",
    "configure_logging",
    "installed_handler",
    "json_line",
    "rfc3339",
    "text_line",
    "unconfigure_logging",
]

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_LEVEL_NAMES: Final = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def rfc3339(epoch_s: float) -> str:
    """``2025-06-12T10:30:00.123Z``: UTC, milliseconds."""
    whole = int(epoch_s)
    millis = int((epoch_s - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def _jsonable(value: object) -> object:
    """orjson's ``default``: bytes as text, anything else it cannot hold as ``str()``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def json_line(fields: dict[str, Any]) -> bytes:
    """One JSON log line (newline included) from fields already in log-line order."""
    return orjson.dumps(fields, default=_jsonable, option=orjson.OPT_APPEND_NEWLINE)


def text_line(
    ts: str,
    *,
    pid: int,
    worker: int | None,
    level: str,
    logger: str,
    msg: str,
    extra: dict[str, Any],
) -> str:
    """``<ts> [<pid> w<slot>] LEVEL logger: msg key=value ...`` (no newline)."""
    where = f"{pid}" if worker is None else f"{pid} w{worker}"
    pairs = "".join(
        f" {key}={_jsonable(value) if isinstance(value, bytes) else value}"
        for key, value in extra.items()
    )
    return f"{ts} [{where}] {level.upper()} {logger}: {msg}{pairs}"


class _FastgwFormatter(logging.Formatter):
    """What both layouts share: the worker slot, the redactor, the extra fields."""

    def __init__(self, redactor: Redactor, worker: int | None = None) -> None:
        super().__init__()
        self.redactor = redactor
        self.worker = worker

    @staticmethod
    def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
        return {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}

    def exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return record.exc_text or None


class JsonFormatter(_FastgwFormatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if self.worker is not None:
            fields["worker"] = self.worker
        for key, value in self.extra_fields(record).items():
            fields.setdefault(key, value)
        exc = self.exception_text(record)
        if exc is not None:
            fields["exc"] = exc
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        line = orjson.dumps(fields, default=_jsonable).decode("utf-8")
        return self.redactor.scrub(line, json=True)


class TextFormatter(_FastgwFormatter):
    """One line per record for people: ``ts [pid wN] LEVEL logger: message key=value``,
    a traceback on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        line = text_line(
            rfc3339(record.created),
            pid=record.process or 0,
            worker=self.worker,
            level=_LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            logger=record.name,
            msg=record.getMessage(),
            extra=self.extra_fields(record),
        )
        exc = self.exception_text(record)
        if exc is not None:
            line = f"{line}\n{exc}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return self.redactor.scrub(line)


class LineHandler(logging.Handler):
    """Writes each formatted record to a ``LogSink`` as one line, in one system call."""

    def __init__(self, sink: LogSink, formatter: _FastgwFormatter, level: int) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record).encode("utf-8", "replace") + b"\n")
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            self.sink.close()
        finally:
            super().close()


def installed_handler() -> LineHandler | None:
    """The handler ``configure_logging`` put on the root logger, if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LineHandler):
            return handler
    return None


def configure_logging(config: Config, worker: int | None = None) -> None:
    """Send this process's logging where ``config`` says, in its format, from its level.

    The new output is opened before the old handler is removed: a ``LogOutputError`` (the
    file cannot be opened) leaves the process logging as before."""
    settings = config.gateway.observability.logging
    level = logging.getLevelName(settings.level.upper())
    sink = LogSink(settings.output)  # raises LogOutputError
    redactor = redactor_for(config)
    formatter: _FastgwFormatter = (
        JsonFormatter(redactor, worker)
        if settings.format == "json"
        else TextFormatter(redactor, worker)
    )
    unconfigure_logging()
    root = logging.getLogger()
    root.addHandler(LineHandler(sink, formatter, level))
    root.setLevel(level)


def unconfigure_logging() -> None:
    """Remove and close the handler ``configure_logging`` installed (tests; reconfiguring)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, LineHandler):
            root.removeHandler(handler)
            handler.close()

