"""The data logger's store: every message the logger receives, batched and sealed at rest.

``LogStore`` seals payloads and property blocks with the data keys of ``datakeys.py`` /
``crypto.py`` (wrapped by the broker's master key, ``keys.py``), binds each record to its id,
topic, time, QoS and retain flag (``logstore_rows.row_binding``), and opens, filters and
reports on reads. Rows live in a ``LogBackend``: SQLite (``logstore_sqlite.py``,
``<state-dir>/logger.db``) or PostgreSQL (``logstore_pg.py``). ``services/datalogger.py``
writes; ``cli/logger.py`` queries. The names of the sibling modules are re-exported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from bastion.storage.errors import KeyRetiredError, RecordTamperedError, UnknownKeyError
from bastion.storage.logstore_query import LogQuery, parse_instant, parse_topic_filter
from bastion.storage.logstore_rows import (
    LOG_TABLE,
    LOGGER_DATABASE_NAME,
    Cursor,
    LogBackend,
    LogUsage,
    SealedRow,
    check_state_dir,
    from_micros,
    logger_database_path,
    row_binding,
    to_micros,
)
from bastion.storage.logstore_sqlite import open_sqlite_backend

__all__ = [
    "LOGGER_DATABASE_NAME",
    "LOG_TABLE",
    "SCAN_CHUNK",
    "LogBackend",
    "LogQuery",
    "LogStore",
    "LogUsage",
    "LoggedMessage",
    "PurgeResult",
    "RekeyResult",
    "SealedRow",
    "StoredMessage",
    "check_state_dir",
    "from_micros",
    "logger_database_path",
    "open_logstore",
    "parse_instant",
    "parse_topic_filter",
    "to_micros",
]

log = structlog.get_logger("bastion.logger")

SCAN_CHUNK = 500
MAX_REPORTED = 100_000
"""Tampered records remembered (so each is reported once); beyond it they are only counted."""


# ----------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """One message as the logger received it, before it is stored."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: datetime
    """When the logger received it (aware, UTC)."""
    content_type: str | None = None
    """The MQTT 5 Content Type property, if the publisher set one."""
    user_properties: tuple[tuple[str, str], ...] = ()
    """The MQTT 5 User Properties, in order, if any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage(LoggedMessage):
    """A stored message, opened: the message as received plus the ``id`` the store gave it,
    which orders messages received at the same instant."""

    id: int


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What ``LogStore.purge`` deleted, and what is left."""

    by_age: int
    by_size: int
    left: LogUsage


@dataclass(frozen=True, slots=True)
class RekeyResult:
    """What ``LogStore.rekey`` did: the new current key, records re-sealed, keys retired."""

    key_id: str
    reencrypted: int
    retired: tuple[str, ...]
    tampered: int


# ----------------------------------------------------------------- the store


def _encode_properties(message: LoggedMessage) -> bytes:
    document: dict[str, object] = {}
    if message.content_type is not None:
        document["content_type"] = message.content_type
    if message.user_properties:
        document["user_properties"] = [list(pair) for pair in message.user_properties]
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode_properties(data: bytes) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict):
        raise ValueError("property block is not an object")
    content_type = document.get("content_type")
    pairs = document.get("user_properties", [])
    if content_type is not None and not isinstance(content_type, str):
        raise ValueError("content_type is not text")
    if not isinstance(pairs, list):
        raise ValueError("user_properties is not a list")
    user: list[tuple[str, str]] = []
    for pair in pairs:
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        ):
            raise ValueError("a user property is not a pair of strings")
        user.append((pair[0], pair[1]))
    return content_type, tuple(user)


