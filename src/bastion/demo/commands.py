"""The command lines of the demo's parts: exactly what a user types to run each one alone.

``bastion serve -c STATE/bastion.toml`` for the broker, and for every service its
``bastion sensor|doorlock|alerts|logger`` command with the connection options of its own
credential (TLS with the demo CA, username, password file, client id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bastion.demo.access import DOOR, OPERATOR, SENSORS
from bastion.demo.statedir import StateLayout

__all__ = ["THRESHOLD_RULE", "ServiceCommand", "broker_args", "service_commands"]

THRESHOLD_RULE: Final = "temp/#:value>30"  # the alert service's threshold rule


@dataclass(frozen=True, slots=True)
class ServiceCommand:
    """One service: its name (also its log file's) and its ``bastion`` arguments."""

    name: str
    args: tuple[str, ...]


def broker_args(layout: StateLayout) -> list[str]:
    """``serve -c STATE/bastion.toml --log-format json``."""
    return ["serve", "-c", str(layout.config), "--log-format", "json"]


def _client_args(layout: StateLayout, host: str, port: int, client: str) -> list[str]:
    return [
        *("--host", host, "--port", str(port), "--cafile", str(layout.ca_cert)),
        *("--username", client, "--password-file", str(layout.credential(client))),
        *("--client-id", client, "--log-format", "json"),
    ]


def service_commands(
    layout: StateLayout,
    host: str,
    port: int,
    *,
    interval: float,
    key_file: Path | None = None,
) -> list[ServiceCommand]:
    """Every service, the logger first (so it stores everything), the alert service last."""

    def command(name: str, client: str, args: Sequence[str]) -> ServiceCommand:
        return ServiceCommand(name, (*args, *_client_args(layout, host, port, client)))

    logger = ["logger", "run", "--state-dir", str(layout.root)]
    if key_file is not None:
        logger += ["--key-file", str(key_file)]
    commands = [command("logger", "logger", logger)]
    for sensor in SENSORS:
        commands.append(
            command(
                sensor.name, sensor.name, ["sensor", sensor.name, "--interval", f"{interval:g}"]
            )
        )
    commands.append(command(DOOR, DOOR, ["doorlock", DOOR, "--authorized", OPERATOR]))
    commands.append(command("alerts", "alerts", ["alerts", "--rule", THRESHOLD_RULE]))
    return commands
