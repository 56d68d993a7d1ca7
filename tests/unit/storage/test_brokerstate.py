"""Unit tests for the broker's tables: ``SqliteStore.apply``/``load``/``purge``/``stats``.

Every record type round-trips; a batch keeps its order (also against a one-op-at-a-time
model) and is all or nothing; deleting a session cascades; the purge takes unreferenced and
expired messages but msg_ids are never reused.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statekit import commit, everything, message, queued, raw_dump
from storekit import key_file

from bastion.storage import datakeys
from bastion.storage.base import Store, StoreOptions
from bastion.storage.database import open_database
from bastion.storage.errors import StorageError, StorageFullError, StorageReadOnlyError
from bastion.storage.keys import FileKeyProvider
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
from bastion.storage.schema import BROKER_TABLES
from bastion.storage.sqlite import SqliteStore, open_store


def test_every_record_round_trips(store: SqliteStore, provider: FileKeyProvider) -> None:
    ops, expected = everything()
    commit(store, ops)
    assert store.load() == expected
    store.close()
    reopened = open_store(store.path.parent, provider)
    assert reopened.load() == expected
    reopened.close()


def test_empty_database_loads_empty(store: SqliteStore) -> None:
    commit(store, [])
    assert store.load() == StoredState()
    assert store.stats() == dict.fromkeys(BROKER_TABLES, 0)
    assert store.purge(1e12, limit=100) == 0


def test_stats_count_rows(store: SqliteStore) -> None:
    ops, _ = everything()
    commit(store, ops)
    assert store.stats() == {
        "sessions": 4,
        "subscriptions": 3,
        "messages": 4,
        "outbox": 5,
        "inbound": 3,
        "retained": 2,
        "wills": 2,
        "purge_queue": 4,  # every new message, until a purge has looked at it
    }


def test_ops_keep_their_order_inside_a_batch(store: SqliteStore) -> None:
    commit(
        store,
        [
            ("put_session", StoredSession("c", 60, username="first")),
            ("put_message", message(1)),
            ("put_outbox", queued("c", 1)),
            ("put_message", message(2)),
            ("delete_outbox", ("c", 1, False)),  # after its put: gone
            ("put_outbox", queued("c", 2)),
            ("put_outbox", queued("c", 2, attempts=1, packet_id=5)),  # replaces
            ("delete_subscription", ("c", "x/#")),  # before its put: no effect
            ("put_subscription", StoredSubscription("c", "x/#", 0)),
            ("put_subscription", StoredSubscription("c", "x/#", 2, identifier=4)),
            ("put_message", message(1, payload=b"second")),  # msg_id exists: ignored
            ("put_outbox", queued("c", 1)),  # put again after the delete: back
            ("put_retained", ("t", 1)),
            ("put_retained", ("t", 2)),
            ("delete_inbound", StoredInbound("c", 3)),
            ("put_inbound", StoredInbound("c", 3)),
            ("put_inbound", StoredInbound("c", 3)),  # already there: no error
            ("put_will", StoredWill("c", "w", b"one", 0, False)),
            ("put_will", StoredWill("c", "w2", b"two", 1, True, due_at=9.0)),
            ("put_session", StoredSession("c", 120, offline_since=5.0)),
        ],
    )
    state = store.load()
    assert state.sessions == [StoredSession("c", 120, offline_since=5.0)]
    assert state.outbox == [queued("c", 1), queued("c", 2, attempts=1, packet_id=5)]
    assert state.subscriptions == [StoredSubscription("c", "x/#", 2, identifier=4)]
    assert state.messages[1].payload == b"payload-1"
    assert state.retained == {"t": 2}
    assert state.inbound == [StoredInbound("c", 3)]
    assert state.wills == [StoredWill("c", "w2", b"two", 1, True, due_at=9.0)]


class CountingConnection:
    """Delegates to a real connection, counting ``executemany`` calls."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.executemany_calls = 0

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> sqlite3.Cursor:
        self.executemany_calls += 1
        return self.connection.executemany(sql, rows)


def test_interleaved_ops_on_different_rows_are_written_together(store: SqliteStore) -> None:
    earlier: list[Op] = [("put_message", message(i)) for i in range(1, 101)]
    commit(store, earlier + [("put_outbox", queued(f"c{i % 7}", i)) for i in range(1, 101)])
    ops: list[Op] = []  # what a group commit sees: new copies, and acks of older ones
    for i in range(101, 201):
        ops.append(("put_message", message(i)))
        ops.append(("put_outbox", queued(f"c{i % 7}", i)))
        ops.append(("delete_outbox", (f"c{(i - 100) % 7}", i - 100, False)))
    counting = CountingConnection(store.database.connection)
    store.database.connection = counting  # type: ignore[assignment]
    try:
        commit(store, ops)
    finally:
        store.database.connection = counting.connection
    assert counting.executemany_calls == 3  # one per kind: nothing had to be flushed early
    state = store.load()
    assert [e.msg_id for e in state.outbox] == sorted(range(101, 201), key=lambda i: (i % 7, i))


