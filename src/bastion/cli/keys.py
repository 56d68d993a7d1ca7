"""``bastion keys``: create, rotate, inspect and retire the keys that encrypt the data at rest.

Thin on purpose: the work is in ``bastion.storage`` (``datakeys``, ``keys``, ``registry``);
this module resolves the data directory and master key, calls in, and prints the outcome.
The data logger's ``logger.db`` in the same directory shares the master key: master-key
rotation re-wraps its data keys too, retirement checks it, and ``status`` shows it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import click

from bastion.ops.logging import configure_logging
from bastion.storage import datakeys
from bastion.storage.base import StoreOptions
from bastion.storage.database import Database, open_database
from bastion.storage.errors import KeyStateError, StorageError
from bastion.storage.keys import DEFAULT_KEY_ENV, resolve_provider
from bastion.storage.layout import DATA_DIR_ENV, database_path, default_data_dir, ensure_data_dir
from bastion.storage.logstore_rows import logger_database_path
from bastion.storage.logstore_sqlite import open_logger_database
from bastion.storage.registry import TamperedSet, reencrypt_batch

__all__ = ["keys_group"]

EXIT_REFUSED = 1
EXIT_CONFIG_ERROR = 2
# A running broker commits often; waiting up to 30 s for a gap beats failing with "busy".
_OPTIONS = StoreOptions(busy_timeout_ms=30_000)

_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"The broker's data directory [default: ${DATA_DIR_ENV}, else ./bastion-state].",
)
_key_file_option = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Master key file [default: the key in --key-env if set, else DATA_DIR/master.key].",
)
_key_env_option = click.option(
    "--key-env",
    metavar="NAME",
    default=DEFAULT_KEY_ENV,
    show_default=True,
    help="Environment variable that may hold the master key (base64 of 32 bytes).",
)


@click.group(name="keys")
def keys_group() -> None:
    """Encryption at rest: the master key and the data keys it wraps.

    Everything clients send except topics is sealed with AES-256-GCM under a data key;
    data keys live in the database, wrapped by the master key from --key-file, from
    $BASTION_MASTER_KEY, or from DATA_DIR/master.key (created with mode 0600 when nothing
    else is configured). Every command is safe while the broker runs.
    """
    configure_logging("warning", "human")


@keys_group.command(name="init")
@_data_dir_option
@_key_file_option
@_key_env_option
@click.pass_context
def init_command(
    ctx: click.Context, *, data_dir: Path | None, key_file: Path | None, key_env: str
) -> None:
    """Create the data directory, its database and first data key (and a master key file
    if none is configured). Does nothing to a directory that is already set up."""
    directory = data_dir or default_data_dir()
    with _handled(ctx):
        ensure_data_dir(directory)
        with _database(directory, create=True) as database:
            before = datakeys.list_data_keys(database.connection)
            # A key file is only ever created for a database without data keys: for one
            # that has them, a missing key is an error, never a reason to make a new one.
            provider = resolve_provider(
                directory, key_file=key_file, key_env=key_env, create=not before
            )
            ring = datakeys.ensure_data_key(database, provider)
        if before:
            click.echo(f"{directory} is already initialised: current data key {ring.current_id}")
            return
        created = getattr(provider, "created", False)
        click.echo(f"Initialised encrypted storage in {directory}:")
        click.echo(f"  database    {database_path(directory)}")
        click.echo(
            f"  master key  {provider.description} ({provider.current_master_id})"
            + (" (created now: keep production keys elsewhere)" if created else "")
        )
        click.echo(f"  data key    {ring.current_id} (current)")


@keys_group.command(name="rotate")
@click.option(
    "--master",
    is_flag=True,
    help="Rotate the master key instead: add a new one to the key file (or use the new key "
    "put first in the environment variable) and re-wrap every data key with it, the data "
    "logger's (DATA_DIR/logger.db) included.",
)
@_data_dir_option
@_key_file_option
@_key_env_option
@click.pass_context
def rotate_command(
    ctx: click.Context,
    *,
    master: bool,
    data_dir: Path | None,
    key_file: Path | None,
    key_env: str,
) -> None:
    """Make a new data key current. New records use it at once (a running broker notices
    within one sweep); the broker's background job re-encrypts older records, after which
    `bastion keys status` says the old key can be retired."""
    directory = data_dir or default_data_dir()
    with _handled(ctx), _database(directory) as database:
        provider = resolve_provider(directory, key_file=key_file, key_env=key_env)
        if master:
            with _logger_database(directory) as logger:
                also = () if logger is None else (logger,)
                result = datakeys.rotate_master_key(database, provider, also=also)
            made = "new master key" if result.created else "master key"
            click.echo(
                f"The {made} {result.current} now wraps every data key "
                f"({result.rewrapped} re-wrapped)."
            )
            if logger is not None:
                count = result.also[0]
                click.echo(
                    f"It also wraps the data logger's data keys in {logger.path} "
                    f"({count} re-wrapped)."
                )
            for old in sorted(result.previous - {result.current}):
                click.echo(f"Master key {old} is unused now: `bastion keys retire {old}`.")
            return
        info = datakeys.rotate_data_key(database, provider)
        click.echo(f"New data key {info.id} is current, wrapped by master key {info.master_id}.")
        click.echo(
            "Older records are re-encrypted by the running broker (or `bastion keys "
            "reencrypt`); retire the old key when `bastion keys status` says it is unused."
        )


@keys_group.command(name="status")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table for people, json for scripts.",
)
@_data_dir_option
@_key_file_option
@_key_env_option
@click.pass_context
def status_command(
    ctx: click.Context,
    *,
    output: Literal["table", "json"],
    data_dir: Path | None,
    key_file: Path | None,
    key_env: str,
) -> None:
    """Show every data key: state, records it still seals, whether it can be retired; and
    whether the master key opens this database (the key itself is never printed). The data
    logger's DATA_DIR/logger.db, if present, is shown too: it uses the same master key."""
    directory = data_dir or default_data_dir()
    with _handled(ctx), _database(directory) as database:
        status = _gather(database, directory, key_file, key_env)
    if output == "json":
        click.echo(json.dumps(_as_json(status), indent=2))
    else:
        _print_status(status)


