"""Unit tests for the ``bastion`` command (``cli/main.py``, ``cli/serve.py``) via CliRunner.

The runtime is replaced by a fake ``bastion.runtime.app`` module whose ``run`` records the
settings it is given, so no socket is opened.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import structlog
from click.testing import CliRunner, Result

from bastion import __version__
from bastion.cli.main import main
from bastion.config import Settings
from bastion.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


class FakeRuntime:
    """Stands in for ``bastion.runtime.app``: records calls, returns a chosen code."""

    def __init__(self, code: int = 0, error: Exception | None = None) -> None:
        self.code = code
        self.error = error
        self.calls: list[Settings] = []

    def run(self, settings: Settings) -> int:
        self.calls.append(settings)
        if self.error is not None:
            raise self.error
        return self.code


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime()
    module = ModuleType("bastion.runtime.app")
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bastion.runtime.app", module)
    return fake


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="bastion")


# --- the group ----------------------------------------------------------------------------


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout == f"bastion {__version__}\n"
    assert __version__ == "0.1.0"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help_lists_serve(flag: str) -> None:
    result = invoke(flag)
    assert result.exit_code == 0
    assert "Usage: bastion" in result.stdout
    assert "serve" in result.stdout


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_serve_help_lists_every_option(flag: str) -> None:
    result = invoke("serve", flag)
    assert result.exit_code == 0
    for option in ("--config", "--listen", "--allow-anonymous", "--log-level", "--log-format"):
        assert option in result.stdout


def test_every_command_has_help() -> None:
    for name in main.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert f"Usage: bastion {name}" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = invoke("frobnicate")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_python_dash_m_bastion() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout == f"bastion {__version__}\n"


# --- serve: settings reach the runtime ----------------------------------------------------


def test_serve_without_a_listener_refuses_to_start(runtime: FakeRuntime) -> None:
    result = invoke("serve")
    assert result.exit_code == 2, result.output
    assert runtime.calls == []
    assert "no listener configured" in result.output
    assert "Traceback" not in result.output


def test_serve_with_only_listen_uses_the_safe_defaults(runtime: FakeRuntime) -> None:
    result = invoke("serve", "--listen", "127.0.0.1:1883")
    assert result.exit_code == 0, result.output
    (settings,) = runtime.calls
    assert [listener.address for listener in settings.listeners] == ["127.0.0.1:1883"]
    assert settings.security.allow_anonymous is False


def test_serve_options_override(runtime: FakeRuntime) -> None:
    result = invoke(
        "serve",
        "--listen",
        "[::1]:1884",
        "--listen",
        "127.0.0.1:1885",
        "--allow-anonymous",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
    )
    assert result.exit_code == 0, result.output
    (settings,) = runtime.calls
    assert [listener.address for listener in settings.listeners] == [
        "[::1]:1884",
        "127.0.0.1:1885",
    ]
    assert settings.security.allow_anonymous is True
    assert (settings.logging.level, settings.logging.format) == ("debug", "json")


def test_serve_with_a_config_file_and_listen_override(runtime: FakeRuntime) -> None:
    example = str(REPO / "examples" / "bastion.toml")
    result = invoke("serve", "-c", example, "--listen", "127.0.0.1:2883")
    assert result.exit_code == 0, result.output
    (settings,) = runtime.calls
    assert [listener.address for listener in settings.listeners] == ["127.0.0.1:2883"]
    assert settings.security.allow_anonymous is True  # from the file


def test_serve_exits_with_the_runtime_code(runtime: FakeRuntime) -> None:
    runtime.code = 3
    assert invoke("serve", "--listen", "127.0.0.1:1883").exit_code == 3


# --- serve: errors ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1883", "::1:1883", "host:99999", "[::1]", "a b:1"])
def test_bad_listen_is_a_usage_error_naming_the_value(runtime: FakeRuntime, value: str) -> None:
    result = invoke("serve", "--listen", value)
    assert result.exit_code == 2
    assert "Invalid value for '--listen'" in result.stderr
    assert f'"{value}"' in result.stderr
    assert runtime.calls == []


def test_bad_log_level_is_a_usage_error(runtime: FakeRuntime) -> None:
    result = invoke("serve", "--log-level", "loud")
    assert result.exit_code == 2
    assert "--log-level" in result.stderr
    assert runtime.calls == []


def test_bad_config_exits_2_with_one_line_per_problem(runtime: FakeRuntime, tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text('[mqtt]\nmax_packet_size = "big"\nmaxpacket = 1\n', encoding="utf-8")
    result = invoke("serve", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"bastion: error: {path}: mqtt.max_packet_size: expected an integer between 64 and "
        f'268435460, got "big"',
        f"bastion: error: {path}: mqtt.maxpacket: unknown setting (did you mean max_packet_size?)",
    ]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert runtime.calls == []


def test_missing_config_file_exits_2(runtime: FakeRuntime, tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    result = invoke("serve", "--config", str(path))
    assert result.exit_code == 2
    assert (
        result.stderr == f"bastion: error: {path}: cannot read configuration file: no such file\n"
    )
    assert runtime.calls == []


def test_toml_syntax_error_exits_2(runtime: FakeRuntime, tmp_path: Path) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text("[mqtt\n", encoding="utf-8")
    result = invoke("serve", "-c", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"bastion: error: {path}: line 1, column 6: invalid TOML:")
    assert "Traceback" not in result.output


def test_config_error_from_the_runtime_exits_2(runtime: FakeRuntime) -> None:
    runtime.error = ConfigError("bastion.toml: listeners[0]: cannot bind 127.0.0.1:1883")
    result = invoke("serve", "--listen", "127.0.0.1:1883")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "bastion: error: bastion.toml: listeners[0]: cannot bind 127.0.0.1:1883\n"
    )
