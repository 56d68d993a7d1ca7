"""``SqliteStore``: the ``Store`` of ``base.py`` over one SQLite database in a data directory.

Assembles ``database.py`` (file, WAL, migrations), ``datakeys.py`` (the key ring),
``registry.py`` (re-encryption) and ``brokerstate.py`` (the broker's tables); ``open_store``
is the ``StoreOpener`` the runtime calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from bastion.config.storage_settings import StorageSettings
from bastion.storage.base import StoreHealth, StoreOptions
from bastion.storage.brokerstate import BrokerState
from bastion.storage.crypto import SEALS_PER_KEY_LIMIT, KeyRing, PrimaryKey, pack_key
from bastion.storage.database import MIGRATIONS, Database, Migration, open_database
from bastion.storage.datakeys import (
    add_seal_counts,
    ensure_data_key,
    key_epoch,
    list_data_keys,
    load_keyring,
)
from bastion.storage.errors import (
    RecordTamperedError,
    StorageError,
    UnknownKeyError,
    sqlite_errors,
)
from bastion.storage.keys import KeyProvider, resolve_provider
from bastion.storage.layout import database_path, default_data_dir, ensure_data_dir
from bastion.storage.records import Op, StoredState
from bastion.storage.registry import count_by_key, reencrypt_batch

__all__ = ["SqliteStore", "open_store", "open_store_from_settings"]

log = structlog.get_logger("bastion.storage")

MAX_REPORTED = 100_000
"""Tampered records remembered (so each is reported once); beyond it they are only counted."""


class SqliteStore:
    """The SQLite implementation of ``Store`` (see ``base.py`` for the contract)."""

    def __init__(self, database: Database, provider: KeyProvider, options: StoreOptions) -> None:
        """Load the key ring of ``database`` (making its first data key if it has none)."""
        self.database = database
        self._provider = provider
        self._options = options
        with sqlite_errors(database.path):  # read before the ring: a rotation in between
            self._epoch = key_epoch(database.connection)  # is then seen by refresh_keys
        self._keyring = ensure_data_key(database, provider)
        self._tampered: set[tuple[str, bytes]] = set()
        self._tampered_count = 0
        self._closed = False
        self._broker = BrokerState(database, self)

    @property
    def path(self) -> Path:
        return self.database.path

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    def refresh_keys(self) -> bool:
        with sqlite_errors(self.path):
            epoch = key_epoch(self.database.connection)
        if epoch == self._epoch:
            return False
        load_keyring(self.database, self._provider, self._keyring)
        self._epoch = epoch
        log.info("storage.keys_refreshed", current=self._keyring.current_id)
        return True

    def seal(self, table: str, column: str, pk: PrimaryKey, plaintext: bytes) -> tuple[str, bytes]:
        return self._keyring.seal(table, pk, plaintext, column=column)

    def open_sealed(
        self, table: str, column: str, pk: PrimaryKey, key_id: str, blob: bytes
    ) -> bytes | None:
        try:
            try:
                return self._keyring.open(table, pk, key_id, blob, column=column)
            except UnknownKeyError:
                if not self.refresh_keys():  # rotated by another process since we loaded
                    raise
                return self._keyring.open(table, pk, key_id, blob, column=column)
        except RecordTamperedError as error:
            self._report(table, pk, error)
            return None

    def _report(self, table: str, pk: PrimaryKey, error: RecordTamperedError) -> None:
        marker = (table, pk if isinstance(pk, bytes) else pack_key(pk))
        if marker in self._tampered:
            return
        self._tampered_count += 1
        if len(self._tampered) < MAX_REPORTED:
            self._tampered.add(marker)
            log.error("storage.record_tampered", table=table, error=str(error))

    def rekey_step(self, limit: int = 100) -> int:
        self._flush_seals()
        self.refresh_keys()
        before = len(self._tampered)
        done = reencrypt_batch(self.database, self._keyring, limit, tampered=self._tampered)
        self._tampered_count += len(self._tampered) - before
        return done

    def records_by_key(self) -> dict[str, int]:
        with self.database.snapshot() as connection:
            return count_by_key(connection)

    def apply(self, ops: Sequence[Op]) -> None:
        self._broker.apply(ops)

    def checkpoint(self) -> int:
        return self._broker.checkpoint()

    @property
    def pending_checkpoint(self) -> int:
        return self._broker.folded

    def load(self) -> StoredState:
        return self._broker.load()

    def purge(self, now_wall: float, *, limit: int) -> int:
        removed = self._broker.purge(now_wall, limit=limit)
        self._flush_seals()  # periodic: a crash loses at most one purge interval of counts
        return removed

    def stats(self) -> dict[str, int]:
        return self._broker.stats()

    def health(self) -> StoreHealth:
        connection = self.database.connection
        with sqlite_errors(self.path):
            page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
            free_pages = int(connection.execute("PRAGMA freelist_count").fetchone()[0])
            pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
        return StoreHealth(
            path=self.path,
            schema_version=self.database.schema_version,
            database_bytes=_size(self.path),
            wal_bytes=_size(self.path.with_name(self.path.name + "-wal")),
            free_bytes=page_size * free_pages,
            max_bytes=self._options.max_size_bytes,
            current_key_id=self._keyring.current_id,
            tampered_records=self._tampered_count,
            used_bytes=page_size * (pages - free_pages),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            try:
                self._broker.checkpoint()  # a clean stop leaves an empty journal
            except StorageError as error:  # it stays for the replay at the next start
                log.warning("storage.checkpoint_failed", error=str(error))
            self._flush_seals()
        finally:
            self.database.close()

    def _flush_seals(self) -> None:
        counts = self._keyring.take_seals()
        if not counts:
            return
        add_seal_counts(self.database, counts)
        current = self._keyring.current_id
        with self.database.snapshot() as connection:
            sealed = {key.id: key.sealed for key in list_data_keys(connection)}
        if current is not None and sealed.get(current, 0) > SEALS_PER_KEY_LIMIT // 2:
            log.warning(
                "storage.data_key_worn",
                key_id=current,
                sealed=sealed[current],
                hint="run `bastion keys rotate`",
            )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def open_store(
    data_dir: Path,
    provider: KeyProvider,
    *,
    options: StoreOptions | None = None,
    create: bool = True,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> SqliteStore:
    """Open the store of ``data_dir`` (made 0700 if missing), migrated, with its key ring.

    Creates the database and its first data key if ``create``; refuses a database whose
    data keys the provider cannot unwrap (``MasterKeyMismatchError``).
    """
    options = options or StoreOptions()
    if create:
        ensure_data_dir(data_dir)
    database = open_database(
        database_path(data_dir), migrations=migrations, options=options, create=create
    )
    try:
        return SqliteStore(database, provider, options)
    except BaseException:
        database.close()
        raise


def open_store_from_settings(
    settings: StorageSettings, environ: Mapping[str, str] | None = None
) -> SqliteStore:
    """Open the store a ``[storage]`` table describes.

    The database is checked before any key is looked at. Only a database without data keys
    (a first start) gets a new master key file in the data directory when no key is
    configured (with a warning); for one with data keys a missing key is an error.
    """
    env = os.environ if environ is None else environ
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir(env)
    options = StoreOptions.from_settings(settings)
    ensure_data_dir(data_dir)
    database = open_database(database_path(data_dir), options=options)
    try:
        provider = resolve_provider(
            data_dir,
            key_file=Path(settings.key_file) if settings.key_file else None,
            key_env=settings.key_env,
            environ=env,
            create=not list_data_keys(database.connection),
        )
        return SqliteStore(database, provider, options)
    except BaseException:
        database.close()
        raise
