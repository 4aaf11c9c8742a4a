"""Scrubbing secrets from log lines: defence in depth behind "no code path logs a token".

What it owns
    ``Redactor``: one compiled pattern set, built once from the config (``redactor_for``),
    applied to every formatted log line (message, extra fields and traceback text alike) and
    to the client-controlled fields of access-log lines (path, request id).

What it removes, each replaced by ``[REDACTED]``
    * JWS/JWE compact tokens: a first segment that is base64url of a JSON object (``ey`` or
      ``ew``: ``{"`` / ``{ `` / ``{\\n``), then at least two more dot-separated segments.
      Requiring the JSON start instead of "any three base64url runs" keeps host names such as
      ``node-1.redis.internal`` readable in the logs.
    * The credentials after ``Bearer`` / ``Basic`` (any case).
    * The whole value after ``Authorization`` / ``Proxy-Authorization`` / ``X-API-Key``
      followed by ``:`` or ``=`` (header dumps, ``key=value`` extras), whatever its scheme
      (``Token a b``, ``Digest ... response="..."``, ``k1 k2``): to the end of the line, or to
      the closing quote when the value is quoted (a JSON field, a repr). A ``Bearer``,
      ``Basic`` or ``Digest`` scheme word is kept.
    * ``<name>=<value>`` for the token query parameters and cookies the config names
      (``token_sources``), plus the usual ``access_token``, ``id_token`` and ``token``.
    * Development tokens: the configured prefix followed by at least one id character.

Invariant: a scrubbed JSON line stays valid JSON (``scrub(line, json=True)``): a replacement
never removes a bare quote and never splits an escape (the value classes exclude ``"``, ``'``,
``\\`` and blanks; a header value in JSON text is read as whole escape pairs and ends at a bare
quote or at an escaped line end, ``\\n``/``\\r``, the end of its line before encoding).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from fastgw.config import Config

__all__ = ["REDACTED", "Redactor", "redactor_for"]

REDACTED: Final = "[REDACTED]"
DEFAULT_TOKEN_PARAMS: Final = ("access_token", "id_token", "token")
DEFAULT_DEV_PREFIX: Final = "dev_customer_"

_JWT: Final = r"\be[wy][A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*){2,}"
_SCHEME: Final = r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+"
# A header rule's match is group 1, kept (the name, the key's closing quote and the separator, an
# opening quote, a Bearer/Basic/Digest scheme word), then the value, replaced; where the value
# ends depends on its opening quote: group 2 ``\"`` (JSON text inside a string), group 3 ``"`` or
# ``'`` (plain text: a JSON field, a repr), else none (the rest of the line).
# A name starts a word, or follows an escaped line break or tab (JSON text: "...\nAuthorization").
_HEADER_NAME: Final = r"(?:\b|(?<=\\[nrt]))(?i:(?:proxy-)?authorization|x-api-key)"
_SEPARATOR: Final = r"(?:\\?[\"'])?[ \t]*[:=][ \t]*"
_KEPT_SCHEME: Final = r"(?:(?i:bearer|basic|digest)[ \t]+)?"
_NESTED_QUOTE: Final = r"\\\\\\\""  # \\\" : a quote escaped inside a string escaped once more
_HEADER_TEXT: Final = (  # plain text: a quoted value ends at its quote, any other at the line end
    rf"({_HEADER_NAME}{_SEPARATOR}(?:(\\\")|([\"'])|){_KEPT_SCHEME})"
    rf"(?(2)(?:{_NESTED_QUOTE}|[^\\\r\n]|\\[^\"\r\n])+"
    r"|(?(3)(?:(?!\3)[^\\\r\n]|\\[^\r\n])+|[^\r\n]+))"
)
_HEADER_JSON: Final = (  # JSON text: whole escape pairs only; a bare quote or \n, \r ends it
    # A bare quote opens a value only after a bare one closed the name: a key of the document.
    rf"({_HEADER_NAME}(?:\"[ \t]*:[ \t]*\"|{_SEPARATOR}(?:(\\\")|(')|)){_KEPT_SCHEME})"
    rf"(?(2)(?:{_NESTED_QUOTE}|[^\\\"]|\\[^\"nr])+"
    r"|(?(3)(?:[^'\\\"]|\\[^nr])+|(?:[^\\\"]|\\[^nr])+))"
)
_VALUE: Final = r"[^\s&;\"',}\\]+"


class Redactor:
    """``scrub(text)``: ``text`` with every secret-looking part replaced (module docstring)."""

    __slots__ = ("_dev", "_dev_prefix", "_header", "_header_json", "_jwt", "_params", "_scheme")

    def __init__(
        self,
        dev_prefix: str | None = DEFAULT_DEV_PREFIX,
        token_params: Iterable[str] = DEFAULT_TOKEN_PARAMS,
    ) -> None:
        self._jwt = re.compile(_JWT)
        self._scheme = re.compile(_SCHEME)
        self._header = re.compile(_HEADER_TEXT)
        self._header_json = re.compile(_HEADER_JSON)
        names = sorted({*DEFAULT_TOKEN_PARAMS, *token_params}, key=len, reverse=True)
        alternatives = "|".join(re.escape(name) for name in names)
        self._params = re.compile(rf"(?i:(?<![A-Za-z0-9_\-])({alternatives})=){_VALUE}")
        self._dev = (
            re.compile(re.escape(dev_prefix) + r"[A-Za-z0-9_.\-]+") if dev_prefix else None
        )
        self._dev_prefix = dev_prefix or None

    def suspect(self, text: str) -> bool:
        """False when no pattern can match ``text``, decided with substring tests (a few
        tenths of a microsecond on a URL path, where the five patterns take about four)."""
        if "=" in text or ":" in text:
            return True  # a header dump or a parameter
        if ("ey" in text or "ew" in text) and "." in text:
            return True  # maybe a JWT
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered:
            return True
        return self._dev_prefix is not None and self._dev_prefix in text

    def scrub(self, text: str, *, json: bool = False) -> str:
        """``text`` scrubbed; ``json``: it is a JSON document (a JSON log line), whose escapes
        and quotes a replacement must leave whole (module docstring, "Invariant")."""
        if not self.suspect(text):
            return text
        text = self._jwt.sub(REDACTED, text)
        text = self._scheme.sub(rf"\1 {REDACTED}", text)
        header = self._header_json if json else self._header
        text = header.sub(rf"\1{REDACTED}", text)
        text = self._params.sub(rf"\1={REDACTED}", text)
        if self._dev is not None:
            text = self._dev.sub(REDACTED, text)
        return text


def redactor_for(config: Config) -> Redactor:
    """The redactor for ``config``: its dev-token prefix (whether or not dev tokens are on:
    scrubbing one costs nothing) and its query and cookie token names."""
    auth = config.gateway.authentication
    names = [
        source.split(":", 1)[1]
        for source in auth.token_sources
        if source.startswith(("query:", "cookie:"))
    ]
    return Redactor(auth.development.token_prefix, names)
