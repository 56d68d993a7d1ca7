"""Unit tests for the logger store's pure parts and its SQLite file handling.

Time bounds (durations, RFC 3339), topic filters and the prefixes backends pre-filter on,
the renderers of ``logstore_output`` (table, JSON, JSON lines, CSV), and ``logger.db``:
created 0600, refused when foreign, corrupt or the broker's, left untouched then.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bastion.config.storage_settings import StorageSettings
from bastion.storage.errors import DatabaseUnusableError, KeyConfigError
from bastion.storage.keys import DEFAULT_KEY_ENV, create_key_file
from bastion.storage.logstore import (
    LoggedMessage,
    LogQuery,
    StoredMessage,
    from_micros,
    logger_database_path,
    open_logstore,
    parse_instant,
    parse_topic_filter,
    to_micros,
)
from bastion.storage.logstore_output import (
    CSV_HEADER,
    decode_payload,
    message_object,
    write_csv,
    write_json_array,
    write_jsonl,
    write_table,
)
from bastion.storage.sqlite import open_store, open_store_from_settings

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("15m", NOW - timedelta(minutes=15)),
        (" 1h ", NOW - timedelta(hours=1)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(days=14)),
        ("2026-04-30T10:00:00Z", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T12:00:00.5+02:00", datetime(2026, 4, 30, 10, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1y", "neither a duration"),
        ("-5m", "neither a duration"),
        ("soon", "neither a duration"),
        ("2026-04-30T10:00:00", "has no UTC offset"),
    ],
)
def test_parse_instant_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_instant(text, NOW)


def test_topic_filters_are_validated() -> None:
    assert parse_topic_filter("temp/+/x/#") == "temp/+/x/#"
    for bad, reason in (("temp/#/x", "'#' must be alone"), ("te+mp", r"'\+' must occupy")):
        with pytest.raises(ValueError, match=reason):
            parse_topic_filter(bad)
    with pytest.raises(ValueError, match="shared subscriptions"):
        parse_topic_filter("$share/g/temp/#")


@pytest.mark.parametrize(
    ("filters", "prefixes"),
    [
        ((), None),
        (("temp/#",), ("temp",)),
        (("temp/+/x",), ("temp/",)),
        (("temp/sensor1",), ("temp/sensor1",)),
        (("+/sensor1", "temp/#"), None),  # a leading wildcard: nothing to pre-filter on
        (("#",), None),
        (("a/b/#", "c/+"), ("a/b", "c/")),
    ],
)
def test_query_prefixes(filters: tuple[str, ...], prefixes: tuple[str, ...] | None) -> None:
    query = LogQuery(filters)
    assert query.prefixes() == prefixes
    for topic in ("temp", "temp/sensor1", "temp/sensor1/x", "a/b", "c/d", "$SYS/x"):
        if prefixes is not None and query.matches(topic):
            assert any(topic.startswith(prefix) for prefix in prefixes), topic


def test_micros_round_trip_and_naive_times_refused() -> None:
    when = datetime(2026, 5, 1, 12, 0, 0, 123_456, tzinfo=UTC)
    assert from_micros(to_micros(when)) == when
    with pytest.raises(ValueError, match="naive"):
        to_micros(datetime(2026, 5, 1))  # a naive datetime: the point of the test


def stored(
    payload: bytes,
    *,
    row_id: int = 1,
    retain: bool = False,
    content_type: str | None = None,
    user_properties: tuple[tuple[str, str], ...] = (),
) -> StoredMessage:
    at = datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    return StoredMessage(
        "temp/sensor1", payload, 1, retain, at, content_type, user_properties, id=row_id
    )


def test_decode_payload() -> None:
    assert decode_payload(b'{"unit":"C","value":21.5}') == ("json", {"unit": "C", "value": 21.5})
    assert decode_payload(b"42") == ("json", 42)
    assert decode_payload(b"online") == ("text", "online")
    assert decode_payload(b"") == ("text", "")
    assert decode_payload(b"NaN") == ("text", "NaN")  # not JSON, whatever Python thinks
    assert decode_payload(b"\xff\x00") == ("base64", "/wA=")
    assert decode_payload(b"\x00\x01") == ("base64", "AAE=")  # UTF-8, but not text
    assert decode_payload(b"tab\tcr\r\n") == ("text", "tab\tcr\r\n")


def test_message_object_shapes() -> None:
    plain = message_object(stored(b'{"value":1}'))
    assert plain == {
        "topic": "temp/sensor1",
        "ts": "2026-05-01T12:00:00.250000Z",
        "qos": 1,
        "retain": False,
        "payload": {"value": 1},
    }
    binary = message_object(stored(b"\x00\x01", content_type="x/y", user_properties=(("k", "v"),)))
    assert binary["payload"] == "AAE="
    assert binary["payload_encoding"] == "base64"
    assert binary["content_type"] == "x/y"
    assert binary["user_properties"] == [["k", "v"]]


def test_writers() -> None:
    messages = [stored(b'{"unit":"C"}'), stored(b"line\nbreak", row_id=2, retain=True)]
    out = io.StringIO()
    assert write_json_array(messages, out) == 2
    assert [m["payload"] for m in json.loads(out.getvalue())] == [{"unit": "C"}, "line\nbreak"]
    out = io.StringIO()
    assert write_json_array([], out) == 0
    assert json.loads(out.getvalue()) == []
    out = io.StringIO()
    write_jsonl(messages, out)
    assert [json.loads(line)["retain"] for line in out.getvalue().splitlines()] == [False, True]
    out = io.StringIO()
    write_csv(messages, out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_HEADER
    assert rows[1][4:6] == ['{"unit":"C"}', "json"]
    assert rows[2][3:6] == ["1", "line\nbreak", "text"]
    out = io.StringIO()
    write_table(messages, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["RECEIVED", "(UTC)", "TOPIC", "QOS", "RETAIN", "PAYLOAD"]
    assert lines[1].startswith("2026-05-01 12:00:00.250  temp/sensor1  1")
    assert lines[2].endswith("line\\x0abreak")  # control characters cannot mangle the terminal
    assert len(lines) == 3


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_logger_db_is_private_and_recognised(tmp_path: Path) -> None:
    store = open_logstore(tmp_path / "state", create=True, environ={})
    message = LoggedMessage("a/b", b"x", 0, False, NOW)
    store.append([message])
    store.close()
    path = logger_database_path(tmp_path / "state")
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("kind", ["random", "foreign", "broker", "truncated"])
def test_unusable_logger_db_is_refused_and_untouched(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    path = logger_database_path(state)
    if kind == "broker":  # the broker's database, renamed
        provider = create_key_file(tmp_path / "broker.key")
        open_store(state, provider).close()
        (state / "bastion.db").rename(path)
        pattern = r"logger\.db (is a Bastion database but not the data logger's|has schema)"
    else:
        state.mkdir(mode=0o700)
        if kind == "random":
            path.write_bytes(b"\x00not a database at all" * 50)
            pattern = r"logger\.db is not a SQLite database"
        elif kind == "foreign":
            with sqlite3.connect(path) as other:
                other.execute("CREATE TABLE readings (x)")
            other.close()
            pattern = r"logger\.db is a SQLite database that Bastion did not create"
        else:
            open_logstore(tmp_path / "ok", create=True, environ={}).close()
            data = logger_database_path(tmp_path / "ok").read_bytes()
            path.write_bytes(data[: len(data) // 2])
            pattern = r"logger\.db is (truncated|corrupt)"
    before = _digest(path)
    for create in (True, False):
        with pytest.raises(DatabaseUnusableError, match=pattern):
            open_logstore(state, create=create, environ={})
    assert _digest(path) == before


def _master_ids(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT master_id FROM bastion_data_keys").fetchall()
    return {str(row[0]) for row in rows}


@pytest.mark.parametrize("logger_first", [True, False])
def test_broker_and_logger_share_the_master_key_of_the_state_dir(
    tmp_path: Path, logger_first: bool
) -> None:
    state = tmp_path / "state"
    settings = StorageSettings(data_dir=str(state))
    if logger_first:
        open_logstore(state, create=True, environ={}).close()
    open_store_from_settings(settings, environ={}).close()
    if not logger_first:
        open_logstore(state, create=True, environ={}).close()
    assert sorted(p.name for p in state.glob("*.key")) == ["master.key"]
    broker_masters = _master_ids(state / "bastion.db")
    assert len(broker_masters) == 1
    assert _master_ids(logger_database_path(state)) == broker_masters


def test_master_key_from_the_environment(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    store = open_logstore(tmp_path / "state", create=True, environ={DEFAULT_KEY_ENV: key})
    store.append([LoggedMessage("a/b", b"secret", 0, False, NOW)])
    store.close()
    assert not (tmp_path / "state" / "master.key").exists()
    with pytest.raises(KeyConfigError, match="no master key"):
        open_logstore(tmp_path / "state", environ={})
    again = open_logstore(tmp_path / "state", environ={DEFAULT_KEY_ENV: key})
    assert [m.payload for m in again.latest(LogQuery())] == [b"secret"]
    again.close()
