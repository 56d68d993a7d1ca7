"""``@record``: the immutable value classes of the hot path (packets, messages, deliveries).

A record is a slots dataclass that mypy treats as frozen (assigning a field is a type
error, checked by ``mypy --strict`` over src and tests) while at run time it is a plain
slots dataclass with a field hash: building one costs about a seventh of a
``frozen=True`` dataclass, whose ``__init__`` goes through ``object.__setattr__`` per field.
Several records are built per routed message, so this is measurable (docs/internals.md).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, eq_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[_T]) -> type[_T]:
    """Make ``cls`` an immutable-by-contract slots dataclass (hashable, comparable)."""
    return dataclasses.dataclass(slots=True, unsafe_hash=True)(cls)


__all__ = ["record"]
