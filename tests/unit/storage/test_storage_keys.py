"""Unit tests for master keys (``storage/keys.py``) and data-key wrapping (``datakeys.py``).

Key files are created 0600 and reused, the environment provider reads base64 keys, a wrong
or edited master key is refused with a message naming the data directory, and a master key
rotation re-wraps every data key.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
import structlog
from storekit import key_file, open_test_store, read_note, write_note

from bastion.config.storage_settings import StorageSettings
from bastion.storage import datakeys
from bastion.storage.errors import (
    KeyConfigError,
    KeyStateError,
    MasterKeyMismatchError,
)
from bastion.storage.keys import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    RotatableKeyProvider,
    create_key_file,
    master_key_id,
    resolve_provider,
)
from bastion.storage.sqlite import SqliteStore, open_store_from_settings

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
OTHER_B64 = base64.b64encode(bytes(range(1, 33))).decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_a_0600_key_file_and_warns(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    with structlog.testing.capture_logs() as logs:
        provider = resolve_provider(data_dir, environ={}, create=True)
    path = data_dir / "master.key"
    assert isinstance(provider, FileKeyProvider)
    assert provider.created
    assert mode(path) == 0o600
    assert [entry["event"] for entry in logs] == ["storage.master_key_created"]
    assert logs[0]["log_level"] == "warning"
    assert "production" in str(logs[0]["hint"])
    document = json.loads(path.read_text())
    assert document["format"] == "bastion-master-key"
    assert document["version"] == 1
    assert document["current"] in document["keys"]


def test_second_start_reuses_the_key_file(tmp_path: Path) -> None:
    first = resolve_provider(tmp_path, environ={}, create=True)
    content = (tmp_path / "master.key").read_bytes()
    with structlog.testing.capture_logs() as logs:
        second = resolve_provider(tmp_path, environ={}, create=True)
    assert isinstance(second, FileKeyProvider)
    assert not second.created
    assert second.current_master_id == first.current_master_id
    assert (tmp_path / "master.key").read_bytes() == content
    assert logs == []


def test_create_never_overwrites(tmp_path: Path) -> None:
    first = create_key_file(tmp_path / "k.key")
    again = create_key_file(tmp_path / "k.key")
    assert again.current_master_id == first.current_master_id
    assert not again.created


def test_missing_key_without_create_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match=r"no master key: .*master\.key does not exist"):
        resolve_provider(tmp_path, environ={})
    with pytest.raises(KeyConfigError, match="not found"):
        resolve_provider(tmp_path, key_file=tmp_path / "absent.key", environ={})


def test_configured_key_file_is_created_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "prod.key"
    path.parent.mkdir()
    provider = resolve_provider(tmp_path / "state", key_file=path, environ={}, create=True)
    assert isinstance(provider, FileKeyProvider)
    assert mode(path) == 0o600
    assert not (tmp_path / "state" / "master.key").exists()


def test_group_writable_key_file_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path).path
    path.chmod(0o620)
    with pytest.raises(KeyConfigError, match=r"may be written by other users .*chmod 600"):
        FileKeyProvider(path)


def test_world_readable_key_file_is_used_with_a_warning(tmp_path: Path) -> None:
    path = key_file(tmp_path).path
    path.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        FileKeyProvider(path)
    assert [entry["event"] for entry in logs] == ["storage.key_file_readable"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\xff", "not JSON"),
        (b'{"format": "other"}', "not a Bastion master key file"),
        (b'{"format": "bastion-master-key", "version": 9}', "newer than this Bastion"),
        (b'{"format": "bastion-master-key", "version": 1, "keys": {}}', "no keys"),
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyConfigError, match=message):
        FileKeyProvider(path)


def test_edited_key_is_detected_by_its_id(tmp_path: Path) -> None:
    provider = key_file(tmp_path)
    document = json.loads(provider.path.read_text())
    document["keys"][document["current"]] = OTHER_B64
    provider.path.write_text(json.dumps(document))
    with pytest.raises(KeyConfigError, match="does not match its id"):
        FileKeyProvider(provider.path)


def test_env_provider() -> None:
    provider = EnvKeyProvider("MY_KEY", {"MY_KEY": KEY_B64})
    assert provider.current_master_id == master_key_id(KEY)
    assert provider.description == "environment variable MY_KEY"
    wrapped = provider.wrap(provider.current_master_id, b"k" * 32, b"ad")
    assert provider.unwrap(provider.current_master_id, wrapped, b"ad") == b"k" * 32
    with pytest.raises(KeyConfigError, match="does not authenticate"):
        provider.unwrap(provider.current_master_id, wrapped, b"other ad")
    assert not isinstance(provider, RotatableKeyProvider)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is not set"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "expected 32 random bytes"),
    ],
)
def test_env_provider_rejects_bad_values(value: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as caught:
        EnvKeyProvider("MY_KEY", {"MY_KEY": value})
    assert value not in str(caught.value) or not value


def test_env_key_has_the_same_id_as_the_same_key_in_a_file(tmp_path: Path) -> None:
    provider = key_file(tmp_path)
    document = json.loads(provider.path.read_text())
    env_value = document["keys"][document["current"]]
    from_env = resolve_provider(tmp_path, environ={"BASTION_MASTER_KEY": env_value})
    assert isinstance(from_env, EnvKeyProvider)
    assert from_env.current_master_id == provider.current_master_id


def test_key_file_and_env_together_are_ambiguous(tmp_path: Path) -> None:
    path = key_file(tmp_path).path
    with pytest.raises(KeyConfigError, match="use one master key source"):
        resolve_provider(tmp_path, key_file=path, environ={"BASTION_MASTER_KEY": KEY_B64})


def test_wrong_master_key_is_refused_clearly(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    store = open_test_store(data_dir, key_file(tmp_path / "right"))
    write_note(store, 1)
    store.close()
    wrong: KeyProvider = key_file(tmp_path / "wrong")
    with pytest.raises(MasterKeyMismatchError) as caught:
        open_test_store(data_dir, wrong)
    message = str(caught.value)
    assert f"wrong master key for data directory {data_dir}" in message
    assert wrong.current_master_id in message
    env = EnvKeyProvider("K", {"K": KEY_B64})
    with pytest.raises(MasterKeyMismatchError, match="environment variable K"):
        open_test_store(data_dir, env)


def test_master_rotation_rewraps_every_data_key(tmp_path: Path) -> None:
    provider = key_file(tmp_path / "keys")
    store = open_test_store(tmp_path / "state", provider)
    write_note(store, 1)
    datakeys.rotate_data_key(store.database, provider)
    store.refresh_keys()
    write_note(store, 2)
    old_master = provider.current_master_id
    result = datakeys.rotate_master_key(store.database, provider)
    assert result.created
    assert result.previous == {old_master}
    assert result.current != old_master
    assert result.rewrapped == 2
    with store.database.snapshot() as connection:
        assert datakeys.master_key_usage(connection) == {result.current: 2}
    with pytest.raises(KeyStateError, match="is current"):
        datakeys.retire_master_key(store.database, provider, result.current)
    store.close()
    # The old master key can go; a fresh process opens everything with the new one alone.
    reopened = open_test_store(tmp_path / "state", FileKeyProvider(provider.path))
    datakeys.retire_master_key(reopened.database, provider, old_master)
    assert FileKeyProvider(provider.path).master_ids() == {result.current}
    assert mode(provider.path) == 0o600
    reopened.close()
    final = open_test_store(tmp_path / "state", FileKeyProvider(provider.path))
    assert read_note(final, 1) == b"PLAINTEXT-PAYLOAD-000001-do-not-store"
    assert read_note(final, 2) == b"PLAINTEXT-PAYLOAD-000002-do-not-store"
    final.close()


def test_master_still_in_use_cannot_be_retired(tmp_path: Path) -> None:
    provider = key_file(tmp_path / "keys")
    store = open_test_store(tmp_path / "state", provider)
    old_master = provider.current_master_id
    provider.add_master_key()  # added but nothing re-wrapped yet
    with pytest.raises(KeyStateError, match="still wraps 1 data key"):
        datakeys.retire_master_key(store.database, provider, old_master)
    store.close()


def test_master_rotation_and_retirement_cover_the_databases_sharing_the_key(
    tmp_path: Path,
) -> None:
    provider = key_file(tmp_path / "keys")
    broker = open_test_store(tmp_path / "state", provider)
    beside = open_test_store(tmp_path / "beside", provider)  # like logger.db
    write_note(beside, 1)
    old_master = provider.current_master_id
    provider.add_master_key()
    datakeys.rewrap_data_keys(broker.database, provider)  # the other one was left behind
    with pytest.raises(KeyStateError, match=f"still wraps 1 data key of {beside.database.path}"):
        datakeys.retire_master_key(broker.database, provider, old_master, also=[beside.database])
    assert old_master in FileKeyProvider(provider.path).master_ids()
    result = datakeys.rotate_master_key(broker.database, provider, also=[beside.database])
    assert (result.rewrapped, result.also) == (1, (1,))
    assert old_master in result.previous
    for master_id in result.previous - {result.current}:
        datakeys.retire_master_key(broker.database, provider, master_id, also=[beside.database])
    assert FileKeyProvider(provider.path).master_ids() == {result.current}
    broker.close()
    beside.close()
    reopened = open_test_store(tmp_path / "beside", FileKeyProvider(provider.path))
    assert read_note(reopened, 1) == b"PLAINTEXT-PAYLOAD-000001-do-not-store"
    reopened.close()


def test_env_master_rotation_uses_the_key_put_first(tmp_path: Path) -> None:
    old = EnvKeyProvider("K", {"K": KEY_B64})
    store = open_test_store(tmp_path / "state", old)
    write_note(store, 1)
    with pytest.raises(KeyStateError, match="put a new key first"):
        datakeys.rotate_master_key(store.database, old)
    both = EnvKeyProvider("K", {"K": f"{OTHER_B64},{KEY_B64}"})
    result = datakeys.rotate_master_key(store.database, both)
    assert not result.created
    assert result.rewrapped == 1
    store.close()
    new_only = EnvKeyProvider("K", {"K": OTHER_B64})
    reopened = open_test_store(tmp_path / "state", new_only)
    assert read_note(reopened, 1) == b"PLAINTEXT-PAYLOAD-000001-do-not-store"
    reopened.close()


def test_running_store_follows_a_master_rotation_made_elsewhere(tmp_path: Path) -> None:
    provider = key_file(tmp_path / "keys")
    store = open_test_store(tmp_path / "state", provider)
    other_process = FileKeyProvider(provider.path)
    datakeys.rotate_master_key(store.database, other_process)
    datakeys.rotate_data_key(store.database, other_process)
    assert store.refresh_keys()  # reloads the key file to unwrap the new data key
    write_note(store, 1)
    assert read_note(store, 1) is not None
    store.close()


def test_wrapped_data_key_is_bound_to_its_id(tmp_path: Path) -> None:
    provider = key_file(tmp_path / "keys")
    store = open_test_store(tmp_path / "state", provider)
    datakeys.rotate_data_key(store.database, provider)
    connection = store.database.connection
    rows = connection.execute("SELECT id, wrapped FROM bastion_data_keys ORDER BY id").fetchall()
    connection.execute(
        "UPDATE bastion_data_keys SET wrapped = ? WHERE id = ?", (rows[1][1], rows[0][0])
    )
    store.close()
    with pytest.raises(KeyConfigError, match="does not authenticate"):
        open_test_store(tmp_path / "state", FileKeyProvider(provider.path))
    assert os.path.exists(tmp_path / "state" / "bastion.db")


def test_store_from_settings_first_and_second_start(tmp_path: Path) -> None:
    settings = StorageSettings(data_dir=str(tmp_path / "state"))
    with structlog.testing.capture_logs() as logs:
        store = open_store_from_settings(settings, environ={})
    assert "storage.master_key_created" in [entry["event"] for entry in logs]
    write_note_table_free(store)
    first_key = store.keyring.current_id
    store.close()
    again = open_store_from_settings(settings, environ={})
    assert again.keyring.current_id == first_key
    again.close()


def test_a_lost_key_is_never_replaced_by_a_new_one(tmp_path: Path) -> None:
    settings = StorageSettings(data_dir=str(tmp_path / "state"))
    open_store_from_settings(settings, environ={}).close()
    (tmp_path / "state" / "master.key").rename(tmp_path / "elsewhere.key")
    with pytest.raises(KeyConfigError, match="no master key"):
        open_store_from_settings(settings, environ={})
    assert not (tmp_path / "state" / "master.key").exists()
    moved = StorageSettings(
        data_dir=str(tmp_path / "state"), key_file=str(tmp_path / "elsewhere.key")
    )
    open_store_from_settings(moved, environ={}).close()


def write_note_table_free(store: SqliteStore) -> None:
    """Seal something without a registered table (the base schema has none)."""
    key_id, blob = store.seal("probe", "value", b"pk", b"secret")
    assert store.open_sealed("probe", "value", b"pk", key_id, blob) == b"secret"
