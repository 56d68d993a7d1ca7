"""The encrypted-column registry, kept in the database, and the generic re-encryption job.

A migration that creates a table with sealed columns registers it here (``registration``);
then any process — the broker's background job, ``bastion keys`` — can count records per
data key and re-seal old ones without knowing the table. ``datakeys.py`` uses the counts.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import MutableSet, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from bastion.storage.crypto import KeyRing, pack_key
from bastion.storage.errors import KEY_GUARD_MESSAGE, RecordTamperedError, StorageError

if TYPE_CHECKING:  # database.py imports this module's steps through schema.py
    from bastion.storage.database import Database, MigrationStep

__all__ = [
    "EncryptedTable",
    "TamperedSet",
    "count_by_key",
    "reencrypt_batch",
    "register_table",
    "registered_tables",
    "registration",
]

log = structlog.get_logger("bastion.storage")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

TamperedSet = MutableSet[tuple[str, bytes]]
"""(table, packed primary key) of records that failed authentication, reported once each."""


@dataclass(frozen=True, slots=True)
class EncryptedTable:
    """A table whose ``encrypted`` columns are sealed with the key named in ``key_column``.

    Every sealed column of a row uses the row's one key id; a column is sealed with
    ``KeyRing.seal(name, pk_of(primary key values), plaintext, column=column)``. NULL stays
    NULL (an absent optional value). Read sealed columns as ``CAST(col AS BLOB)``, so an
    edited value of another type fails authentication rather than decoding.
    """

    name: str
    primary_key: tuple[str, ...]
    encrypted: tuple[str, ...]
    key_column: str = "key_id"

    def __post_init__(self) -> None:
        columns = (self.name, *self.primary_key, *self.encrypted, self.key_column)
        for identifier in columns:
            if not _IDENTIFIER.fullmatch(identifier):
                raise ValueError(f"invalid SQL identifier {identifier!r}")
        if not self.primary_key or not self.encrypted:
            raise ValueError(f"{self.name}: needs primary key and encrypted columns")
        if len(set(columns[1:])) != len(columns) - 1:
            raise ValueError(f"{self.name}: a column is named twice")

    def pk_of(self, values: Sequence[object]) -> bytes:
        """The canonical primary key bound into a row's associated data."""
        parts: list[bytes | str | int] = []
        for value in values:
            if not isinstance(value, bytes | str | int) or isinstance(value, bool):
                raise StorageError(f"{self.name}: unsupported primary key value {value!r}")
            parts.append(value)
        return pack_key(*parts)


def _quote(identifier: str) -> str:
    return f'"{identifier}"'


def register_table(connection: sqlite3.Connection, table: EncryptedTable) -> None:
    """Record ``table`` in the registry, index its key column and install its key guards.

    The guards are triggers that refuse a row naming a data key that is retired or unknown,
    so a writer with a stale key ring can never create records nobody can open.
    """
    connection.execute(
        "INSERT INTO bastion_encrypted_tables (name, primary_key, encrypted, key_column) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET primary_key = excluded.primary_key,"
        " encrypted = excluded.encrypted, key_column = excluded.key_column",
        (table.name, ",".join(table.primary_key), ",".join(table.encrypted), table.key_column),
    )
    name, key = _quote(table.name), _quote(table.key_column)
    connection.execute(
        f'CREATE INDEX IF NOT EXISTS "bastion_keyidx_{table.name}" ON {name} ({key})'
    )
    unusable = (
        f"NEW.{key} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM bastion_data_keys "
        f"WHERE id = NEW.{key} AND state = 'active')"
    )
    abort = f"BEGIN SELECT RAISE(ABORT, '{KEY_GUARD_MESSAGE}'); END"
    connection.execute(
        f'CREATE TRIGGER IF NOT EXISTS "bastion_keyguard_insert_{table.name}" '
        f"BEFORE INSERT ON {name} WHEN {unusable} {abort}"
    )
    connection.execute(
        f'CREATE TRIGGER IF NOT EXISTS "bastion_keyguard_update_{table.name}" '
        f"BEFORE UPDATE OF {key} ON {name} WHEN {unusable} {abort}"
    )


def registration(table: EncryptedTable) -> MigrationStep:
    """A migration step that registers ``table`` (put it after the ``CREATE TABLE``)."""

    def step(connection: sqlite3.Connection) -> None:
        register_table(connection, table)

    return step


def registered_tables(connection: sqlite3.Connection) -> list[EncryptedTable]:
    """Every registered table, by name."""
    rows = connection.execute(
        "SELECT name, primary_key, encrypted, key_column FROM bastion_encrypted_tables "
        "ORDER BY name"
    ).fetchall()
    return [
        EncryptedTable(
            name=str(name),
            primary_key=tuple(str(pk).split(",")),
            encrypted=tuple(str(encrypted).split(",")),
            key_column=str(key_column),
        )
        for name, pk, encrypted, key_column in rows
    ]


