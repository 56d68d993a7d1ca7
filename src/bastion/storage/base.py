"""The ``Store`` protocol: the one interface the broker persists through, and its options.

``sqlite.py`` implements it (``SqliteStore``, opened by ``open_store``) over ``database.py``;
the broker imports only this module and ``records.py`` (what it persists). Sealing and key
rotation live behind it, not in callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bastion.config.storage_settings import StorageSettings, SyncMode
from bastion.storage.crypto import KeyRing, PrimaryKey
from bastion.storage.keys import KeyProvider
from bastion.storage.records import Op, StoredState

__all__ = ["Store", "StoreHealth", "StoreOpener", "StoreOptions", "SyncMode"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How a database is opened. ``sync="full"`` is the durable default (see database.py)."""

    sync: SyncMode = "full"
    busy_timeout_ms: int = 5000
    max_size_bytes: int | None = None
    quick_check: bool = True
    """Run ``PRAGMA quick_check`` at open (a full scan: seconds on a multi-GB database)."""

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> StoreOptions:
        """The options a ``[storage]`` table asks for."""
        return cls(sync=settings.sync, max_size_bytes=settings.max_db_size_mb * _MIB)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """Cheap facts about a store for ``$SYS``, metrics and ``bastion keys status``."""

    path: Path
    schema_version: int
    database_bytes: int
    wal_bytes: int
    free_bytes: int
    """Bytes of free pages inside the database file (reused before it grows)."""
    max_bytes: int | None
    current_key_id: str | None
    tampered_records: int
    """Records that failed authentication since the store was opened (each reported once)."""
    used_bytes: int = 0
    """Pages in use (committed, in the database file or still in its write-ahead log), in
    bytes: what ``max_bytes`` limits."""


class Store(Protocol):
    """Persistence behind one interface: the broker's state (``apply``, ``load``, ``purge``,
    ``stats``; records in ``records.py``), sealing, key rotation and health. A store is used
    by one thread at a time (the broker's storage thread). Failures raise ``StorageError``
    subclasses (``errors.py``): ``StorageFullError`` (reason 0x97), ``StorageReadOnlyError``,
    ``StorageIOError``, ``StorageBusyError`` ...
    """

    def apply(self, ops: Sequence[Op]) -> None:
        """Make ``ops`` durable in one transaction; on error nothing is applied.

        Everything is sealed. Meant for group commit: one call per batch of up to a few
        thousand ops. What ``load`` returns includes them at once, what ``purge`` and
        ``stats`` see only after the next ``checkpoint``.
        """
        ...

    def checkpoint(self) -> int:
        """Fold what ``apply`` made durable since the last checkpoint into the tables (ops
        that cancel out, such as a copy created and acknowledged in between, write nothing);
        returns how many ops were written. Call it about once a second."""
        ...

    @property
    def pending_checkpoint(self) -> int:
        """Ops applied since the last checkpoint."""
        ...

    def load(self) -> StoredState:
        """Everything stored, for ``Broker.restore``: tampered records are left out (with
        what depends on them) and counted in ``skipped``; never raises for bad records."""
        ...

    def purge(self, now_wall: float, *, limit: int) -> int:
        """Delete up to ``limit`` messages that are expired (``now_wall``: ``time.time()``)
        or that no outbox copy or retained topic refers to; returns how many went.

        Expired messages go with their queued (not in-flight) outbox copies and retained
        topics. Expired sessions are not purged here: the broker sends ``delete_session``.
        """
        ...

    def stats(self) -> dict[str, int]:
        """Rows per broker table, for ``$SYS`` and metrics (counts: not free on big tables)."""
        ...

    @property
    def path(self) -> Path:
        """The database file."""
        ...

    @property
    def keyring(self) -> KeyRing:
        """The unwrapped data keys; updated in place by ``refresh_keys``."""
        ...

    def refresh_keys(self) -> bool:
        """Pick up keys rotated or retired by another process; True if anything changed."""
        ...

    def seal(self, table: str, column: str, pk: PrimaryKey, plaintext: bytes) -> tuple[str, bytes]:
        """``(key_id, blob)`` for a column of a registered table, under the current key."""
        ...

    def open_sealed(
        self, table: str, column: str, pk: PrimaryKey, key_id: str, blob: bytes
    ) -> bytes | None:
        """The plaintext, or None for a record that fails authentication (reported once)."""
        ...

    def rekey_step(self, limit: int = 100) -> int:
        """Re-seal up to ``limit`` records still under an old data key; 0 when none is left."""
        ...

    def records_by_key(self) -> dict[str, int]:
        """How many records each data key seals (what decides whether it can be retired)."""
        ...

    def health(self) -> StoreHealth:
        """Sizes, schema version, current key and the count of tampered records."""
        ...

    def close(self) -> None:
        """Persist counters and close the database; the store is unusable afterwards."""
        ...


class StoreOpener(Protocol):
    """Opens (creating if allowed) the store of a data directory: ``sqlite.open_store``."""

    def __call__(
        self,
        data_dir: Path,
        provider: KeyProvider,
        *,
        options: StoreOptions = ...,
        create: bool = True,
    ) -> Store: ...
