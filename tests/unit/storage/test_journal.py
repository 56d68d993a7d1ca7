"""Unit tests for the write-ahead journal: the batch format, the fold, replay after a crash.

``oplog`` encodes a batch and refuses anything malformed; ``OpFold`` cancels what a busy
second creates and finishes; the store appends one sealed row per batch, folds the rows into
the tables at a checkpoint, and replays them at the next start (skipping, once reported, a
row that fails authentication). The equivalence of folding with one-op-at-a-time applying is
the model test in ``test_brokerstate.py``.
"""

from __future__ import annotations

import marshal
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from statekit import everything, message, queued

from bastion.storage.errors import StorageError
from bastion.storage.keys import FileKeyProvider
from bastion.storage.opfold import OpFold
from bastion.storage.oplog import FORMAT, decode_ops, encode_ops
from bastion.storage.records import (
    Op,
    StoredInbound,
    StoredMessage,
    StoredOutboxEntry,
    StoredSession,
    StoredSubscription,
    StoredWill,
)
from bastion.storage.sqlite import SqliteStore, open_store


def journal_rows(store: SqliteStore) -> list[tuple[int, str, bytes]]:
    raw = sqlite3.connect(store.path)
    try:
        return raw.execute("SELECT seq, key_id, ops FROM journal ORDER BY seq").fetchall()
    finally:
        raw.close()


def crash(store: SqliteStore, provider: FileKeyProvider, tmp_path: Path) -> SqliteStore:
    """Drop ``store`` without its closing checkpoint, as kill -9 would; open it again."""
    store.database.close()
    store._closed = True  # never closed cleanly: the fixture must not checkpoint it
    return open_store(tmp_path / "state", provider)


# ----------------------------------------------------------------- the batch format

_text = st.text(max_size=12)
_qos = st.integers(0, 2)
_ops = st.lists(
    st.one_of(
        st.builds(
            lambda *f: ("put_message", StoredMessage(*f)),
            st.integers(1, 2**62),
            _text,
            st.binary(max_size=40),
            _qos,
            st.booleans(),
            st.binary(max_size=10),
            st.none() | st.floats(allow_nan=False),
            st.none() | _text,
        ),
        st.builds(
            lambda *f: ("put_outbox", StoredOutboxEntry(*f)),
            _text,
            st.integers(1, 2**40),
            st.booleans(),
            _qos,
            st.booleans(),
            st.lists(st.integers(1, 268_435_455), max_size=3).map(tuple),
            st.integers(0, 9),
            st.none() | st.integers(1, 65535),
            st.booleans(),
            st.none() | _text,
        ),
        st.builds(
            lambda c, i, s: ("delete_outbox", (c, i, s)), _text, st.integers(1), st.booleans()
        ),
        st.builds(
            lambda c, e, u, o: ("put_session", StoredSession(c, e, u, o)),
            _text,
            st.integers(0, 2**32 - 1),
            st.none() | _text,
            st.none() | st.floats(allow_nan=False),
        ),
        st.builds(lambda c: ("delete_session", c), _text),
        st.builds(
            lambda c, f, q, h: ("put_subscription", StoredSubscription(c, f, q, True, False, h, 7)),
            _text,
            _text,
            _qos,
            _qos,
        ),
        st.builds(lambda c, f: ("delete_subscription", (c, f)), _text, _text),
        st.builds(lambda c, p: ("put_inbound", StoredInbound(c, p)), _text, st.integers(1, 65535)),
        st.builds(
            lambda c, p: ("delete_inbound", StoredInbound(c, p)), _text, st.integers(1, 65535)
        ),
        st.builds(lambda t, i: ("put_retained", (t, i)), _text, st.integers(1)),
        st.builds(lambda t: ("delete_retained", t), _text),
        st.builds(
            lambda c, p: ("put_will", StoredWill(c, "w/t", p, 1, True, b"\x01", 12.5)),
            _text,
            st.binary(max_size=20),
        ),
        st.builds(lambda c: ("delete_will", c), _text),
    ),
    max_size=30,
)