def test_delete_then_put_session_in_one_batch(store: SqliteStore) -> None:
    ops, _ = everything()
    commit(store, ops)
    commit(
        store,
        [
            ("delete_session", "alpha"),
            ("put_session", StoredSession("alpha", 10)),
            ("put_subscription", StoredSubscription("alpha", "new/#", 1)),
        ],
    )
    state = store.load()
    assert StoredSession("alpha", 10) in state.sessions
    assert [s for s in state.subscriptions if s.client_id == "alpha"] == [
        StoredSubscription("alpha", "new/#", 1)
    ]


def test_delete_session_cascades(store: SqliteStore) -> None:
    ops, expected = everything()
    commit(store, ops)
    commit(store, [("delete_session", "alpha")])
    state = store.load()
    assert [s.client_id for s in state.sessions] == sorted(["beta", "gamma", "δέλτα-ünïcode"])
    assert {s.client_id for s in state.subscriptions} == {"beta"}
    assert {e.client_id for e in state.outbox} == {"beta"}
    assert state.inbound == [StoredInbound("beta", 9)]
    assert [w.client_id for w in state.wills] == ["beta"]
    assert state.retained == expected.retained
    assert sorted(state.messages) == [2, 4]  # 1 and 3 are no longer referred to
    assert store.purge(0.0, limit=100) == 2
    assert store.stats()["messages"] == 2


def test_delete_ops(store: SqliteStore) -> None:
    ops, _ = everything()
    commit(store, ops)
    commit(
        store,
        [
            ("delete_will", "alpha"),
            ("delete_retained", "retained/only"),
            ("delete_inbound", StoredInbound("alpha", 1)),
            ("delete_subscription", ("alpha", "plant/#")),
            ("delete_outbox", ("alpha", 3, True)),
            ("delete_will", "nobody"),  # absent keys: nothing happens
            ("delete_session", "nobody"),
        ],
    )
    state = store.load()
    assert [w.client_id for w in state.wills] == ["beta"]
    assert state.retained == {"plant/line-1/temp": 2}
    assert StoredInbound("alpha", 1) not in state.inbound
    assert [s.topic_filter for s in state.subscriptions if s.client_id == "alpha"] == [
        "$share/g1/plant/+/temp"
    ]
    assert [(e.msg_id, e.shared) for e in state.outbox if e.client_id == "alpha"] == [
        (1, False),
        (2, False),
        (3, False),
    ]
    assert 4 not in state.messages


def test_purge_takes_unreferenced_and_expired_messages(store: SqliteStore) -> None:
    now = 1_800_000_000.0
    commit(
        store,
        [
            ("put_message", message(1)),  # queued for c: stays
            ("put_outbox", queued("c", 1)),
            ("put_message", message(2)),  # retained: stays
            ("put_retained", ("r/2", 2)),
            ("put_message", message(3)),  # acknowledged: never reaches the tables
            ("put_outbox", queued("c", 3)),
            ("delete_outbox", ("c", 3, False)),
            ("put_message", message(4, expires_at=now - 1)),  # expired: goes, with its rows
            ("put_outbox", queued("c", 4)),
            ("put_outbox", queued("d", 4, shared=True)),
            ("put_retained", ("r/4", 4)),
            ("put_message", message(5, expires_at=now - 1)),  # expired, but in flight to d
            ("put_outbox", queued("d", 5, packet_id=17)),
            ("put_outbox", queued("c", 5)),  # its queued copy for c waits with it
            ("put_message", message(6, expires_at=now + 60)),  # not yet expired
            ("put_outbox", queued("c", 6)),
            ("put_message", message(7)),  # replaced as retained: never reaches the tables
            ("put_retained", ("r/7", 7)),
            ("put_retained", ("r/7", 2)),
            ("put_message", message(8)),  # retained, and replaced in the next batch: goes
            ("put_retained", ("r/8", 8)),
        ],
    )
    assert store.stats()["messages"] == 6  # the checkpoint folded 3 and 7 away
    commit(store, [("put_retained", ("r/8", 2))])
    assert store.purge(now, limit=100) == 2  # 4 (expired) and 8 (no longer retained)
    state = store.load()
    assert sorted(state.messages) == [1, 2, 5, 6]
    assert [(e.client_id, e.msg_id) for e in state.outbox] == [
        ("c", 1),
        ("c", 5),
        ("c", 6),
        ("d", 5),
    ]
    assert state.retained == {"r/2": 2, "r/7": 2, "r/8": 2}
    assert store.purge(now, limit=100) == 0
    commit(store, [("delete_outbox", ("d", 5, False))])  # acknowledged at last
    assert store.purge(now, limit=100) == 1  # with c's queued copy
    assert [(e.client_id, e.msg_id) for e in store.load().outbox] == [("c", 1), ("c", 6)]
    assert store.purge(now + 61, limit=100) == 1  # 6 expired meanwhile
    stats = store.stats()
    assert (stats["messages"], stats["outbox"], stats["purge_queue"]) == (2, 1, 0)