class LogStore:
    """The logger's messages in a ``LogBackend``: appended in sealed batches, read opened.

    A record that fails authentication (edited, swapped, or sealed under an unknown key) is
    logged once as ``logger.record_tampered`` and left out of every read; ``tampered``
    counts them.
    """

    def __init__(self, backend: LogBackend) -> None:
        self._backend = backend
        self._reported: set[int] = set()
        self._tampered = 0
        self._closed = False

    @property
    def description(self) -> str:
        return self._backend.description

    @property
    def tampered(self) -> int:
        """Records skipped because they failed authentication, since the store was opened."""
        return self._tampered

    @property
    def current_key_id(self) -> str | None:
        return self._backend.keyring.current_id

    # ------------------------------------------------------------- writing

    def append(self, messages: Sequence[LoggedMessage]) -> int:
        """Store ``messages`` in one durable transaction (all or none); returns how many."""
        if not messages:
            return 0
        for message in messages:
            if message.qos not in (0, 1, 2) or message.received_at.tzinfo is None:
                raise ValueError(f"bad message for topic {message.topic!r}: qos or time")
        self._backend.refresh_keys()
        try:
            self._backend.insert(len(messages), lambda first: self._seal(first, messages))
        except KeyRetiredError:  # retired by `bastion logger rekey` between refresh and write
            self._backend.refresh_keys()
            self._backend.insert(len(messages), lambda first: self._seal(first, messages))
        return len(messages)

    def _seal(self, first: int, messages: Sequence[LoggedMessage]) -> list[SealedRow]:
        ring = self._backend.keyring
        rows = []
        for offset, message in enumerate(messages):
            row_id = first + offset
            micros = to_micros(message.received_at)
            pk = row_binding(row_id, message.topic, micros, message.qos, message.retain)
            key_id, payload = ring.seal(LOG_TABLE, pk, message.payload, column="payload")
            props = _encode_properties(message)
            _, properties = ring.seal(LOG_TABLE, pk, props, column="properties")
            rows.append(
                SealedRow(
                    row_id,
                    message.topic,
                    micros,
                    message.qos,
                    message.retain,
                    key_id,
                    payload,
                    properties,
                )
            )
        return rows

    # ------------------------------------------------------------- reading

    def messages(self, query: LogQuery) -> Iterator[StoredMessage]:
        """Matching messages, oldest first, read in chunks (nothing is held in memory);
        ``query.limit`` caps the count from the oldest."""
        for count, message in enumerate(self._opened(query, descending=False)):
            if query.limit is not None and count >= query.limit:
                return
            yield message

    def latest(self, query: LogQuery) -> list[StoredMessage]:
        """The newest ``query.limit`` matching messages (all if None), oldest first."""
        found: list[StoredMessage] = []
        for message in self._opened(query, descending=True):
            if query.limit is not None and len(found) >= query.limit:
                break
            found.append(message)
        found.reverse()
        return found

    def _opened(self, query: LogQuery, *, descending: bool) -> Iterator[StoredMessage]:
        after: Cursor | None = None
        while True:
            rows = self._backend.scan(query, descending=descending, after=after, limit=SCAN_CHUNK)
            for row in rows:
                if not query.matches(row.topic):
                    continue
                message = self._open(row)
                if message is not None:
                    yield message
            if len(rows) < SCAN_CHUNK:
                return
            after = (rows[-1].received_us, rows[-1].id)

    def _open(self, row: SealedRow) -> StoredMessage | None:
        pk = row_binding(row.id, row.topic, row.received_us, row.qos, row.retain)
        try:
            try:
                payload, props = self._open_blobs(row, pk)
            except UnknownKeyError:
                if not self._backend.refresh_keys():  # rotated since we loaded the keys
                    raise
                payload, props = self._open_blobs(row, pk)
            content_type, user_properties = _decode_properties(props)
        except (RecordTamperedError, ValueError) as error:
            self._report(row, error)
            return None
        return StoredMessage(
            row.topic,
            payload,
            row.qos,
            row.retain,
            from_micros(row.received_us),
            content_type,
            user_properties,
            id=row.id,
        )

    def _open_blobs(self, row: SealedRow, pk: bytes) -> tuple[bytes, bytes]:
        ring = self._backend.keyring
        payload = ring.open(LOG_TABLE, pk, row.key_id, row.payload, column="payload")
        props = ring.open(LOG_TABLE, pk, row.key_id, row.properties, column="properties")
        return payload, props

    def _report(self, row: SealedRow, error: Exception) -> None:
        if row.id in self._reported:
            return
        self._tampered += 1
        if len(self._reported) < MAX_REPORTED:
            self._reported.add(row.id)
            log.error(
                "logger.record_tampered",
                database=self.description,
                id=row.id,
                topic=row.topic,
                error=str(error),
            )

    # ------------------------------------------------------------- retention, keys

    def usage(self) -> LogUsage:
        """How many records are stored and the bytes they count."""
        return self._backend.usage()

    def purge(
        self, *, older_than: datetime | None = None, max_bytes: int | None = None
    ) -> PurgeResult:
        """Delete records received before ``older_than``, then the oldest ones until the
        rest count at most ``max_bytes``."""
        by_age = by_size = 0
        if older_than is not None:
            by_age = self._backend.delete_older(to_micros(older_than))
        left = self._backend.usage()
        if max_bytes is not None and left.bytes > max_bytes:
            by_size = self._backend.delete_oldest(left.bytes - max_bytes)
            left = self._backend.usage()
        return PurgeResult(by_age, by_size, left)

    def rekey(self, batch: int = 500) -> RekeyResult:
        """A new data key for new records; every older record re-sealed with it (in
        transactions of ``batch``); then the old keys retired. Safe while the logger runs."""
        key_id = self._backend.rotate_key()
        total = 0
        while done := self._backend.reencrypt(batch):
            total += done
        self._backend.flush_seals()
        retired = self._backend.retire_unused()
        return RekeyResult(key_id, total, retired, self._backend.tampered)

    def close(self) -> None:
        """Persist the key-wear counters and close the database."""
        if self._closed:
            return
        self._closed = True
        try:
            self._backend.flush_seals()
        finally:
            self._backend.close()


def open_logstore(
    state_dir: Path,
    *,
    database_url: str | None = None,
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    create: bool = False,
) -> LogStore:
    """The logger store of ``state_dir``: ``logger.db`` in it, or PostgreSQL at
    ``database_url``. The master key is resolved as the broker resolves it (``--key-file``,
    ``$BASTION_MASTER_KEY``, ``state_dir/master.key``).

    With ``create`` (the logger itself) the directory, database, schema and first data key
    (and the master key file, for a store without data keys) are made when missing; without
    it (query, export, purge) a missing state directory or database is a ``StorageError``.
    """
    env = os.environ if environ is None else environ
    if database_url is not None:
        from bastion.storage.logstore_pg import open_pg_backend  # noqa: PLC0415 - psycopg only when asked for

        backend: LogBackend = open_pg_backend(
            database_url, state_dir, key_file=key_file, environ=env, create=create
        )
    else:
        backend = open_sqlite_backend(state_dir, key_file=key_file, environ=env, create=create)
    return LogStore(backend)
