"""``bastion logger``: run the data logger, and query, export, purge and re-key what it stored.

Thin on purpose: the store is ``storage.logstore`` (SQLite or PostgreSQL, sealed at rest with
the broker's master key), rendering is ``storage.logstore_output`` and the MQTT runner is
``services.datalogger``. ``bastion logger`` alone means ``bastion logger run``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn, TextIO, TypeVar

import click

from bastion.cli.clientopts import (
    apply_options,
    client_options,
    configure_service_logging,
    endpoint_from_context,
    run_options,
    serve,
)
from bastion.ops.logging import configure_logging
from bastion.services.datalogger import LoggerSettings, run_logger
from bastion.storage.errors import StorageError
from bastion.storage.keys import DEFAULT_KEY_ENV
from bastion.storage.layout import DATA_DIR_ENV, default_data_dir
from bastion.storage.logstore import (
    LogQuery,
    LogStore,
    open_logstore,
    parse_instant,
    parse_topic_filter,
)
from bastion.storage.logstore_output import write_csv, write_json_array, write_jsonl, write_table

__all__ = ["DATABASE_URL_ENV", "logger_group"]

EXIT_REFUSED = 1
EXIT_CONFIG_ERROR = 2
DATABASE_URL_ENV = "BASTION_LOGGER_DATABASE_URL"
DEFAULT_LIMIT = 1000
_MIB = 1024 * 1024

F = TypeVar("F", bound=Callable[..., Any])


class _RunByDefault(click.Group):
    """A group that runs its ``run`` command when no subcommand is named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _store_options(func: F) -> F:
    """``--state-dir``, ``--database-url`` and ``--key-file``: where the messages are."""
    options = (
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help=f"State directory: logger.db and the master key [default: ${DATA_DIR_ENV}, "
            "else ./bastion-state]; the broker's --data-dir, so both share one master key.",
        ),
        click.option(
            "--database-url",
            metavar="postgresql://...",
            envvar=DATABASE_URL_ENV,
            default=None,
            help=f"Keep messages in PostgreSQL instead of STATE_DIR/logger.db [env: "
            f"{DATABASE_URL_ENV}, which keeps a password out of the process list]. The "
            "master key stays local.",
        ),
        click.option(
            "--key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"Master key file [default: ${DEFAULT_KEY_ENV} if set, else "
            "STATE_DIR/master.key, created on first start].",
        ),
    )
    return apply_options(func, options)


def _filter_options(func: F) -> F:
    """``--topic`` (repeatable), ``--since`` and ``--until``: which messages."""
    options = (
        click.option(
            "--topic",
            "topics",
            metavar="FILTER",
            multiple=True,
            callback=_check_filters,
            help="MQTT topic filter with + and # (repeatable) [default: every topic].",
        ),
        click.option(
            "--since",
            metavar="WHEN",
            help="Only messages received at or after WHEN: a duration ago (30s, 15m, 1h, 7d) "
            "or an RFC 3339 timestamp (2026-05-01T12:00:00Z).",
        ),
        click.option("--until", metavar="WHEN", help="Only messages received up to WHEN."),
    )
    return apply_options(func, options)