def test_purge_respects_its_limit(store: SqliteStore) -> None:
    ops: list[Op] = [("put_message", message(i)) for i in range(1, 601)]
    ops += [("put_message", message(i, expires_at=1.0)) for i in range(601, 701)]
    ops += [("put_outbox", queued("c", i)) for i in range(1, 701)]
    commit(store, ops)
    commit(store, [("delete_outbox", ("c", i, False)) for i in range(1, 601)])
    assert store.purge(10.0, limit=7) == 7
    assert store.purge(10.0, limit=500) == 500
    assert store.purge(10.0, limit=500) == 193
    assert store.purge(10.0, limit=500) == 0
    assert store.stats() == dict.fromkeys(BROKER_TABLES, 0)


def test_next_msg_id_never_goes_back(store: SqliteStore, provider: FileKeyProvider) -> None:
    assert store.load().next_msg_id == 1
    commit(store, [("put_message", message(i)) for i in (3, 41, 7)])
    assert store.load().next_msg_id == 42
    while store.purge(0.0, limit=100):
        pass
    assert store.stats()["messages"] == 0
    assert store.load().next_msg_id == 42
    commit(store, [("put_message", message(5)), ("put_retained", ("t", 5))])
    assert store.load().next_msg_id == 42
    store.close()
    reopened = open_store(store.path.parent, provider)
    assert reopened.load().next_msg_id == 42
    reopened.apply([("put_message", message(42))])
    assert reopened.load().next_msg_id == 43
    reopened.apply([("put_outbox", queued("c", 100))])  # refers to a message never stored
    assert reopened.load().next_msg_id == 101
    reopened.apply([("put_message", message(50)), ("delete_outbox", ("c", 100, False))])
    while reopened.purge(0.0, limit=100):
        pass
    assert reopened.load().next_msg_id == 51  # 50 was stored once: never again
    reopened.close()


def test_failed_batch_changes_nothing(store: SqliteStore) -> None:
    ops, expected = everything()
    commit(store, ops)
    before = raw_dump(store)
    bad_batches: list[list[Op]] = [
        [("put_message", message(10)), ("put_outbox", queued("c", 10, qos=3))],  # CHECK
        [("delete_session", "alpha"), ("put_inbound", StoredInbound("c", 0))],
        [("put_message", message(11)), ("put_will", StoredSession("x", 1))],  # wrong record
        [("delete_retained", "t"), ("put_retained", ("t",))],
        [("put_message", message(12)), ("put_message", message(13, qos=-1))],
        [("delete_will", "alpha"), ("no_such_op", None)],  # type: ignore[list-item]
        [("put_message", StoredMessage("14", "t", b"", 0, False))],  # type: ignore[arg-type]
    ]
    for batch in bad_batches:
        with pytest.raises(StorageError):
            commit(store, batch)
        assert raw_dump(store) == before, batch
    assert store.load() == expected
    commit(store, [("put_message", message(10))])  # the store is still usable
    assert store.load().next_msg_id == 11


def test_read_only_database_refuses_the_batch(store: SqliteStore) -> None:
    ops, expected = everything()
    commit(store, ops[:5])
    before = raw_dump(store)
    store.database.connection.execute("PRAGMA query_only = ON")
    with pytest.raises(StorageReadOnlyError, match=r"bastion\.db: the database is read-only"):
        commit(store, ops[5:])
    store.database.connection.execute("PRAGMA query_only = OFF")
    assert raw_dump(store) == before
    commit(store, ops[5:])
    assert store.load() == expected


