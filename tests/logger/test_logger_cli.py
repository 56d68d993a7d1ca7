"""``bastion logger query|export|purge|rekey`` through click's CliRunner, on both backends.

What is printed (table, JSON, CSV, JSON lines), exit statuses (0 done, 1 refused, 2 set-up
problem or bad usage) with one ``bastion: error:`` line and no traceback, export files
created 0600, and tampered records skipped with a warning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Final, Literal

import pytest
import structlog
from click.testing import CliRunner, Result

from bastion.cli import logger as cli_logger
from bastion.cli.main import main
from bastion.ops.logging import configure_logging
from bastion.storage.keys import create_key_file

from .conftest import T0, Backend, RawRows, reading, readings

ENV: Final = {"BASTION_MASTER_KEY": "", "BASTION_DATA_DIR": "", "BASTION_LOGGER_DATABASE_URL": ""}


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands configure structlog as they would in a process of their own, but
    without caching loggers on first use: a cached module logger would keep this
    configuration and hide its events from ``capture_logs`` in later tests."""

    def configure(level: str, fmt: Literal["human", "json"]) -> None:
        configure_logging(level, fmt)
        structlog.configure(cache_logger_on_first_use=False)

    monkeypatch.setattr(cli_logger, "configure_logging", configure)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["logger", *args], prog_name="bastion", env=ENV)


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def assert_failed(result: Result, code: int, pattern: str) -> None:
    assert result.exit_code == code, result.output
    assert re.search(pattern, result.stderr), result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_query_formats(backend: Backend) -> None:
    store = backend.filled(
        [*readings(6), reading("door1", 0, topic="status/door1", at=T0 + timedelta(minutes=1))]
    )
    store.close()
    args = backend.cli_args()
    document = json.loads(ok("query", *args, "--topic", "temp/#", "--format", "json").stdout)
    assert len(document) == 6
    first = document[0]
    assert set(first) == {"topic", "ts", "qos", "retain", "payload"}
    assert first["topic"] == "temp/sensor1"
    assert first["ts"] == "2026-05-01T12:00:00.000000Z"
    assert first["payload"]["unit"] == "C"
    assert first["payload"]["device"] == "sensor1"
    rows = list(csv.DictReader(io.StringIO(ok("query", *args, "--format", "csv").stdout)))
    assert [row["topic"] for row in rows][-1] == "status/door1"
    assert json.loads(rows[0]["payload"])["value"] == 20
    table = ok("query", *args).stdout.splitlines()
    assert table[0].startswith("RECEIVED (UTC)")
    assert len(table) == 8
    assert '"unit":"C"' in table[1]


def test_query_filters_limit_and_time_bounds(backend: Backend) -> None:
    backend.filled(readings(10)).close()
    args = backend.cli_args()

    def ids(*extra: str) -> list[float]:
        output = ok("query", *args, "--format", "json", *extra).stdout
        return [m["payload"]["value"] for m in json.loads(output)]

    assert ids("--limit", "2") == [20.08, 20.09]
    assert len(ids("--limit", "0")) == 10
    assert ids("--topic", "+/sensor2", "--topic", "temp/sensor3") == [
        20.01,
        20.02,
        20.04,
        20.05,
        20.07,
        20.08,
    ]
    since, until = (T0 + timedelta(seconds=s) for s in (3, 5))
    assert ids("--since", f"{since:%Y-%m-%dT%H:%M:%S}Z", "--until", until.isoformat()) == [
        20.03,
        20.04,
        20.05,
    ]
    assert ids("--since", "1h") == []  # the readings are from May: nothing recent


def test_query_refuses_bad_input(backend: Backend, tmp_path: Path) -> None:
    backend.filled(readings(1)).close()
    args = backend.cli_args()
    assert_failed(invoke("query", *args, "--since", "yesterday"), 2, r"'--since'.*yesterday")
    assert_failed(invoke("query", *args, "--topic", "a/#/b"), 2, r"--topic.*'#' must be alone")
    assert_failed(invoke("query", *args, "--since", "1h", "--until", "2h"), 2, "later than --until")
    other = create_key_file(tmp_path / "other.key").path
    assert_failed(
        invoke("query", *args, "--key-file", str(other)),
        2,
        r"^bastion: error: wrong master key",
    )