def _check_filters(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    try:
        return tuple(parse_topic_filter(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


def _instant(ctx: click.Context, name: str, text: str | None, now: datetime) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_instant(text, now)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param_hint=f"'--{name}'") from None


def _query(
    ctx: click.Context,
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int | None,
) -> LogQuery:
    now = datetime.now(UTC)
    start, end = _instant(ctx, "since", since, now), _instant(ctx, "until", until, now)
    if start is not None and end is not None and start > end:
        raise click.UsageError("--since is later than --until", ctx)
    return LogQuery(topics, start, end, limit)


@contextlib.contextmanager
def _handled(ctx: click.Context) -> Iterator[None]:
    """A ``StorageError`` becomes one line on stderr and exit status 2; a reader that went
    away (``query | head``) ends the command quietly."""
    try:
        yield
    except StorageError as error:
        _fail(ctx, str(error), EXIT_CONFIG_ERROR)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # no more writes to the closed pipe
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        ctx.exit(EXIT_REFUSED)


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    for line in message.splitlines() or [""]:
        click.echo(f"bastion: error: {line}", err=True)
    ctx.exit(code)


@contextlib.contextmanager
def _reading(
    state_dir: Path | None, database_url: str | None, key_file: Path | None
) -> Iterator[LogStore]:
    """The store for a read command (never created); tampered records reported at the end."""
    store = open_logstore(
        state_dir or default_data_dir(), database_url=database_url, key_file=key_file
    )
    try:
        yield store
    finally:
        store.close()
    if store.tampered:
        click.echo(
            f"bastion: warning: {store.tampered} record(s) failed authentication and were "
            f"skipped (edited or swapped ciphertext; see the log lines above)",
            err=True,
        )


# ----------------------------------------------------------------- the group


@click.group(name="logger", cls=_RunByDefault)
def logger_group() -> None:
    """The data logger: subscribes to # and stores every message, encrypted at rest.

    Payloads and MQTT 5 properties are sealed with AES-256-GCM under data keys wrapped by
    the broker's master key (topics stay readable, for filtering). `bastion logger` alone
    runs it; the other commands read what it stored, also while it runs.
    """


@logger_group.command(name="run")
@_store_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=200,
    show_default=True,
    help="Messages per transaction (one fsync each).",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(0.01, 60.0),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest a received message waits before its batch is committed.",
)
@click.option(
    "--retention-days",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    metavar="DAYS",
    help="Delete messages older than DAYS (checked every minute) [default: keep them].",
)
@click.option(
    "--max-size-mb",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    metavar="MB",
    help="Delete the oldest messages while the stored ones count more than MB.",
)
@click.option(
    "--session-expiry",
    type=click.IntRange(0, 2**32 - 1),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="How long the broker keeps the logger's session (and queues its messages) while "
    "it is offline; 0 ends the session at disconnect.",
)
@client_options
@run_options
@click.pass_context
def run_command(
    ctx: click.Context,
    *,
    state_dir: Path | None,
    database_url: str | None,
    key_file: Path | None,
    batch_size: int,
    flush_interval: float,
    retention_days: float | None,
    max_size_mb: float | None,
    session_expiry: int,
    duration: float | None,
    log_format: str,
) -> None:
    """Run the data logger: subscribe to # (QoS 1, persistent session) and store every
    message in batches; a QoS 1 message is acknowledged only once its batch is committed.

    Stops cleanly (last batch committed, DISCONNECT, exit 0) on SIGINT/SIGTERM or after
    --duration. Logs logger.stored (count, total) per batch.
    """
    endpoint = endpoint_from_context(ctx, default_client_id="logger")
    configure_service_logging(log_format)
    settings = LoggerSettings(
        batch_size=batch_size,
        flush_interval=flush_interval,
        retention=None if retention_days is None else timedelta(days=retention_days),
        max_bytes=None if max_size_mb is None else int(max_size_mb * _MIB),
        session_expiry=session_expiry,
    )
    with _handled(ctx):
        store = open_logstore(
            state_dir or default_data_dir(),
            database_url=database_url,
            key_file=key_file,
            create=True,
        )
        try:
            serve(ctx, lambda bounds: run_logger(endpoint, store, settings, bounds), duration)
        finally:
            store.close()


@logger_group.command(name="query")
@_store_options
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Show the newest N matching messages (oldest of them first); 0 shows all.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for people; json (an array of {topic, ts, qos, retain, payload}) or csv "
    "for scripts. JSON payloads are shown as JSON, other text as text, binary as base64.",
)
@click.pass_context
def query_command(
    ctx: click.Context,
    *,
    state_dir: Path | None,
    database_url: str | None,
    key_file: Path | None,
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    output: Literal["table", "json", "csv"],
) -> None:
    """Decrypt and print stored messages, newest last. Safe while the logger runs."""
    configure_logging("warning", "human")
    query = _query(ctx, topics, since, until, limit or None)
    with _handled(ctx), _reading(state_dir, database_url, key_file) as store:
        messages = store.latest(query)
        out = sys.stdout
        if output == "table":
            write_table(messages, out)
        elif output == "json":
            write_json_array(messages, out)
        else:
            write_csv(messages, out)


