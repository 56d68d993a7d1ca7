"""Reading the settings schema itself: which keys exist, what each one expects, its default.

Shared by ``load.py`` (to word validation errors) and ``scripts/gen_config_docs.py`` (to
write ``docs/configuration.md``), so error messages and the reference never disagree.
"""

from __future__ import annotations

import datetime as dt
import json
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from bastion.config.schema import Settings

__all__ = [
    "SettingInfo",
    "expectation",
    "expectation_at",
    "iter_settings",
    "model_at",
    "render_value",
]

_MAX_SHOWN = 60


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One leaf setting of the schema, described for people."""

    key: str
    """Dotted key: ``mqtt.max_packet_size``, or ``listeners[].port`` inside an array."""
    table: str
    """The TOML table header it is written under: ``[mqtt]``, ``[[listeners]]``."""
    name: str
    expected: str
    default: str
    description: str


def _is_model(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip_optional(tp: object) -> object:
    """``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        rest = [arg for arg in get_args(tp) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _list_element(tp: object) -> object | None:
    tp = _strip_optional(tp)
    if get_origin(tp) is list:
        element: object = get_args(tp)[0]
        return element
    return None


def _dict_value(node: object) -> object | None:
    """The value type of a ``dict[str, X]`` field, if ``node`` is one."""
    if isinstance(node, FieldInfo):
        tp = _strip_optional(node.annotation)
        if get_origin(tp) is dict:
            value: object = get_args(tp)[1]
            return value
    return None


def _model_inside(tp: object) -> type[BaseModel] | None:
    """The model class a field holds directly (``M`` or ``M | None``), if any."""
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _node_at(loc: Sequence[str | int]) -> object | None:
    """Follow a pydantic error location from ``Settings`` to a ``FieldInfo`` or a type."""
    node: object = Settings
    for part in loc:
        if isinstance(part, int):
            if not isinstance(node, FieldInfo):
                return None
            node = _list_element(node.annotation)
        elif (value := _dict_value(node)) is not None:
            node = value  # a key of a table of tables, such as ``security.users.<name>``
        else:
            model = _as_model(node)
            if model is None or part not in model.model_fields:
                return None
            node = model.model_fields[part]
        if node is None:
            return None
    return node


def _as_model(node: object) -> type[BaseModel] | None:
    if isinstance(node, FieldInfo):
        return _model_inside(node.annotation)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return node
    return None


def model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model (table) found at ``loc``, e.g. ``MqttSettings`` for ``("mqtt",)``."""
    return _as_model(_node_at(loc))


def expectation_at(loc: Sequence[str | int]) -> str | None:
    """What the value at ``loc`` should be, worded for people; None if ``loc`` is unknown."""
    node = _node_at(loc)
    if isinstance(node, FieldInfo):
        return expectation(node)
    if _is_model(node):
        return "a table"
    return None


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _bounds(field: FieldInfo) -> dict[str, object]:
    found: dict[str, object] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found


def _range_words(bounds: dict[str, object]) -> str:
    if "ge" in bounds and "le" in bounds:
        return f" between {_number(bounds['ge'])} and {_number(bounds['le'])}"
    words = [
        f"{phrase} {_number(bounds[name])}"
        for name, phrase in (
            ("ge", "at least"),
            ("gt", "greater than"),
            ("le", "at most"),
            ("lt", "less than"),
        )
        if name in bounds
    ]
    return (" " + " and ".join(words)) if words else ""


def _length_words(bounds: dict[str, object]) -> str:
    low, high = bounds.get("min_length"), bounds.get("max_length")
    if low and high:
        return f" of {low} to {high} characters"
    if high:
        return f" of at most {high} characters"
    if low:
        return f" of at least {low} characters"
    return ""


def _one_of(choices: Sequence[object]) -> str:
    shown = [render_value(choice) for choice in choices]
    if len(shown) <= 2:
        return " or ".join(shown)
    return "one of " + ", ".join(shown[:-1]) + " or " + shown[-1]


def expectation(field: FieldInfo) -> str:
    """``"an integer between 64 and 268435460"``, ``"true or false"``, ``"a table"`` ..."""
    tp = _strip_optional(field.annotation)
    bounds = _bounds(field)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range_words(bounds)
    if tp is float:
        return "a number" + _range_words(bounds)
    if tp is str:
        return "a string" + _length_words(bounds)
    if get_origin(tp) is Literal:
        return _one_of(get_args(tp))
    if _is_model(tp):
        return "a table"
    element = _list_element(tp)
    if element is not None and _is_model(element):
        return "an array of tables"
    if element is str:
        return "an array of strings"
    if get_origin(tp) is dict:
        return "a table"
    return f"a value of type {tp}"


def render_value(value: object) -> str:
    """A value as it would be written in TOML (long strings are shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 4] + '..."'
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[]" if not value else "an array"
    if isinstance(value, dt.date | dt.time):
        return f"a date/time ({value.isoformat()})"
    if value is None:
        return "nothing"
    return repr(value)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    return "unset" if default is None else render_value(default)


def _header(path: Sequence[str], array: bool) -> str:
    dotted = ".".join(path)
    return f"[[{dotted}]]" if array else f"[{dotted}]"


def iter_settings(
    model: type[BaseModel] = Settings,
    *,
    prefix: str = "",
    path: tuple[str, ...] = (),
    table: str = "",
) -> Iterator[SettingInfo]:
    """Every leaf setting, depth first, in schema order (tables and arrays are walked)."""
    for name, field in model.model_fields.items():
        sub_model = _model_inside(field.annotation)
        element = _list_element(field.annotation)
        if sub_model is not None:
            yield from iter_settings(
                sub_model,
                prefix=f"{prefix}{name}.",
                path=(*path, name),
                table=_header((*path, name), array=False),
            )
        elif (element_model := _as_model(element)) is not None:
            yield from iter_settings(
                element_model,
                prefix=f"{prefix}{name}[].",
                path=(*path, name),
                table=_header((*path, name), array=True),
            )
        else:
            yield SettingInfo(
                key=f"{prefix}{name}",
                table=table,
                name=name,
                expected=expectation(field),
                default=_default_text(field),
                description=field.description or "",
            )
