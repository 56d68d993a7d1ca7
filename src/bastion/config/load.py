"""Loading settings: a TOML file (stdlib ``tomllib``) plus command-line overrides.

Every problem — unreadable file, TOML syntax, unknown key, wrong type, value out of range —
becomes one line of a ``ConfigError`` naming the file and the dotted key, so the CLI can
print it as it is. The schema lives in ``schema.py``; wording help in ``introspect.py``.
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from bastion.config.introspect import expectation_at, iter_settings, model_at, render_value
from bastion.config.schema import Settings
from bastion.errors import ConfigError

__all__ = ["COMMAND_LINE", "load_settings", "parse_listen_address"]

COMMAND_LINE = "command line"
"""The source named in errors that come from overrides rather than from the file."""

_TOML_POSITION = re.compile(
    r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)

# pydantic error types that mean "this value is not what the field expects".
_VALUE_ERRORS = frozenset(
    {
        "bool_type",
        "bool_parsing",
        "int_type",
        "int_parsing",
        "int_from_float",
        "float_type",
        "float_parsing",
        "finite_number",
        "string_type",
        "string_too_short",
        "string_too_long",
        "literal_error",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "model_type",
        "model_attributes_type",
        "dict_type",
        "list_type",
    }
)


def load_settings(path: Path | None, overrides: Mapping[str, object] | None = None) -> Settings:
    """Read ``path`` (None: defaults only), apply ``overrides``, validate, return settings.

    ``overrides`` maps dotted keys to values and replaces what the file says, e.g.
    ``{"listeners": [{"host": "::1", "port": 1883}], "security.allow_anonymous": True,
    "logging.level": "debug"}``. Raises ``ConfigError`` with one line per problem.
    """
    source = str(path) if path is not None else COMMAND_LINE
    raw = _read_toml(path) if path is not None else {}
    if path is not None:
        _resolve_relative_paths(raw, path.parent)
    overrides = overrides or {}
    data = _apply_overrides(raw, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(error, source, overrides) for error in exc.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def parse_listen_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:1883"``, ``"localhost:1883"`` or ``"[::1]:1883"`` -> ``(host, port)``.

    Raises ``ValueError`` saying what is wrong with ``text``.
    """
    shown = render_value(text)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not host or "]" in host:
            raise ValueError(f"{shown} is not [IPV6]:PORT, e.g. [::1]:1883")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{shown} is not HOST:PORT, e.g. 127.0.0.1:1883")
        if ":" in host:
            raise ValueError(f"{shown}: put an IPv6 address in brackets, e.g. [::1]:1883")
    if any(ch.isspace() or ch in "[]/" for ch in host):
        raise ValueError(f"{shown}: {render_value(host)} is not a host name or IP address")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{shown}: the port must be a number between 1 and 65535")
    return host, int(port_text)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read configuration file: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: cannot read configuration file: it is a directory") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{path}: cannot read configuration file: {reason}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {_toml_problem(str(exc))}") from None


_SECURITY_PATHS = ("password_file", "acl_file", "audit_log")
_TLS_PATHS = ("certfile", "keyfile", "cafile", "crlfile")
_STORAGE_PATHS = ("data_dir", "key_file")


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Make file settings relative to the configuration file's directory, not the CWD."""

    def resolve(table: object, keys: Sequence[str]) -> None:
        if not isinstance(table, dict):
            return
        for key in keys:
            value = table.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                table[key] = str(base / value)

    resolve(raw.get("security"), _SECURITY_PATHS)
    resolve(raw.get("storage"), _STORAGE_PATHS)
    listeners = raw.get("listeners")
    if isinstance(listeners, list):
        for listener in listeners:
            if isinstance(listener, dict):
                resolve(listener.get("tls"), _TLS_PATHS)


def _toml_problem(message: str) -> str:
    match = _TOML_POSITION.match(message)
    if match is None:
        return f"invalid TOML: {message}"
    what = match["msg"][:1].lower() + match["msg"][1:]
    where = f"line {match['line']}, column {match['col']}" if match["line"] else "end of file"
    return f"{where}: invalid TOML: {what}"


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, object]) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        table = data
        for part in parents:
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                break  # the file has a non-table here: keep it, validation reports it
            table = child
        else:
            table[leaf] = value
    return data


def _dotted(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _source_of(loc: Sequence[str | int], source: str, overrides: Mapping[str, object]) -> str:
    keys = [str(part) for part in loc if isinstance(part, str)]
    for dotted in overrides:
        parts = dotted.split(".")
        if keys[: len(parts)] == parts:
            return COMMAND_LINE
    return source


def _describe(error: ErrorDetails, source: str, overrides: Mapping[str, object]) -> str:
    loc = error["loc"]
    origin = _source_of(loc, source, overrides)
    if error["type"] == "extra_forbidden":
        return f"{origin}: {_dotted(loc)}: {_unknown_key(loc, error['input'])}"
    problem = _problem(error)
    return f"{origin}: {_dotted(loc)}: {problem}" if loc else f"{origin}: {problem}"


def _problem(error: ErrorDetails) -> str:
    if error["type"] in _VALUE_ERRORS:
        expected = expectation_at(error["loc"])
        if expected is not None:
            return f"expected {expected}, got {render_value(error['input'])}"
    if error["type"] == "too_short" and isinstance(error["input"], list):
        wanted = (error.get("ctx") or {}).get("min_length", 1)
        entries = "entry" if wanted == 1 else "entries"
        return f"expected at least {wanted} {entries}, got {len(error['input'])}"
    if error["type"] == "missing":
        return "required setting is missing"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _unknown_key(loc: Sequence[str | int], value: object) -> str:
    kind = "unknown section" if isinstance(value, dict) and len(loc) == 1 else "unknown setting"
    name = str(loc[-1])
    parent = model_at(loc[:-1])
    known = list(parent.model_fields) if parent is not None else []
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"{kind} (did you mean {close[0]}?)"
    elsewhere = [info for info in iter_settings() if info.name == name]
    if elsewhere:
        return f"{kind} (it belongs in {elsewhere[0].table})"
    return kind
