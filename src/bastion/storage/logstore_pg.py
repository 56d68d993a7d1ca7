"""The logger's PostgreSQL backend (``--database-url postgresql://...``), over psycopg 3.

Three tables prefixed ``bastion_log_``: metadata (schema version, key epoch, current data
key), the data keys (``logstore_pgkeys.py``; wrapped by the local master key, which never
reaches the server), and the messages, sealed exactly as in SQLite
(``logstore_rows.row_binding``). Each batch is one transaction written with COPY; the
default commit is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import structlog
from psycopg import conninfo

from bastion.storage.crypto import KeyRing
from bastion.storage.errors import (
    DatabaseUnusableError,
    RecordTamperedError,
    StorageError,
)
from bastion.storage.keys import KeyProvider, resolve_provider
from bastion.storage.layout import ensure_data_dir
from bastion.storage.logstore_pgkeys import (
    KEY_EPOCH,
    KEYS,
    MESSAGES,
    META,
    MIGRATION_LOCK,
    Connection,
    PgDataKeys,
    first_line,
    translated_errors,
)
from bastion.storage.logstore_query import LogQuery
from bastion.storage.logstore_rows import (
    LOG_TABLE,
    Cursor,
    LogUsage,
    ScanDialect,
    SealedRow,
    check_state_dir,
    from_micros,
    row_binding,
    scan_statement,
    to_micros,
)

__all__ = ["PG_MIGRATIONS", "PgMigration", "PostgresLogBackend", "describe_url", "open_pg_backend"]

log = structlog.get_logger("bastion.logger")

SCHEMA_VERSION = "schema_version"
ID_HIGH = "log_id_high"
CONNECT_TIMEOUT = 10

_COPY_COLUMNS = "id, topic, received_at, qos, retain, stored_bytes, key_id, payload, properties"
_ROW_COLUMNS = "id, topic, received_at, qos, retain, key_id, payload, properties"
_DIALECT = ScanDialect(
    table=MESSAGES,
    columns=_ROW_COLUMNS,
    time_column="received_at",
    placeholder="%s",
    prefix_test="left(topic, %s) = %s",
    time_value=from_micros,
)


@dataclass(frozen=True, slots=True)
class PgMigration:
    """Schema version ``version`` of the PostgreSQL tables: SQL statements from the last."""

    version: int
    description: str
    steps: tuple[str, ...]


PG_MIGRATIONS: tuple[PgMigration, ...] = (
    PgMigration(
        1,
        "metadata and data keys",
        (
            f"CREATE TABLE {META} (name text PRIMARY KEY, value text NOT NULL)",
            f"""CREATE TABLE {KEYS} (
                id text PRIMARY KEY,
                seq integer NOT NULL UNIQUE,
                state text NOT NULL CHECK (state IN ('active', 'retired')),
                master_id text NOT NULL,
                wrapped bytea,
                created_at bigint NOT NULL,
                retired_at bigint,
                sealed bigint NOT NULL DEFAULT 0,
                CHECK ((state = 'active') = (wrapped IS NOT NULL))
            )""",
            f"INSERT INTO {META} (name, value) VALUES ('{KEY_EPOCH}', '0')",
        ),
    ),
    PgMigration(
        2,
        "logged messages, sealed",
        (
            f"""CREATE TABLE {MESSAGES} (
                id bigint PRIMARY KEY CHECK (id > 0),
                topic text COLLATE "C" NOT NULL,
                received_at timestamptz NOT NULL,
                qos smallint NOT NULL CHECK (qos BETWEEN 0 AND 2),
                retain boolean NOT NULL,
                stored_bytes integer NOT NULL,
                key_id text NOT NULL REFERENCES {KEYS} (id),
                payload bytea NOT NULL,
                properties bytea NOT NULL
            )""",
            f"CREATE INDEX {MESSAGES}_time ON {MESSAGES} (received_at, id)",
            f"CREATE INDEX {MESSAGES}_key ON {MESSAGES} (key_id)",
            f"INSERT INTO {META} (name, value) VALUES ('{ID_HIGH}', '0')",
        ),
    ),
)
"""Every schema version this build knows, in order; the version is kept in ``META``."""


def describe_url(url: str) -> str:
    """``PostgreSQL database NAME on HOST:PORT`` (never the password); StorageError if the
    URL is not a PostgreSQL connection URL."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise StorageError("--database-url must start with postgresql:// (or postgres://)")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error as error:
        raise StorageError(f"invalid --database-url: {first_line(error)}") from None
    host = str(params.get("host") or "localhost")
    port = params.get("port")
    where = f"{host}:{port}" if port else host
    return f"PostgreSQL database {params.get('dbname') or params.get('user') or '?'} on {where}"


