"""Unit tests for ``storage/database.py``: recognising, opening and migrating the SQLite file.

Random bytes, a truncated or corrupt file, another application's database and a newer
schema are each refused with the file name in the message, and left byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storekit import TEST_MIGRATIONS, open_test_store, write_note

from bastion.storage.base import StoreOptions
from bastion.storage.database import (
    APPLICATION_ID,
    MIGRATIONS,
    Migration,
    open_database,
)
from bastion.storage.errors import (
    DatabaseUnusableError,
    StorageError,
    StorageFullError,
    StorageReadOnlyError,
    sqlite_errors,
    translate_sqlite_error,
)
from bastion.storage.keys import FileKeyProvider
from bastion.storage.layout import default_data_dir, ensure_data_dir


@pytest.fixture
def db_file(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    yield data_dir / "bastion.db"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_real_database(path: Path, provider: FileKeyProvider, notes: int = 200) -> None:
    store = open_test_store(path.parent, provider)
    for number in range(notes):
        write_note(store, number, props=os.urandom(64))
    store.close()


def assert_refused(path: Path, pattern: str, opener: Callable[[], object]) -> None:
    before = digest(path)
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(DatabaseUnusableError, match=pattern) as caught:
        opener()
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    assert digest(path) == before, "a refused database file was modified"
    assert path.exists()
    if not path.name.endswith("-wal"):
        assert sorted(p.name for p in path.parent.iterdir()) == siblings


def test_new_database_is_wal_durable_and_private(db_file: Path) -> None:
    database = open_database(db_file)
    connection = database.connection
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert database.schema_version == len(MIGRATIONS)
    assert stat.S_IMODE(db_file.stat().st_mode) == 0o600
    database.close()


def test_normal_sync_and_size_limit_are_applied(db_file: Path) -> None:
    options = StoreOptions(sync="normal", max_size_bytes=1024 * 1024)
    database = open_database(db_file, options=options)
    connection = database.connection
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    assert connection.execute("PRAGMA max_page_count").fetchone()[0] == 1024 * 1024 // page_size
    database.close()


def test_data_dir_is_created_0700(tmp_path: Path) -> None:
    data_dir = ensure_data_dir(tmp_path / "a" / "state")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="not a directory"):
        ensure_data_dir(tmp_path / "file")


def test_default_data_dir() -> None:
    assert default_data_dir({}) == Path("bastion-state")
    assert default_data_dir({"BASTION_DATA_DIR": "/srv/bastion"}) == Path("/srv/bastion")


def test_reopening_keeps_data_and_does_not_migrate_again(
    db_file: Path, provider: FileKeyProvider
) -> None:
    make_real_database(db_file, provider, notes=3)
    store = open_test_store(db_file.parent, provider)
    assert store.records_by_key() == {store.keyring.current_id: 3}
    store.close()


def test_missing_database_without_create(db_file: Path) -> None:
    with pytest.raises(StorageError, match=r"no Bastion database at .*bastion keys init"):
        open_database(db_file, create=False)
    assert not db_file.exists()


def test_random_bytes_are_refused_untouched(db_file: Path) -> None:
    db_file.write_bytes(os.urandom(8192))
    assert_refused(db_file, "is not a SQLite database", lambda: open_database(db_file))


def test_short_text_file_is_refused(db_file: Path) -> None:
    db_file.write_bytes(b"hello\n")
    assert_refused(db_file, "is not a SQLite database", lambda: open_database(db_file))


@pytest.mark.parametrize("keep", [50, 5000, None])
def test_truncated_database_is_refused_untouched(
    db_file: Path, provider: FileKeyProvider, keep: int | None
) -> None:
    make_real_database(db_file, provider)
    data = db_file.read_bytes()
    db_file.write_bytes(data[: keep if keep is not None else len(data) // 2])
    assert_refused(db_file, "is truncated", lambda: open_test_store(db_file.parent, provider))


def test_corrupt_database_is_refused_untouched(db_file: Path, provider: FileKeyProvider) -> None:
    make_real_database(db_file, provider)
    data = bytearray(db_file.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[3 * page_size : 5 * page_size] = os.urandom(2 * page_size)  # pages 4 and 5
    db_file.write_bytes(bytes(data))
    assert_refused(db_file, "is corrupt", lambda: open_test_store(db_file.parent, provider))


def test_foreign_sqlite_database_is_refused_untouched(db_file: Path) -> None:
    connection = sqlite3.connect(db_file)
    connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    connection.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    connection.commit()
    connection.close()
    assert_refused(db_file, "Bastion did not create .*invoices", lambda: open_database(db_file))


def test_other_application_id_is_refused_untouched(db_file: Path) -> None:
    connection = sqlite3.connect(db_file)
    connection.execute("PRAGMA application_id = 1234")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    assert_refused(db_file, "application_id 0x000004D2", lambda: open_database(db_file))


def test_foreign_wal_database_is_refused_without_opening(db_file: Path) -> None:
    connection = sqlite3.connect(db_file)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    assert_refused(db_file, "Bastion did not create", lambda: open_database(db_file))


def test_newer_schema_is_refused_untouched(db_file: Path, provider: FileKeyProvider) -> None:
    make_real_database(db_file, provider, notes=2)
    connection = sqlite3.connect(db_file)
    connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    assert_refused(
        db_file,
        rf"schema version 99, newer than this Bastion knows \({len(TEST_MIGRATIONS)}\)",
        lambda: open_test_store(db_file.parent, provider),
    )


def test_empty_files_are_initialised(db_file: Path) -> None:
    db_file.touch()
    open_database(db_file).close()
    other = db_file.with_name("empty-sqlite.db")
    sqlite3.connect(other).close()  # a SQLite file without tables
    sqlite3.connect(other).execute("PRAGMA user_version = 0").connection.close()
    open_database(other).close()
    assert open_database(other, create=False).schema_version == len(MIGRATIONS)


def test_failed_migration_leaves_the_database_as_it_was(db_file: Path) -> None:
    open_database(db_file).close()
    before = digest(db_file)

    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE half_done (x)")
        connection.execute("SELECT no_such_function()")

    version = len(MIGRATIONS) + 1
    bad = (*MIGRATIONS, Migration(version, "broken step", (broken,)))
    with pytest.raises(StorageError, match=rf"schema migration {version} \(broken step\) failed"):
        open_database(db_file, migrations=bad)
    database = open_database(db_file)
    tables = database.connection.execute("SELECT name FROM sqlite_schema").fetchall()
    assert ("half_done",) not in tables
    assert database.schema_version == len(MIGRATIONS)
    database.close()
    assert digest(db_file) == before


def test_migrations_must_be_numbered_in_order(db_file: Path) -> None:
    with pytest.raises(ValueError, match="numbered"):
        open_database(db_file, migrations=(Migration(2, "gap", ()),))


def test_full_database_maps_to_storage_full(tmp_path: Path, provider: FileKeyProvider) -> None:
    options = StoreOptions(max_size_bytes=256 * 1024)
    store = open_test_store(tmp_path / "state", provider, options=options)
    with pytest.raises(StorageFullError) as caught, sqlite_errors(store.path):
        for number in range(10_000):
            write_note(store, number, props=os.urandom(4096))
    assert caught.value.reason == 0x97
    assert "bastion.db" in str(caught.value)
    store.close()


def test_read_only_database_maps_to_storage_read_only(db_file: Path) -> None:
    open_database(db_file, migrations=TEST_MIGRATIONS).close()
    uri = f"file:{db_file}?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    with pytest.raises(sqlite3.Error) as caught:
        connection.execute("INSERT INTO bastion_meta VALUES ('x', 'y')")
    connection.close()
    error = translate_sqlite_error(caught.value, db_file)
    assert isinstance(error, StorageReadOnlyError)
    assert error.reason == 0x80
    assert str(db_file) in str(error)


def test_transactions_roll_back_on_error(db_file: Path) -> None:
    database = open_database(db_file)
    with pytest.raises(RuntimeError), database.transaction() as connection:
        connection.execute("INSERT INTO bastion_meta VALUES ('probe', '1')")
        raise RuntimeError
    assert database.connection.execute(
        "SELECT COUNT(*) FROM bastion_meta WHERE name = 'probe'"
    ).fetchone() == (0,)
    with (
        database.transaction(),
        pytest.raises(StorageError, match="already open"),
        database.snapshot(),
    ):
        pass
    database.close()