@keys_group.command(name="retire")
@click.argument("key_id", metavar="KEYID")
@_data_dir_option
@_key_file_option
@_key_env_option
@click.pass_context
def retire_command(
    ctx: click.Context,
    *,
    key_id: str,
    data_dir: Path | None,
    key_file: Path | None,
    key_env: str,
) -> None:
    """Retire KEYID once nothing uses it: a data key (dk-...) has its key material erased
    from the database; an old master key (mk-...) is deleted from the key file. Refused
    (exit 1) while records or data keys still depend on it.

    A master key is also refused while it wraps a data key of the data logger's
    DATA_DIR/logger.db: retire never re-wraps keys (it only deletes one nothing needs);
    `bastion keys rotate --master` re-wraps both databases first. A logger keeping its
    messages in PostgreSQL is not seen here: start it once after the rotation (it re-wraps
    its keys when it starts) before retiring the old master key."""
    directory = data_dir or default_data_dir()
    with _handled(ctx), _database(directory) as database:
        if key_id.startswith("mk-"):
            provider = resolve_provider(directory, key_file=key_file, key_env=key_env)
            with _logger_database(directory) as logger:
                also = () if logger is None else (logger,)
                datakeys.retire_master_key(database, provider, key_id, also=also)
            click.echo(f"Master key {key_id} was deleted from {provider.description}.")
            return
        datakeys.retire_data_key(database, key_id)
        click.echo(f"Data key {key_id} is retired; its key material is erased.")


@keys_group.command(name="reencrypt")
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=500,
    show_default=True,
    help="Records per transaction (a running broker waits at most one batch).",
)
@_data_dir_option
@_key_file_option
@_key_env_option
@click.pass_context
def reencrypt_command(
    ctx: click.Context,
    *,
    batch: int,
    data_dir: Path | None,
    key_file: Path | None,
    key_env: str,
) -> None:
    """Re-encrypt now every record still sealed under an old data key (what the broker's
    background job does), e.g. while the broker is stopped."""
    directory = data_dir or default_data_dir()
    tampered: TamperedSet = set()
    with _handled(ctx), _database(directory) as database:
        provider = resolve_provider(directory, key_file=key_file, key_env=key_env)
        ring = datakeys.load_keyring(database, provider)
        total = 0
        while done := reencrypt_batch(database, ring, batch, tampered=tampered):
            total += done
        datakeys.add_seal_counts(database, ring.take_seals())
        click.echo(
            f"Re-encrypted {total} record{'s' if total != 1 else ''} with {ring.current_id}."
        )
        if tampered:
            raise KeyStateError(
                f"{len(tampered)} record(s) failed authentication and were left as they are "
                f"(see the log); their old key cannot be retired while they remain"
            )