class PostgresLogBackend:
    """``LogBackend`` over PostgreSQL; see ``logstore.LogBackend`` for the contract."""

    def __init__(
        self,
        connection: Connection,
        description: str,
        provider: KeyProvider,
        *,
        writable: bool,
    ) -> None:
        self._connection = connection
        self._description = description
        self._keys = PgDataKeys(connection, description, provider)
        self._bad: set[int] = set()
        if writable:
            self._keys.ensure()

    @property
    def description(self) -> str:
        return self._description

    @property
    def keyring(self) -> KeyRing:
        return self._keys.ring

    @property
    def tampered(self) -> int:
        return len(self._bad)

    def refresh_keys(self) -> bool:
        return self._keys.refresh()

    def rotate_key(self) -> str:
        return self._keys.rotate()

    def retire_unused(self) -> tuple[str, ...]:
        return self._keys.retire_unused()

    def flush_seals(self) -> None:
        self._keys.flush_seals()

    # ------------------------------------------------------------- rows

    def insert(self, count: int, build: Callable[[int], Sequence[SealedRow]]) -> None:
        with translated_errors(self._description), self._connection.transaction():
            self._keys.require_active(self._keys.ring.current_id)  # until the commit
            high = self._connection.execute(
                f"UPDATE {META} SET value = (value::bigint + %s)::text WHERE name = %s "
                f"RETURNING value",
                (count, ID_HIGH),
            ).fetchone()
            if high is None:
                raise StorageError(f"{self._description}: the id counter is missing")
            rows = build(int(high[0]) - count + 1)
            copy_rows = f"COPY {MESSAGES} ({_COPY_COLUMNS}) FROM STDIN"
            with self._connection.cursor() as cursor, cursor.copy(copy_rows) as copy:
                for row in rows:
                    copy.write_row(
                        (
                            row.id,
                            row.topic,
                            from_micros(row.received_us),
                            row.qos,
                            row.retain,
                            row.stored_bytes,
                            row.key_id,
                            row.payload,
                            row.properties,
                        )
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
        with translated_errors(self._description):
            records = self._connection.execute(sql, params).fetchall()
        return [_row(values) for values in records]

    def usage(self) -> LogUsage:
        with translated_errors(self._description):
            row = self._connection.execute(
                f"SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM {MESSAGES}"
            ).fetchone()
        return LogUsage(0, 0) if row is None else LogUsage(int(row[0]), int(row[1]))

    def delete_older(self, cutoff_us: int) -> int:
        with translated_errors(self._description), self._connection.transaction():
            cursor = self._connection.execute(
                f"DELETE FROM {MESSAGES} WHERE received_at < %s", (from_micros(cutoff_us),)
            )
            return max(cursor.rowcount, 0)

    def delete_oldest(self, excess: int) -> int:
        # The cut-off is the first row at which the running total of the oldest rows
        # reaches ``excess``; everything up to it goes.
        with translated_errors(self._description), self._connection.transaction():
            cut = self._connection.execute(
                f"SELECT received_at, id FROM (SELECT received_at, id, SUM(stored_bytes) OVER "
                f"(ORDER BY received_at, id) AS running FROM {MESSAGES}) AS totals "
                f"WHERE running >= %s ORDER BY received_at, id LIMIT 1",
                (excess,),
            ).fetchone()
            if cut is None:
                cursor = self._connection.execute(f"DELETE FROM {MESSAGES}")
            else:
                cursor = self._connection.execute(
                    f"DELETE FROM {MESSAGES} WHERE (received_at, id) <= (%s, %s)", cut
                )
            return max(cursor.rowcount, 0)

    def reencrypt(self, limit: int) -> int:
        self.refresh_keys()
        current = self._keys.ring.current_id
        old = sorted(self._keys.ring.key_ids() - {current}) if current is not None else []
        if not old or limit < 1:
            return 0
        done = 0
        with translated_errors(self._description), self._connection.transaction():
            rows = self._connection.execute(
                f"SELECT {_ROW_COLUMNS} FROM {MESSAGES} "
                f"WHERE key_id = ANY(%s) AND NOT (id = ANY(%s)) ORDER BY id LIMIT %s FOR UPDATE",
                (old, sorted(self._bad), limit),
            ).fetchall()
            for values in rows:
                done += self._reseal(_row(values))
        return done

    def _reseal(self, row: SealedRow) -> int:
        pk = row_binding(row.id, row.topic, row.received_us, row.qos, row.retain)
        ring = self._keys.ring
        try:
            payload = ring.open(LOG_TABLE, pk, row.key_id, row.payload, column="payload")
            props = ring.open(LOG_TABLE, pk, row.key_id, row.properties, column="properties")
        except RecordTamperedError as error:
            self._bad.add(row.id)
            log.error("storage.record_tampered", table=LOG_TABLE, error=str(error))
            return 0
        key_id, sealed_payload = ring.seal(LOG_TABLE, pk, payload, column="payload")
        _, sealed_props = ring.seal(LOG_TABLE, pk, props, column="properties")
        self._connection.execute(
            f"UPDATE {MESSAGES} SET key_id = %s, payload = %s, properties = %s "
            f"WHERE id = %s AND key_id = %s",
            (key_id, sealed_payload, sealed_props, row.id, row.key_id),
        )
        return 1

    def close(self) -> None:
        with translated_errors(self._description):
            self._connection.close()


def _row(values: Sequence[object]) -> SealedRow:
    row_id, topic, received_at, qos, retain, key_id, payload, properties = values
    if not isinstance(received_at, datetime):
        raise DatabaseUnusableError(f"unexpected type in {MESSAGES}.received_at")
    return SealedRow(
        id=int(str(row_id)),
        topic=str(topic),
        received_us=to_micros(received_at),
        qos=int(str(qos)),
        retain=bool(retain),
        key_id=str(key_id),
        payload=bytes(payload) if isinstance(payload, bytes | memoryview) else b"",
        properties=bytes(properties) if isinstance(properties, bytes | memoryview) else b"",
    )


# ----------------------------------------------------------------- opening, migrating


def _migrate(connection: Connection, description: str, *, create: bool) -> int:
    latest = PG_MIGRATIONS[-1].version
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        has_meta = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (META,)).fetchone()
        version = 0
        if has_meta and has_meta[0]:
            row = connection.execute(
                f"SELECT value FROM {META} WHERE name = %s", (SCHEMA_VERSION,)
            ).fetchone()
            version = int(row[0]) if row else 0
        else:
            stray = connection.execute(
                "SELECT to_regclass(%s) IS NOT NULL OR to_regclass(%s) IS NOT NULL",
                (KEYS, MESSAGES),
            ).fetchone()
            if stray and stray[0]:
                raise DatabaseUnusableError(
                    f"{description} has {KEYS}/{MESSAGES} tables that Bastion did not create: "
                    f"use another database; Bastion leaves them untouched"
                )
        if version == 0 and not create:
            raise StorageError(
                f"{description} has no data logger tables: the data logger has not run with "
                f"this --database-url"
            )
        if version > latest:
            raise DatabaseUnusableError(
                f"{description} has logger schema version {version}, newer than this Bastion "
                f"knows ({latest}): run the newer Bastion that wrote it"
            )
        for migration in PG_MIGRATIONS[version:]:
            for step in migration.steps:
                connection.execute(step)
        if version < latest:
            connection.execute(
                f"INSERT INTO {META} (name, value) VALUES (%s, %s) "
                f"ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION, str(latest)),
            )
    return latest


def open_pg_backend(
    url: str,
    state_dir: Path,
    *,
    key_file: Path | None,
    environ: Mapping[str, str],
    create: bool,
) -> PostgresLogBackend:
    """The backend over the database at ``url`` (see ``logstore.open_logstore``); the master
    key is resolved in ``state_dir`` as the broker does, and never leaves this machine."""
    description = describe_url(url)
    if not create:
        check_state_dir(state_dir)
    with translated_errors(description):
        connection: Connection = psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="bastion-logger"
        )
    try:
        with translated_errors(description):
            _migrate(connection, description, create=create)
            has_keys = connection.execute(f"SELECT EXISTS (SELECT 1 FROM {KEYS})").fetchone()
        if create:
            ensure_data_dir(state_dir)  # where the master key file is created if none exists
        provider = resolve_provider(
            state_dir,
            key_file=key_file,
            environ=environ,
            create=create and not (has_keys and has_keys[0]),
        )
        return PostgresLogBackend(connection, description, provider, writable=create)
    except BaseException:
        connection.close()
        raise
