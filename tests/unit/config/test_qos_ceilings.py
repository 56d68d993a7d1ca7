"""Unit tests for the per-listener and per-user QoS ceilings (``listeners[].max_qos``,
``[security.users.NAME] max_qos``): defaults, values and the wording of their errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import load_settings
from bastion.config.schema import ListenerSettings, UserSettings
from bastion.errors import ConfigError


def _load(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value).splitlines()


def test_no_ceilings_by_default() -> None:
    settings = load_settings(None, {"listeners": [{"host": "127.0.0.1", "port": 1883}]})
    assert settings.listeners[0].max_qos is None
    assert settings.security.users == {}


def test_ceilings_from_the_file(tmp_path: Path) -> None:
    path = _load(
        tmp_path,
        "[[listeners]]\nport = 1883\nmax_qos = 1\n[[listeners]]\nport = 1884\n"
        "[security.users.meter]\nmax_qos = 0\n[security.users.admin]\n",
    )
    settings = load_settings(path)
    assert [listener.max_qos for listener in settings.listeners] == [1, None]
    assert settings.security.users == {
        "meter": UserSettings(max_qos=0),
        "admin": UserSettings(max_qos=None),
    }


def test_ceilings_from_the_command_line() -> None:
    settings = load_settings(None, {"listeners": [{"port": 1883, "max_qos": 0}]})
    assert settings.listeners == [ListenerSettings(port=1883, max_qos=0)]


def test_out_of_range_ceilings_are_named(tmp_path: Path) -> None:
    path = _load(
        tmp_path,
        "[[listeners]]\nmax_qos = 3\n[security.users.bob]\nmax_qos = -1\n"
        "[security.users.al]\nqos = 1\n[security.users]\neve = 1\n",
    )
    assert _problems(path) == [
        f"{path}: listeners[0].max_qos: expected an integer between 0 and 2, got 3",
        f"{path}: security.users.bob.max_qos: expected an integer between 0 and 2, got -1",
        f"{path}: security.users.al.qos: unknown setting (did you mean max_qos?)",
        f"{path}: security.users.eve: expected a table, got 1",
    ]


def test_boolean_is_not_a_qos(tmp_path: Path) -> None:
    path = _load(tmp_path, "[security.users.bob]\nmax_qos = true\n")
    assert _problems(path) == [
        f"{path}: security.users.bob.max_qos: expected an integer between 0 and 2, got true"
    ]
