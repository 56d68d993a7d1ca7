"""The broker's state in the database: batches of ``records.Op`` made durable, everything
loaded back at start, and the purge of messages nothing refers to any more.

A batch is made durable by appending it to the journal: one sealed row per group commit
(``oplog.py``), so a commit costs one seal and one insert however many messages it holds.
The batches are also folded in memory (``opfold.py``); a checkpoint writes the folded
remainder to the tables and deletes the journal rows it covers, in one transaction. A copy
created and acknowledged between two checkpoints never reaches the tables. After a crash,
``load`` first replays the journal the same way.

``SqliteStore`` offers these as ``apply``/``checkpoint``/``load``/``purge``/``stats``
(``base.Store``); the tables are ``schema.py``'s, the rows and statements of each op kind
``brokerops.py``'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from bastion.storage.brokerops import Row, open_username, write_batch
from bastion.storage.crypto import KeyRing, PrimaryKey, pack_key
from bastion.storage.database import Database, get_meta, set_meta
from bastion.storage.errors import KeyRetiredError, StorageError
from bastion.storage.opfold import OpFold
from bastion.storage.oplog import decode_ops, encode_ops
from bastion.storage.records import (
    Op,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredState,
    StoredSubscription,
    StoredWill,
)
from bastion.storage.schema import BROKER_TABLES, JOURNAL, JOURNAL_SEQ, MSG_ID_HIGH

__all__ = ["PURGE_CHUNK", "BrokerState", "KeyHolder"]

log = structlog.get_logger("bastion.storage")

PURGE_CHUNK = 256
"""Messages examined per purge transaction: short, so other writers wait at most that long."""
PURGE_SCAN_FACTOR = 4
"""A purge examines at most this many candidates per message it may delete."""

_T = TypeVar("_T")


class KeyHolder(Protocol):
    """What ``BrokerState`` needs of its store: the key ring and authenticated opening."""

    @property
    def keyring(self) -> KeyRing: ...

    def refresh_keys(self) -> bool: ...

    def open_sealed(
        self, table: str, column: str, pk: PrimaryKey, key_id: str, blob: bytes
    ) -> bytes | None: ...


_SELECT_SESSIONS = (
    "SELECT client_id, expiry_interval, offline_since, key_id, CAST(username AS BLOB) "
    "FROM sessions ORDER BY client_id"
)
_SELECT_SUBSCRIPTIONS = (
    "SELECT client_id, topic_filter, qos, no_local, retain_as_published, retain_handling, "
    "identifier FROM subscriptions ORDER BY client_id, topic_filter"
)
_SELECT_MESSAGES = (  # only those something refers to
    "SELECT msg_id, topic, qos, retain, expires_at, origin, key_id, CAST(payload AS BLOB), "
    "CAST(properties AS BLOB) FROM messages AS m "
    "WHERE EXISTS (SELECT 1 FROM outbox AS o WHERE o.msg_id = m.msg_id) "
    "OR EXISTS (SELECT 1 FROM retained AS r WHERE r.msg_id = m.msg_id) ORDER BY msg_id"
)
_SELECT_OUTBOX = (
    "SELECT client_id, msg_id, shared, qos, retain, subscription_ids, attempts, packet_id, "
    "released, share_filter FROM outbox ORDER BY client_id, msg_id, shared"
)
_SELECT_INBOUND = "SELECT client_id, packet_id FROM inbound ORDER BY client_id, packet_id"
_SELECT_RETAINED = "SELECT topic, msg_id FROM retained ORDER BY topic"
_SELECT_WILLS = (
    "SELECT client_id, topic, qos, retain, due_at, key_id, CAST(payload AS BLOB), "
    "CAST(properties AS BLOB) FROM wills ORDER BY client_id"
)
_SELECT_HIGHEST = (
    "SELECT MAX((SELECT COALESCE(MAX(msg_id), 0) FROM messages), "
    "(SELECT COALESCE(MAX(msg_id), 0) FROM outbox), "
    "(SELECT COALESCE(MAX(msg_id), 0) FROM retained))"
)
# Expired messages none of whose copies is in flight: a delivery once started is finished.
_SELECT_EXPIRED = (
    "SELECT msg_id FROM messages AS m WHERE expires_at <= ? AND NOT EXISTS "
    "(SELECT 1 FROM outbox AS o WHERE o.msg_id = m.msg_id AND o.packet_id IS NOT NULL) "
    "ORDER BY expires_at LIMIT ?"
)
_DELETE_UNREFERENCED = (
    "DELETE FROM messages WHERE msg_id = ?1 "
    "AND NOT EXISTS (SELECT 1 FROM outbox WHERE msg_id = ?1) "
    "AND NOT EXISTS (SELECT 1 FROM retained WHERE msg_id = ?1)"
)


@dataclass(slots=True)
class _Snapshot:
    """The raw rows of one read transaction, opened and converted after it ends (opening
    may refresh the key ring, which needs a transaction of its own)."""

    sessions: list[Row]
    subscriptions: list[Row]
    messages: list[Row]
    outbox: list[Row]
    inbound: list[Row]
    retained: list[Row]
    wills: list[Row]
    stored_high: int  # MSG_ID_HIGH
    highest: int  # the highest msg_id a table refers to now


class BrokerState:
    """The broker tables of ``database``, sealed and opened with ``keys`` (its store)."""

    def __init__(self, database: Database, keys: KeyHolder) -> None:
        self._database = database
        self._keys = keys
        self._msg_id_high: int | None = None  # MSG_ID_HIGH as stored; None: not read yet
        # A checkpoint raises MSG_ID_HIGH to every msg_id it folded (written or cancelled),
        # so it covers every msg_id the messages table ever held, purged ones included; the
        # journal's ids are covered by the replay at load.
        self._fold = OpFold()
        self._seq: int | None = None  # the last journal seq used; None: not read yet

    # ------------------------------------------------------------- apply, checkpoint

    def apply(self, ops: Sequence[Op]) -> None:
        """Make ``ops`` durable in one write transaction (one journal row): all, or none.

        A data key retired meanwhile by another process is picked up and the batch retried
        once. The ops reach the tables at the next ``checkpoint``.
        """
        if not ops:
            return
        blob = encode_ops(ops)  # checks every op before anything is written
        try:
            self._append(blob)
        except KeyRetiredError:
            if not self._keys.refresh_keys():
                raise
            self._append(blob)
        self._fold.add(ops)

    def _append(self, blob: bytes) -> None:
        with self._database.transaction() as connection:
            seq = self._last_seq(connection) + 1
            key_id, sealed = self._keys.keyring.seal(
                JOURNAL.name, JOURNAL.pk_of((seq,)), blob, column="ops"
            )
            connection.execute(
                "INSERT INTO journal (seq, key_id, ops) VALUES (?, ?, ?)", (seq, key_id, sealed)
            )
        self._seq = seq

    def _last_seq(self, connection: sqlite3.Connection) -> int:
        if self._seq is None:
            row = connection.execute("SELECT MAX(seq) FROM journal").fetchone()
            self._seq = max(int(row[0] or 0), int(get_meta(connection, JOURNAL_SEQ) or 0))
        return self._seq

    @property
    def folded(self) -> int:
        """Ops appended since the last checkpoint (what the tables do not show yet)."""
        return self._fold.ops

    def checkpoint(self) -> int:
        """Write what the journal adds up to into the tables and empty it; returns the ops
        written (the folded remainder). One transaction: on error nothing changes and the
        journal still holds everything."""
        if not self._fold:
            return 0
        try:
            written = self._checkpoint_once()
        except KeyRetiredError:
            if not self._keys.refresh_keys():
                raise
            written = self._checkpoint_once()
        self._fold.clear()
        return written

    def _checkpoint_once(self) -> int:
        net = self._fold.net()
        with self._database.transaction() as connection:
            seq = self._last_seq(connection)
            # First the journal rows: their pages serve the rows written below, so a store
            # at its size limit can still checkpoint.
            connection.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
            stored = self._stored_high(connection)
            high = write_batch(connection, self._keys.keyring, net, stored)
            high = max(high, self._fold.highest_message())
            if high > stored:
                set_meta(connection, MSG_ID_HIGH, str(high))
            set_meta(connection, JOURNAL_SEQ, str(seq))
        self._msg_id_high = high
        return len(net)

    def _replay(self) -> int:
        """Fold the journal left by the last run (a crash) into the tables; returns how many
        rows failed authentication or decoding (reported, and their batches skipped)."""
        with self._database.snapshot() as connection:
            rows = connection.execute(
                "SELECT seq, key_id, CAST(ops AS BLOB) FROM journal ORDER BY seq"
            ).fetchall()
        if not rows:
            return 0
        skipped = 0
        for seq, key_id, blob in rows:
            plain = self._open(JOURNAL.name, "ops", JOURNAL.pk_of((seq,)), key_id, blob)
            try:
                if plain is None:
                    raise StorageError("failed authentication")
                self._fold.add(decode_ops(plain))
            except StorageError as error:
                skipped += 1
                log.error("storage.journal_record_skipped", seq=seq, error=str(error))
        self._seq = None  # read again: the rows read are what the checkpoint removes
        folded = self._fold.ops
        if self._fold:
            written = self.checkpoint()
        else:  # every row skipped: reported, and not replayed again at the next start
            written = 0
            self._clear_journal()
        log.info("storage.journal_replayed", batches=len(rows), ops=folded, written=written)
        return skipped

    def _clear_journal(self) -> None:
        """Remove journal rows when nothing in them could be folded (all skipped)."""
        with self._database.transaction() as connection:
            seq = self._last_seq(connection)
            connection.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
            set_meta(connection, JOURNAL_SEQ, str(seq))

    def _stored_high(self, connection: sqlite3.Connection) -> int:
        if self._msg_id_high is None:
            self._msg_id_high = int(get_meta(connection, MSG_ID_HIGH) or 0)
        return self._msg_id_high

    # ------------------------------------------------------------- load

    def load(self) -> StoredState:
        """Everything stored, authenticated and converted (see ``records.StoredState``).

        Never raises for bad records: one that fails authentication (or whose plaintext
        columns were edited into nonsense) is left out and counted in ``skipped``, and so is
        what depends on it without being counted: the outbox copies and retained topic of a
        skipped message, the subscriptions, outbox, inbound ids and will of a skipped
        session. ``next_msg_id`` is above every msg_id ever stored, purged ones included.
        """
        self._keys.refresh_keys()
        self.checkpoint()
        skipped = self._replay()
        with self._database.snapshot() as connection:
            raw = _Snapshot(
                sessions=connection.execute(_SELECT_SESSIONS).fetchall(),
                subscriptions=connection.execute(_SELECT_SUBSCRIPTIONS).fetchall(),
                messages=connection.execute(_SELECT_MESSAGES).fetchall(),
                outbox=connection.execute(_SELECT_OUTBOX).fetchall(),
                inbound=connection.execute(_SELECT_INBOUND).fetchall(),
                retained=connection.execute(_SELECT_RETAINED).fetchall(),
                wills=connection.execute(_SELECT_WILLS).fetchall(),
                stored_high=int(get_meta(connection, MSG_ID_HIGH) or 0),
                highest=int(connection.execute(_SELECT_HIGHEST).fetchone()[0]),
            )
        self._msg_id_high = raw.stored_high
        state = StoredState(next_msg_id=max(raw.stored_high, raw.highest) + 1, skipped=skipped)
        state.sessions = self._convert(raw.sessions, self._session, state)
        kept = {session.client_id for session in state.sessions}
        lost = {row[0] for row in raw.sessions} - kept

        messages = {m.msg_id: m for m in self._convert(raw.messages, self._message, state)}
        state.subscriptions = self._convert(raw.subscriptions, _subscription, state, lost)
        state.inbound = self._convert(raw.inbound, _inbound, state, lost)
        outbox = self._convert(raw.outbox, _outbox_entry, state, lost)
        state.outbox = [entry for entry in outbox if entry.msg_id in messages]
        retained = dict(self._convert(raw.retained, _retained, state))
        state.retained = {topic: i for topic, i in retained.items() if i in messages}
        referenced = {entry.msg_id for entry in state.outbox} | set(state.retained.values())
        state.messages = {i: messages[i] for i in sorted(referenced)}
        state.wills = self._convert(raw.wills, self._will, state, lost)
        # References to a skipped message, or to one never stored (or purged too early).
        dangling = len(outbox) - len(state.outbox) + len(retained) - len(state.retained)
        if dangling:
            log.warning("storage.references_left_out", count=dangling, skipped=state.skipped)
        return state

    def _convert(
        self,
        rows: list[Row],
        convert: Callable[[Row], _T | None],
        state: StoredState,
        lost: set[str] | frozenset[str] = frozenset(),
    ) -> list[_T]:
        """``convert`` each row whose client (first column) is not ``lost``; a row it
        refuses (None) or cannot convert is counted in ``skipped``."""
        records: list[_T] = []
        for row in rows:
            if row[0] in lost:
                continue
            try:
                converted = convert(row)
            except (TypeError, ValueError, AttributeError, UnicodeError) as error:
                log.error("storage.record_malformed", error=f"{type(error).__name__}: {error}")
                converted = None
            if converted is None:
                state.skipped += 1
            else:
                records.append(converted)
        return records

    def _open(
        self, table: str, column: str, pk: bytes, key_id: object, blob: object
    ) -> bytes | None:
        """The plaintext of a sealed column, or None (reported by the store) if it fails;
        NULL, or a key id that is no string, fails like any edited value."""
        sealed = blob if isinstance(blob, bytes) else b""
        return self._keys.open_sealed(table, column, pk, str(key_id), sealed)

    def _session(self, row: Row) -> StoredSession | None:
        client_id, expiry, offline_since, key_id, blob = row
        plain = self._open("sessions", "username", pack_key(client_id), key_id, blob)
        valid, username = (False, None) if plain is None else open_username(plain)
        if not valid:
            return None
        return StoredSession(
            client_id=_text(client_id),
            expiry_interval=int(expiry),
            username=username,
            offline_since=None if offline_since is None else float(offline_since),
        )

    def _message(self, row: Row) -> StoredMessage | None:
        msg_id, topic, qos, retain, expires_at, origin, key_id, payload, props = row
        pk = pack_key(msg_id)
        plain = self._open("messages", "payload", pk, key_id, payload)
        properties = self._open("messages", "properties", pk, key_id, props)
        if plain is None or properties is None:
            return None
        return StoredMessage(
            msg_id=int(msg_id),
            topic=_text(topic),
            payload=plain,
            qos=_qos(qos),
            retain=bool(retain),
            properties=properties,
            expires_at=None if expires_at is None else float(expires_at),
            origin=None if origin is None else _text(origin),
        )

    def _will(self, row: Row) -> StoredWill | None:
        client_id, topic, qos, retain, due_at, key_id, payload, props = row
        pk = pack_key(client_id)
        plain = self._open("wills", "payload", pk, key_id, payload)
        properties = self._open("wills", "properties", pk, key_id, props)
        if plain is None or properties is None:
            return None
        return StoredWill(
            client_id=_text(client_id),
            topic=_text(topic),
            payload=plain,
            qos=_qos(qos),
            retain=bool(retain),
            properties=properties,
            due_at=float(due_at),
        )

    # ------------------------------------------------------------- purge, stats

    def purge(self, now_wall: float, *, limit: int) -> int:
        """Delete up to ``limit`` messages, in transactions of at most ``PURGE_CHUNK``.

        Expired ones go with their queued outbox copies and retained topics, unless a copy
        is in flight (``packet_id`` set): a delivery once started is finished, so then the
        message and all its copies wait for that acknowledgement (the broker drops expired
        copies itself before sending). Others go once no outbox copy or retained topic
        refers to them. Returns how many messages went; fewer than
        ``limit`` means nothing more is due, or ``PURGE_SCAN_FACTOR * limit`` candidates
        were examined (call again later). A message must get its first reference in the
        batch that stores it, or a purge in between may take it.
        """
        removed = examined = 0
        while removed < limit and examined < limit * PURGE_SCAN_FACTOR:
            chunk = min(PURGE_CHUNK, limit - removed)
            with self._database.transaction() as connection:
                expired = connection.execute(_SELECT_EXPIRED, (now_wall, chunk)).fetchall()
                if expired:
                    connection.executemany(
                        "DELETE FROM outbox WHERE msg_id = ? AND packet_id IS NULL", expired
                    )
                    connection.executemany("DELETE FROM retained WHERE msg_id = ?", expired)
                    connection.executemany("DELETE FROM messages WHERE msg_id = ?", expired)
                    connection.executemany("DELETE FROM purge_queue WHERE msg_id = ?", expired)
                gone = len(expired)
                queued: list[Row] = []
                if chunk > len(expired):
                    queued = connection.execute(
                        "SELECT msg_id FROM purge_queue ORDER BY msg_id LIMIT ?",
                        (chunk - len(expired),),
                    ).fetchall()
                    gone += connection.executemany(_DELETE_UNREFERENCED, queued).rowcount
                    connection.executemany("DELETE FROM purge_queue WHERE msg_id = ?", queued)
            removed += gone
            examined += len(expired) + len(queued)
            if len(expired) + len(queued) < chunk:
                break
        return removed

    def stats(self) -> dict[str, int]:
        """Rows per broker table; ``purge_queue``: message ids waiting for the purge.

        Each ``COUNT(*)`` walks an index (a few ms per 100,000 rows).
        """
        with self._database.snapshot() as connection:
            return {
                table: int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in BROKER_TABLES
            }


# ----------------------------------------------------------------- plaintext rows to records


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {type(value).__name__}")
    return value


def _qos(value: object) -> int:
    if type(value) is not int or not 0 <= value <= 2:
        raise ValueError(f"invalid QoS {value!r}")
    return value


def _subscription(row: Row) -> StoredSubscription:
    client_id, topic_filter, qos, no_local, as_published, handling, identifier = row
    return StoredSubscription(
        client_id=_text(client_id),
        topic_filter=_text(topic_filter),
        qos=_qos(qos),
        no_local=bool(no_local),
        retain_as_published=bool(as_published),
        retain_handling=int(handling),
        identifier=None if identifier is None else int(identifier),
    )


def _outbox_entry(row: Row) -> StoredOutboxEntry:
    client_id, msg_id, shared, qos, retain, ids, attempts, packet_id, released, share = row
    return StoredOutboxEntry(
        client_id=_text(client_id),
        msg_id=int(msg_id),
        shared=bool(shared),
        qos=_qos(qos),
        retain=bool(retain),
        subscription_ids=tuple(int(part) for part in _text(ids).split(",")) if ids else (),
        attempts=int(attempts),
        packet_id=None if packet_id is None else int(packet_id),
        released=bool(released),
        share_filter=None if share is None else _text(share),
    )


def _inbound(row: Row) -> StoredInbound:
    client_id, packet_id = row
    return StoredInbound(client_id=_text(client_id), packet_id=int(packet_id))


def _retained(row: Row) -> tuple[str, int]:
    topic, msg_id = row
    return _text(topic), int(msg_id)
