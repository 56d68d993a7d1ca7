"""How each kind of ``records.Op`` becomes rows and the statements that apply them.

``write_batch`` gathers the rows of a batch per kind and runs each kind's statements with
``executemany`` (for ``BrokerState.apply``); payloads, property blocks and usernames are
sealed here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bastion.storage.crypto import KeyRing, pack_key
from bastion.storage.errors import StorageError
from bastion.storage.records import (
    Op,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredSubscription,
    StoredWill,
)

__all__ = ["OP_SPECS", "OpSpec", "Row", "open_username", "seal_username", "write_batch"]

_T = TypeVar("_T")
Row = tuple[Any, ...]
"""A row as bound to a statement, or as SQLite returns it."""


def _expect(value: object, kind: type[_T], op: str) -> _T:
    if not isinstance(value, kind):
        raise StorageError(f"op {op}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _key(value: object, op: str, width: int) -> Row:
    """A delete op's key: a string (``width`` 1) or a tuple of ``width`` values."""
    if width == 1 and isinstance(value, str):
        return (value,)
    if not isinstance(value, tuple) or len(value) != width or width == 1:
        shape = "a str" if width == 1 else f"a {width}-tuple"
        raise StorageError(f"op {op}: expected {shape}, got {value!r:.80}")
    return value


def seal_username(username: str | None) -> bytes:
    """The plaintext sealed for a session's username: tagged, so that None is sealed too
    (a session cannot be made anonymous by editing the file)."""
    return b"\x00" if username is None else b"\x01" + username.encode("utf-8")


def open_username(plain: bytes) -> tuple[bool, str | None]:
    """``(valid, username)`` from what ``seal_username`` made."""
    if plain == b"\x00":
        return True, None
    if plain[:1] == b"\x01":
        try:
            return True, plain[1:].decode("utf-8")
        except UnicodeDecodeError:
            pass
    return False, None


def _put_session(value: object, keyring: KeyRing) -> Row:
    session = _expect(value, StoredSession, "put_session")
    pk = pack_key(session.client_id)
    key_id, username = keyring.seal(
        "sessions", pk, seal_username(session.username), column="username"
    )
    return (session.client_id, session.expiry_interval, session.offline_since, key_id, username)


def _put_subscription(value: object, _: KeyRing) -> Row:
    sub = _expect(value, StoredSubscription, "put_subscription")
    return (
        sub.client_id,
        sub.topic_filter,
        sub.qos,
        sub.no_local,
        sub.retain_as_published,
        sub.retain_handling,
        sub.identifier,
    )


def _put_message(value: object, keyring: KeyRing) -> Row:
    message = _expect(value, StoredMessage, "put_message")
    if type(message.msg_id) is not int:  # "5" would be stored as 5 but sealed for "5"
        raise StorageError(f"op put_message: msg_id {message.msg_id!r} is not an int")
    pk = pack_key(message.msg_id)
    key_id, payload = keyring.seal("messages", pk, message.payload, column="payload")
    properties = keyring.seal("messages", pk, message.properties, column="properties")[1]
    return (
        message.msg_id,
        message.topic,
        message.qos,
        message.retain,
        message.expires_at,
        message.origin,
        key_id,
        payload,
        properties,
    )


def _put_outbox(value: object, _: KeyRing) -> Row:
    entry = _expect(value, StoredOutboxEntry, "put_outbox")
    ids = ",".join(map(str, entry.subscription_ids)) if entry.subscription_ids else None
    return (
        entry.client_id,
        entry.msg_id,
        entry.shared,
        entry.qos,
        entry.retain,
        ids,
        entry.attempts,
        entry.packet_id,
        entry.released,
        entry.share_filter,
    )


def _inbound(value: object, op: str) -> Row:
    inbound = _expect(value, StoredInbound, op)
    return (inbound.client_id, inbound.packet_id)


def _put_will(value: object, keyring: KeyRing) -> Row:
    will = _expect(value, StoredWill, "put_will")
    pk = pack_key(will.client_id)
    key_id, payload = keyring.seal("wills", pk, will.payload, column="payload")
    properties = keyring.seal("wills", pk, will.properties, column="properties")[1]
    return (
        will.client_id,
        will.topic,
        will.qos,
        will.retain,
        will.due_at,
        key_id,
        payload,
        properties,
    )


def _upsert(table: str, columns: str, key: str) -> str:
    names = [name.strip() for name in columns.split(",")]
    keys = {name.strip() for name in key.split(",")}
    updates = ", ".join(f"{name} = excluded.{name}" for name in names if name not in keys)
    marks = ", ".join("?" * len(names))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


@dataclass(frozen=True, slots=True)
class OpSpec:
    """How one op kind becomes a row, which statements consume it, which rows it touches.

    An op writes the row of ``table`` that its first ``key`` values identify; if
    ``by_client``, the first is a client id. ``delete_session`` instead sweeps every row of
    its client from the ``sweeps`` tables.
    """

    row: Callable[[object, KeyRing], Row]
    statements: tuple[str, ...]
    table: str = ""
    key: int = 1
    by_client: bool = False
    sweeps: frozenset[str] = frozenset()


def _spec(
    row: Callable[[object, KeyRing], Row],
    *statements: str,
    table: str = "",
    key: int = 1,
    by_client: bool = False,
    sweeps: str = "",
) -> OpSpec:
    return OpSpec(row, statements, table, key, by_client, frozenset(sweeps.split()))


