"""Broker settings as dotted names (``"mqtt.connect_timeout": 1.0``) rendered to Bastion's TOML.

Tests keep the names of the settings they rely on in one constant at the top of the file, so a
renamed key is a one-line change; ``toml_from`` turns such a mapping into a ``-c`` file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

SettingValue = bool | int | float | str | Sequence[str]


def toml_value(value: SettingValue) -> str:
    """A TOML literal for a boolean, number, string or list of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML numbers here must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return "[" + ", ".join(json.dumps(item) for item in value) + "]"


def toml_from(settings: Mapping[str, SettingValue]) -> str:
    """``{"a.b.c": 1, "a.d": true}`` as ``[a.b]\\nc = 1\\n[a]\\nd = true`` (one table per prefix).

    Keys without a dot are top-level and come first, as TOML requires.
    """
    tables: dict[str, list[str]] = {}
    for dotted, value in settings.items():
        table, _, key = dotted.rpartition(".")
        if not key:
            raise ValueError(f"empty setting name in {dotted!r}")
        tables.setdefault(table, []).append(f"{key} = {toml_value(value)}")
    out: list[str] = list(tables.pop("", []))
    for table, lines in tables.items():
        out += ["", f"[{table}]", *lines]
    return "\n".join(out).lstrip("\n") + "\n"