@given(ops=_ops)
def test_every_op_round_trips(ops: list[Op]) -> None:
    assert decode_ops(encode_ops(ops)) == ops


@pytest.mark.parametrize(
    ("op", "problem"),
    [
        (("put_message", message(0)), "out of range"),
        (("put_message", message(1, qos=3)), "out of range"),
        (("put_message", StoredMessage(True, "t", b"", 0, False)), "bad field"),
        (("put_outbox", queued("c", 1, packet_id=0)), "out of range"),
        (("put_outbox", queued("c", 1, attempts=-1)), "out of range"),
        (("put_outbox", queued("c", 1, subscription_ids=("1",))), "out of range"),  # type: ignore[arg-type]
        (("put_outbox", StoredSession("c", 1)), "expected StoredOutboxEntry"),
        (("delete_outbox", ("c", 1)), "fields"),
        (("put_inbound", StoredInbound("c", 70000)), "out of range"),
        (("put_retained", ("t",)), "fields"),
        (("delete_will", 7), "bad field"),
        (("no_such_kind", None), "unknown op kind"),
    ],
)
def test_a_wrong_op_is_refused_before_anything_is_written(op: Op, problem: str) -> None:
    with pytest.raises(StorageError, match=problem):
        encode_ops([("delete_will", "x"), op])


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x02" + marshal.dumps([]),  # another format
        FORMAT + b"\xff\x00garbage",
        FORMAT + marshal.dumps({"not": "a list"}),
        FORMAT + marshal.dumps([(99, "x")]),  # unknown op code
        FORMAT + marshal.dumps([(0, 1, "t")]),  # too few fields
        FORMAT + marshal.dumps([(4, 5)]),  # delete_session of an int
        FORMAT + marshal.dumps([(1, "c", 1, 0, 1, False, (), 0, None, False, None)]),  # int bool
        FORMAT + marshal.dumps(["not a tuple"]),
    ],
)
def test_a_malformed_journal_record_fails_with_storage_error(blob: bytes) -> None:
    with pytest.raises(StorageError, match="journal record"):
        decode_ops(blob)


# ----------------------------------------------------------------- the fold


def test_copies_created_and_acknowledged_between_checkpoints_cancel_out() -> None:
    fold = OpFold()
    for msg_id in range(1, 101):  # what a busy second of an online durable subscriber adds
        fold.add([("put_message", message(msg_id)), ("put_outbox", queued("sub", msg_id))])
        fold.add([("put_outbox", queued("sub", msg_id, attempts=1, packet_id=msg_id))])
        if msg_id > 2:
            fold.add([("delete_outbox", ("sub", msg_id - 2, False))])
    net = fold.net()
    assert [kind for kind, _ in net].count("put_message") == 2  # only the two still in flight
    outbox = [value for _, value in net if isinstance(value, StoredOutboxEntry)]
    assert [(e.msg_id, e.packet_id) for e in outbox] == [(99, 99), (100, 100)]
    assert [value for kind, value in net if kind == "delete_outbox"] == [
        ("sub", i, False) for i in range(1, 99)
    ]  # deletes of rows the tables may hold from before are kept (cheap when absent)
    assert fold.ops == 100 * 4 - 2
    assert fold.highest_message() == 100


def test_delete_session_sweeps_what_came_before_it_and_keeps_what_came_after() -> None:
    fold = OpFold()
    fold.add(
        [
            ("put_session", StoredSession("a", 60)),
            ("put_message", message(1)),
            ("put_outbox", queued("a", 1)),
            ("put_outbox", queued("b", 1)),
            ("delete_session", "a"),
            ("put_session", StoredSession("a", 30)),
        ]
    )
    assert fold.net() == [
        ("delete_session", "a"),
        ("put_message", message(1)),  # b still refers to it
        ("put_outbox", queued("b", 1)),
        ("put_session", StoredSession("a", 30)),
    ]
    fold.clear()
    assert not fold
    assert fold.net() == []


