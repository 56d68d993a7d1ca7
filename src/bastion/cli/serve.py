"""``bastion serve``: load settings, set up logging, hand over to ``runtime.app.run``.

Thin on purpose: parsing and validation live in ``bastion.config``, logging in
``bastion.ops.logging``, everything else in ``bastion.runtime``.
"""

from __future__ import annotations

from pathlib import Path

import click

from bastion.config import load_settings, parse_listen_address
from bastion.errors import ConfigError
from bastion.ops.logging import LEVELS, configure_logging

__all__ = ["serve"]

EXIT_CONFIG_ERROR = 2


def _parse_listen(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, int], ...]:
    """Option callback: every ``--listen HOST:PORT`` value becomes ``(host, port)``."""
    parsed: list[tuple[str, int]] = []
    for value in values:
        try:
            parsed.append(parse_listen_address(value))
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return tuple(parsed)


def _overrides(
    listen: tuple[tuple[str, int], ...],
    allow_anonymous: bool,
    log_level: str | None,
    log_format: str | None,
) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if listen:
        overrides["listeners"] = [{"host": host, "port": port} for host, port in listen]
    if allow_anonymous:
        overrides["security.allow_anonymous"] = True
    if log_level is not None:
        overrides["logging.level"] = log_level
    if log_format is not None:
        overrides["logging.format"] = log_format
    return overrides


def _config_error(ctx: click.Context, error: ConfigError) -> None:
    for line in str(error).splitlines() or [""]:
        click.echo(f"bastion: error: {line}", err=True)
    ctx.exit(EXIT_CONFIG_ERROR)


@click.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML configuration file (see docs/configuration.md).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    multiple=True,
    callback=_parse_listen,
    help="Listen on HOST:PORT ([::1]:1883 for IPv6); repeatable. Replaces the file's listeners.",
)
@click.option(
    "--allow-anonymous",
    is_flag=True,
    help="Let clients connect without credentials (development only).",
)
@click.option(
    "--log-level",
    type=click.Choice(list(LEVELS), case_sensitive=False),
    help="Lowest log level written [default: from the config file, else info].",
)
@click.option(
    "--log-format",
    type=click.Choice(["human", "json"], case_sensitive=False),
    help="Log as console lines or JSON lines [default: from the config file, else human].",
)
@click.pass_context
def serve(
    ctx: click.Context,
    *,
    config_path: Path | None,
    listen: tuple[tuple[str, int], ...],
    allow_anonymous: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the MQTT broker until interrupted.

    Without -c or --listen it listens on 127.0.0.1:1883.
    """
    overrides = _overrides(listen, allow_anonymous, log_level, log_format)
    try:
        settings = load_settings(config_path, overrides)
    except ConfigError as error:
        _config_error(ctx, error)
        return
    configure_logging(settings.logging.level, settings.logging.format)

    from bastion.runtime.app import run  # noqa: PLC0415 - imported late, on purpose

    try:
        code = run(settings)
    except ConfigError as error:
        _config_error(ctx, error)
        return
    ctx.exit(code)