OP_SPECS: dict[str, OpSpec] = {
    "put_session": _spec(
        _put_session,
        _upsert(
            "sessions", "client_id, expiry_interval, offline_since, key_id, username", "client_id"
        ),
        table="sessions",
        by_client=True,
    ),
    "delete_session": _spec(
        lambda value, _: _key(value, "delete_session", 1),
        "DELETE FROM sessions WHERE client_id = ?",
        "DELETE FROM subscriptions WHERE client_id = ?",
        "DELETE FROM outbox WHERE client_id = ?",
        "DELETE FROM inbound WHERE client_id = ?",
        "DELETE FROM wills WHERE client_id = ?",
        sweeps="sessions subscriptions outbox inbound wills",
    ),
    "put_subscription": _spec(
        _put_subscription,
        _upsert(
            "subscriptions",
            "client_id, topic_filter, qos, no_local, retain_as_published, retain_handling, "
            "identifier",
            "client_id, topic_filter",
        ),
        table="subscriptions",
        key=2,
        by_client=True,
    ),
    "delete_subscription": _spec(
        lambda value, _: _key(value, "delete_subscription", 2),
        "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
        table="subscriptions",
        key=2,
        by_client=True,
    ),
    "put_message": _spec(
        _put_message,
        "INSERT INTO messages (msg_id, topic, qos, retain, expires_at, origin, key_id, payload, "
        "properties) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (msg_id) DO NOTHING",
        table="messages",
    ),
    "put_outbox": _spec(
        _put_outbox,
        _upsert(
            "outbox",
            "client_id, msg_id, shared, qos, retain, subscription_ids, attempts, packet_id, "
            "released, share_filter",
            "client_id, msg_id, shared",
        ),
        table="outbox",
        key=3,
        by_client=True,
    ),
    "delete_outbox": _spec(
        lambda value, _: _key(value, "delete_outbox", 3),
        "DELETE FROM outbox WHERE client_id = ? AND msg_id = ? AND shared = ?",
        table="outbox",
        key=3,
        by_client=True,
    ),
    "put_inbound": _spec(
        lambda value, _: _inbound(value, "put_inbound"),
        "INSERT INTO inbound (client_id, packet_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        table="inbound",
        key=2,
        by_client=True,
    ),
    "delete_inbound": _spec(
        lambda value, _: _inbound(value, "delete_inbound"),
        "DELETE FROM inbound WHERE client_id = ? AND packet_id = ?",
        table="inbound",
        key=2,
        by_client=True,
    ),
    "put_retained": _spec(
        lambda value, _: _key(value, "put_retained", 2),
        _upsert("retained", "topic, msg_id", "topic"),
        table="retained",
    ),
    "delete_retained": _spec(
        lambda value, _: _key(value, "delete_retained", 1),
        "DELETE FROM retained WHERE topic = ?",
        table="retained",
    ),
    "put_will": _spec(
        _put_will,
        _upsert(
            "wills",
            "client_id, topic, qos, retain, due_at, key_id, payload, properties",
            "client_id",
        ),
        table="wills",
        by_client=True,
    ),
    "delete_will": _spec(
        lambda value, _: _key(value, "delete_will", 1),
        "DELETE FROM wills WHERE client_id = ?",
        table="wills",
        by_client=True,
    ),
}


def write_batch(
    connection: sqlite3.Connection, keyring: KeyRing, ops: Sequence[Op], high: int
) -> int:
    """Write ``ops`` as if one at a time, but with few ``executemany`` calls.

    Rows are gathered per kind and written kind by kind, which reorders ops of different
    kinds; that is safe while they touch different rows. An op touching a row that a
    gathered op of another kind touches (the same key, or a client a gathered
    ``delete_session`` sweeps) writes everything gathered first. Returns the highest msg_id
    put, or ``high``.
    """
    pending: dict[str, list[Row]] = {}
    owners: dict[tuple[str, Row], str] = {}  # (table, key) -> kind of the gathered op
    swept: set[tuple[str, object]] = set()  # (table, client) a gathered delete_session sweeps
    for kind, value in ops:
        spec = OP_SPECS.get(kind)
        if spec is None:
            raise StorageError(f"unknown op kind {kind!r}")
        row = spec.row(value, keyring)
        table = spec.table
        if table:
            slot = (table, row[: spec.key])
            if owners.setdefault(slot, kind) != kind or (
                spec.by_client and swept and (table, row[0]) in swept
            ):
                high = _write(connection, pending, high)
                owners.clear()
                swept.clear()
                owners[slot] = kind
        else:
            sweeps = spec.sweeps
            if any(OP_SPECS[other].table in sweeps for other in pending if other != kind):
                high = _write(connection, pending, high)
                owners.clear()
                swept.clear()
            swept.update((name, row[0]) for name in sweeps)
        rows = pending.get(kind)
        if rows is None:
            pending[kind] = [row]
        else:
            rows.append(row)
    return _write(connection, pending, high)


def _write(connection: sqlite3.Connection, pending: dict[str, list[Row]], high: int) -> int:
    """Run the gathered rows kind by kind; empties ``pending``, returns the highest msg_id."""
    for kind, rows in pending.items():
        if kind == "put_message":
            high = max([high, *(row[0] for row in rows)])
        for statement in OP_SPECS[kind].statements:
            connection.executemany(statement, rows)
    pending.clear()
    return high