# ----------------------------------------------------------------- helpers


@contextmanager
def _handled(ctx: click.Context) -> Iterator[None]:
    """Report a ``StorageError`` as one line: exit 1 if refused, 2 for set-up problems."""
    try:
        yield
    except KeyStateError as error:
        _fail(ctx, error, EXIT_REFUSED)
    except StorageError as error:
        _fail(ctx, error, EXIT_CONFIG_ERROR)


@contextmanager
def _database(directory: Path, *, create: bool = False) -> Iterator[Database]:
    database = open_database(database_path(directory), options=_OPTIONS, create=create)
    try:
        yield database
    finally:
        database.close()


@contextmanager
def _logger_database(directory: Path) -> Iterator[Database | None]:
    """The data logger's ``logger.db`` beside ``bastion.db``, or None if it has none."""
    database = open_logger_database(directory)
    try:
        yield database
    finally:
        if database is not None:
            database.close()


@dataclass(frozen=True, slots=True)
class _LoggerStatus:
    """The data logger's database in the same data directory (it shares the master key)."""

    database: Path
    schema_version: int | None
    """None if the file could not be opened (``error`` says why)."""
    keys: Sequence[datakeys.DataKeyStatus]
    usage: dict[str, int]
    error: str | None
    """Why it cannot be opened, or why the master key does not open its data keys."""


@dataclass(frozen=True, slots=True)
class _Status:
    """What ``bastion keys status`` reports, gathered in one read of the database."""

    directory: Path
    database: Path
    schema_version: int
    keys: Sequence[datakeys.DataKeyStatus]
    usage: dict[str, int]
    """Active data keys per master key id."""
    master_source: str | None
    master_current: str | None
    master_held: tuple[str, ...]
    master_error: str | None
    logger: _LoggerStatus | None


def _gather(database: Database, directory: Path, key_file: Path | None, key_env: str) -> _Status:
    keys = datakeys.data_key_status(database)
    with database.snapshot() as connection:
        usage = datakeys.master_key_usage(connection)
    source = current = error = None
    held: tuple[str, ...] = ()
    try:
        provider = resolve_provider(directory, key_file=key_file, key_env=key_env)
        datakeys.load_keyring(database, provider)  # does the master key open it?
        source, current = provider.description, provider.current_master_id
        held = tuple(sorted(provider.master_ids()))
    except StorageError as problem:
        error = str(problem)
    return _Status(
        directory,
        database.path,
        database.schema_version,
        keys,
        usage,
        source,
        current,
        held,
        error,
        _gather_logger(directory, key_file, key_env),
    )


def _gather_logger(directory: Path, key_file: Path | None, key_env: str) -> _LoggerStatus | None:
    path = logger_database_path(directory)
    try:
        database = open_logger_database(directory)
    except StorageError as problem:
        return _LoggerStatus(path, None, (), {}, str(problem))
    if database is None:
        return None
    try:
        keys = datakeys.data_key_status(database)
        with database.snapshot() as connection:
            usage = datakeys.master_key_usage(connection)
        error = None
        try:
            provider = resolve_provider(directory, key_file=key_file, key_env=key_env)
            datakeys.load_keyring(database, provider)
        except StorageError as problem:
            error = str(problem)
        return _LoggerStatus(path, database.schema_version, keys, usage, error)
    finally:
        database.close()


def _as_json(status: _Status) -> dict[str, object]:
    logger = status.logger
    logger_usage = {} if logger is None else logger.usage
    return {
        "data_dir": str(status.directory),
        "database": str(status.database),
        "schema_version": status.schema_version,
        "current_data_key": _current_key(status.keys),
        "master": {
            "ok": status.master_error is None,
            "error": status.master_error,
            "source": status.master_source,
            "current": status.master_current,
            "keys": [
                {
                    "id": master_id,
                    "current": master_id == status.master_current,
                    "data_keys": status.usage.get(master_id, 0),
                    "logger_data_keys": logger_usage.get(master_id, 0),
                }
                for master_id in status.master_held
            ],
        },
        "data_keys": [_key_json(k, k.note) for k in status.keys],
        "logger": None
        if logger is None
        else {
            "database": str(logger.database),
            "schema_version": logger.schema_version,
            "ok": logger.error is None,
            "error": logger.error,
            "current_data_key": _current_key(logger.keys),
            "data_keys": [_key_json(k, _logger_note(k)) for k in logger.keys],
        },
    }