@logger_group.command(name="export")
@_store_options
@_filter_options
@click.option(
    "--format",
    "output",
    type=click.Choice(["csv", "jsonl"]),
    required=True,
    help="csv (with a header row) or jsonl (one JSON object per line, as in query --format json).",
)
@click.option(
    "--output",
    "output_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="File to write (created with mode 0600: it holds decrypted data); - for stdout.",
)
@click.option("--force", is_flag=True, help="Replace --output if it exists.")
@click.pass_context
def export_command(
    ctx: click.Context,
    *,
    state_dir: Path | None,
    database_url: str | None,
    key_file: Path | None,
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    output: Literal["csv", "jsonl"],
    output_file: Path,
    force: bool,
) -> None:
    """Decrypt matching messages, oldest first, into a CSV or JSON-lines file (streamed:
    any number of messages in little memory)."""
    configure_logging("warning", "human")
    query = _query(ctx, topics, since, until, None)
    write = write_csv if output == "csv" else write_jsonl
    with _handled(ctx), _reading(state_dir, database_url, key_file) as store:
        if str(output_file) == "-":
            count = write(store.messages(query), sys.stdout)
        else:
            with _exclusive_output(ctx, output_file, force) as stream:
                count = write(store.messages(query), stream)
        where = "stdout" if str(output_file) == "-" else str(output_file)
        click.echo(f"Exported {count} message{'s' if count != 1 else ''} to {where}.", err=True)


@contextlib.contextmanager
def _exclusive_output(ctx: click.Context, path: Path, force: bool) -> Iterator[TextIO]:
    """A 0600 temporary file beside ``path``, moved into place only when complete."""
    if path.exists() and not force:
        _fail(ctx, f"{path} exists: choose another --output or add --force", EXIT_CONFIG_ERROR)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600
        )
    except OSError as error:
        _fail(ctx, f"cannot write {path}: {error.strerror or error}", EXIT_CONFIG_ERROR)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


@logger_group.command(name="purge")
@_store_options
@click.option(
    "--older-than",
    metavar="AGE",
    help="Delete messages received more than AGE ago (30s, 15m, 1h, 7d) or before an RFC "
    "3339 timestamp.",
)
@click.option(
    "--max-size-mb",
    type=click.FloatRange(0.0),
    default=None,
    metavar="MB",
    help="Then delete the oldest messages until the rest count at most MB.",
)
@click.pass_context
def purge_command(
    ctx: click.Context,
    *,
    state_dir: Path | None,
    database_url: str | None,
    key_file: Path | None,
    older_than: str | None,
    max_size_mb: float | None,
) -> None:
    """Apply a retention policy now (what `run --retention-days/--max-size-mb` does every
    minute). Freed space inside logger.db is reused by new messages."""
    configure_logging("warning", "human")
    if older_than is None and max_size_mb is None:
        raise click.UsageError("give --older-than AGE, --max-size-mb MB, or both", ctx)
    cutoff = _instant(ctx, "older-than", older_than, datetime.now(UTC))
    max_bytes = None if max_size_mb is None else int(max_size_mb * _MIB)
    with _handled(ctx), _reading(state_dir, database_url, key_file) as store:
        result = store.purge(older_than=cutoff, max_bytes=max_bytes)
    click.echo(
        f"Deleted {result.by_age} message(s) by age and {result.by_size} by size; "
        f"{result.left.messages} left ({result.left.bytes / _MIB:.2f} MB)."
    )


@logger_group.command(name="rekey")
@_store_options
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Records re-encrypted per transaction (a running logger waits at most one batch).",
)
@click.pass_context
def rekey_command(
    ctx: click.Context,
    *,
    state_dir: Path | None,
    database_url: str | None,
    key_file: Path | None,
    batch: int,
) -> None:
    """Rotate the logger's data key: new messages use a new key at once (a running logger
    switches at its next batch), every stored message is re-encrypted with it, and the old
    keys are retired (erased). Exit 1 if tampered records kept an old key alive."""
    configure_logging("warning", "human")
    with _handled(ctx), _reading(state_dir, database_url, key_file) as store:
        result = store.rekey(batch)
    click.echo(f"New data key {result.key_id} is current.")
    click.echo(f"Re-encrypted {result.reencrypted} message(s) with it.")
    retired = ", ".join(result.retired) or "none"
    click.echo(f"Retired data keys: {retired}.")
    if result.tampered:
        _fail(
            ctx,
            f"{result.tampered} record(s) failed authentication and were left as they are; "
            f"their old key stays until they are purged",
            EXIT_REFUSED,
        )