def test_full_database_refuses_the_batch(tmp_path: Path, provider: FileKeyProvider) -> None:
    options = StoreOptions(max_size_bytes=512 * 1024)
    store = open_store(tmp_path / "full", provider, options=options)
    commit(store, [("put_message", message(1)), ("put_retained", ("t", 1))])
    before = raw_dump(store)
    big: list[Op] = [("put_message", message(i, payload=os.urandom(8192))) for i in range(2, 200)]
    with pytest.raises(StorageFullError) as caught:
        commit(store, big)
    assert caught.value.reason == 0x97
    assert raw_dump(store) == before
    assert sorted(store.load().messages) == [1]
    store.close()


def test_a_key_retired_by_another_process_is_picked_up(
    store: SqliteStore, provider: FileKeyProvider
) -> None:
    old = store.keyring.current_id
    assert old is not None
    cli = open_database(store.path)  # `bastion keys rotate` and `retire`, elsewhere
    new = datakeys.rotate_data_key(cli, provider).id
    datakeys.retire_data_key(cli, old)
    cli.close()
    commit(store, [("put_message", message(1)), ("put_retained", ("t", 1))])
    assert store.keyring.current_id == new
    assert store.records_by_key() == {new: 1}
    assert store.load().messages[1] == message(1)


def test_sqlite_store_is_a_broker_store(store: SqliteStore) -> None:
    as_store: Store = store  # checked by mypy: apply/load/purge/stats are in the protocol
    as_store.apply([("put_message", message(1)), ("put_retained", ("t", 1))])
    assert as_store.pending_checkpoint == 2
    assert as_store.checkpoint() == 2
    assert as_store.stats()["messages"] == 1


# ----------------------------------------------------------------- against a model

_CLIENTS = ("a", "b")
_TOPICS = ("t/1", "t/2")
_op = st.one_of(
    st.builds(
        lambda c, e: ("put_session", StoredSession(c, e)),
        st.sampled_from(_CLIENTS),
        st.integers(0, 9),
    ),
    st.builds(lambda c: ("delete_session", c), st.sampled_from(_CLIENTS)),
    st.builds(
        lambda c, f, q: ("put_subscription", StoredSubscription(c, f, q)),
        st.sampled_from(_CLIENTS),
        st.sampled_from(_TOPICS),
        st.integers(0, 2),
    ),
    st.builds(
        lambda c, f: ("delete_subscription", (c, f)),
        st.sampled_from(_CLIENTS),
        st.sampled_from(_TOPICS),
    ),
    st.builds(lambda i: ("put_message", message(i)), st.integers(1, 4)),
    st.builds(
        lambda c, i, s, n: ("put_outbox", queued(c, i, shared=s, attempts=n)),
        st.sampled_from(_CLIENTS),
        st.integers(1, 4),
        st.booleans(),
        st.integers(0, 3),
    ),
    st.builds(
        lambda c, i, s: ("delete_outbox", (c, i, s)),
        st.sampled_from(_CLIENTS),
        st.integers(1, 4),
        st.booleans(),
    ),
    st.builds(
        lambda c, p: ("put_inbound", StoredInbound(c, p)),
        st.sampled_from(_CLIENTS),
        st.integers(1, 3),
    ),
    st.builds(
        lambda c, p: ("delete_inbound", StoredInbound(c, p)),
        st.sampled_from(_CLIENTS),
        st.integers(1, 3),
    ),
    st.builds(lambda t, i: ("put_retained", (t, i)), st.sampled_from(_TOPICS), st.integers(1, 4)),
    st.builds(lambda t: ("delete_retained", t), st.sampled_from(_TOPICS)),
    st.builds(
        lambda c, q: ("put_will", StoredWill(c, "w", b"x", q, False)),
        st.sampled_from(_CLIENTS),
        st.integers(0, 2),
    ),
    st.builds(lambda c: ("delete_will", c), st.sampled_from(_CLIENTS)),
)


