"""Keeps ``docs/configuration.md`` and ``examples/bastion.toml`` in step with the schema.

Fails when a setting is added without documentation, or when the generated tables differ
from what ``scripts/gen_config_docs.py`` would write now.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from bastion.config.introspect import iter_settings

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "configuration.md"
EXAMPLE = REPO / "examples" / "bastion.toml"
KEYS = [info.key for info in iter_settings()]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", REPO / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_is_documented(key: str) -> None:
    assert f"`{key}`" in DOC.read_text(encoding="utf-8")


def test_every_setting_has_a_description() -> None:
    assert all(info.description for info in iter_settings())


def test_generated_tables_are_current() -> None:
    generator = load_generator()
    current = DOC.read_text(encoding="utf-8")
    assert generator.update(current) == current, "run: python scripts/gen_config_docs.py"


def test_example_uses_every_section() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    sections = {key.split(".")[0].removesuffix("[]") for key in KEYS}
    assert sections <= set(example)
