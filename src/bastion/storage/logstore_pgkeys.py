"""The data keys of the logger's PostgreSQL tables: created, loaded, rotated, retired.

Kept like ``datakeys.py`` keeps them in SQLite: wrapped by a master key of the local
``KeyProvider`` (the key never reaches the server), bound by ``wrap_associated_data``, with a
key epoch in the metadata table so running loggers notice rotations. ``logstore_pg.py``
(the backend) owns the connection and calls in; the table names live here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from bastion.storage.crypto import KeyRing, new_key, new_key_id
from bastion.storage.datakeys import DATA_KEY_PREFIX, wrap_associated_data
from bastion.storage.errors import (
    KeyRetiredError,
    MasterKeyMismatchError,
    StorageError,
    StorageFullError,
    StorageIOError,
)
from bastion.storage.keys import FileKeyProvider, KeyProvider

__all__ = [
    "CURRENT_KEY",
    "KEYS",
    "KEY_EPOCH",
    "MESSAGES",
    "META",
    "MIGRATION_LOCK",
    "Connection",
    "PgDataKeys",
    "first_line",
    "translated_errors",
]

META = "bastion_log_meta"
KEYS = "bastion_log_keys"
MESSAGES = "bastion_log_messages"
KEY_EPOCH = "key_epoch"
CURRENT_KEY = "current_data_key"
MIGRATION_LOCK = 0x4253544E4C4F47
"""``pg_advisory_xact_lock`` id that serialises schema migrations and first-key creation."""

Connection = psycopg.Connection[tuple[Any, ...]]


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines[:2]) or type(error).__name__


@contextmanager
def translated_errors(description: str) -> Iterator[None]:
    """Re-raise psycopg failures as ``StorageError`` subclasses naming the database."""
    try:
        yield
    except StorageError:
        raise
    except pg_errors.DiskFull as error:
        raise StorageFullError(f"{description}: {first_line(error)}") from error
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        raise StorageIOError(f"{description}: {first_line(error)}") from error
    except psycopg.Error as error:
        raise StorageError(f"{description}: {first_line(error)}") from error


class PgDataKeys:
    """The key ring of one PostgreSQL logger database, kept in step with its key table.

    Used by one thread at a time, like the backend that holds it; every method raises
    ``StorageError`` subclasses naming the database.
    """

    def __init__(self, connection: Connection, description: str, provider: KeyProvider) -> None:
        self._connection = connection
        self._description = description
        self._provider = provider
        self._ring = KeyRing()
        with translated_errors(description):
            self._epoch = self.read_epoch()
            self.load()

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def ensure(self) -> None:
        """Create the first data key if there is none, and re-wrap the keys under the
        current master key (for a writer)."""
        with translated_errors(self._description):
            if self._ring.current_id is None:
                self._first_key()
            self.rewrap()

    def require_active(self, key_id: str | None) -> None:
        """Inside a write transaction: lock ``key_id`` against retirement (``FOR SHARE``),
        or raise ``KeyRetiredError`` if it is no longer active."""
        usable = self._connection.execute(
            f"SELECT 1 FROM {KEYS} WHERE id = %s AND state = 'active' FOR SHARE", (key_id,)
        ).fetchone()
        if usable is None:
            raise KeyRetiredError(f"{self._description}: data key {key_id} was retired")

    def read_epoch(self) -> int:
        """The key epoch: bumped by every change of the key table."""
        row = self._connection.execute(
            f"SELECT value FROM {META} WHERE name = %s", (KEY_EPOCH,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _bump_epoch(self) -> None:
        self._connection.execute(
            f"UPDATE {META} SET value = (value::bigint + 1)::text WHERE name = %s", (KEY_EPOCH,)
        )

    def load(self) -> None:
        """Unwrap the active data keys into the ring (dropping retired ones); refuses a
        master key that does not hold what wrapped them."""
        with self._connection.transaction():
            row = self._connection.execute(
                f"SELECT value FROM {META} WHERE name = %s", (CURRENT_KEY,)
            ).fetchone()
            rows = self._connection.execute(
                f"SELECT id, master_id, wrapped FROM {KEYS} WHERE state = 'active'"
            ).fetchall()
        self._check_masters({str(master_id) for _, master_id, _ in rows})
        active = set()
        for key_id, master_id, wrapped in rows:
            active.add(str(key_id))
            if key_id not in self._ring:
                ad = wrap_associated_data(str(key_id), str(master_id))
                self._ring.add(str(key_id), self._provider.unwrap(str(master_id), wrapped, ad))
        current = None if row is None else str(row[0])
        if current is not None:
            if current not in active:
                raise StorageError(f"{self._description}: the current data key is not active")
            self._ring.set_current(current)
        for key_id in self._ring.key_ids() - active:
            self._ring.discard(key_id)

    def _check_masters(self, needed: set[str]) -> None:
        missing = needed - self._provider.master_ids()
        if missing and isinstance(self._provider, FileKeyProvider):
            self._provider.reload()
            missing = needed - self._provider.master_ids()
        if missing:
            raise MasterKeyMismatchError(
                f"wrong master key for {self._description}: its data keys are wrapped by "
                f"master key {', '.join(sorted(missing))}, but {self._provider.description} "
                f"holds {', '.join(sorted(self._provider.master_ids()))}; use the key it was "
                f"created with"
            )

    def _new_key(self) -> tuple[str, str, bytes]:
        taken = [str(r[0]) for r in self._connection.execute(f"SELECT id FROM {KEYS}")]
        key_id = new_key_id(DATA_KEY_PREFIX, taken)
        master_id = self._provider.current_master_id
        wrapped = self._provider.wrap(master_id, new_key(), wrap_associated_data(key_id, master_id))
        return key_id, master_id, wrapped

    def _insert_key(self, new: tuple[str, str, bytes]) -> None:
        key_id, master_id, wrapped = new
        self._connection.execute(
            f"INSERT INTO {KEYS} (id, seq, state, master_id, wrapped, created_at) VALUES "
            f"(%s, (SELECT COALESCE(MAX(seq), 0) + 1 FROM {KEYS}), 'active', %s, %s, %s)",
            (key_id, master_id, wrapped, int(time.time())),
        )
        self._connection.execute(
            f"INSERT INTO {META} (name, value) VALUES (%s, %s) "
            f"ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (CURRENT_KEY, key_id),
        )
        self._bump_epoch()

    def _first_key(self) -> None:
        new = self._new_key()
        with self._connection.transaction():
            self._connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            current = self._connection.execute(
                f"SELECT 1 FROM {META} WHERE name = %s", (CURRENT_KEY,)
            ).fetchone()
            if current is None:  # else another logger was quicker
                self._insert_key(new)
        self.refresh()

    def rewrap(self) -> None:
        """Wrap every active data key under the current master key (after a master key
        rotation), so the old master key can be retired."""
        target = self._provider.current_master_id
        rows = self._connection.execute(
            f"SELECT id, master_id, wrapped FROM {KEYS} WHERE state = 'active' AND master_id != %s",
            (target,),
        ).fetchall()
        if not rows:
            return
        with self._connection.transaction():
            for key_id, master_id, wrapped in rows:
                key = self._provider.unwrap(
                    str(master_id),
                    bytes(wrapped),
                    wrap_associated_data(str(key_id), str(master_id)),
                )
                rewrapped = self._provider.wrap(
                    target, key, wrap_associated_data(str(key_id), target)
                )
                self._connection.execute(
                    f"UPDATE {KEYS} SET master_id = %s, wrapped = %s "
                    f"WHERE id = %s AND master_id = %s AND state = 'active'",
                    (target, rewrapped, key_id, master_id),
                )
            self._bump_epoch()
        self.refresh()

    def refresh(self) -> bool:
        """Reload the ring if the key epoch moved (another process changed the keys)."""
        with translated_errors(self._description):
            epoch = self.read_epoch()
            if epoch == self._epoch:
                return False
            self.load()
        self._epoch = epoch
        return True

    def rotate(self) -> str:
        """A new current data key (returns its id); older keys stay until retired."""
        self.flush_seals()
        with translated_errors(self._description):
            self.load()  # refuses a wrong master key before adding anything
            new = self._new_key()
            with self._connection.transaction():
                self._insert_key(new)
        self.refresh()
        return new[0]

    def retire_unused(self) -> tuple[str, ...]:
        """Retire every non-current key that no message uses: its key material is erased."""
        retired: list[str] = []
        with translated_errors(self._description):
            rows = self._connection.execute(
                f"SELECT id FROM {KEYS} WHERE state = 'active' ORDER BY seq"
            ).fetchall()
            for (key_id,) in rows:
                with self._connection.transaction():
                    # FOR UPDATE waits for writers holding the key FOR SHARE (see insert)
                    self._connection.execute(
                        f"SELECT 1 FROM {KEYS} WHERE id = %s FOR UPDATE", (key_id,)
                    )
                    current = self._connection.execute(
                        f"SELECT value FROM {META} WHERE name = %s", (CURRENT_KEY,)
                    ).fetchone()
                    used = self._connection.execute(
                        f"SELECT EXISTS (SELECT 1 FROM {MESSAGES} WHERE key_id = %s)", (key_id,)
                    ).fetchone()
                    if (current and current[0] == key_id) or (used and used[0]):
                        continue
                    self._connection.execute(
                        f"UPDATE {KEYS} SET state = 'retired', wrapped = NULL, retired_at = %s "
                        f"WHERE id = %s",
                        (int(time.time()), key_id),
                    )
                    self._bump_epoch()
                retired.append(str(key_id))
        self.refresh()
        return tuple(retired)

    def flush_seals(self) -> None:
        """Add the ring's seal counts to the persisted per-key totals."""
        counts = self._ring.take_seals()
        if not counts:
            return
        with translated_errors(self._description), self._connection.transaction():
            for key_id, count in counts.items():
                self._connection.execute(
                    f"UPDATE {KEYS} SET sealed = sealed + %s WHERE id = %s", (count, key_id)
                )
