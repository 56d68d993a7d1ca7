"""The logger's SQLite backend: ``<state-dir>/logger.db``, opened like the broker's database.

``database.py`` recognises, opens (WAL, ``synchronous=FULL``) and migrates the file with
``LOGGER_MIGRATIONS``; ``datakeys.py`` keeps its data keys (wrapped by the master key that
the broker's ``bastion.db`` in the same directory uses); ``registry.py`` re-encrypts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bastion.storage.base import StoreOptions
from bastion.storage.crypto import KeyRing
from bastion.storage.database import MIGRATIONS, Database, Migration, get_meta, open_database
from bastion.storage.datakeys import (
    add_seal_counts,
    data_key_status,
    ensure_data_key,
    key_epoch,
    list_data_keys,
    load_keyring,
    retire_data_key,
    rewrap_data_keys,
    rotate_data_key,
)
from bastion.storage.errors import DatabaseUnusableError, StorageError, sqlite_errors
from bastion.storage.keys import KeyProvider, resolve_provider
from bastion.storage.layout import ensure_data_dir
from bastion.storage.logstore_query import LogQuery
from bastion.storage.logstore_rows import (
    LOG_TABLE,
    Cursor,
    LogUsage,
    ScanDialect,
    SealedRow,
    check_state_dir,
    logger_database_path,
    scan_statement,
)
from bastion.storage.registry import EncryptedTable, TamperedSet, reencrypt_batch, registration

__all__ = [
    "LOGGER_MIGRATIONS",
    "LOG_MESSAGES",
    "SqliteLogBackend",
    "open_logger_database",
    "open_sqlite_backend",
]

CONTENTS = "contents"
"""``bastion_meta`` entry that tells a logger database from the broker's (same format)."""
LOGGER_CONTENTS = "data-logger"
ID_HIGH = "log_id_high"
"""``bastion_meta`` entry: the highest record id ever stored (ids are never reused)."""
OPTIONS = StoreOptions(busy_timeout_ms=30_000)
"""Readers and ``rekey`` wait up to 30 s for a writer's batch rather than fail as busy."""

LOG_MESSAGES = EncryptedTable(
    LOG_TABLE, ("id", "topic", "received_us", "qos", "retain"), ("payload", "properties")
)
"""Sealed like ``logstore.row_binding``: the 'primary key' bound into the associated data
is the id with the topic, time, QoS and retain flag."""

_SCHEMA: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    f"""CREATE TABLE {LOG_TABLE} (
        id INTEGER PRIMARY KEY CHECK (id > 0),
        topic TEXT NOT NULL CHECK (typeof(topic) = 'text'),
        received_us INTEGER NOT NULL CHECK (typeof(received_us) = 'integer'),
        qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
        stored_bytes INTEGER NOT NULL CHECK (typeof(stored_bytes) = 'integer'),
        key_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        properties BLOB NOT NULL
    )""",
    registration(LOG_MESSAGES),
    f"CREATE INDEX log_messages_time ON {LOG_TABLE} (received_us, id)",
    f"INSERT INTO bastion_meta (name, value) VALUES ('{CONTENTS}', '{LOGGER_CONTENTS}')",
    f"INSERT INTO bastion_meta (name, value) VALUES ('{ID_HIGH}', '0')",
)

LOGGER_MIGRATIONS: tuple[Migration, ...] = (
    MIGRATIONS[0],
    Migration(2, "data logger: logged messages, sealed", _SCHEMA),
)
"""Every schema version of ``logger.db``: the broker's base (metadata, data keys, registry),
then the logger's table. Later versions are appended as 3, 4 ..."""