def count_by_key(connection: sqlite3.Connection) -> dict[str, int]:
    """How many records of all registered tables each data key seals."""
    counts: dict[str, int] = {}
    for table in registered_tables(connection):
        key = _quote(table.key_column)
        rows = connection.execute(
            f"SELECT CAST({key} AS BLOB), COUNT(*) FROM {_quote(table.name)} "
            f"WHERE {key} IS NOT NULL GROUP BY {key}"
        )
        for raw_id, count in rows:
            key_id = bytes(raw_id).decode("utf-8", "replace")
            counts[key_id] = counts.get(key_id, 0) + int(count)
    return counts


def reencrypt_batch(
    database: Database,
    keyring: KeyRing,
    limit: int = 100,
    *,
    tampered: TamperedSet | None = None,
) -> int:
    """Re-seal up to ``limit`` records held under a non-current key of ``keyring``.

    One short write transaction, so writers wait at most one batch. Returns how many were
    re-sealed: call again until 0. A record that fails authentication is logged once, added
    to ``tampered`` and left as it is (it keeps its old key from being retired).
    """
    current = keyring.current_id
    old = sorted(keyring.key_ids() - {current}) if current is not None else []
    if not old or limit < 1:
        return 0
    seen: TamperedSet = set() if tampered is None else tampered
    done = 0
    with database.transaction() as connection:
        for table in registered_tables(connection):
            if done >= limit:
                break
            done += _reencrypt_table(
                connection, table, keyring, old=old, limit=limit - done, tampered=seen
            )
    return done


def _reencrypt_table(
    connection: sqlite3.Connection,
    table: EncryptedTable,
    keyring: KeyRing,
    *,
    old: Sequence[str],
    limit: int,
    tampered: TamperedSet,
) -> int:
    # CAST: an edited row may hold TEXT that is not UTF-8 where a blob belongs; read as a
    # blob it simply fails authentication instead of failing the whole batch.
    columns = ", ".join(
        [*(_quote(c) for c in table.primary_key)]
        + [f"CAST({_quote(c)} AS BLOB)" for c in table.encrypted]
    )
    key = _quote(table.key_column)
    marks = ", ".join("?" * len(old))
    select = f"SELECT {columns}, {key} FROM {_quote(table.name)} WHERE {key} IN ({marks}) LIMIT ?"
    assignments = ", ".join(f"{_quote(c)} = ?" for c in (table.key_column, *table.encrypted))
    match = " AND ".join(f"{_quote(c)} = ?" for c in (*table.primary_key, table.key_column))
    update = f"UPDATE {_quote(table.name)} SET {assignments} WHERE {match}"
    done = 0
    while done < limit:
        # Re-sealed rows leave the selection; known tampered ones stay in it, so ask for
        # that many more. Each pass that finds a new tampered row repeats (finitely often).
        known_bad = sum(1 for name, _ in tampered if name == table.name)
        rows = connection.execute(select, (*old, limit - done + known_bad)).fetchall()
        found_bad = False
        for row in rows:
            if done >= limit:
                break
            outcome = _reseal_row(connection, table, keyring, row, update=update, tampered=tampered)
            done += outcome is True
            found_bad = found_bad or outcome is False
        if not found_bad:
            break
    return done


def _reseal_row(
    connection: sqlite3.Connection,
    table: EncryptedTable,
    keyring: KeyRing,
    row: Sequence[object],
    *,
    update: str,
    tampered: TamperedSet,
) -> bool | None:
    """True: re-sealed; False: found tampered now; None: already known to be tampered."""
    width = len(table.primary_key)
    pk_values, blobs, key_id = row[:width], row[width:-1], str(row[-1])
    pk = table.pk_of(pk_values)
    if (table.name, pk) in tampered:
        return None
    try:
        plaintexts = [
            _open(keyring, table, pk, key_id=key_id, column=column, blob=blob)
            for column, blob in zip(table.encrypted, blobs, strict=True)
        ]
    except RecordTamperedError as error:
        tampered.add((table.name, pk))
        log.error("storage.record_tampered", table=table.name, error=str(error))
        return False
    sealed = [
        None if text is None else keyring.seal(table.name, pk, text, column=column)[1]
        for column, text in zip(table.encrypted, plaintexts, strict=True)
    ]
    connection.execute(update, (keyring.current_id, *sealed, *pk_values, key_id))
    return True


def _open(
    keyring: KeyRing, table: EncryptedTable, pk: bytes, *, key_id: str, column: str, blob: object
) -> bytes | None:
    if blob is None:
        return None
    if not isinstance(blob, bytes):
        raise RecordTamperedError(f"{table.name}.{column}: not a sealed record")
    return keyring.open(table.name, pk, key_id, blob, column=column)