# ----------------------------------------------------------------- the store


def test_a_batch_is_one_sealed_journal_row_until_the_checkpoint(store: SqliteStore) -> None:
    ops, expected = everything()
    store.apply(ops[:10])
    store.apply(ops[10:])
    rows = journal_rows(store)
    assert [seq for seq, _, _ in rows] == [1, 2]
    assert all(key_id == store.keyring.current_id for _, key_id, _ in rows)
    assert all(b"plant/line-1/temp" not in blob for _, _, blob in rows)  # topics sealed too
    assert store.stats()["sessions"] == 0  # not in the tables yet
    assert store.pending_checkpoint == len(ops)
    assert store.checkpoint() > 0
    assert journal_rows(store) == []
    assert store.pending_checkpoint == 0
    assert store.checkpoint() == 0
    assert store.load() == expected
    store.apply([("delete_will", "alpha")])
    assert [seq for seq, _, _ in journal_rows(store)] == [3]  # seqs are never reused


def test_the_journal_is_replayed_after_a_crash(
    store: SqliteStore, provider: FileKeyProvider, tmp_path: Path
) -> None:
    ops, expected = everything()
    store.apply(ops[:7])
    store.checkpoint()
    store.apply(ops[7:])
    reopened = crash(store, provider, tmp_path)
    try:
        assert len(journal_rows(reopened)) == 1
        assert reopened.load() == expected
        assert journal_rows(reopened) == []  # folded into the tables at the start
        assert reopened.stats()["sessions"] == len(expected.sessions)
    finally:
        reopened.close()


def test_close_checkpoints_so_a_clean_stop_leaves_no_journal(
    store: SqliteStore, provider: FileKeyProvider, tmp_path: Path
) -> None:
    ops, expected = everything()
    store.apply(ops)
    store.close()
    again = open_store(tmp_path / "state", provider)
    try:
        assert journal_rows(again) == []
        assert again.stats()["sessions"] == len(expected.sessions)
        assert again.load() == expected
    finally:
        again.close()


def test_a_tampered_journal_row_is_reported_once_and_skipped(
    store: SqliteStore,
    provider: FileKeyProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.apply([("put_message", message(1)), ("put_outbox", queued("c", 1))])
    store.apply([("put_message", message(2)), ("put_outbox", queued("c", 2))])
    store.apply([("put_message", message(3)), ("put_outbox", queued("c", 3))])
    raw = sqlite3.connect(store.path)
    blob = bytearray(raw.execute("SELECT ops FROM journal WHERE seq = 2").fetchone()[0])
    blob[-1] ^= 1
    raw.execute("UPDATE journal SET ops = ? WHERE seq = 2", (bytes(blob),))
    first = raw.execute("SELECT ops FROM journal WHERE seq = 1").fetchone()[0]
    raw.execute("UPDATE journal SET ops = ? WHERE seq = 3", (first,))  # a swapped row
    raw.commit()
    raw.close()
    reopened = crash(store, provider, tmp_path)
    try:
        state = reopened.load()
        assert [e.msg_id for e in state.outbox] == [1]
        assert state.skipped == 2
        out = capsys.readouterr().out
        assert out.count("storage.journal_record_skipped") == 2
        assert journal_rows(reopened) == []  # not replayed (and reported) again
        assert reopened.load().skipped == 0
    finally:
        reopened.close()


def test_a_failed_append_changes_nothing(store: SqliteStore) -> None:
    store.apply([("put_message", message(1)), ("put_outbox", queued("c", 1))])
    with pytest.raises(StorageError):
        store.apply([("put_message", message(2)), ("put_outbox", queued("c", 2, qos=7))])
    assert len(journal_rows(store)) == 1
    assert store.pending_checkpoint == 2
    assert [e.msg_id for e in store.load().outbox] == [1]