_COLUMNS = "id, topic, received_us, qos, retain, key_id, CAST(payload AS BLOB), " + (
    "CAST(properties AS BLOB)"
)
_DIALECT = ScanDialect(
    table=LOG_TABLE,
    columns=_COLUMNS,
    time_column="received_us",
    placeholder="?",
    prefix_test="substr(topic, 1, ?) = ?",
    time_value=lambda micros: micros,
)
_INSERT = (
    f"INSERT INTO {LOG_TABLE} (id, topic, received_us, qos, retain, stored_bytes, key_id, "
    "payload, properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteLogBackend:
    """``LogBackend`` over ``logger.db``; see ``logstore.LogBackend`` for the contract."""

    def __init__(self, database: Database, provider: KeyProvider, *, writable: bool) -> None:
        self._database = database
        self._provider = provider
        with sqlite_errors(database.path):  # read before the ring: a rotation in between
            self._epoch = key_epoch(database.connection)  # is then seen by refresh_keys
        if writable:
            self._ring = ensure_data_key(database, provider)
            # Follow `bastion keys rotate --master` (run for the broker's database in the
            # same directory) so the old master key can be retired without losing this one.
            if rewrap_data_keys(database, provider):
                self.refresh_keys()
        else:
            self._ring = load_keyring(database, provider)
        self._tampered: TamperedSet = set()

    @property
    def description(self) -> str:
        return str(self._database.path)

    @property
    def keyring(self) -> KeyRing:
        return self._ring

    @property
    def tampered(self) -> int:
        return len(self._tampered)

    def refresh_keys(self) -> bool:
        with sqlite_errors(self._database.path):
            epoch = key_epoch(self._database.connection)
        if epoch == self._epoch:
            return False
        load_keyring(self._database, self._provider, self._ring)
        self._epoch = epoch
        return True

    def insert(self, count: int, build: Callable[[int], Sequence[SealedRow]]) -> None:
        with self._database.transaction() as connection:
            first = int(get_meta(connection, ID_HIGH) or 0) + 1
            rows = build(first)
            connection.executemany(
                _INSERT,
                [
                    (
                        row.id,
                        row.topic,
                        row.received_us,
                        row.qos,
                        int(row.retain),
                        row.stored_bytes,
                        row.key_id,
                        row.payload,
                        row.properties,
                    )
                    for row in rows
                ],
            )
            connection.execute(
                "UPDATE bastion_meta SET value = ? WHERE name = ?",
                (str(first + count - 1), ID_HIGH),
            )

    def scan(
        self,
        query: LogQuery,
        *,
        descending: bool,
        after: Cursor | None,
        limit: int,
    ) -> list[SealedRow]:
        sql, params = scan_statement(
            _DIALECT, query, descending=descending, after=after, limit=limit
        )
        with self._database.snapshot() as connection:
            return [_row(values) for values in connection.execute(sql, params)]

    def usage(self) -> LogUsage:
        with self._database.snapshot() as connection:
            count, total = connection.execute(
                f"SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM {LOG_TABLE}"
            ).fetchone()
        return LogUsage(int(count), int(total))

    def delete_older(self, cutoff_us: int) -> int:
        with self._database.transaction() as connection:
            cursor = connection.execute(
                f"DELETE FROM {LOG_TABLE} WHERE received_us < ?", (cutoff_us,)
            )
            return max(cursor.rowcount, 0)

    def delete_oldest(self, excess: int) -> int:
        with self._database.transaction() as connection:
            cursor = connection.execute(
                f"SELECT received_us, id, stored_bytes FROM {LOG_TABLE} ORDER BY received_us, id"
            )
            freed, last = 0, None
            for micros, row_id, size in cursor:
                freed += int(size)
                last = (micros, row_id)
                if freed >= excess:
                    break
            cursor.close()
            if last is None:
                return 0
            deleted = connection.execute(
                f"DELETE FROM {LOG_TABLE} WHERE (received_us, id) <= (?, ?)", last
            )
            return max(deleted.rowcount, 0)

    def rotate_key(self) -> str:
        self.flush_seals()
        info = rotate_data_key(self._database, self._provider)
        self.refresh_keys()
        return info.id

    def reencrypt(self, limit: int) -> int:
        self.refresh_keys()
        return reencrypt_batch(self._database, self._ring, limit, tampered=self._tampered)

    def retire_unused(self) -> tuple[str, ...]:
        retired = []
        for status in data_key_status(self._database):
            if status.retirable:
                retire_data_key(self._database, status.key.id)
                retired.append(status.key.id)
        self.refresh_keys()
        return tuple(retired)

    def flush_seals(self) -> None:
        add_seal_counts(self._database, self._ring.take_seals())

    def close(self) -> None:
        self._database.close()


def _row(values: Sequence[object]) -> SealedRow:
    row_id, topic, micros, qos, retain, key_id, payload, properties = values
    # The CHECK constraints keep the types; an edited file that defeats them still only
    # yields a row that fails authentication (blobs are read as blobs).
    return SealedRow(
        id=int(str(row_id)),
        topic=str(topic),
        received_us=int(str(micros)),
        qos=int(str(qos)),
        retain=bool(retain),
        key_id=str(key_id),
        payload=payload if isinstance(payload, bytes) else b"",
        properties=properties if isinstance(properties, bytes) else b"",
    )


def open_sqlite_backend(
    state_dir: Path,
    *,
    key_file: Path | None,
    environ: Mapping[str, str],
    create: bool,
) -> SqliteLogBackend:
    """The backend over ``state_dir/logger.db`` (see ``logstore.open_logstore``)."""
    path = logger_database_path(state_dir)
    if create:
        ensure_data_dir(state_dir)
    else:
        check_state_dir(state_dir)
        if not path.exists() and not path.is_symlink():
            raise StorageError(
                f"no logger database at {path}: the data logger has not run with "
                f"--state-dir {state_dir} (start `bastion logger run --state-dir {state_dir}`)"
            )
    database = open_database(path, migrations=LOGGER_MIGRATIONS, options=OPTIONS, create=create)
    try:
        _check_contents(database)
        with sqlite_errors(path):
            has_keys = bool(list_data_keys(database.connection))
        provider = resolve_provider(
            state_dir, key_file=key_file, environ=environ, create=create and not has_keys
        )
        return SqliteLogBackend(database, provider, writable=create)
    except BaseException:
        database.close()
        raise


def open_logger_database(state_dir: Path) -> Database | None:
    """``state_dir/logger.db`` for key management (``bastion keys``), or None if there is
    none; ``StorageError`` if it cannot be opened or is not the data logger's database."""
    path = logger_database_path(state_dir)
    if not path.exists() and not path.is_symlink():
        return None
    database = open_database(path, migrations=LOGGER_MIGRATIONS, options=OPTIONS, create=False)
    try:
        _check_contents(database)
    except BaseException:
        database.close()
        raise
    return database


def _check_contents(database: Database) -> None:
    with sqlite_errors(database.path):
        contents = get_meta(database.connection, CONTENTS)
    if contents != LOGGER_CONTENTS:
        raise DatabaseUnusableError(
            f"{database.path} is a Bastion database but not the data logger's (the broker "
            f"keeps its state in bastion.db): move it aside; Bastion leaves the file untouched"
        )
