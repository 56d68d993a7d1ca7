"""The seam between the logger's store and its databases: sealed rows and ``LogBackend``.

``logstore.LogStore`` seals and opens; a backend (``logstore_sqlite.py``,
``logstore_pg.py``) keeps ``SealedRow``s, their data keys and the schema, and builds its scans
with ``scan_statement`` in its own ``ScanDialect``. Time is stored as microseconds since the
epoch and bound, with the topic, QoS and retain flag, into each record's associated data
(``row_binding``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from bastion.storage.crypto import KeyRing, pack_key
from bastion.storage.errors import StorageError
from bastion.storage.logstore_query import LogQuery

__all__ = [
    "LOGGER_DATABASE_NAME",
    "LOG_TABLE",
    "ROW_OVERHEAD",
    "Cursor",
    "LogBackend",
    "LogUsage",
    "ScanDialect",
    "SealedRow",
    "check_state_dir",
    "from_micros",
    "logger_database_path",
    "row_binding",
    "scan_statement",
    "to_micros",
]

LOGGER_DATABASE_NAME = "logger.db"
LOG_TABLE = "log_messages"
"""The table name bound into every sealed record's associated data (both backends)."""
ROW_OVERHEAD = 48
"""Bytes counted per record on top of topic and sealed blobs (ids, times, index entries)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def logger_database_path(state_dir: Path) -> Path:
    """The SQLite file of the data logger in ``state_dir`` (beside the broker's ``bastion.db``)."""
    return state_dir / LOGGER_DATABASE_NAME


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    if when.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant; give it a time zone")
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    """The UTC datetime of ``micros`` microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


def check_state_dir(state_dir: Path) -> None:
    """``StorageError`` unless ``state_dir`` is an existing directory (for read commands)."""
    if not state_dir.exists():
        raise StorageError(f"state directory {state_dir} does not exist")
    if not state_dir.is_dir():
        raise StorageError(f"state directory {state_dir} is not a directory")


@dataclass(frozen=True, slots=True)
class SealedRow:
    """A record as a backend keeps it: routing data in the clear, the rest sealed."""

    id: int
    topic: str
    received_us: int
    qos: int
    retain: bool
    key_id: str
    payload: bytes
    properties: bytes

    @property
    def stored_bytes(self) -> int:
        """What the record counts against ``--max-size-mb``."""
        blobs = len(self.payload) + len(self.properties)
        return len(self.topic.encode("utf-8")) + blobs + ROW_OVERHEAD


def row_binding(row_id: int, topic: str, received_us: int, qos: int, retain: bool) -> bytes:
    """The primary key bound into a record's associated data: editing the topic, time, QoS
    or retain flag of a row, or moving its blobs to another row, fails authentication."""
    return pack_key(row_id, topic, received_us, qos, int(retain))


@dataclass(frozen=True, slots=True)
class LogUsage:
    """How much is stored: records and the bytes they count (see ``SealedRow.stored_bytes``)."""

    messages: int
    bytes: int


Cursor = tuple[int, int]
"""A scan position: ``(received_us, id)`` of the last row seen."""


@dataclass(frozen=True, slots=True)
class ScanDialect:
    """How one backend's SQL spells a scan of the messages."""

    table: str
    columns: str
    """The selected columns, in ``SealedRow`` order."""
    time_column: str
    placeholder: str
    prefix_test: str
    """True when ``topic`` starts with a prefix; takes the prefix's length, then the prefix."""
    time_value: Callable[[int], object]
    """The parameter for a time given in microseconds since the epoch."""


def scan_statement(
    dialect: ScanDialect,
    query: LogQuery,
    *,
    descending: bool,
    after: Cursor | None,
    limit: int,
) -> tuple[str, list[object]]:
    """SQL and parameters for ``LogBackend.scan``: up to ``limit`` rows in time order past
    ``after``, in the query's time window and under one of its literal topic prefixes."""
    mark, column = dialect.placeholder, dialect.time_column
    where: list[str] = []
    params: list[object] = []
    for bound, operator in ((query.since, ">="), (query.until, "<=")):
        if bound is not None:
            where.append(f"{column} {operator} {mark}")
            params.append(dialect.time_value(to_micros(bound)))
    prefixes = query.prefixes()
    if prefixes:
        where.append("(" + " OR ".join([dialect.prefix_test] * len(prefixes)) + ")")
        for prefix in prefixes:
            params += [len(prefix), prefix]
    if after is not None:
        where.append(f"({column}, id) {'<' if descending else '>'} ({mark}, {mark})")
        params += [dialect.time_value(after[0]), after[1]]
    order = "DESC" if descending else "ASC"
    sql = f"SELECT {dialect.columns} FROM {dialect.table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {column} {order}, id {order} LIMIT {mark}"
    return sql, [*params, limit]


class LogBackend(Protocol):
    """Rows of the logger in one database. Used by one thread at a time; every failure is a
    ``StorageError`` naming the database (never a password)."""

    @property
    def description(self) -> str:
        """The database, for messages: ``/srv/state/logger.db``, ``PostgreSQL db@host``."""
        ...

    @property
    def keyring(self) -> KeyRing:
        """The unwrapped data keys, current one included (loaded at open)."""
        ...

    def refresh_keys(self) -> bool:
        """Reload the key ring if another process changed the keys; True if it did."""
        ...

    def insert(self, count: int, build: Callable[[int], Sequence[SealedRow]]) -> None:
        """In one durable transaction: reserve ids ``first .. first + count - 1``, call
        ``build(first)`` and store its rows. ``KeyRetiredError`` if their key was retired."""
        ...

    def scan(
        self,
        query: LogQuery,
        *,
        descending: bool,
        after: Cursor | None,
        limit: int,
    ) -> list[SealedRow]:
        """Up to ``limit`` rows in time order past ``after``, in the query's time window and
        (if it has them) under one of its literal topic prefixes."""
        ...

    def usage(self) -> LogUsage: ...

    def delete_older(self, cutoff_us: int) -> int:
        """Delete rows received before ``cutoff_us``; returns how many."""
        ...

    def delete_oldest(self, excess: int) -> int:
        """Delete the oldest rows that together count at least ``excess`` bytes."""
        ...

    def rotate_key(self) -> str:
        """Make a new data key current (and load it); returns its id."""
        ...

    def reencrypt(self, limit: int) -> int:
        """Re-seal up to ``limit`` records held under an old key; 0 when none is left.
        Tampered records are reported once and left alone."""
        ...

    def retire_unused(self) -> tuple[str, ...]:
        """Retire (erase) every non-current data key that seals no record any more."""
        ...

    def flush_seals(self) -> None:
        """Persist how many records each data key sealed (the key-wear counter)."""
        ...

    @property
    def tampered(self) -> int:
        """Records that re-encryption found tampered (reported once each, left alone)."""
        ...

    def close(self) -> None: ...
