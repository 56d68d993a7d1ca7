"""Unit tests for ``bastion keys`` (``cli/keys.py``) through click's CliRunner.

Real data directories in pytest's temporary directory; what is printed, the exit status
(0 done, 1 refused, 2 set-up problem) and that no traceback escapes are checked here.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result
from storekit import add_notes_table, insert_note

from bastion.cli.main import main
from bastion.storage import datakeys
from bastion.storage.database import open_database
from bastion.storage.datakeys import load_keyring
from bastion.storage.keys import FileKeyProvider
from bastion.storage.logstore import LoggedMessage, LogQuery, open_logstore

NO_ENV = {"BASTION_MASTER_KEY": "", "BASTION_DATA_DIR": ""}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["keys", *args], prog_name="bastion", env=env or NO_ENV)


def assert_failed(result: Result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    assert re.search(rf"^bastion: error: .*{pattern}", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def status_json(data_dir: Path, *extra: str) -> dict[str, object]:
    result = invoke("status", "--data-dir", str(data_dir), "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def data_keys(data_dir: Path) -> list[dict[str, object]]:
    keys = status_json(data_dir)["data_keys"]
    assert isinstance(keys, list)
    return keys


def add_records(data_dir: Path, count: int) -> None:
    """Records under the current key, written as the broker would (own connection)."""
    database_file = data_dir / "bastion.db"
    if not _has_notes(database_file):
        add_notes_table(database_file)
    database = open_database(database_file)
    ring = load_keyring(database, FileKeyProvider(data_dir / "master.key"))
    start = database.connection.execute("SELECT COUNT(*) FROM notes").fetchone()[0]
    for number in range(start, start + count):
        insert_note(database.connection, ring, number)
    database.close()


def _has_notes(database_file: Path) -> bool:
    database = open_database(database_file)
    try:
        row = database.connection.execute(
            "SELECT 1 FROM sqlite_schema WHERE name = 'notes'"
        ).fetchone()
        return row is not None
    finally:
        database.close()


def add_logger_database(data_dir: Path, *, key_file: Path | None = None) -> None:
    """A logger.db beside bastion.db holding one reading, as `bastion logger run` leaves it."""
    store = open_logstore(data_dir, key_file=key_file, environ={}, create=True)
    store.append([LoggedMessage("temp/sensor1", b'{"unit":"C"}', 1, False, datetime.now(UTC))])
    store.close()


def logged_payloads(data_dir: Path) -> list[bytes]:
    store = open_logstore(data_dir, environ={})
    try:
        return [message.payload for message in store.latest(LogQuery())]
    finally:
        store.close()


def rotate_broker_master_only(data_dir: Path) -> str:
    """What an older `keys rotate --master` did: re-wrap bastion.db only; returns the old id."""
    provider = FileKeyProvider(data_dir / "master.key")
    old = provider.current_master_id
    database = open_database(data_dir / "bastion.db", create=False)
    try:
        datakeys.rotate_master_key(database, provider)
    finally:
        database.close()
    return old


def test_group_is_registered() -> None:
    result = CliRunner().invoke(main, ["--help"], prog_name="bastion")
    assert "keys" in result.stdout
    for command in ("init", "rotate", "status", "retire", "reencrypt"):
        sub = invoke(command, "--help")
        assert sub.exit_code == 0, command
        assert f"Usage: bastion keys {command}" in sub.stdout
        assert "--data-dir" in sub.stdout
        assert "--key-file" in sub.stdout


def test_init_creates_everything_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    result = invoke("init", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert f"Initialised encrypted storage in {data_dir}" in result.stdout
    assert "created now: keep production keys elsewhere" in result.stdout
    assert "storage.master_key_created" in result.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "bastion.db").stat().st_mode) == 0o600
    again = invoke("init", "--data-dir", str(data_dir))
    assert again.exit_code == 0
    assert "already initialised" in again.stdout


def test_init_with_a_key_file_elsewhere(tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "bastion.key"
    key.parent.mkdir()
    data_dir = tmp_path / "state"
    result = invoke("init", "--data-dir", str(data_dir), "--key-file", str(key))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (data_dir / "master.key").exists()
    document = status_json(data_dir, "--key-file", str(key))
    master = document["master"]
    assert isinstance(master, dict)
    assert master["ok"] is True


def test_init_with_the_key_in_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    env = {**NO_ENV, "BASTION_MASTER_KEY": base64.b64encode(bytes(32)).decode()}
    result = invoke("init", "--data-dir", str(data_dir), env=env)
    assert result.exit_code == 0, result.output
    assert "environment variable BASTION_MASTER_KEY" in result.stdout
    assert not (data_dir / "master.key").exists()


def test_data_dir_defaults_to_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    result = invoke("init", env={**NO_ENV, "BASTION_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert (data_dir / "bastion.db").exists()


def test_rotate_status_retire(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    add_records(data_dir, 5)
    [first] = data_keys(data_dir)
    assert first["current"] is True
    assert first["records"] == 5

    rotated = invoke("rotate", "--data-dir", str(data_dir))
    assert rotated.exit_code == 0, rotated.output
    assert "is current" in rotated.stdout
    add_records(data_dir, 2)
    old, new = data_keys(data_dir)
    assert (old["id"], old["records"], old["retirable"]) == (first["id"], 5, False)
    assert (new["current"], new["records"]) == (True, 2)

    table = invoke("status", "--data-dir", str(data_dir))
    assert table.exit_code == 0
    assert "still in use" in table.stdout
    assert "opens it" in table.stdout

    refused = invoke("retire", str(old["id"]), "--data-dir", str(data_dir))
    assert_failed(refused, 1, "still seals 5 records")
    assert_failed(invoke("retire", str(new["id"]), "--data-dir", str(data_dir)), 1, "current")

    moved = invoke("reencrypt", "--data-dir", str(data_dir), "--batch", "2")
    assert moved.exit_code == 0, moved.output
    assert "Re-encrypted 5 records" in moved.stdout
    old, new = data_keys(data_dir)
    assert (old["records"], old["retirable"], new["records"]) == (0, True, 7)

    retired = invoke("retire", str(old["id"]), "--data-dir", str(data_dir))
    assert retired.exit_code == 0, retired.output
    assert "is retired" in retired.stdout
    old, _ = data_keys(data_dir)
    assert old["state"] == "retired"
    assert_failed(invoke("retire", "dk-00000000", "--data-dir", str(data_dir)), 2, "no data key")


def test_master_rotation_and_retirement(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    add_records(data_dir, 3)
    before = status_json(data_dir)["master"]
    assert isinstance(before, dict)
    result = invoke("rotate", "--master", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    assert "re-wrapped" in result.stdout
    old_master = str(before["current"])
    assert f"bastion keys retire {old_master}" in result.stdout
    assert invoke("retire", old_master, "--data-dir", str(data_dir)).exit_code == 0
    master = status_json(data_dir)["master"]
    assert isinstance(master, dict)
    assert master["ok"] is True
    keys = master["keys"]
    assert isinstance(keys, list)
    assert [entry["id"] for entry in keys] == [master["current"]]


def test_status_reports_a_wrong_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    env = {**NO_ENV, "BASTION_MASTER_KEY": base64.b64encode(bytes(32)).decode()}
    result = invoke("status", "--data-dir", str(data_dir), env=env)
    assert result.exit_code == 0
    assert "NOT USABLE: wrong master key for data directory" in result.stdout
    assert_failed(invoke("rotate", "--data-dir", str(data_dir), env=env), 2, "wrong master key")


def test_commands_need_an_initialised_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    for command in ("rotate", "status", "reencrypt"):
        assert_failed(
            invoke(command, "--data-dir", str(missing)), 2, "no Bastion database.*keys init"
        )
    assert_failed(invoke("retire", "dk-1", "--data-dir", str(missing)), 2, "no Bastion database")
    assert not missing.exists()


def test_unusable_database_is_reported_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / "bastion.db").write_bytes(b"not a database at all" * 100)
    result = invoke("init", "--data-dir", str(data_dir))
    assert_failed(result, 2, "bastion.db is not a SQLite database")
    assert (data_dir / "bastion.db").read_bytes() == b"not a database at all" * 100


def test_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    key = tmp_path / "bad.key"
    key.write_text("{}")
    key.chmod(0o600)
    result = invoke("init", "--data-dir", str(data_dir), "--key-file", str(key))
    assert_failed(result, 2, "not a Bastion master key file")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert invoke("status", "--format", "xml").exit_code == 2
    assert invoke("retire").exit_code == 2
    assert invoke("reencrypt", "--batch", "0", "--data-dir", str(tmp_path)).exit_code == 2


def test_init_never_replaces_a_lost_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    (data_dir / "master.key").unlink()
    assert_failed(invoke("init", "--data-dir", str(data_dir)), 2, "no master key")
    assert not (data_dir / "master.key").exists()


def test_master_keys_of_the_logger_database_are_rotated_checked_and_shown(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    add_logger_database(data_dir)
    document = status_json(data_dir)
    logger = document["logger"]
    assert isinstance(logger, dict)
    assert logger["database"] == str(data_dir / "logger.db")
    assert logger["ok"] is True
    [logger_key] = logger["data_keys"]
    assert logger_key["current"] is True and logger_key["records"] == 1
    master = document["master"]
    assert isinstance(master, dict)
    [entry] = master["keys"]
    assert (entry["data_keys"], entry["logger_data_keys"]) == (1, 1)

    # logger.db left behind by a rotation that re-wrapped bastion.db alone: the old master
    # key must stay, or the logged messages become unreadable.
    old = rotate_broker_master_only(data_dir)
    table = invoke("status", "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert f"Logger database {data_dir / 'logger.db'} (schema 2)" in table.stdout
    old_row = next(line for line in table.stdout.splitlines() if line.startswith(old))
    assert old_row.split()[1:4] == ["no", "0", "1"] and "unused" not in old_row
    refused = invoke("retire", old, "--data-dir", str(data_dir))
    assert_failed(refused, 1, "still wraps 1 data key of .*logger\\.db.*rotate --master")
    assert "retire itself never re-wraps" in refused.stderr
    assert old in FileKeyProvider(data_dir / "master.key").master_ids()

    rotated = invoke("rotate", "--master", "--data-dir", str(data_dir))
    assert rotated.exit_code == 0, rotated.output
    assert f"data logger's data keys in {data_dir / 'logger.db'} (1 re-wrapped)" in rotated.stdout
    unused = re.findall(r"Master key (mk-[0-9a-f]+) is unused now", rotated.stdout)
    assert old in unused and len(unused) == 2
    for master_id in unused:
        retired = invoke("retire", master_id, "--data-dir", str(data_dir))
        assert retired.exit_code == 0, retired.output
    assert len(FileKeyProvider(data_dir / "master.key").master_ids()) == 1
    assert logged_payloads(data_dir) == [b'{"unit":"C"}']


def test_a_logger_database_the_master_key_cannot_open_stops_a_master_rotation(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    add_logger_database(data_dir, key_file=tmp_path / "other.key")
    before = (data_dir / "master.key").read_bytes()
    result = invoke("rotate", "--master", "--data-dir", str(data_dir))
    assert_failed(result, 2, "logger\\.db: wrong master key")
    assert (data_dir / "master.key").read_bytes() == before  # nothing was added
    logger = status_json(data_dir)["logger"]
    assert isinstance(logger, dict)
    assert logger["ok"] is False and "wrong master key" in str(logger["error"])


def test_an_unusable_logger_database_is_shown_and_blocks_master_retirement(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "state"
    assert invoke("init", "--data-dir", str(data_dir)).exit_code == 0
    old = rotate_broker_master_only(data_dir)
    (data_dir / "logger.db").write_bytes(b"not a database at all" * 100)
    table = invoke("status", "--data-dir", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "logger.db: NOT USABLE" in table.stdout
    old_row = next(line for line in table.stdout.splitlines() if line.startswith(old))
    assert "?" in old_row.split() and "unused" not in old_row
    assert_failed(invoke("retire", old, "--data-dir", str(data_dir)), 2, "not a SQLite database")
    assert old in FileKeyProvider(data_dir / "master.key").master_ids()