def test_missing_state_dir_or_database_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = invoke("query", "--state-dir", str(missing))
    assert_failed(result, 2, rf"^bastion: error: state directory {re.escape(str(missing))} does")
    assert result.stderr.count("\n") == 1
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    assert_failed(
        invoke("query", "--state-dir", str(tmp_path / "empty")), 2, r"no logger database at"
    )
    assert_failed(
        invoke(
            "export",
            "--state-dir",
            str(missing),
            "--format",
            "csv",
            "--output",
            str(tmp_path / "x.csv"),
        ),
        2,
        "does not exist",
    )
    assert not (tmp_path / "x.csv").exists()


def test_unreachable_postgres_is_one_line_without_the_password(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    url = "postgresql://logger:s3cret-pw@127.0.0.1:1/sensors?connect_timeout=2"
    result = invoke("query", "--state-dir", str(tmp_path / "state"), "--database-url", url)
    assert_failed(result, 2, r"^bastion: error: PostgreSQL database sensors on 127\.0\.0\.1:1")
    assert "s3cret" not in result.output
    bad = invoke("query", "--state-dir", str(tmp_path / "state"), "--database-url", "mysql://x")
    assert_failed(bad, 2, "must start with postgresql://")


def test_tampered_rows_are_skipped_with_a_warning(backend: Backend, raw: RawRows) -> None:
    backend.filled(readings(3)).close()
    raw.set(2, "topic", "temp/sensor7")
    result = ok("query", *backend.cli_args(), "--format", "json")
    assert [m["payload"]["value"] for m in json.loads(result.stdout)] == [20.0, 20.02]
    assert result.stderr.count("logger.record_tampered") == 1
    assert "1 record(s) failed authentication and were skipped" in result.stderr


def test_export_streams_to_a_private_file(backend: Backend, tmp_path: Path) -> None:
    backend.filled(readings(1200, step=0.01)).close()
    target = tmp_path / "out" / "readings.jsonl"
    target.parent.mkdir()
    args = backend.cli_args()
    result = ok("export", *args, "--format", "jsonl", "--output", str(target))
    assert "Exported 1200 messages" in result.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    lines = target.read_text().splitlines()
    assert len(lines) == 1200
    assert json.loads(lines[-1])["payload"]["value"] == pytest.approx(20 + 1199 / 100)
    assert sorted(p.name for p in target.parent.iterdir()) == ["readings.jsonl"]
    again = invoke("export", *args, "--format", "csv", "--output", str(target))
    assert_failed(again, 2, "exists: choose another --output or add --force")
    ok(
        "export",
        *args,
        "--format",
        "csv",
        "--output",
        str(target),
        "--force",
        "--topic",
        "temp/sensor1",
    )
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 400
    assert {row["topic"] for row in rows} == {"temp/sensor1"}
    stdout = ok(
        "export",
        *args,
        "--format",
        "jsonl",
        "--output",
        "-",
        "--since",
        (T0 + timedelta(seconds=11.975)).isoformat(),
    )
    assert len(stdout.stdout.splitlines()) == 2


def test_purge(backend: Backend) -> None:
    backend.filled(readings(10, step=3600)).close()
    args = backend.cli_args()
    assert_failed(invoke("purge", *args), 2, "give --older-than AGE, --max-size-mb MB")
    cutoff = (T0 + timedelta(hours=3)).isoformat()
    result = ok("purge", *args, "--older-than", cutoff)
    assert result.stdout.startswith("Deleted 3 message(s) by age and 0 by size; 7 left")
    result = ok("purge", *args, "--max-size-mb", "0")
    assert "by age and 7 by size; 0 left (0.00 MB)" in result.stdout


def test_rekey(backend: Backend, raw: RawRows) -> None:
    store = backend.filled(readings(5))
    old = store.current_key_id
    store.close()
    result = ok("rekey", *backend.cli_args(), "--batch", "2")
    new = re.search(r"New data key (dk-[0-9a-f]{8}) is current", result.stdout)
    assert new is not None and new[1] != old
    assert "Re-encrypted 5 message(s)" in result.stdout
    assert f"Retired data keys: {old}." in result.stdout
    assert {row[4] for row in raw.rows()} == {new[1]}
    assert len(json.loads(ok("query", *backend.cli_args(), "--format", "json").stdout)) == 5
    raw.set(1, "topic", "temp/moved")
    refused = invoke("rekey", *backend.cli_args())
    assert_failed(refused, 1, "1 record.s. failed authentication and were left")


def test_bastion_logger_help_lists_the_commands() -> None:
    result = ok("--help")
    for command in ("run", "query", "export", "purge", "rekey"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
