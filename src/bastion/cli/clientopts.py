"""Command-line plumbing shared by the service commands (sensor, alerts, doorlock, logger).

``client_options`` adds the connection options and ``endpoint_from_context`` turns them into a
``services.endpoint.Endpoint``; ``run_options`` adds ``--duration``/``--log-format``,
``stop_on_signals`` turns SIGINT/SIGTERM into an event the runners watch, and ``serve`` runs
a service within those bounds, turning a failed connection into one line and exit 1.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Final, TypeVar

import click

from bastion.errors import ConfigError
from bastion.ops.logging import configure_logging
from bastion.services.endpoint import DEFAULT_PORT, ConnectError, Endpoint
from bastion.services.netclient import RunBounds

__all__ = [
    "EXIT_CONNECT_FAILED",
    "EXIT_USAGE",
    "PASSWORD_ENV",
    "apply_options",
    "client_options",
    "configure_service_logging",
    "endpoint_from_context",
    "positive_seconds",
    "read_password_file",
    "run_options",
    "serve",
    "stop_on_signals",
]

PASSWORD_ENV: Final = "BASTION_PASSWORD"
EXIT_CONNECT_FAILED: Final = 1
EXIT_USAGE: Final = 2
MAX_PASSWORD_BYTES: Final = 1024
_META_KEY: Final = "bastion.client_options"

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


def read_password_file(path: Path) -> str:
    """The first line of ``path`` without its line ending; ConfigError if it has none."""
    try:
        with path.open("rb") as stream:
            line = stream.readline(MAX_PASSWORD_BYTES + 2)
    except OSError as exc:
        raise ConfigError(f"cannot read password file {path}: {exc.strerror or exc}") from None
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    if len(line) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"password file {path}: first line is over {MAX_PASSWORD_BYTES} bytes")
    if not line:
        raise ConfigError(f"password file {path} is empty: put the password on its first line")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"password file {path}: the password is not UTF-8") from None


def apply_options(func: F, options: Sequence[Callable[[F], F]]) -> F:
    """Decorate ``func`` with click ``options``, listed as they appear in ``--help``."""
    for option in reversed(options):
        func = option(func)
    return func


def _store(ctx: click.Context, param: click.Parameter, value: object) -> object:
    """Option callback: keep the value in ``ctx.meta`` for ``endpoint_from_context``."""
    stored: dict[str, object] = ctx.meta.setdefault(_META_KEY, {})
    if param.name is not None:
        stored[param.name] = value
    return value


_CLIENT_OPTIONS: Final[tuple[Callable[[F], F], ...]] = (
    click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        expose_value=False,
        callback=_store,
        help="Broker host name or address (the server certificate must name it).",
    ),
    click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        expose_value=False,
        callback=_store,
        help="Broker port.",
    ),
    click.option(
        "--cafile",
        type=_FILE,
        expose_value=False,
        callback=_store,
        help="PEM CA the broker's certificate must chain to; turns TLS on (1.2 minimum).",
    ),
    click.option(
        "--certfile",
        type=_FILE,
        expose_value=False,
        callback=_store,
        help="PEM client certificate (needs --keyfile and --cafile).",
    ),
    click.option(
        "--keyfile",
        type=_FILE,
        expose_value=False,
        callback=_store,
        help="PEM private key of --certfile.",
    ),
    click.option(
        "--username",
        expose_value=False,
        callback=_store,
        help="MQTT user name.",
    ),
    click.option(
        "--password-file",
        type=_FILE,
        expose_value=False,
        callback=_store,
        help=f"File whose first line is the password [default: ${PASSWORD_ENV}].",
    ),
    click.option(
        "--client-id",
        expose_value=False,
        callback=_store,
        help="MQTT client id [default: the service's name].",
    ),
)


def client_options(func: F) -> F:
    """Add ``--host --port --cafile --certfile --keyfile --username --password-file
    --client-id`` to a command; read them back with ``endpoint_from_context``."""
    return apply_options(func, _CLIENT_OPTIONS)


def endpoint_from_context(
    ctx: click.Context, *, default_client_id: str, keepalive: int = 30
) -> Endpoint:
    """The ``Endpoint`` the connection options describe; click usage errors for bad ones."""
    values: dict[str, Any] = ctx.meta.get(_META_KEY, {})
    password_file: Path | None = values.get("password_file")
    username: str | None = values.get("username")
    password: str | None = None
    try:
        if password_file is not None:
            password = read_password_file(password_file)
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        if password is not None and username is None:
            raise ConfigError("a password needs --username")
        return Endpoint(
            host=values.get("host") or "127.0.0.1",
            port=values.get("port") or DEFAULT_PORT,
            cafile=values.get("cafile"),
            certfile=values.get("certfile"),
            keyfile=values.get("keyfile"),
            username=username,
            password=password,
            client_id=values.get("client_id") or default_client_id,
            keepalive=keepalive,
        )
    except ConfigError as exc:
        raise click.UsageError(_option_names(str(exc)), ctx) from None


def _option_names(message: str) -> str:
    """Name the command-line options in Endpoint's messages."""
    return (
        message.replace("needs both certfile and keyfile", "needs both --certfile and --keyfile")
        .replace("give the CA file too", "give --cafile too")
        .replace("needs a username", "needs --username")
    )


def positive_seconds(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    """Option callback: None, or a finite number of seconds above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a positive number of seconds", ctx=ctx, param=param)
    return value


_RUN_OPTIONS: Final[tuple[Callable[[F], F], ...]] = (
    click.option(
        "--duration",
        type=float,
        callback=positive_seconds,
        metavar="SECONDS",
        help="Stop cleanly after SECONDS [default: run until SIGINT/SIGTERM].",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["text", "json"], case_sensitive=False),
        default="text",
        show_default=True,
        help="Log lines on stderr as text or one JSON object per line.",
    ),
)


def run_options(func: F) -> F:
    """Add ``--duration SECONDS`` and ``--log-format text|json`` (exposed as parameters)."""
    return apply_options(func, _RUN_OPTIONS)


def configure_service_logging(log_format: str, level: str = "info") -> None:
    """structlog to stderr: ``text`` is the console renderer, ``json`` one object per line."""
    configure_logging(level, "json" if log_format.lower() == "json" else "human")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (then the old handlers return).

    Only the main thread can install handlers; elsewhere the event is only set by the caller.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve(ctx: click.Context, run: Callable[[RunBounds], object], duration: float | None) -> None:
    """Run a service until SIGINT/SIGTERM or ``duration``; one line and exit 1 if it cannot
    connect, exit 2 for a bad setting found only now (e.g. an unreadable CA file)."""
    with stop_on_signals() as stop:
        try:
            run(RunBounds(stop, duration))
        except ConnectError as exc:
            click.echo(f"bastion: error: {exc}", err=True)
            ctx.exit(EXIT_CONNECT_FAILED)
        except ConfigError as exc:
            click.echo(f"bastion: error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
