"""docs/configuration.md is generated from the model and must match it; model conventions hold."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path
from types import ModuleType

import pytest

from fastgw.config import model
from fastgw.config.load import yaml_fields

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", ROOT / "tools" / "gen_config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_doc_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == _tool().render(), "run: python tools/gen_config_reference.py"


MODEL_CLASSES = [
    cls for cls in vars(model).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls)
]


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_model_conventions(cls: type) -> None:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen, "config classes are frozen"
    assert hasattr(cls, "__slots__"), "config classes are slotted"
    assert cls.__doc__, "each section says which YAML path it is"
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        assert f.kw_only
        assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
        kind = f.metadata.get("kind")
        if kind == "duration":
            assert f.name.endswith("_s"), f"{cls.__name__}.{f.name}: durations end in _s"
            assert float in typing.get_args(hints[f.name]) or hints[f.name] is float
        if kind == "size":
            assert f.name.endswith("_bytes"), f"{cls.__name__}.{f.name}: sizes end in _bytes"
        if f.name.endswith(("_s", "_bytes")):
            assert kind in ("duration", "size"), f"{cls.__name__}.{f.name} has a unit suffix"
        origin = typing.get_origin(hints[f.name])
        assert origin is not list and origin is not dict, "lists are tuples, maps are Mappings"


def test_yaml_keys_are_unique_per_section() -> None:
    for cls in MODEL_CLASSES:
        keys = [str(f.metadata.get("key", f.name)) for f in dataclasses.fields(cls)]
        assert len(keys) == len(set(keys)), cls
        assert list(yaml_fields(cls)) == [
            k for k, f in zip(keys, dataclasses.fields(cls), strict=True) if f.metadata.get(
                "yaml", True)
        ]