def _current_key(keys: Sequence[datakeys.DataKeyStatus]) -> str | None:
    return next((k.key.id for k in keys if k.key.current), None)


def _key_json(k: datakeys.DataKeyStatus, note: str) -> dict[str, object]:
    return {
        "id": k.key.id,
        "state": k.key.state,
        "current": k.key.current,
        "master_id": k.key.master_id,
        "created_at": k.key.created_at.isoformat(),
        "retired_at": None if k.key.retired_at is None else k.key.retired_at.isoformat(),
        "sealed": k.key.sealed,
        "records": k.records,
        "retirable": k.retirable,
        "note": note,
    }


def _logger_note(k: datakeys.DataKeyStatus) -> str:
    """The logger's own command moves and retires its data keys, not `bastion keys`."""
    if k.retirable:
        return "unused: `bastion logger rekey` retires it"
    if k.records and not k.key.current and k.key.state == "active":
        return "still in use: `bastion logger rekey` re-encrypts its records"
    return k.note


def _print_status(status: _Status) -> None:
    click.echo(f"Data directory  {status.directory}")
    click.echo(f"Database        {status.database} (schema {status.schema_version})")
    if status.master_error is None:
        click.echo(
            f"Master key      {status.master_source}: current {status.master_current}, opens it"
        )
    else:
        click.echo(f"Master key      NOT USABLE: {status.master_error}")
    click.echo("")
    _print_keys(status.keys, [k.note for k in status.keys])
    logger = status.logger
    if logger is not None:
        click.echo("")
        if logger.schema_version is None:
            click.echo(f"Logger database {logger.database}: NOT USABLE: {logger.error}")
        else:
            click.echo(f"Logger database {logger.database} (schema {logger.schema_version})")
            opens = "opens it" if logger.error is None else f"NOT USABLE: {logger.error}"
            click.echo(f"Master key      {opens}")
            click.echo("")
            _print_keys(logger.keys, [_logger_note(k) for k in logger.keys])
    if not status.master_held:
        return
    click.echo("")
    _print_masters(status)


def _print_keys(keys: Sequence[datakeys.DataKeyStatus], notes: Sequence[str]) -> None:
    rows = [("DATA KEY", "STATE", "MASTER KEY", "CREATED (UTC)", "SEALED", "RECORDS", "NOTE")]
    rows += [
        (
            k.key.id,
            k.key.state,
            k.key.master_id,
            f"{k.key.created_at:%Y-%m-%d %H:%M}",
            str(k.key.sealed),
            str(k.records),
            note,
        )
        for k, note in zip(keys, notes, strict=True)
    ]
    _print_rows(rows, numeric=(4, 5))


def _print_masters(status: _Status) -> None:
    """The master keys the provider holds and the data keys each wraps (with a LOGGER KEYS
    column when the data directory has a logger database)."""
    logger = status.logger
    header = ("MASTER KEY", "CURRENT", "DATA KEYS", "LOGGER KEYS", "NOTE")
    masters: list[tuple[str, ...]] = [header if logger is not None else header[:3] + header[4:]]
    for master_id in status.master_held:
        current = master_id == status.master_current
        row = [master_id, "yes" if current else "no", str(status.usage.get(master_id, 0))]
        in_use = current or status.usage.get(master_id, 0) > 0
        if logger is not None:
            readable = logger.schema_version is not None
            users = logger.usage.get(master_id, 0)
            row.append(str(users) if readable else "?")
            in_use = in_use or users > 0 or not readable  # unknown counts as in use
        note = "" if in_use else f"unused: `bastion keys retire {master_id}`"
        masters.append((*row, note))
    _print_rows(masters, numeric=(2, 3) if logger is not None else (2,))


def _print_rows(rows: Sequence[tuple[str, ...]], numeric: tuple[int, ...]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        click.echo("  ".join(cells).rstrip())


def _fail(ctx: click.Context, error: StorageError, code: int) -> None:
    for line in str(error).splitlines() or [""]:
        click.echo(f"bastion: error: {line}", err=True)
    ctx.exit(code)
