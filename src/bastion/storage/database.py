"""The SQLite file: recognising it, opening it in WAL mode, migrating its schema.

``sqlite.py`` builds the store on it; ``datakeys.py`` and ``registry.py`` keep their tables
in the base schema defined here. A file that is not a healthy Bastion database of a known
version is refused with a ``DatabaseUnusableError`` and never modified.

Durability: WAL with ``synchronous=FULL`` by default. In WAL mode FULL fsyncs the log at
every commit, so a committed write survives power loss; NORMAL syncs only at checkpoints
and may lose the last commits, which would break a PUBACK's promise. Group commit (many
writes per transaction) is what makes FULL affordable.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bastion.storage.base import StoreOptions
from bastion.storage.errors import (
    DatabaseUnusableError,
    StorageError,
    sqlite_errors,
    translate_sqlite_error,
)
from bastion.storage.schema import BROKER_SCHEMA, JOURNAL_SCHEMA

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "Database",
    "Migration",
    "MigrationStep",
    "get_meta",
    "open_database",
    "set_meta",
]

APPLICATION_ID = 0x4253544E
"""``PRAGMA application_id`` of every Bastion database: "BSTN"."""
DATABASE_MODE = 0o600
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_LEAVE_IT = "Bastion leaves the file untouched"

_T = TypeVar("_T")

MigrationStep = str | Callable[[sqlite3.Connection], None]
"""One SQL statement, or a function given the connection (inside the transaction)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """Schema version ``version``: the steps that lead to it from ``version - 1``."""

    version: int
    description: str
    steps: tuple[MigrationStep, ...]


