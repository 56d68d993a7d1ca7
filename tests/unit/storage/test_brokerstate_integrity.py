"""Unit tests for the broker's tables at rest: sealing, tampering, migrations.

Broker records are re-sealed by key rotation; tampered records (edited, swapped or moved
blobs, nonsense in plaintext columns) are skipped and counted, never returned; no payload,
property or username reaches a file in plaintext; schema version 2 migrates from, and is
refused by, a version-1 build.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from statekit import commit, everything, message, properties, queued

from bastion.storage import datakeys
from bastion.storage.database import MIGRATIONS
from bastion.storage.errors import DatabaseUnusableError
from bastion.storage.keys import FileKeyProvider
from bastion.storage.records import Op, StoredSession, StoredWill
from bastion.storage.sqlite import SqliteStore, open_store

SECRET_PAYLOAD = b"PLAINTEXT-PAYLOAD-never-on-disk"
SECRET_USER_PROPERTY = b"SECRET-USER-PROPERTY-VALUE"
SECRET_CORRELATION = b"SECRET-CORRELATION-DATA"
SECRET_USERNAME = "SECRET-USERNAME-alice"
SECRET_WILL = b"SECRET-WILL-PAYLOAD"


def test_rotation_reseals_broker_records(store: SqliteStore, provider: FileKeyProvider) -> None:
    ops, expected = everything()
    commit(store, ops)
    old = store.keyring.current_id
    assert old is not None
    assert store.records_by_key() == {old: 4 + 4 + 2}  # sessions, messages, wills
    new = datakeys.rotate_data_key(store.database, provider).id
    while store.rekey_step(limit=3):
        pass
    assert store.records_by_key() == {new: 10}
    datakeys.retire_data_key(store.database, old)
    store.refresh_keys()
    assert store.load() == expected


def tamper(store: SqliteStore, sql: str, *params: object) -> None:
    store.database.connection.execute(sql, params)


def test_tampered_records_are_skipped_and_counted(store: SqliteStore) -> None:
    ops, _ = everything()
    ops += [("put_message", message(i)) for i in (10, 11, 12)]
    ops += [("put_outbox", queued("gamma", i)) for i in (10, 11, 12)]
    commit(store, ops)
    flip = "UPDATE messages SET payload = substr(payload, 1, 20) || x'00' || substr(payload, 22)"
    tamper(store, flip + " WHERE msg_id = 10")
    connection = store.database.connection
    blobs = dict(connection.execute("SELECT msg_id, payload FROM messages WHERE msg_id > 10"))
    tamper(store, "UPDATE messages SET payload = ? WHERE msg_id = 11", blobs[12])  # swapped
    tamper(store, "UPDATE messages SET payload = ? WHERE msg_id = 12", blobs[11])
    props = connection.execute("SELECT properties FROM messages WHERE msg_id = 4").fetchone()[0]
    tamper(store, "UPDATE messages SET properties = ? WHERE msg_id = 2", props)  # moved row
    tamper(store, "UPDATE wills SET payload = x'01' WHERE client_id = 'beta'")
    username = connection.execute("SELECT username FROM sessions WHERE client_id = 'alpha'")
    tamper(
        store,
        "UPDATE sessions SET username = ? WHERE client_id = ?",
        username.fetchone()[0],
        "δέλτα-ünïcode",
    )
    state = store.load()  # never raises
    assert state.skipped == 6  # 10, 11, 12, 2; beta's will; a session
    assert sorted(state.messages) == [1, 3, 4]
    assert all(entry.msg_id in (1, 3) for entry in state.outbox)
    assert state.retained == {"retained/only": 4}  # plant/line-1/temp referred to message 2
    assert [w.client_id for w in state.wills] == ["alpha"]
    assert "δέλτα-ünïcode" not in {s.client_id for s in state.sessions}
    for number, loaded in state.messages.items():
        assert loaded.payload == everything()[1].messages[number].payload
    assert store.health().tampered_records == 6
    assert store.load().skipped == 6  # reported once, counted every load


def test_tampered_plaintext_columns_and_session_dependents(store: SqliteStore) -> None:
    ops, _ = everything()
    commit(store, ops)
    tamper(store, "UPDATE messages SET topic = x'00ff' WHERE msg_id = 1")  # a blob topic
    tamper(store, "UPDATE sessions SET username = x'' WHERE client_id = 'beta'")
    tamper(
        store, "UPDATE outbox SET subscription_ids = 'x,y' WHERE msg_id = 2 AND client_id = 'alpha'"
    )
    state = store.load()
    assert state.skipped == 3
    assert 1 not in state.messages
    assert "beta" not in {s.client_id for s in state.sessions}
    for records in (state.subscriptions, state.outbox, state.inbound, state.wills):
        assert "beta" not in {r.client_id for r in records}  # its dependents are left out
    assert [(e.client_id, e.msg_id) for e in state.outbox] == [("alpha", 3), ("alpha", 3)]


def test_no_payload_property_or_username_in_plaintext(tmp_path: Path, store: SqliteStore) -> None:
    secret_props = properties(SECRET_USER_PROPERTY, SECRET_CORRELATION)
    ops: list[Op] = [("put_session", StoredSession("device-1", 600, username=SECRET_USERNAME))]
    for i in range(1, 301):
        ops.append(
            (
                "put_message",
                message(i, payload=SECRET_PAYLOAD + b"-%d" % i, properties=secret_props),
            )
        )
        ops.append(("put_outbox", queued("device-1", i)))
    ops.append(("put_retained", ("plant/line-1/temp", 300)))
    ops.append(
        ("put_will", StoredWill("device-1", "status/d1", SECRET_WILL, 1, False, secret_props))
    )
    commit(store, ops)
    commit(store, [("delete_outbox", ("device-1", i, False)) for i in range(1, 151)])
    store.purge(0.0, limit=1000)
    secrets = [
        SECRET_PAYLOAD,
        SECRET_USER_PROPERTY,
        SECRET_CORRELATION,
        SECRET_WILL,
        SECRET_USERNAME.encode(),
    ]

    def check_files() -> None:
        files = [p for p in (tmp_path / "state").iterdir() if not p.name.endswith(".key")]
        seen = b"".join(path.read_bytes() for path in files)
        for secret in secrets:
            assert secret not in seen, secret
        assert b"plant/line-1/temp" in seen  # topics may stay readable: the scan works

    assert {"bastion.db", "bastion.db-wal", "bastion.db-shm"} <= {
        p.name for p in (tmp_path / "state").iterdir()
    }
    check_files()
    loaded = store.load()
    assert loaded.messages[300].payload == SECRET_PAYLOAD + b"-300"
    assert loaded.sessions[0].username == SECRET_USERNAME
    store.close()  # checkpoints the log into the database file
    check_files()


def test_migration_from_a_version_1_database(tmp_path: Path, provider: FileKeyProvider) -> None:
    old = open_store(tmp_path / "state", provider, migrations=MIGRATIONS[:1])
    assert old.database.schema_version == 1
    key_id = old.keyring.current_id
    old.close()
    store = open_store(tmp_path / "state", provider)
    assert store.database.schema_version == 3
    assert store.keyring.current_id == key_id
    ops, expected = everything()
    commit(store, ops)
    assert store.load() == expected
    registered = store.database.connection.execute(
        "SELECT name, encrypted FROM bastion_encrypted_tables ORDER BY name"
    ).fetchall()
    assert registered == [
        ("journal", "ops"),
        ("messages", "payload,properties"),
        ("sessions", "username"),
        ("wills", "payload,properties"),
    ]
    store.close()


def test_a_version_1_build_refuses_the_new_schema(
    tmp_path: Path, provider: FileKeyProvider
) -> None:
    store = open_store(tmp_path / "state", provider)
    commit(store, everything()[0])
    store.close()
    digest = hashlib.sha256(store.path.read_bytes()).hexdigest()
    with pytest.raises(DatabaseUnusableError, match=r"schema version 3, newer than .*\(1\)"):
        open_store(tmp_path / "state", provider, migrations=MIGRATIONS[:1])
    assert hashlib.sha256(store.path.read_bytes()).hexdigest() == digest


def test_raw_rows_hold_sealed_values(store: SqliteStore) -> None:
    commit(store, [("put_message", message(1, payload=b"abc")), ("put_outbox", queued("c", 1))])
    raw = sqlite3.connect(store.path)  # a second connection, as any reader of the file
    row = raw.execute("SELECT payload, key_id FROM messages").fetchone()
    raw.close()
    assert b"abc" not in row[0]
    assert row[1] == store.keyring.current_id
