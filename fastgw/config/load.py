"""YAML text → ``Config``: one generic walk over the dataclass fields, every problem collected.

This module owns reading: the file, the YAML, ``${ENV}`` substitution, and the conversion of each
raw value to the type and rules its field declares (``fields.py`` describes the vocabulary).
There is no per-section code: ``_Reader.fields`` walks ``dataclasses.fields`` of any model class
with its ``typing.get_type_hints``, so a key added to the model is read, checked and documented
with nothing added here. Rules that relate two fields live in ``validate.py``.

Invariants:
- Any input gives a ``Config`` or a ``ConfigError`` listing *every* problem; never a traceback.
  The walk follows the schema, never the data, so hostile nesting or aliases cost nothing.
- A value that fails its rules is reported, then replaced by its field's default (or, for a
  required field, makes its parent fail, up to a parent that has a default). The walk thus goes on
  through the rest of the file, and ``Findings.tainted`` lets cross-field checks skip what failed
  instead of reporting knock-on errors about a substituted default.
- Strings are substituted before conversion: ``${VAR}``, ``${VAR:-default}`` (the default is
  used when VAR is unset or empty, as in the shell), ``$$`` for a literal ``$``. A substituted
  value may then be read as a number or boolean (``port: ${PORT}``); a literal YAML string never is.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from fastgw.config.fields import KIND_NOUNS, convert_kind, freeze_json
from fastgw.config.model import Config
from fastgw.config.units import (
    DURATION_HINT,
    SIZE_HINT,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from fastgw.config.validate import INVALID, Findings, Invalid, check_config, join, suggest
from fastgw.errors import ConfigError, Problem

_ENV_REF: Final = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_TEXT: Final = re.compile(r"[-+]?[0-9]{1,30}")
_FLOAT_TEXT: Final = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def load_config(path: str | Path, env: Mapping[str, str] = os.environ) -> Config:
    """Read, substitute, convert and check the YAML file at ``path``; raise ``ConfigError``."""
    file = Path(path).absolute()
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem("$", f"cannot read {file}: {exc.strerror or exc}")]) from None
    config = parse_config(parse_yaml(text), base_dir=file.parent, env=env)
    return dataclasses.replace(config, source_path=str(file))


def parse_config(data: object, *, base_dir: Path, env: Mapping[str, str]) -> Config:
    """Build a ``Config`` from already-parsed YAML data (``None`` is an empty file)."""
    reader = _Reader(Path(base_dir), env)
    values = reader.fields(Config, data, "$")
    if isinstance(values, Invalid):
        raise ConfigError(reader.findings.problems)
    values = check_config(reader.findings, values)
    if reader.findings.problems or any(isinstance(v, Invalid) for v in values.values()):
        raise ConfigError(reader.findings.problems)
    return Config(**values)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping (they would hide a value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key_node.value!r}", key_node.start_mark,
                    )  # fmt: skip
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: bytes | str) -> object:
    """``yaml.safe_load`` (without duplicate keys); a syntax error is one problem at ``$``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        raise ConfigError([Problem("$", f"invalid YAML{where}: {what}")]) from None
    except RecursionError:
        raise ConfigError([Problem("$", "invalid YAML: nested too deeply")]) from None
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        # e.g. a reader error on bad UTF-8, or a timestamp like 2020-13-45 (ValueError).
        raise ConfigError([Problem("$", f"invalid YAML: {exc}")]) from None