_BASE_SCHEMA: tuple[MigrationStep, ...] = (
    """CREATE TABLE bastion_meta (
        name TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE bastion_data_keys (
        id TEXT PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('active', 'retired')),
        master_id TEXT NOT NULL,
        wrapped BLOB,
        created_at INTEGER NOT NULL,
        retired_at INTEGER,
        sealed INTEGER NOT NULL DEFAULT 0,
        CHECK ((state = 'active') = (wrapped IS NOT NULL))
    ) WITHOUT ROWID""",
    """CREATE TABLE bastion_encrypted_tables (
        name TEXT PRIMARY KEY NOT NULL,
        primary_key TEXT NOT NULL,
        encrypted TEXT NOT NULL,
        key_column TEXT NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO bastion_meta (name, value) VALUES ('key_epoch', '0')",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "metadata, data keys and the encrypted-table registry", _BASE_SCHEMA),
    Migration(2, "broker state: sessions, messages, outboxes, retained, wills", BROKER_SCHEMA),
    Migration(3, "write-ahead journal: one sealed row per group commit", JOURNAL_SCHEMA),
)
"""Every schema version this build knows, in order (the one list all processes use).

Later versions are appended as 3, 4 ...; a table with sealed columns is registered by a
``registry.registration`` step in the migration that creates it (``schema.py``).
"""


class Database:
    """An open Bastion database: one connection in autocommit mode, transactions explicit."""

    def __init__(self, path: Path, connection: sqlite3.Connection, schema_version: int) -> None:
        self.path = path
        self.connection = connection
        self.schema_version = schema_version

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, else rolled back."""
        with self._begin("BEGIN IMMEDIATE") as connection:
            yield connection

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        with self._begin("BEGIN") as connection:
            yield connection

    @contextmanager
    def _begin(self, statement: str) -> Iterator[sqlite3.Connection]:
        connection = self.connection
        if connection.in_transaction:
            raise StorageError(f"{self.path}: a transaction is already open on this connection")
        with sqlite_errors(self.path):
            connection.execute(statement)
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (the last one checkpoints the WAL into the file)."""
        with sqlite_errors(self.path):
            self.connection.close()


def get_meta(connection: sqlite3.Connection, name: str) -> str | None:
    """A value of the ``bastion_meta`` table."""
    row = connection.execute("SELECT value FROM bastion_meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(connection: sqlite3.Connection, name: str, value: str) -> None:
    """Set a value of the ``bastion_meta`` table (inside the caller's transaction)."""
    connection.execute(
        "INSERT INTO bastion_meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def open_database(
    path: Path,
    *,
    migrations: Sequence[Migration] = MIGRATIONS,
    options: StoreOptions | None = None,
    create: bool = True,
) -> Database:
    """Open (or, if ``create``, make) the Bastion database at ``path`` and migrate it.

    Raises ``DatabaseUnusableError`` naming the file and what to do when it is not SQLite,
    truncated, corrupt, another application's, or of a newer schema; the file is then left
    exactly as it was. The directory must exist (``layout.ensure_data_dir``).
    """
    options = options or StoreOptions()
    _check_migrations(migrations)
    latest = migrations[-1].version
    if not path.exists() and not path.is_symlink():
        if not create:
            raise StorageError(
                f"no Bastion database at {path}: create it with `bastion keys init` "
                f"(or by starting the broker)"
            )
        _create_empty(path)
    if _inspect_file(path):
        _check_existing(path, latest, options.quick_check)
    connection = _connect(path, options)
    try:
        version = _migrate(connection, path, migrations)
        _finish_setup(connection, path, options)
    except BaseException:
        connection.close()
        raise
    return Database(path, connection, version)


# ----------------------------------------------------------------- recognising the file


def _create_empty(path: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(path, flags | getattr(os, "O_CLOEXEC", 0), DATABASE_MODE))
    except FileExistsError:
        pass  # created meanwhile by another process: inspected like any existing file
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None


def _inspect_file(path: Path) -> bool:
    """Check what the bytes of ``path`` say; True if it is (probably) ours and non-empty."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise DatabaseUnusableError(f"{path} is not a regular file; {_LEAVE_IT}")
        with path.open("rb") as handle:
            header = handle.read(_HEADER_SIZE)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not header:
        return False  # empty: a database not yet initialised (ours, or created just now)
    if not (_MAGIC.startswith(header) or header.startswith(_MAGIC)):
        raise DatabaseUnusableError(
            f"{path} is not a SQLite database: move it aside or use another data directory; "
            f"{_LEAVE_IT}"
        )
    if len(header) < _HEADER_SIZE:
        raise _truncated(path, info.st_size, _HEADER_SIZE)
    _check_size(path, header, info.st_size)
    application_id = int.from_bytes(header[68:72], "big", signed=True)
    if application_id == APPLICATION_ID:
        return True
    if application_id != 0:
        raise _foreign(path, f"application_id 0x{application_id & 0xFFFFFFFF:08X}")
    if header[18] == 2:  # WAL mode, which Bastion only enables after stamping its id
        raise _foreign(path, "no Bastion application_id")
    tables = _read_only(path, _table_names, immutable=not _companion(path, "journal"))
    if tables:
        raise _foreign(path, f"tables {', '.join(tables[:5])}")
    return False  # an empty SQLite database (no tables): safe to initialise


def _check_size(path: Path, header: bytes, size: int) -> None:
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise _corrupt(path, f"invalid page size {page_size}")
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # pages may still live in the log: quick_check decides
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and pages * page_size > size:
        raise _truncated(path, size, pages * page_size)


def _companion(path: Path, suffix: str) -> bool:
    """Whether SQLite's ``-wal`` or ``-journal`` file exists beside ``path``."""
    return path.with_name(f"{path.name}-{suffix}").exists()


def _check_existing(path: Path, latest: int, quick_check: bool) -> None:
    """The authoritative checks, through a read-only connection (which never writes).

    Without a ``-wal`` file nobody has the database open, and it is read as immutable, so
    not even ``-wal``/``-shm`` files are left behind. A hot rollback journal (a crash in the
    very first migration) is left to the read-write open to recover; ``_migrate`` checks
    the version again under the write lock either way.
    """
    if _companion(path, "journal"):
        return

    def check(connection: sqlite3.Connection) -> None:
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        if application_id != APPLICATION_ID:
            raise _foreign(path, f"application_id 0x{application_id & 0xFFFFFFFF:08X}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > latest:
            raise _newer(path, version, latest)
        if quick_check:
            result = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
            if result != "ok":
                raise _corrupt(path, f"quick_check: {str(result).splitlines()[-1]}")

    _read_only(path, check, immutable=not _companion(path, "wal"))


def _read_only(path: Path, work: Callable[[sqlite3.Connection], _T], *, immutable: bool) -> _T:
    uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
    if immutable:
        uri += "&immutable=1"
    try:
        connection = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from None
    try:
        return work(connection)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (11, 26):  # SQLITE_CORRUPT, SQLITE_NOTADB
            raise _corrupt(path, str(exc)) from None
        raise translate_sqlite_error(exc, path) from exc
    finally:
        connection.close()


def _table_names(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'").fetchall()
    return sorted(str(row[0]) for row in rows)


def _truncated(path: Path, size: int, expected: int) -> DatabaseUnusableError:
    return DatabaseUnusableError(
        f"{path} is truncated ({size} bytes, at least {expected} expected): restore it from "
        f"a backup, or move it aside to start empty; {_LEAVE_IT}"
    )


def _corrupt(path: Path, detail: str) -> DatabaseUnusableError:
    return DatabaseUnusableError(
        f"{path} is corrupt ({detail}): restore it from a backup, or move it aside and try "
        f"`sqlite3 {path.name} .recover`; {_LEAVE_IT}"
    )


def _foreign(path: Path, detail: str) -> DatabaseUnusableError:
    return DatabaseUnusableError(
        f"{path} is a SQLite database that Bastion did not create ({detail}): use another "
        f"data directory; {_LEAVE_IT}"
    )


def _newer(path: Path, version: int, latest: int) -> DatabaseUnusableError:
    return DatabaseUnusableError(
        f"{path} has schema version {version}, newer than this Bastion knows ({latest}): "
        f"run the newer Bastion that wrote it, or restore a backup; {_LEAVE_IT}"
    )


# ----------------------------------------------------------------- opening, migrating


def _check_migrations(migrations: Sequence[Migration]) -> None:
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3 ... in order, got {versions}")


def _connect(path: Path, options: StoreOptions) -> sqlite3.Connection:
    with sqlite_errors(path):
        connection = sqlite3.connect(
            str(path),
            timeout=options.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(options.busy_timeout_ms)}")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA trusted_schema = OFF")
        except BaseException:
            connection.close()
            raise
    return connection


def _migrate(connection: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    latest = migrations[-1].version
    with sqlite_errors(path):
        connection.execute("BEGIN IMMEDIATE")
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if application_id not in (0, APPLICATION_ID):
                raise _foreign(path, f"application_id 0x{application_id & 0xFFFFFFFF:08X}")
            if application_id == 0 and _table_names(connection):
                raise _foreign(path, "no Bastion application_id")
            if version > latest:
                raise _newer(path, version, latest)
            for migration in migrations[version:]:
                _apply(connection, path, migration)
            if version < latest:
                connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                connection.execute(f"PRAGMA user_version = {latest}")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    return latest


def _apply(connection: sqlite3.Connection, path: Path, migration: Migration) -> None:
    try:
        for step in migration.steps:
            if isinstance(step, str):
                connection.execute(step)
            else:
                step(connection)
    except sqlite3.Error as exc:
        raise StorageError(
            f"{path}: schema migration {migration.version} ({migration.description}) failed: "
            f"{exc}; the database was left as it was"
        ) from exc


def _finish_setup(connection: sqlite3.Connection, path: Path, options: StoreOptions) -> None:
    with sqlite_errors(path):
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(
                f"{path}: cannot use write-ahead logging on this file system (journal mode "
                f"{mode}); put the data directory on a local disk"
            )
        connection.execute(f"PRAGMA synchronous = {options.sync.upper()}")
        connection.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        if options.max_size_bytes is not None:
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
            pages = max(1, options.max_size_bytes // page_size)
            connection.execute(f"PRAGMA max_page_count = {pages}")
