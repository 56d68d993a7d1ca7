"""``bastion serve``: load settings, set up logging, hand over to ``runtime.app.run``.

Thin on purpose: parsing and validation live in ``bastion.config``, logging in
``bastion.ops.logging``, everything else in ``bastion.runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from bastion.config import load_settings, parse_listen_address
from bastion.errors import ConfigError
from bastion.ops.logging import LEVELS, configure_logging
from bastion.storage.errors import StorageError

__all__ = ["serve"]

EXIT_CONFIG_ERROR = 2

_FILE = click.Path(dir_okay=False, path_type=Path)


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


@dataclass(frozen=True)
class _TlsOptions:
    """The ``--tls-listen`` family of options, applied to every TLS listener given."""

    listen: tuple[tuple[str, int], ...]
    certfile: Path | None
    keyfile: Path | None
    cafile: Path | None
    crlfile: Path | None
    require_certificate: bool
    min_version: str | None
    identity: str | None

    def listener_tables(self, ctx: click.Context) -> list[dict[str, object]]:
        """``[[listeners]]`` tables for the TLS listeners; usage errors for half-given TLS."""
        extras = {
            "--cafile": self.cafile,
            "--crlfile": self.crlfile,
            "--require-certificate": self.require_certificate or None,
            "--tls-min-version": self.min_version,
            "--use-identity-as-username": self.identity,
        }
        if not self.listen:
            given = [name for name, value in extras.items() if value is not None]
            given += [
                n for n, v in (("--certfile", self.certfile), ("--keyfile", self.keyfile)) if v
            ]
            if given:
                verb = "needs" if len(given) == 1 else "need"
                raise click.UsageError(f"{', '.join(given)} {verb} --tls-listen HOST:PORT", ctx)
            return []
        if self.certfile is None or self.keyfile is None:
            raise click.UsageError("--tls-listen needs --certfile and --keyfile", ctx)
        tls: dict[str, object] = {"certfile": str(self.certfile), "keyfile": str(self.keyfile)}
        if self.cafile is not None:
            tls["cafile"] = str(self.cafile)
        if self.crlfile is not None:
            tls["crlfile"] = str(self.crlfile)
        if self.require_certificate:
            tls["require_certificate"] = True
        if self.min_version is not None:
            tls["min_version"] = self.min_version
        if self.identity is not None:
            tls["use_identity_as_username"] = self.identity
        return [{"host": host, "port": port, "tls": dict(tls)} for host, port in self.listen]


def _overrides(
    ctx: click.Context,
    *,
    listen: tuple[tuple[str, int], ...],
    tls: _TlsOptions,
    security: dict[str, object],
    storage: dict[str, object],
    no_persistence: bool,
    log_level: str | None,
    log_format: str | None,
) -> dict[str, object]:
    overrides: dict[str, object] = {}
    listeners = [{"host": host, "port": port} for host, port in listen]
    listeners += tls.listener_tables(ctx)
    if listeners:
        overrides["listeners"] = listeners
    for key, value in security.items():
        if value is not None and value is not False:
            overrides[f"security.{key}"] = value
    for key, value in storage.items():
        if value is not None:
            overrides[f"storage.{key}"] = value
    if no_persistence:
        overrides["storage.enabled"] = False
    if log_level is not None:
        overrides["logging.level"] = log_level
    if log_format is not None:
        overrides["logging.format"] = log_format
    return overrides


def _config_error(ctx: click.Context, error: ConfigError | StorageError) -> None:
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
    "--tls-listen",
    metavar="HOST:PORT",
    multiple=True,
    callback=_parse_listen,
    help="Listen with TLS on HOST:PORT (8883 by convention); repeatable. Needs --certfile "
    "and --keyfile.",
)
@click.option("--certfile", type=_FILE, help="PEM server certificate for --tls-listen.")
@click.option("--keyfile", type=_FILE, help="PEM private key for --tls-listen.")
@click.option("--cafile", type=_FILE, help="PEM CA that client certificates must chain to.")
@click.option("--crlfile", type=_FILE, help="PEM CRL checked for client certificates.")
@click.option(
    "--require-certificate",
    is_flag=True,
    help="Refuse TLS clients without a valid certificate (mutual TLS; needs --cafile).",
)
@click.option(
    "--tls-min-version",
    type=click.Choice(["1.2", "1.3"]),
    help="Lowest TLS version accepted [default: 1.3]; 1.0/1.1 are never accepted.",
)
@click.option(
    "--use-identity-as-username",
    type=click.Choice(["none", "cn", "san"]),
    help="Take the username from the client certificate's CN or first SAN.",
)
@click.option(
    "--password-file",
    type=_FILE,
    help="Password file (bastion passwd, or mosquitto_passwd's $6$/$7$ hashes).",
)
@click.option("--acl-file", type=_FILE, help="ACL file in Mosquitto's acl_file syntax.")
@click.option(
    "--allow-anonymous",
    is_flag=True,
    help="Let clients connect without credentials (development only).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the encrypted state database [default: $BASTION_DATA_DIR, else "
    "./bastion-state].",
)
@click.option(
    "--key-file",
    type=_FILE,
    help="Master key file for the state database (bastion keys init) [default: "
    "$BASTION_MASTER_KEY, else DATA_DIR/master.key, created on first start].",
)
@click.option(
    "--no-persistence",
    is_flag=True,
    help="Keep sessions, queued and retained messages in memory only (lost on restart).",
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
    tls_listen: tuple[tuple[str, int], ...],
    certfile: Path | None,
    keyfile: Path | None,
    cafile: Path | None,
    crlfile: Path | None,
    require_certificate: bool,
    tls_min_version: str | None,
    use_identity_as_username: str | None,
    password_file: Path | None,
    acl_file: Path | None,
    allow_anonymous: bool,
    data_dir: Path | None,
    key_file: Path | None,
    no_persistence: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the MQTT broker until interrupted.

    At least one listener is needed (--listen, --tls-listen or [[listeners]] in -c FILE):
    nothing listens implicitly. Anonymous clients are refused unless --allow-anonymous.
    """
    tls = _TlsOptions(
        tls_listen,
        certfile,
        keyfile,
        cafile,
        crlfile,
        require_certificate,
        tls_min_version,
        use_identity_as_username,
    )
    security: dict[str, object] = {
        "allow_anonymous": allow_anonymous,
        "password_file": str(password_file) if password_file else None,
        "acl_file": str(acl_file) if acl_file else None,
    }
    storage: dict[str, object] = {
        "data_dir": str(data_dir) if data_dir else None,
        "key_file": str(key_file) if key_file else None,
    }
    overrides = _overrides(
        ctx,
        listen=listen,
        tls=tls,
        security=security,
        storage=storage,
        no_persistence=no_persistence,
        log_level=log_level,
        log_format=log_format,
    )
    try:
        settings = load_settings(config_path, overrides)
    except ConfigError as error:
        _config_error(ctx, error)
        return
    if not settings.listeners:
        _config_error(
            ctx,
            ConfigError(
                "no listener configured: give --listen HOST:PORT (plain TCP, e.g. "
                "127.0.0.1:1883 for development), --tls-listen HOST:PORT with --certfile and "
                "--keyfile, or [[listeners]] tables in a config file (-c)"
            ),
        )
        return
    configure_logging(settings.logging.level, settings.logging.format)

    from bastion.runtime.app import run  # noqa: PLC0415 - imported late, on purpose

    try:
        code = run(settings)
    except (ConfigError, StorageError) as error:
        _config_error(ctx, error)
        return
    ctx.exit(code)