def model_state(batches: list[list[Op]], checkpoints: Sequence[bool] = ()) -> StoredState:
    """What applying ``batches`` one op at a time must give, with a checkpoint after batch
    ``i`` where ``checkpoints[i]`` (and one at the end, as ``load`` makes): a message stored
    since the previous checkpoint reaches the tables only if something refers to it then;
    one in the tables stays (no purge runs here)."""
    sessions: dict[str, StoredSession] = {}
    subs: dict[tuple[str, str], StoredSubscription] = {}
    messages: dict[int, StoredMessage] = {}
    outbox: dict[tuple[str, int, bool], StoredOutboxEntry] = {}
    inbound: set[StoredInbound] = set()
    retained: dict[str, int] = {}
    wills: dict[str, StoredWill] = {}
    in_tables: set[int] = set()
    window_outbox: set[tuple[str, int, bool]] = set()  # rows put since the last checkpoint
    window_retained: set[str] = set()

    def checkpoint() -> None:
        # Records.Op's rule: a message must be referred to in the batch that stores it; a
        # checkpoint keeps one only if a row put since the last checkpoint still refers to it.
        referenced = {k[1] for k in window_outbox if k in outbox}
        referenced |= {retained[t] for t in window_retained if t in retained}
        for msg_id in list(messages):
            if msg_id in referenced:
                in_tables.add(msg_id)
            elif msg_id not in in_tables:
                del messages[msg_id]
        window_outbox.clear()
        window_retained.clear()

    flags = [*checkpoints, *[False] * len(batches)]
    for index, batch in enumerate(batches):
        for kind, value in batch:
            if isinstance(value, StoredOutboxEntry):
                window_outbox.add((value.client_id, value.msg_id, value.shared))
            elif kind == "put_retained" and isinstance(value, tuple):
                window_retained.add(value[0])
            if kind == "put_session" and isinstance(value, StoredSession):
                sessions[value.client_id] = value
            elif kind == "delete_session" and isinstance(value, str):
                sessions.pop(value, None)
                wills.pop(value, None)
                subs = {k: v for k, v in subs.items() if k[0] != value}
                outbox = {k: v for k, v in outbox.items() if k[0] != value}
                inbound = {i for i in inbound if i.client_id != value}
            elif kind == "put_subscription" and isinstance(value, StoredSubscription):
                subs[value.client_id, value.topic_filter] = value
            elif kind == "put_message" and isinstance(value, StoredMessage):
                messages.setdefault(value.msg_id, value)
            elif kind == "put_outbox" and isinstance(value, StoredOutboxEntry):
                outbox[value.client_id, value.msg_id, value.shared] = value
            elif kind == "put_inbound" and isinstance(value, StoredInbound):
                inbound.add(value)
            elif kind == "delete_inbound" and isinstance(value, StoredInbound):
                inbound.discard(value)
            elif kind == "put_will" and isinstance(value, StoredWill):
                wills[value.client_id] = value
            elif kind == "delete_will":
                wills.pop(str(value), None)
            elif kind == "delete_retained":
                retained.pop(str(value), None)
            elif isinstance(value, tuple):
                if kind == "put_retained":
                    retained[value[0]] = value[1]
                elif kind == "delete_subscription":
                    subs.pop(value, None)
                elif kind == "delete_outbox":
                    outbox.pop(value, None)
        if flags[index]:
            checkpoint()
    checkpoint()
    stored_ids = [v.msg_id for b in batches for k, v in b if isinstance(v, StoredMessage)]
    kept_outbox = [outbox[k] for k in sorted(outbox) if k[1] in messages]
    kept_retained = {t: i for t, i in sorted(retained.items()) if i in messages}
    referenced = {e.msg_id for e in kept_outbox} | set(kept_retained.values())
    return StoredState(
        sessions=[sessions[k] for k in sorted(sessions)],
        subscriptions=[subs[k] for k in sorted(subs)],
        outbox=kept_outbox,
        inbound=sorted(inbound, key=lambda i: (i.client_id, i.packet_id)),
        retained=kept_retained,
        wills=[wills[k] for k in sorted(wills)],
        messages={i: messages[i] for i in sorted(referenced)},
        next_msg_id=max([0, *stored_ids, *(k[1] for k in outbox), *retained.values()]) + 1,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(_op, max_size=25), min_size=1, max_size=5),
    checkpoints=st.lists(st.booleans(), max_size=5),
    reopen=st.booleans(),
)
def test_batches_match_a_one_op_at_a_time_model(
    batches: list[list[Op]], checkpoints: list[bool], reopen: bool
) -> None:
    """Batches folded across checkpoints (and replayed from the journal after a "crash":
    ``reopen`` drops the store without closing it) give what one op at a time gives."""
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        store = open_store(root / "state", key_file(root / "keys"))
        try:
            for index, batch in enumerate(batches):
                store.apply(batch)
                if index < len(checkpoints) and checkpoints[index]:
                    store.checkpoint()
            if reopen:  # a crash: the journal rows since the last checkpoint are replayed
                store.database.close()
                store = open_store(root / "state", key_file(root / "keys"))
            assert store.load() == model_state(batches, checkpoints)
        finally:
            store.close()