def describe(value: object) -> str:
    """How a raw value is shown in a message: JSON-like, short, never huge."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def yaml_key(f: dataclasses.Field[Any]) -> str:
    """The YAML key of a model field."""
    return str(f.metadata.get("key", f.name))


@functools.cache
def yaml_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """YAML key → (field, resolved type) for a model class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {
        yaml_key(f): (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.metadata.get("yaml", True)
    }


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _is_section(tp: Any) -> typing.TypeGuard[type]:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The field's default value, or ``INVALID`` when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return INVALID


def bounds_text(meta: Mapping[str, Any], show: typing.Callable[[Any], str] = str) -> str:
    """`` 1..65535``, `` >= 1``, `` > 0``, `` > 0 and <= 1``, or empty."""
    lo, hi = meta.get("range", (None, None))
    strict = bool(meta.get("positive")) and (lo is None or lo <= 0)
    low = "> 0" if strict else (f">= {show(lo)}" if lo is not None else "")
    if hi is None:
        return f" {low}" if low else ""
    if strict or lo is None:
        return f" {low} and <= {show(hi)}" if low else f" <= {show(hi)}"
    return f" {show(lo)}..{show(hi)}"


def in_bounds(meta: Mapping[str, Any], number: float) -> bool:
    lo, hi = meta.get("range", (None, None))
    if meta.get("positive") and number <= 0:
        return False
    return (lo is None or number >= lo) and (hi is None or number <= hi)


class _Reader:
    """One walk over raw data: converts values and records problems in ``findings``."""

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env
        self.findings = Findings()

    def fail(self, path: str, message: str) -> Invalid:
        self.findings.add(path, message)
        return INVALID

    # -- structure ------------------------------------------------------------------------------

    def fields(self, cls: type, raw: object, path: str) -> dict[str, Any] | Invalid:
        """Field name → value for a model class; failed fields hold their default or INVALID."""
        if raw is None:  # an empty section (every child commented out) means all defaults
            raw = {}
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {describe(raw)}")
        known = yaml_fields(cls)
        for key in raw:
            if not isinstance(key, str):
                self.fail(path, f"key {describe(key)} is not a string")
            elif key not in known:
                self.fail(join(path, key), "unknown key" + suggest(key, list(known), "known keys"))
        values: dict[str, Any] = {}
        for key, (f, tp) in known.items():
            sub = join(path, key)
            if key in raw:
                self.findings.given.add(sub)
                value = self.value(tp, f.metadata, raw[key], sub)
            elif _is_section(tp) and not has_default(f):
                value = self.build(tp, {}, sub)  # names the missing keys inside it
            else:
                value = field_default(f)
                if isinstance(value, Invalid):
                    self.fail(sub, "missing required key")
            values[f.name] = field_default(f) if isinstance(value, Invalid) else value
        return values

    def build(self, cls: type, raw: object, path: str) -> object:
        values = self.fields(cls, raw, path)
        if isinstance(values, Invalid) or any(isinstance(v, Invalid) for v in values.values()):
            return INVALID
        return cls(**values)

    def value(self, tp: Any, meta: Mapping[str, Any], raw: object, path: str) -> Any:
        if meta.get("kind") == "json_or_file" and raw is not None:
            return self.json_or_file(meta, raw, path)
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            if raw is None:
                return None
            tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
            origin = typing.get_origin(tp)
        if _is_section(tp):
            return self.build(tp, raw, path)
        if origin is tuple:
            return self.sequence(typing.get_args(tp)[0], meta, raw, path)
        if origin is Mapping:
            return self.mapping(typing.get_args(tp)[1], meta, raw, path)
        return self.scalar(tp, meta, raw, path)

    def sequence(self, item_tp: Any, meta: Mapping[str, Any], raw: object, path: str) -> Any:
        lone = isinstance(raw, str) and bool(meta.get("scalar_ok"))
        if lone:
            raw = [raw]
        if not isinstance(raw, list):
            noun = "string or list" if meta.get("scalar_ok") else "list"
            return self.fail(path, f"expected {noun}, got {describe(raw)}")
        least = int(meta.get("min_items", 0))
        if len(raw) < least:
            plural = "s" if least != 1 else ""
            return self.fail(path, f"expected at least {least} item{plural}, got {len(raw)}")
        items: list[Any] = []
        paths: list[str] = []
        first_seen: dict[Any, str] = {}  # only lists of scalars are ``unique``
        for index, item in enumerate(raw):
            sub = path if lone else f"{path}[{index}]"
            value = self.value(item_tp, meta, item, sub)
            if isinstance(value, Invalid):
                self.findings.incomplete.add(path)
                continue
            if meta.get("unique") and first_seen.setdefault(value, sub) != sub:
                self.fail(sub, f"duplicate of {first_seen[value]}")
                continue
            items.append(value)
            paths.append(sub)
        self.findings.item_paths[path] = tuple(paths)
        return tuple(items)

    def mapping(self, value_tp: Any, meta: Mapping[str, Any], raw: object, path: str) -> Any:
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping, got {describe(raw)}")
        regex, what = meta.get("key_pattern", (".*", ""))
        result: dict[str, Any] = {}
        for key, item in raw.items():
            if not isinstance(key, str):
                self.fail(path, f"key {describe(key)} is not a string")
            elif not re.fullmatch(regex, key):
                self.fail(join(path, key), f"key must be {what}")
            else:
                value = self.value(value_tp, meta, item, join(path, key))
                if not isinstance(value, Invalid):
                    result[key] = value
                    continue
            self.findings.incomplete.add(path)
        return types.MappingProxyType(result)

    def json_or_file(self, meta: Mapping[str, Any], raw: object, path: str) -> Any:
        """An inline mapping of JSON data (kept frozen, never substituted) or a file path."""
        if isinstance(raw, str):
            return self.scalar(str, {**meta, "kind": "file"}, raw, path)
        if not isinstance(raw, dict):
            return self.fail(path, f"expected mapping or file path, got {describe(raw)}")
        try:
            return freeze_json(raw)
        except (ValueError, RecursionError) as exc:
            return self.fail(path, f"not JSON data: {exc}")

    # -- scalars --------------------------------------------------------------------------------

    def substitute(self, text: str, path: str) -> str | Invalid:
        """``${VAR}``, ``${VAR:-default}`` and ``$$`` in one string value."""
        if "$" not in text:
            return text
        failed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal failed
            if match.group(0) == "$$":
                return "$"
            body = match.group(1)
            name, has_default, default = (body or "").partition(":-")
            if body is None or not _ENV_NAME.fullmatch(name):
                failed = True
                self.fail(path, f"malformed environment reference in {describe(text)}")
                return ""
            value = self.env.get(name)
            if value is None or (has_default and value == ""):
                if has_default:
                    return default
                failed = True
                self.fail(path, f"environment variable {name} is not set")
                return ""
            return value

        result = _ENV_REF.sub(replace, text)
        return INVALID if failed else result

    def scalar(self, tp: Any, meta: Mapping[str, Any], raw: object, path: str) -> Any:
        secret = bool(meta.get("secret"))
        shown = "<hidden>" if secret else describe(raw)
        if isinstance(raw, str) and "$" in raw:
            text = self.substitute(raw, path)
            if isinstance(text, Invalid):
                return INVALID
            raw = _from_env_text(text, tp) if "${" in raw else text
            shown = "<hidden>" if secret else describe(raw)
        kind = meta.get("kind")
        if kind == "duration":
            return self.measure(meta, raw, path, shown=shown, noun="duration",
                                parse=parse_duration, show=format_duration, hint=DURATION_HINT)
        if kind == "size":
            return self.measure(meta, raw, path, shown=shown, noun="size", parse=parse_size,
                                show=format_size, hint=SIZE_HINT)
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            return self.fail(path, f"expected true or false, got {shown}")
        if tp is int or tp is float:
            return self.number(tp, meta, raw, path, shown)
        if tp is str:
            return self.string(meta, raw, path, shown)
        raise TypeError(f"model field type {tp!r} at {path} is not supported")  # a model bug

    def number(self, tp: type, meta: Mapping[str, Any], raw: object, path: str, shown: str) -> Any:
        noun = "integer" if tp is int else "number"
        wanted = int if tp is int else int | float
        if isinstance(raw, wanted) and not isinstance(raw, bool):
            try:
                as_float = float(raw)
            except OverflowError:
                as_float = math.inf
            if math.isfinite(as_float) and in_bounds(meta, as_float):
                return as_float if tp is float else raw
        return self.fail(path, f"expected {noun}{bounds_text(meta)}, got {shown}")

    def measure(
        self,
        meta: Mapping[str, Any],
        raw: object,
        path: str,
        *,
        shown: str,
        noun: str,
        parse: typing.Callable[[object], Any],
        show: typing.Callable[[Any], str],
        hint: str,
    ) -> Any:
        unit_meta = {"range": (0, None), **meta}
        try:
            number = parse(raw)
        except ValueError:
            number = None
        if number is not None and in_bounds(unit_meta, number):
            return number
        return self.fail(path, f"expected {noun}{bounds_text(unit_meta, show)} ({hint}), "
                               f"got {shown}")  # fmt: skip

    def string(self, meta: Mapping[str, Any], raw: object, path: str, shown: str) -> Any:
        if not isinstance(raw, str):
            return self.fail(path, f"expected string, got {shown}")
        if meta.get("upper"):
            raw = raw.upper()
        refused = meta.get("refuse")
        if refused and raw.lower() in refused[0]:
            return self.fail(path, refused[1])
        if "choices" in meta and raw not in meta["choices"]:
            choices = ", ".join(f"'{c}'" for c in meta["choices"])
            return self.fail(path, f"expected one of {choices}, got {shown}")
        if not raw and not meta.get("allow_empty"):
            return self.fail(path, "expected a non-empty string")
        if "pattern" in meta and not re.fullmatch(meta["pattern"][0], raw):
            return self.fail(path, f"expected {meta['pattern'][1]}, got {shown}")
        kind = meta.get("kind")
        if kind is None:
            return raw
        converted = convert_kind(kind, raw, self.base_dir)
        if converted is None:
            return self.fail(path, f"expected {KIND_NOUNS[kind]}, got {shown}")
        return converted


def _from_env_text(text: str, tp: Any) -> object:
    """Read a substituted string as the scalar its field wants, when it looks like one."""
    if tp is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if tp is int and _INT_TEXT.fullmatch(text):
        return int(text)
    if tp is float and _FLOAT_TEXT.fullmatch(text):
        return float(text)
    return text
