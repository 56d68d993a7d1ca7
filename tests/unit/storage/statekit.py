"""Test kit for the broker's tables: record builders, one of every record, raw dumps.

Used by ``test_brokerstate.py`` and ``test_brokerstate_integrity.py``.
"""

from __future__ import annotations

import os

from bastion.storage.base import Store
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
from bastion.storage.sqlite import SqliteStore


def commit(store: Store, ops: list[Op]) -> None:
    """Apply ``ops`` and checkpoint them into the tables (what these tests inspect)."""
    store.apply(ops)
    store.checkpoint()


def message(
    msg_id: int,
    topic: str = "plant/line-1/temp",
    *,
    payload: bytes | None = None,
    qos: int = 1,
    retain: bool = False,
    properties: bytes = b"",
    expires_at: float | None = None,
    origin: str | None = None,
) -> StoredMessage:
    body = b"payload-%d" % msg_id if payload is None else payload
    return StoredMessage(msg_id, topic, body, qos, retain, properties, expires_at, origin)


def queued(
    client_id: str,
    msg_id: int,
    *,
    shared: bool = False,
    qos: int = 1,
    retain: bool = False,
    subscription_ids: tuple[int, ...] = (),
    attempts: int = 0,
    packet_id: int | None = None,
    released: bool = False,
    share_filter: str | None = None,
) -> StoredOutboxEntry:
    return StoredOutboxEntry(
        client_id,
        msg_id,
        shared,
        qos,
        retain,
        subscription_ids,
        attempts,
        packet_id,
        released,
        share_filter,
    )


def properties(user_value: bytes, correlation: bytes) -> bytes:
    """An MQTT 5 property block: a user property and correlation data."""
    key = b"sensor-note"
    return (
        b"\x26"
        + len(key).to_bytes(2, "big")
        + key
        + len(user_value).to_bytes(2, "big")
        + user_value
        + b"\x09"
        + len(correlation).to_bytes(2, "big")
        + correlation
    )


def everything() -> tuple[list[Op], StoredState]:
    """One of every record, with empty and None fields, and the state it loads as."""
    sessions = [
        StoredSession("alpha", 3600, username="alice", offline_since=1_700_000_000.25),
        StoredSession("beta", 1),
        StoredSession("gamma", 0xFFFFFFFF, username="", offline_since=0.0),
        StoredSession("δέλτα-ünïcode", 60, username="ユーザー"),
    ]
    subscriptions = [
        StoredSubscription("alpha", "plant/#", 2, True, True, 2, 268_435_455),
        StoredSubscription("alpha", "$share/g1/plant/+/temp", 1),
        StoredSubscription("beta", "a/b", 0, identifier=None),
    ]
    messages = [
        message(1, payload=b"", properties=b""),
        message(2, payload=os.urandom(5000), properties=properties(b"v", b"c"), retain=True),
        message(3, qos=2, expires_at=4_000_000_000.5, origin="beta"),
        message(4, topic="retained/only", qos=0, retain=True, origin=""),
    ]
    outbox = [
        queued("alpha", 1),
        queued("alpha", 2, subscription_ids=(7,), attempts=3, packet_id=1),
        queued(
            "alpha", 3, qos=2, subscription_ids=(1, 2, 268_435_455), packet_id=65535, released=True
        ),
        queued("alpha", 3, shared=True, share_filter="$share/g1/plant/+/temp", qos=2),
        queued("beta", 2, retain=True),
    ]
    inbound = [StoredInbound("alpha", 1), StoredInbound("alpha", 65535), StoredInbound("beta", 9)]
    wills = [
        StoredWill("alpha", "status/alpha", b"gone", 1, True, properties(b"w", b"x"), 1.5e9),
        StoredWill("beta", "status/beta", b"", 0, False),
    ]
    ops: list[Op] = [("put_session", s) for s in sessions]
    ops += [("put_subscription", s) for s in subscriptions]
    ops += [("put_message", m) for m in messages]
    ops += [("put_outbox", e) for e in outbox]
    ops += [("put_inbound", i) for i in inbound]
    ops += [("put_retained", ("plant/line-1/temp", 2)), ("put_retained", ("retained/only", 4))]
    ops += [("put_will", w) for w in wills]
    expected = StoredState(
        sessions=sorted(sessions, key=lambda s: s.client_id),
        subscriptions=sorted(subscriptions, key=lambda s: (s.client_id, s.topic_filter)),
        outbox=sorted(outbox, key=lambda e: (e.client_id, e.msg_id, e.shared)),
        inbound=inbound,
        retained={"plant/line-1/temp": 2, "retained/only": 4},
        wills=wills,
        messages={m.msg_id: m for m in messages},
        next_msg_id=5,
    )
    return ops, expected


def raw_dump(store: SqliteStore) -> list[str]:
    return list(store.database.connection.iterdump())
