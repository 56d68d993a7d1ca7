"""Test kit for ``bastion.storage``: a tiny sealed ``notes`` table and helpers to use it.

Not a broker table: it exists only in test databases (one schema version above this
build's ``MIGRATIONS``), registered like the broker's sealed tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bastion.storage.base import StoreOptions
from bastion.storage.crypto import KeyRing
from bastion.storage.database import MIGRATIONS, Migration
from bastion.storage.keys import FileKeyProvider, KeyProvider, create_key_file
from bastion.storage.registry import EncryptedTable, register_table, registration
from bastion.storage.sqlite import SqliteStore, open_store

NOTES = EncryptedTable("notes", ("id",), ("payload", "props"))
NOTES_DDL = (
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, key_id TEXT, "
    "payload BLOB NOT NULL, props BLOB)"
)
TEST_MIGRATIONS = (
    *MIGRATIONS,
    Migration(len(MIGRATIONS) + 1, "test notes table", (NOTES_DDL, registration(NOTES))),
)
TOPIC = "sensors/room-1/temperature"


def payload(number: int) -> bytes:
    """A recognisable plaintext that must never reach the disk."""
    return b"PLAINTEXT-PAYLOAD-%06d-do-not-store" % number


def key_file(directory: Path) -> FileKeyProvider:
    """A fresh master key file in ``directory`` (outside any data directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    return create_key_file(directory / "test-master.key")


def open_test_store(
    data_dir: Path, provider: KeyProvider, options: StoreOptions | None = None
) -> SqliteStore:
    """A store of ``data_dir`` with the ``notes`` table."""
    return open_store(data_dir, provider, options=options, migrations=TEST_MIGRATIONS)


def insert_note(
    connection: sqlite3.Connection, keyring: KeyRing, number: int, props: bytes | None = None
) -> None:
    """Seal and insert note ``number`` (autocommit) with ``keyring``'s current key."""
    pk = NOTES.pk_of([number])
    key_id, sealed = keyring.seal("notes", pk, payload(number), column="payload")
    sealed_props = None if props is None else keyring.seal("notes", pk, props, column="props")[1]
    connection.execute(
        "INSERT INTO notes (id, topic, key_id, payload, props) VALUES (?, ?, ?, ?, ?)",
        (number, TOPIC, key_id, sealed, sealed_props),
    )


def write_note(store: SqliteStore, number: int, props: bytes | None = None) -> None:
    """Seal and insert note ``number`` through ``store``."""
    insert_note(store.database.connection, store.keyring, number, props)


def read_note(store: SqliteStore, number: int) -> bytes | None:
    """The payload of note ``number`` opened through ``store`` (None: tampered)."""
    row = store.database.connection.execute(
        "SELECT key_id, CAST(payload AS BLOB) FROM notes WHERE id = ?", (number,)
    ).fetchone()
    assert row is not None, f"note {number} is missing"
    return store.open_sealed("notes", "payload", NOTES.pk_of([number]), row[0], row[1])


def add_notes_table(database_file: Path) -> None:
    """Create and register ``notes`` in an existing base-schema database (as a CLI test
    needs records without a schema version the CLI does not know)."""
    connection = sqlite3.connect(database_file, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(NOTES_DDL)
        register_table(connection, NOTES)
        connection.execute("COMMIT")
    finally:
        connection.close()
