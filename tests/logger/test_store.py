"""The logger's store, the same suite on SQLite (``logger.db``) and on a real PostgreSQL server.

Round trips with MQTT 5 properties, topic filters, time windows and limits; sealing at rest
(no reading in the clear, tampered or swapped records skipped and reported once); the master
key shared with the broker; schema versions; retention by age and size; re-keying while
another writer holds the old key.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from bastion.storage.errors import DatabaseUnusableError, MasterKeyMismatchError, StorageError
from bastion.storage.keys import FileKeyProvider, create_key_file
from bastion.storage.logstore import SCAN_CHUNK, LoggedMessage, LogQuery

from .conftest import T0, Backend, RawRows, reading, readings


def test_round_trip_keeps_every_field(backend: Backend) -> None:
    binary = LoggedMessage(
        "cam/door1/snapshot",
        bytes(range(256)),
        0,
        True,
        T0 + timedelta(microseconds=123_456),
        content_type="image/jpeg",
        user_properties=(("source", "door1"), ("source", "again"), ("ünï", "cödé")),
    )
    store = backend.filled([reading("sensor1", 21.5), binary])
    got = store.latest(LogQuery())
    assert [m.id for m in got] == [1, 2]
    first, second = got
    assert first.topic == "temp/sensor1"
    assert b'"unit":"C"' in first.payload
    assert (first.qos, first.retain, first.received_at) == (1, False, T0)
    assert (first.content_type, first.user_properties) == (None, ())
    assert second.payload == bytes(range(256))
    assert (second.qos, second.retain) == (0, True)
    assert second.received_at == T0 + timedelta(microseconds=123_456)
    assert second.content_type == "image/jpeg"
    assert second.user_properties == binary.user_properties


def test_topic_filters_time_window_and_limit(backend: Backend) -> None:
    messages = [
        *readings(9),
        reading("sensor9", 1.0, topic="temp", at=T0 + timedelta(seconds=20)),
        reading("x", 2.0, topic="temperature/x", at=T0 + timedelta(seconds=21)),
        reading("m", 3.0, topic="motion/sensor3/burst", at=T0 + timedelta(seconds=22)),
    ]
    store = backend.filled(messages)

    def topics(query: LogQuery) -> list[str]:
        return [m.topic for m in store.latest(query)]

    assert topics(LogQuery(("temp/#",))).count("temp/sensor1") == 3
    assert "temp" in topics(LogQuery(("temp/#",)))  # '#' includes the parent level
    assert "temperature/x" not in topics(LogQuery(("temp/#",)))
    assert topics(LogQuery(("temp/+",))) == [m.topic for m in messages[:9]]
    assert topics(LogQuery(("+/sensor2",))) == ["temp/sensor2"] * 3
    assert topics(LogQuery(("motion/+/burst", "temp"))) == ["temp", "motion/sensor3/burst"]
    assert len(topics(LogQuery(("#",)))) == len(messages)
    window = LogQuery(since=T0 + timedelta(seconds=2), until=T0 + timedelta(seconds=4))
    assert [m.id for m in store.latest(window)] == [3, 4, 5]
    newest = store.latest(LogQuery(("temp/+",), limit=2))
    assert [m.id for m in newest] == [8, 9]  # the newest, oldest first
    oldest = list(store.messages(LogQuery(("temp/+",), limit=2)))
    assert [m.id for m in oldest] == [1, 2]


def test_reads_stream_in_chunks_in_time_order(backend: Backend) -> None:
    count = SCAN_CHUNK * 2 + 7
    store = backend.open(create=True)
    batch = readings(count, step=0.001)
    for start in range(0, count, 300):
        store.append(batch[start : start + 300])
    streamed = list(store.messages(LogQuery()))
    assert [m.id for m in streamed] == list(range(1, count + 1))
    assert len(store.latest(LogQuery(limit=count - 1))) == count - 1
    assert store.usage().messages == count


def test_ids_are_never_reused_after_a_purge(backend: Backend) -> None:
    store = backend.filled(readings(3))
    store.purge(max_bytes=0)
    assert store.usage().messages == 0
    store.append(readings(2))
    assert [m.id for m in store.latest(LogQuery())] == [4, 5]


def test_nothing_of_a_reading_is_stored_in_the_clear(backend: Backend, raw: RawRows) -> None:
    store = backend.filled([reading("sensor1", 21.75)])
    row_id, topic, payload, properties, _key = raw.rows()[0]
    assert (row_id, topic) == (1, "temp/sensor1")
    for blob in (payload, properties):
        assert b"unit" not in blob
        assert b"21.75" not in blob
    checked = []
    for path in backend.state_dir.iterdir():  # logger.db, -wal, -shm while it is open
        if path.suffix != ".key":
            data = path.read_bytes()
            assert b"unit" not in data, path
            assert b"21.75" not in data, path
            checked.append(path.name)
    if backend.name == "sqlite":
        assert "logger.db-wal" in checked
    else:
        assert checked == []  # only the master key is local
    store.close()


def test_swapped_and_edited_records_are_skipped_and_reported_once(
    backend: Backend, raw: RawRows
) -> None:
    store = backend.filled(readings(6))
    rows = {row[0]: row for row in raw.rows()}
    raw.set(1, "payload", rows[2][2])  # row 2's ciphertext moved to row 1
    raw.set(3, "topic", "temp/sensor9")  # the routing data is bound too
    raw.set(4, "properties", b"\x01" + b"\x00" * 40)  # garbage of the right shape
    raw.set(5, "qos", 0)  # so are the QoS and the retain flag
    with capture_logs() as logs:
        first = store.latest(LogQuery())
        second = [m.id for m in store.messages(LogQuery())]
    assert [m.id for m in first] == [2, 6]
    assert second == [2, 6]
    assert b'"unit":"C"' in first[0].payload
    reports = [e for e in logs if e["event"] == "logger.record_tampered"]
    assert sorted(int(e["id"]) for e in reports) == [1, 3, 4, 5]  # once each, not per read
    assert all(e["log_level"] == "error" for e in reports)
    assert store.tampered == 4


def test_wrong_master_key_is_refused_with_the_key_ids(backend: Backend, tmp_path: Path) -> None:
    backend.filled(readings(1)).close()
    other = create_key_file(tmp_path / "other.key")
    with pytest.raises(MasterKeyMismatchError, match=r"wrong master key .* mk-[0-9a-f]{16}"):
        backend.open(key_file=other.path)


def test_store_shares_the_master_key_of_the_state_dir(backend: Backend) -> None:
    backend.filled(readings(1)).close()
    key = backend.state_dir / "master.key"
    assert key.stat().st_mode & 0o777 == 0o600
    store = backend.open(key_file=key)  # the same key as the default: it opens
    assert len(store.latest(LogQuery())) == 1


def test_read_commands_never_create_anything(backend: Backend, tmp_path: Path) -> None:
    missing = Backend(backend.name, tmp_path / "nowhere", backend.database_url)
    with pytest.raises(StorageError, match=r"nowhere does not exist"):
        missing.open()
    assert not (tmp_path / "nowhere").exists()
    backend.state_dir.mkdir()
    with pytest.raises(StorageError, match=r"(no logger database at|no data logger tables)"):
        backend.open()


def test_a_newer_schema_is_refused(backend: Backend, raw: RawRows) -> None:
    backend.filled(readings(1)).close()
    if backend.name == "sqlite":
        raw._run("PRAGMA user_version = 99")
        pattern = r"logger\.db has schema version 99, newer"
    else:
        raw._run("UPDATE bastion_log_meta SET value = '99' WHERE name = 'schema_version'")
        pattern = r"logger schema version 99, newer"
    raw.close()
    with pytest.raises(DatabaseUnusableError, match=pattern):
        backend.open()


def test_reopened_store_keeps_its_schema_keys_and_messages(backend: Backend) -> None:
    first = backend.filled(readings(4))
    key = first.current_key_id
    first.close()
    again = backend.open(create=True)
    assert again.current_key_id == key
    again.append(readings(1, start=T0 + timedelta(hours=1)))
    assert [m.id for m in again.latest(LogQuery())] == [1, 2, 3, 4, 5]


def test_retention_by_age_then_by_size(backend: Backend) -> None:
    store = backend.filled(readings(10, step=60))  # one a minute
    result = store.purge(older_than=T0 + timedelta(minutes=4))
    assert (result.by_age, result.by_size, result.left.messages) == (4, 0, 6)
    assert store.latest(LogQuery())[0].id == 5
    per_message = result.left.bytes // 6
    result = store.purge(max_bytes=per_message * 2 + per_message // 2)
    assert result.by_size == 4
    assert result.left.messages == 2
    assert result.left.bytes <= per_message * 2 + per_message // 2
    assert [m.id for m in store.latest(LogQuery())] == [9, 10]
    assert store.purge(older_than=T0, max_bytes=10**9).by_age == 0


def test_rekey_reseals_everything_and_retires_the_old_key(backend: Backend, raw: RawRows) -> None:
    store = backend.filled(readings(25))
    old_key = store.current_key_id
    before = {row[0]: row[2] for row in raw.rows()}
    result = store.rekey(batch=10)
    assert result.key_id != old_key
    assert result.reencrypted == 25
    assert result.retired == (old_key,)
    assert result.tampered == 0
    after = raw.rows()
    assert {row[4] for row in after} == {result.key_id}
    assert all(before[row[0]] != row[2] for row in after)  # new ciphertext everywhere
    assert len(store.latest(LogQuery())) == 25
    store.append(readings(1, start=T0 + timedelta(hours=1)))
    assert raw.rows()[-1][4] == result.key_id


def test_a_writer_with_a_retired_key_switches_to_the_new_one(
    backend: Backend, raw: RawRows
) -> None:
    writer = backend.filled(readings(3))
    stale_key = writer.current_key_id
    operator = backend.open()  # `bastion logger rekey` in another process
    result = operator.rekey()
    assert result.retired == (stale_key,)
    writer.append(readings(2, start=T0 + timedelta(minutes=1)))
    assert writer.current_key_id == result.key_id
    assert {row[4] for row in raw.rows()} == {result.key_id}
    assert len(operator.latest(LogQuery())) == 5


def test_rekey_leaves_tampered_records_and_keeps_their_key(backend: Backend, raw: RawRows) -> None:
    store = backend.filled(readings(4))
    old_key = store.current_key_id
    raw.set(2, "topic", "temp/elsewhere")
    with capture_logs() as logs:
        result = store.rekey()
    assert (result.reencrypted, result.tampered, result.retired) == (3, 1, ())
    assert [e["event"] for e in logs].count("storage.record_tampered") == 1
    assert {row[4] for row in raw.rows() if row[0] != 2} == {result.key_id}
    assert [row[4] for row in raw.rows() if row[0] == 2] == [old_key]


def test_a_reader_sees_what_a_running_writer_commits(backend: Backend) -> None:
    writer = backend.filled(readings(2))
    reader = backend.open()
    assert len(reader.latest(LogQuery())) == 2
    writer.append(readings(3, start=T0 + timedelta(minutes=5)))
    assert len(reader.latest(LogQuery())) == 5


@pytest.fixture(autouse=True)
def _structlog_defaults() -> None:
    """capture_logs works on structlog's defaults; an earlier test may have configured it."""
    structlog.reset_defaults()


def test_follows_a_master_key_rotation_so_the_old_one_can_go(backend: Backend) -> None:
    backend.filled(readings(3)).close()
    keys = FileKeyProvider(backend.state_dir / "master.key")
    old_master = keys.current_master_id
    new_master = keys.add_master_key()  # what `bastion keys rotate --master` does
    backend.open(create=True).close()  # the logger starts: its data keys are re-wrapped
    keys.remove_master_key(old_master)  # what `bastion keys retire mk-...` then does
    assert keys.master_ids() == {new_master}
    store = backend.open()
    assert len(store.latest(LogQuery())) == 3
