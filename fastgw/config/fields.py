"""The metadata vocabulary of config fields, shared by the model modules and the loader.

This module owns the words a model field may use in its metadata and what each string *kind*
accepts (``convert_kind``); ``units.py`` owns the two numeric kinds, durations and sizes.

Every model field is declared with ``setting``/``seconds``/``section``/``required`` below, which
wrap ``dataclasses.field`` and put ``meta(doc, key=..., **rules)`` in its metadata. The loader
(``load.py``), ``check-config`` and ``tools/gen_config_reference.py`` read only these keys, so a
new rule is added here, in the loader, and in the reference generator, and nowhere else:

- ``doc``: one sentence for the reference; ``key``: the YAML key when it differs from the field
  name (fields carry their unit, YAML keys do not: ``read_s`` is ``read``); ``yaml: False``:
  not read from the file.
- ``kind``: how a scalar is read: ``duration`` (float seconds), ``size`` (int bytes), ``file``
  (resolved against the config file's directory), ``cidr`` (normalized network), ``url``
  (http/https), ``origin`` (``*`` or ``scheme://host[:port]``), ``path`` (starts with
  ``/``), ``address`` (``host:port`` or ``unix:///path``),
  ``output`` (``stdout``, ``stderr`` or a file), ``header_value`` (no CR, LF or NUL),
  ``json_or_file`` (a mapping of JSON data, frozen by ``freeze_json``, or a ``file``).
- ``range``: inclusive ``(lo, hi)``, either may be ``None``; ``positive``: strictly above zero;
  ``choices``; ``refuse``: ``(values, message)``, values refused in any case with a message of
  their own; ``pattern``: ``(regex, what)``; ``allow_empty`` (strings are non-empty unless set);
  ``secret``: a value never shown in messages.
- For lists: ``min_items``, ``unique``, ``scalar_ok`` (a lone string means a one-item list),
  ``upper`` (items uppercased); the scalar rules above apply to each item. For mappings:
  ``key_pattern`` checks the keys; the scalar rules apply to each value.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

HTTP_TOKEN: Final = (r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", "an HTTP token")
MEDIA_TYPE: Final = (
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+",
    "a media type like application/json (no parameters)",
)
NAME: Final = (r"[A-Za-z0-9_.-]+", "a name of letters, digits, '_', '.', '-'")
PERMISSION: Final = (
    r"[A-Za-z0-9_.:*/-]{1,128}", "a permission name of letters, digits and '_.:*/-' (1-128)"
)
BEARER_CHARS: Final = (r"[A-Za-z0-9._~+/-]+", "bearer token characters [A-Za-z0-9._~+/-]")
TOKEN_SOURCE: Final = (
    r"header|(?:query|cookie):[A-Za-z0-9_-]+",
    "'header', 'query:<name>' or 'cookie:<name>'",
)



def meta(doc: str, *, key: str | None = None, **rules: Any) -> dict[str, Any]:
    """Field metadata: the doc line, the YAML key when it differs, and the rules."""
    if "kind" in rules and rules["kind"] not in KIND_NOUNS:
        raise ValueError(f"unknown field kind {rules['kind']!r}")
    return {"doc": doc, **({"key": key} if key is not None else {}), **rules}


def setting(default: T, doc: str, *, key: str | None = None, **rules: Any) -> T:
    """A field with a default value (typed as the value, so mypy sees the field's type)."""
    return field(default=default, metadata=meta(doc, key=key, **rules))


def seconds(default: T, doc: str, key: str, **rules: Any) -> T:
    """A duration field: ``float`` seconds in the model, a duration string in YAML."""
    return setting(default, doc, key=key, kind="duration", **rules)


def section(factory: Callable[[], T], doc: str, *, key: str | None = None, **rules: Any) -> T:
    """A field whose default is built by ``factory`` (mappings, tuples; for nested dataclass
    sections the model uses ``field(default_factory=...)`` itself, which linters understand)."""
    return field(default_factory=factory, metadata=meta(doc, key=key, **rules))


def required(doc: str, *, key: str | None = None, **rules: Any) -> Any:
    """A field without default: the YAML key must be present."""
    return field(metadata=meta(doc, key=key, **rules))


KIND_NOUNS: Final = {
    "duration": "a duration",
    "size": "a size",
    "file": "a file path",
    "output": "'stdout', 'stderr' or a file path",
    "cidr": 'an IP network like "10.0.0.0/8" or an address',
    "url": 'an http(s) URL like "http://host:4318/v1/traces"',
    "origin": "'*' or an origin like \"https://app.example.com\"",
    "path": "a path starting with '/'",
    "address": "'host:port' or 'unix:///path'",
    "header_value": "a header value without CR, LF or NUL",
    "json_or_file": "a mapping or a file path",
}


def convert_kind(kind: str, text: str, base_dir: Path) -> str | None:
    """The stored form of a string of a given kind, or ``None`` when it is not one."""
    if kind == "header_value":
        return None if any(c in text for c in "\r\n\0") else text
    if any(c.isspace() or ord(c) < 32 for c in text):
        return None
    if kind == "output" and text in ("stdout", "stderr"):
        return text
    if kind in ("file", "output"):
        return os.path.abspath(base_dir / text)
    if kind == "cidr":
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            return None
    if kind == "path":
        return text if text.startswith("/") else None
    if kind == "address":
        if text.startswith("unix://"):
            return text if text.startswith("unix:///") and len(text) > 8 else None
        host, _, digits = text.rpartition(":")
        ok = host.strip("[]") and re.fullmatch("[0-9]{1,5}", digits) and 1 <= int(digits) <= 65535
        return text if ok else None
    if kind == "origin" and text == "*":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError when out of range
    except ValueError:
        return None
    ok = parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
    if kind == "origin":
        ok = ok and not (parts.path or parts.query or parts.fragment or "@" in parts.netloc)
    return text if ok else None


MAX_JSON_VALUES: Final = 100_000
"""Most values an inline JSON mapping may hold once YAML aliases are expanded."""


def freeze_json(data: object) -> object:
    """JSON-like YAML data made immutable (mappings → ``MappingProxyType``, lists → tuples);
    raises ``ValueError`` for what JSON cannot hold (non-string keys, dates, binary) and above
    ``MAX_JSON_VALUES`` values (aliases are expanded: an alias bomb stops here)."""
    budget = [MAX_JSON_VALUES]

    def freeze(value: object) -> object:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"more than {MAX_JSON_VALUES} values")
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise ValueError("mapping keys must be strings")
            return MappingProxyType({key: freeze(item) for key, item in value.items()})
        if isinstance(value, list):
            return tuple(freeze(item) for item in value)
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise ValueError(f"{type(value).__name__} is not JSON data")

    return freeze(data)
