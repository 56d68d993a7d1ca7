"""The demo's command lines (``demo/commands.py``): parsed by the real ``bastion`` commands."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from bastion.cli.main import main
from bastion.demo.commands import THRESHOLD_RULE, broker_args, service_commands
from bastion.demo.statedir import StateLayout


def parse(args: tuple[str, ...] | list[str]) -> click.Context:
    """Let click parse ``args`` as ``bastion ARGS`` would, without running the command."""
    command = main.commands[args[0]]
    rest = list(args[1:])
    if isinstance(command, click.Group):
        command, rest = command.commands[rest[0]], rest[1:]
    return command.make_context(args[0], rest)


def test_the_services_in_start_order(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path)
    commands = service_commands(layout, "127.0.0.1", 18883, interval=0.5)
    assert [c.name for c in commands] == [
        "logger",
        "sensor1",
        "sensor2",
        "sensor3",
        "door1",
        "alerts",
    ]
    by_name = {c.name: c.args for c in commands}
    assert by_name["sensor2"][:4] == ("sensor", "sensor2", "--interval", "0.5")
    assert by_name["door1"][:4] == ("doorlock", "door1", "--authorized", "operator")
    assert by_name["alerts"][:3] == ("alerts", "--rule", THRESHOLD_RULE)
    assert by_name["logger"][:4] == ("logger", "run", "--state-dir", str(tmp_path))
    for command in commands:
        args = list(command.args)
        client = args[args.index("--username") + 1]
        assert args[args.index("--client-id") + 1] == client
        assert args[args.index("--password-file") + 1] == str(layout.credential(client))
        assert args[args.index("--cafile") + 1] == str(layout.ca_cert)
        assert args[args.index("--port") + 1] == "18883"
        assert args[args.index("--log-format") + 1] == "json"


def test_a_key_file_goes_to_the_logger_only(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    commands = service_commands(StateLayout(tmp_path), "127.0.0.1", 1, interval=1.0, key_file=key)
    with_key = [c.name for c in commands if "--key-file" in c.args]
    assert with_key == ["logger"]


@pytest.mark.parametrize("index", range(6))
def test_every_service_command_line_is_accepted(tmp_path: Path, index: int) -> None:
    layout = StateLayout(tmp_path)
    layout.pki.mkdir()
    layout.ca_cert.write_text("x")  # click checks that the files exist
    layout.credentials.mkdir()
    for name in ("logger", "sensor1", "sensor2", "sensor3", "door1", "alerts"):
        layout.credential(name).write_text("pw\n")
    command = service_commands(layout, "127.0.0.1", 18883, interval=1.0)[index]
    ctx = parse(command.args)
    assert ctx.params  # parsed without a usage error


def test_the_broker_command_line_is_accepted(tmp_path: Path) -> None:
    args = broker_args(StateLayout(tmp_path))
    assert args == ["serve", "-c", str(tmp_path / "bastion.toml"), "--log-format", "json"]
    assert parse(args).params["log_format"] == "json"
