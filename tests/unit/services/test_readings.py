"""Readings as JSON: exact round trips, precise errors, and no other exception on any bytes."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.services.readings import (
    MAX_READING_BYTES,
    OFFLINE,
    ONLINE,
    REFERENCE_DEVICES,
    Reading,
    ReadingError,
    fleet,
    format_timestamp,
    online_status,
    parse_timestamp,
    status_topic,
    will_message,
)

TS = datetime(2026, 11, 26, 10, 0, 0, 250_000, tzinfo=UTC)


def test_round_trip_is_exact_and_compact() -> None:
    reading = Reading("sensor1", TS, 21.456, "°C")
    data = reading.to_json()
    assert (
        data
        == '{"device":"sensor1","ts":"2026-11-26T10:00:00.250Z","value":21.46,"unit":"°C"}'.encode()
    )
    assert Reading.from_json(data) == reading


def test_timestamps_are_normalised_to_utc_milliseconds() -> None:
    local = datetime(2026, 11, 26, 12, 0, 0, 250_999, tzinfo=timezone(timedelta(hours=2)))
    reading = Reading("sensor1", local, 1, "%")
    assert reading.ts == TS
    assert reading.ts.tzinfo is UTC
    assert isinstance(reading.value, float)
    assert format_timestamp(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T10:00:00Z", datetime(2026, 11, 26, 10, tzinfo=UTC)),
        ("2026-11-26t10:00:00.25z", TS),
        ("2026-11-26 12:00:00.250000001+02:00", TS),
        ("2026-11-26T09:30:00.25-00:30", TS),
    ],
)
def test_rfc3339_variants_parse(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T10:00:00",  # no offset
        "2026-11-26",
        "2026-13-01T00:00:00Z",
        "2026-11-26T10:00:60Z",  # leap seconds are not representable
        "2026-11-26T10:00:00+25:00",
        "0001-01-01T00:00:00+01:00",  # before datetime.min once in UTC
        "\uff12\uff10\uff12\uff16-11-26T10:00:00Z",  # fullwidth (non-ASCII) digits
        "2026-11-26T10:00:00Z\n",
    ],
)
def test_bad_timestamps_are_reading_errors(text: str) -> None:
    with pytest.raises(ReadingError, match="bad timestamp"):
        parse_timestamp(text)


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"device": "sensor1", "ts": "2026-11-26T10:00:00Z", "value": 1.5}
    base["unit"] = "°C"
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b'{"value": NaN}', "not JSON"),
        (b"[" * 5000, "too large"),
        (b"[" * 1000, "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"device": "sensor1"}', "missing field 'ts'"),
        (body(unit=None), "missing field 'unit'"),
        (body(value="hot"), "wrong type for 'value'"),
        (body(value=True), "wrong type for 'value'"),
        (body(value=None), "missing field 'value'"),
        (b'{"device":"s","ts":"2026-11-26T10:00:00Z","unit":"C","value":1e999}', "finite"),
        (body(device=7), "wrong type for 'device'"),
        (body(device="temp/#"), "bad device name"),
        (body(device=""), "bad device name"),
        (body(unit=""), "bad unit"),
        (body(ts=1700000000), "bad timestamp"),
        (body(ts="yesterday"), "bad timestamp"),
    ],
)
def test_bad_payloads_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(ReadingError, match=message):
        Reading.from_json(data)


def test_unknown_fields_are_ignored() -> None:
    assert Reading.from_json(body(seq=3, extra={"a": [1]})).value == 1.5


@given(st.binary(max_size=2 * MAX_READING_BYTES))
def test_parse_never_raises_anything_but_reading_error(data: bytes) -> None:
    with contextlib.suppress(ReadingError):
        Reading.from_json(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "device": json_values | st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
            "ts": json_values | st.datetimes(timezones=st.just(UTC)).map(format_timestamp),
            "value": json_values,
            "unit": json_values,
        },
    )
)
def test_parse_of_near_misses_raises_only_reading_error(fields: dict[str, object]) -> None:
    try:
        data = json.dumps(fields).encode()
    except ValueError:
        return
    try:
        reading = Reading.from_json(data)
    except ReadingError:
        return
    assert Reading.from_json(reading.to_json()) == reading


@given(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    st.datetimes(timezones=st.just(UTC)),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    st.text(min_size=1, max_size=16),
)
def test_round_trip_property(device: str, ts: datetime, value: float, unit: str) -> None:
    reading = Reading(device, ts, value, unit)
    assert Reading.from_json(reading.to_json()) == reading


def test_reference_devices() -> None:
    table = {(d.name, d.kind, d.topic, d.qos) for d in REFERENCE_DEVICES}
    assert table == {
        ("sensor1", "temperature", "temp/sensor1", 0),
        ("sensor2", "humidity", "humid/sensor2", 0),
        ("sensor3", "motion", "motion/sensor3", 0),
    }


def test_fleet_extends_the_reference_devices() -> None:
    devices = fleet(7, interval=0.5)
    assert [d.topic for d in devices[:3]] == [d.topic for d in REFERENCE_DEVICES]
    assert devices[6].topic == "temp/sensor7"
    assert all(d.interval == 0.5 for d in devices)
    with pytest.raises(ReadingError):
        fleet(0)


def test_status_and_will() -> None:
    assert status_topic("sensor1") == "status/sensor1"
    online, will = online_status("sensor1"), will_message("sensor1")
    assert (online.topic, online.payload, online.qos, online.retain) == (
        "status/sensor1",
        ONLINE,
        1,
        True,
    )
    assert (will.topic, will.payload, will.qos, will.retain) == ("status/sensor1", OFFLINE, 1, True)
    with pytest.raises(ReadingError):
        status_topic("+")
