"""Unit tests for data-key rotation, re-encryption and retirement through ``SqliteStore``.

Covers the life of a data key (current, old, re-encrypted away, retired), the guards that
keep a stale writer from using a retired key, tampered records (reported once, skipped),
plaintext never reaching the database files, and rotation from a second connection while a
writer thread keeps inserting.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from storekit import (
    TEST_MIGRATIONS,
    TOPIC,
    insert_note,
    key_file,
    open_test_store,
    payload,
    read_note,
    write_note,
)

from bastion.storage import datakeys
from bastion.storage.base import Store, StoreOpener
from bastion.storage.crypto import KeyRing
from bastion.storage.database import open_database
from bastion.storage.errors import KeyRetiredError, KeyStateError, StorageError, sqlite_errors
from bastion.storage.keys import FileKeyProvider
from bastion.storage.registry import count_by_key, reencrypt_batch
from bastion.storage.sqlite import SqliteStore, open_store


@pytest.fixture
def provider(tmp_path: Path) -> FileKeyProvider:
    return key_file(tmp_path / "keys")


@pytest.fixture
def store(tmp_path: Path, provider: FileKeyProvider) -> Iterator[SqliteStore]:
    opened = open_test_store(tmp_path / "state", provider)
    yield opened
    opened.close()  # a no-op when the test closed it


def statuses(store: SqliteStore) -> dict[str, datakeys.DataKeyStatus]:
    return {status.key.id: status for status in datakeys.data_key_status(store.database)}


def test_rotation_lifecycle(store: SqliteStore, provider: FileKeyProvider) -> None:
    first = store.keyring.current_id
    assert first is not None
    for number in range(25):
        write_note(store, number, props=b"user-properties-%d" % number)
    assert store.records_by_key() == {first: 25}

    second = datakeys.rotate_data_key(store.database, provider).id
    assert store.refresh_keys()
    assert not store.refresh_keys()
    assert store.keyring.current_id == second
    write_note(store, 100)
    assert store.records_by_key() == {first: 25, second: 1}

    with pytest.raises(KeyStateError, match=f"data key {first} still seals 25 records"):
        datakeys.retire_data_key(store.database, first)
    assert not statuses(store)[first].retirable

    moved = [store.rekey_step(limit=10) for _ in range(4)]
    assert moved == [10, 10, 5, 0]
    assert store.records_by_key() == {second: 26}
    status = statuses(store)[first]
    assert status.records == 0
    assert status.retirable
    assert "bastion keys retire" in status.note

    with pytest.raises(KeyStateError, match="is the current key"):
        datakeys.retire_data_key(store.database, second)
    retired = datakeys.retire_data_key(store.database, first)
    assert retired.state == "retired"
    with pytest.raises(KeyStateError, match="already retired"):
        datakeys.retire_data_key(store.database, first)
    with pytest.raises(StorageError, match="no data key 'dk-nope'"):
        datakeys.retire_data_key(store.database, "dk-nope")
    wrapped = store.database.connection.execute(
        "SELECT wrapped FROM bastion_data_keys WHERE id = ?", (first,)
    ).fetchone()
    assert wrapped == (None,)

    store.refresh_keys()
    assert store.keyring.key_ids() == {second}
    for number in range(25):
        assert read_note(store, number) == payload(number)
    store.close()


def test_seal_counts_are_persisted(store: SqliteStore) -> None:
    for number in range(7):
        write_note(store, number)
    store.close()
    database = open_database(store.path, migrations=TEST_MIGRATIONS)
    [key] = datakeys.list_data_keys(database.connection)
    assert key.sealed == 7
    database.close()


def test_stale_writer_cannot_use_a_retired_key(
    store: SqliteStore, provider: FileKeyProvider
) -> None:
    stale = KeyRing()
    datakeys.load_keyring(store.database, provider, stale)
    old = stale.current_id
    assert old is not None
    datakeys.rotate_data_key(store.database, provider)
    datakeys.retire_data_key(store.database, old)  # nothing was sealed under it
    with pytest.raises(KeyRetiredError), sqlite_errors(store.path):
        insert_note(store.database.connection, stale, 1)
    assert store.records_by_key() == {}


def test_reader_with_an_old_ring_refreshes_for_a_new_key(
    tmp_path: Path, store: SqliteStore, provider: FileKeyProvider
) -> None:
    other = open_test_store(tmp_path / "state", provider)  # another process, say the CLI
    datakeys.rotate_data_key(other.database, provider)
    other.refresh_keys()
    write_note(other, 1)
    assert read_note(store, 1) == payload(1)  # unknown key: refreshed, then opened
    other.close()
    store.close()


def test_tampered_record_is_reported_once_and_skipped(store: SqliteStore) -> None:
    write_note(store, 1)
    write_note(store, 2)
    connection = store.database.connection
    blob = connection.execute("SELECT payload FROM notes WHERE id = 2").fetchone()[0]
    connection.execute("UPDATE notes SET payload = ? WHERE id = 1", (blob,))  # swapped row
    with structlog.testing.capture_logs() as logs:
        assert read_note(store, 1) is None
        assert read_note(store, 1) is None
        assert read_note(store, 2) == payload(2)
    assert [entry["event"] for entry in logs] == ["storage.record_tampered"]
    assert store.health().tampered_records == 1
    store.close()


def test_rekey_skips_tampered_records(store: SqliteStore, provider: FileKeyProvider) -> None:
    for number in range(5):
        write_note(store, number)
    store.database.connection.execute(
        "UPDATE notes SET payload = substr(payload, 1, 20) || x'00' WHERE id IN (0, 1)"
    )
    datakeys.rotate_data_key(store.database, provider)
    with structlog.testing.capture_logs() as logs:
        assert store.rekey_step(limit=2) == 2
        assert store.rekey_step(limit=2) == 1
        assert store.rekey_step(limit=2) == 0
    assert [entry["event"] for entry in logs].count("storage.record_tampered") == 2
    assert sorted(store.records_by_key().values()) == [2, 3]  # two left under the old key
    assert store.health().tampered_records == 2
    store.close()


def test_plaintext_never_reaches_the_files(tmp_path: Path, store: SqliteStore) -> None:
    secret_props = b"SECRET-USER-PROPERTY-value"
    for number in range(300):
        write_note(store, number, props=secret_props)
    files = sorted((tmp_path / "state").iterdir())
    names = {path.name for path in files}
    assert {"bastion.db", "bastion.db-wal", "bastion.db-shm"} <= names
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    raw = {path.name: path.read_bytes() for path in files if not path.name.endswith(".key")}
    for name, data in raw.items():
        assert b"PLAINTEXT-PAYLOAD" not in data, name
        assert secret_props not in data, name
    assert any(TOPIC.encode() in data for data in raw.values())  # topics may stay readable
    store.close()
    for path in (tmp_path / "state").iterdir():
        assert b"PLAINTEXT-PAYLOAD" not in path.read_bytes(), path.name


def test_health(store: SqliteStore) -> None:
    write_note(store, 1)
    health = store.health()
    assert health.path == store.path
    assert health.schema_version == len(TEST_MIGRATIONS)
    assert health.database_bytes > 0
    assert health.current_key_id == store.keyring.current_id
    assert health.tampered_records == 0
    store.close()


def test_rotation_while_a_writer_thread_publishes(
    tmp_path: Path, store: SqliteStore, provider: FileKeyProvider
) -> None:
    """One connection inserts continuously (the broker); another rotates (the CLI)."""
    stop = threading.Event()
    milestones = {50: threading.Event(), 100: threading.Event(), 150: threading.Event()}
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        number = 0
        try:
            while not stop.is_set() or number < 300:
                # Group commit, as the broker will: a few records per transaction, then a
                # short gap (its commit interval) in which other connections get the lock.
                with store.database.transaction() as connection:
                    for _ in range(5):
                        insert_note(connection, store.keyring, number)
                        number += 1
                written.extend(range(number - 5, number))
                if number in milestones:
                    milestones[number].set()
                if number % 25 == 0:
                    store.refresh_keys()
                    store.rekey_step(limit=20)
                stop.wait(0.001)
        except BaseException as error:  # reported to the main thread
            errors.append(error)
            for event in milestones.values():
                event.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    cli = open_database(store.path, migrations=TEST_MIGRATIONS)  # a second connection
    try:
        rotated: list[str] = []
        for milestone in milestones.values():
            assert milestone.wait(timeout=30)
            rotated.append(datakeys.rotate_data_key(cli, FileKeyProvider(provider.path)).id)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert not errors, errors
    assert len(written) >= 300

    while store.rekey_step(limit=50):
        pass
    with cli.snapshot() as connection:
        counts = count_by_key(connection)
    assert counts == {rotated[-1]: len(written)}
    for key_id in {status.key.id for status in datakeys.data_key_status(cli)} - {rotated[-1]}:
        datakeys.retire_data_key(cli, key_id)
    cli.close()
    store.close()

    fresh = open_test_store(tmp_path / "state", FileKeyProvider(provider.path))
    assert fresh.keyring.key_ids() == {rotated[-1]}
    rows = fresh.database.connection.execute("SELECT id FROM notes ORDER BY id").fetchall()
    assert [row[0] for row in rows] == written
    for number in written:
        assert read_note(fresh, number) == payload(number)
    fresh.close()


def test_reencrypt_batch_without_old_keys_does_nothing(store: SqliteStore) -> None:
    write_note(store, 1)
    assert reencrypt_batch(store.database, store.keyring, 10) == 0
    assert reencrypt_batch(store.database, KeyRing(), 10) == 0
    store.close()


def test_sqlite_store_is_a_store(store: SqliteStore) -> None:
    opener: StoreOpener = open_store  # checked by mypy: the runtime's seam
    as_store: Store = store
    assert callable(opener)
    assert as_store.keyring is store.keyring
    store.close()
