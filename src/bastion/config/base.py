"""Shared pieces of the settings schema: the strict, frozen base model and path limits.

``schema.py`` (root, listeners, logging), ``mqtt_settings.py`` and ``security_settings.py``
build on it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PATH_MAX = 4096
MAX_U32 = 0xFFFF_FFFF


class Section(BaseModel):
    """Common model configuration: unknown keys are errors, values never coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


__all__ = ["MAX_U32", "PATH_MAX", "Section"]
