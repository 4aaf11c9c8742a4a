"""The validation stage's helpers: media types from the kept header block, JSONPath names,
schema loading and compiling, and the frozen inline form the config loader keeps."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from fastgw.config.fields import MAX_JSON_VALUES, freeze_json
from fastgw.stages.validate import SchemaError, compile_schema, json_path, load_schema, media_type


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"Host: gw\r\nContent-Type: application/json\r\n", b"application/json"),
        (b"content-type: Application/JSON ; charset=utf-8\r\nX-A: b\r\n", b"application/json"),
        (b"Host: gw\r\nX-Note: content-type: text/plain\r\n", None),
        (b"", None),
        (b"Content-Type: a/b\r\nCONTENT-TYPE: a/b\r\n", b""),  # twice: accepted nowhere
    ],
)
def test_media_type(block: bytes, expected: bytes | None) -> None:
    assert media_type(block) == expected


def test_json_path() -> None:
    assert json_path([]) == "$"
    assert json_path(["config", "storage", 2, "path"]) == "$.config.storage[2].path"
    assert json_path(["a b", 'q"']) == '$["a b"]["q\\""]'


def test_inline_schema_is_frozen_and_thawed_for_compiling() -> None:
    frozen = freeze_json({"type": "object", "required": ["a"], "properties": {"a": {}}})
    assert isinstance(frozen, MappingProxyType)
    assert frozen["required"] == ("a",)
    schema = load_schema(frozen)
    assert schema == {"type": "object", "required": ["a"], "properties": {"a": {}}}
    validator = compile_schema(schema)
    assert validator.is_valid({"a": 1}) and not validator.is_valid({})


def test_freeze_refuses_what_json_cannot_hold() -> None:
    import datetime

    for bad in ({1: "a"}, {"a": datetime.date(2020, 1, 1)}, {"a": b"x"}):
        with pytest.raises(ValueError):
            freeze_json(bad)
    # YAML aliases expand: an alias bomb stops at the bound instead of filling memory.
    level: list[object] = ["x"] * 10
    for _ in range(8):
        level = [level] * 10
    with pytest.raises(ValueError, match=str(MAX_JSON_VALUES)):
        freeze_json({"a": level})


def test_schema_files(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"type": "integer"}')
    (tmp_path / "s.yaml").write_text("type: integer\n")
    (tmp_path / "list.yaml").write_text("- a\n")
    (tmp_path / "broken.json").write_text("{")
    for name in ("s.json", "s.yaml"):
        assert load_schema(str(tmp_path / name)) == {"type": "integer"}
    with pytest.raises(SchemaError, match="must be a mapping"):
        load_schema(str(tmp_path / "list.yaml"))
    with pytest.raises(SchemaError, match="is not JSON/YAML"):
        load_schema(str(tmp_path / "broken.json"))
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(str(tmp_path / "absent.json"))
