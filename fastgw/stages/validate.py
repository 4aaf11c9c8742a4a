"""Request validation of one route: the body's media type, then its JSON against a schema.

What it owns
    ``ValidateBody.on_request``, placed after authentication, rate limits and permissions (an
    unauthenticated request is refused before anything is buffered) and before ``forward``:

    * ``content_types``: a request with a body (Content-Length > 0, or chunked) whose
      Content-Type, taken as ``type/subtype`` before any ``;`` parameter and compared
      case-insensitively, is not listed (or is missing) gets 415 ``unsupported_media_type``.
      Requests without a body carry no media type and pass.
    * ``json_schema``: the body is read whole, parsed with orjson and validated with the
      schema compiled once per plan (jsonschema-rs). Invalid JSON or a failed check is 400
      ``bad_request`` naming the problem and, for the schema, the failing place as a JSONPath
      (``$.config.cpu.vcpuCount: 0 is less than the minimum of 1``). A request without a body
      is refused too (there is nothing to validate). The connection stays open: the body was
      read. On success the chain goes on to ``forward``, which sends the buffered body as it
      sends any body that arrived before the backend connection.

Invariants
    * Bodies are buffered only on routes with a schema. While the stage waits, the connection
      does not pause reading for its body buffer (``DownstreamProtocol.read_whole_body``);
      ``max_body_size`` (413) and the read timeout (408) bound it as for any body.
    * No Task, Future or closure per request: when the body is not complete yet the stage sets
      ``ex.on_body_done`` to a bound method made once, PAUSEs, and the connection calls it
      from ``on_message_complete``, which validates and resumes the exchange.
    * Messages carry the client's values only shortened and without control characters.

Schemas come from ``RouteConfig.json_schema``: an inline mapping (frozen by the loader) or the
absolute path of a JSON or YAML file. ``load_schema`` and ``compile_schema`` are shared with
the config checks, so a schema that does not compile is a config error, never a worker's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, NoReturn

import jsonschema_rs
import orjson
import yaml

from fastgw.exchange import ABORTED, PAUSED
from fastgw.pipeline import CONTINUE, PAUSE, RESPOND
from fastgw.replies import BAD_REQUEST, ErrorReply

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.replies import ReplyTable

__all__ = [
    "SchemaError",
    "ValidateBody",
    "compile_schema",
    "json_path",
    "load_schema",
    "media_type",
]

log = logging.getLogger(__name__)

MAX_DETAIL_CHARS: Final = 200
"""Longest problem text in a 400 (the validator quotes the client's values)."""

# Control characters (and DEL) become spaces: the reply's message is spliced into JSON as is.
_PRINTABLE: Final = {i: " " for i in [*range(32), 127]}
_CONTENT_TYPE: Final = b"content-type"


class SchemaError(ValueError):
    """A ``json_schema`` that cannot be used; the message says why (for the config error)."""


def _thaw(value: object) -> object:
    """The loader's frozen mapping (MappingProxyType, tuples) as plain JSON data."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(item) for item in value]
    return value


def load_schema(source: str | Mapping[str, object]) -> dict[str, object]:
    """The schema itself: ``source`` inline, or read from the JSON/YAML file it names."""
    if not isinstance(source, str):
        data = _thaw(source)
    else:
        try:
            with open(source, "rb") as file:
                text = file.read()
        except OSError as exc:
            raise SchemaError(f"cannot read {source}: {exc.strerror or exc}") from None
        try:
            data = orjson.loads(text) if source.endswith(".json") else yaml.safe_load(text)
        except (orjson.JSONDecodeError, yaml.YAMLError, ValueError, RecursionError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SchemaError(f"{source} is not JSON/YAML: {first}") from None
    if not isinstance(data, dict):
        raise SchemaError("a JSON Schema must be a mapping")
    return data


def _no_remote(uri: str, /) -> NoReturn:
    raise ValueError(f"remote $ref {uri} is not fetched: put the schema inline")


def compile_schema(schema: dict[str, object]) -> jsonschema_rs.Validator:
    """Compile once (the draft from ``$schema``, else 2020-12); remote ``$ref`` is refused:
    neither check-config nor a worker fetches anything to build a plan."""
    try:
        return jsonschema_rs.validator_for(schema, retriever=_no_remote)
    except jsonschema_rs.ValidationError as exc:
        where = json_path(exc.instance_path)
        raise SchemaError(f"invalid JSON Schema at {where}: {exc.message}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # data jsonschema-rs cannot take
        raise SchemaError(f"invalid JSON Schema: {str(exc).splitlines()[0]}") from None


def json_path(parts: list[str | int]) -> str:
    """``["config", "cpu"]`` → ``$.config.cpu``; ``[..., 0]`` → ``[0]``; odd keys quoted."""
    out = ["$"]
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif part.isidentifier():
            out.append(f".{part}")
        else:
            out.append(f"[{orjson.dumps(part).decode()}]")
    return "".join(out)


def media_type(forward_block: bytes) -> bytes | None:
    """The request's media type (``type/subtype``, lowercased, no parameters) from the kept
    header block; ``None`` without a Content-Type, ``b""`` when it is given twice."""
    found: bytes | None = None
    if b":" not in forward_block:
        return None
    for line in forward_block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == _CONTENT_TYPE:
            if found is not None:
                return b""  # two Content-Types: ambiguous, accepted by no route
            found = value.partition(b";")[0].strip().lower()
    return found


def _detail(text: str) -> str:
    text = text.translate(_PRINTABLE)
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


class ValidateBody:
    """The validation stage of one route (see the module docstring)."""

    __slots__ = (
        "_body_done",
        "_common_headers",
        "_media_types",
        "_not_json",
        "_unsupported",
        "_validator",
    )

    def __init__(
        self,
        replies: ReplyTable,
        common_headers: bytes,
        content_types: tuple[str, ...] = (),
        schema: dict[str, object] | None = None,
    ) -> None:
        self._common_headers = common_headers
        self._media_types = frozenset(t.lower().encode("ascii") for t in content_types)
        self._unsupported = (
            ErrorReply(
                replies.unsupported_media_type.spec,
                common_headers,
                "Content-Type must be " + " or ".join(sorted(t.lower() for t in content_types)),
            )
            if content_types
            else replies.unsupported_media_type
        )
        self._validator = None if schema is None else compile_schema(schema)
        self._not_json = self._bad("body is not JSON: empty body")
        self._body_done = self._validate_now  # bound once: ex.on_body_done needs no closure

    def _bad(self, message: str) -> ErrorReply:
        """A 400 ``bad_request`` with this message (the error path only: built per failure)."""
        return ErrorReply(BAD_REQUEST, self._common_headers, message)

    # HOT PATH
    def on_request(self, ex: Exchange) -> int:
        head = ex.head
        assert head is not None
        has_body = head.content_length > 0 or head.chunked
        if self._media_types and has_body:
            kind = media_type(head.forward_block)
            if kind not in self._media_types:
                ex.reply = self._unsupported
                return RESPOND
        if self._validator is None:
            return CONTINUE
        if not has_body:
            ex.reply = self._not_json
            return RESPOND
        if ex.body_done:
            return CONTINUE if self._check(ex) else RESPOND
        ex.on_body_done = self._body_done
        ex.move(PAUSED)
        ex.conn.read_whole_body(ex)
        return PAUSE

    def _validate_now(self, ex: Exchange) -> None:
        """``ex.on_body_done``: the body is complete; decide, then resume the chain (which
        answers ``ex.reply`` when it was set)."""
        if ex.state == ABORTED:
            return
        try:
            self._check(ex)
            ex.resume()
        except Exception:
            # Never a request left PAUSED: close its connection instead (called from a parser
            # callback, an escaping error would be read as the next request's framing).
            log.exception(
                "request validation: could not resume a request",
                extra={"request_id": ex.request_id, "path": ex.path},
            )
            transport = getattr(ex.conn, "transport", None)
            if transport is not None:
                transport.abort()

    def _check(self, ex: Exchange) -> bool:
        """Validate the buffered body; on failure set ``ex.reply`` and return False."""
        pending = ex.body_pending
        body = pending[0] if len(pending) == 1 else b"".join(pending)
        if len(pending) > 1:
            ex.body_pending = [body]  # forwarded in one piece
        if not body:
            ex.reply = self._not_json
            return False
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            ex.reply = self._bad(_detail(f"body is not JSON: {exc}"))
            return False
        validator = self._validator
        assert validator is not None
        try:
            validator.validate(document)
        except jsonschema_rs.ValidationError as exc:
            where = json_path(exc.instance_path)
            ex.reply = self._bad(_detail(f"{where}: {exc.message}"))
            return False
        return True
