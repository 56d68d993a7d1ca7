"""``bastion sensor`` against a real TLS broker: readings, retained status, Last Will.

Observers are real paho clients with their own (read-only) credentials; the sensors run as
``bastion sensor`` processes or, to drop a connection without DISCONNECT, in-process.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

from bastion.services.netclient import Endpoint, ServiceClient
from bastion.services.readings import (
    Reading,
    online_status,
    parse_timestamp,
    will_message,
)
from support.pahoclient import Message

from .conftest import ConnectAs, StartService, unique_id
from .reference import WAIT, collect_until


def test_readings_arrive_as_json_at_qos0_and_a_clean_stop_says_offline(
    connect_as: ConnectAs, start_service: StartService
) -> None:
    viewer = connect_as("viewer")
    viewer.subscribe("temp/sensor1", 1)  # granted 1, delivered at the publish QoS: 0
    viewer.subscribe("status/sensor1", 1)
    sensor = start_service(
        "sensor", "sensor1", as_client="sensor1", extra=["--interval", "0.2", "--count", "5"]
    )
    assert sensor.wait(WAIT) == 0, sensor.log_text()

    def live_offline(messages: list[Message]) -> bool:
        return any(m.payload == b"offline" and not m.retain for m in messages)

    got = collect_until(viewer, live_offline)
    readings = [m for m in got if m.topic == "temp/sensor1"]
    statuses = [m for m in got if m.topic == "status/sensor1" and not m.retain]
    assert len(readings) == 5
    for message in readings:
        assert message.qos == 0
        body = json.loads(message.payload)
        assert set(body) == {"device", "ts", "value", "unit"}
        assert body["device"] == "sensor1"
        assert body["unit"] == "°C"
        assert isinstance(body["value"], float)
        assert -40.0 <= body["value"] <= 60.0
        parse_timestamp(body["ts"])  # RFC 3339
        Reading.from_json(message.payload)
    assert [m.payload for m in statuses] == [b"online", b"offline"]
    assert all(m.qos == 1 for m in statuses)

    later = connect_as("viewer")
    later.subscribe("status/sensor1", 1)
    [status] = collect_until(later, lambda ms: len(ms) == 1)
    assert (status.payload, status.retain) == (b"offline", True)

    connected = sensor.events("client.connected")
    assert len(connected) == 1
    assert connected[0]["tls"] in ("TLSv1.3", "TLSv1.2")
    progress = sensor.events("sensor.published")
    assert progress, "no sensor.published event"
    assert progress[-1]["count"] == 5
    assert progress[-1]["topic"] == "temp/sensor1"
    assert len(progress) <= 3  # throttled to about one a second, never one per reading


def test_the_will_sets_status_offline_when_the_connection_drops_without_disconnect(
    connect_as: ConnectAs, endpoint_of: Callable[..., Endpoint]
) -> None:
    device = "sensor2"
    client = ServiceClient(
        endpoint_of(device, unique_id(device)),
        will=will_message(device),
        birth=online_status(device),
    )
    assert client.connect(WAIT)
    viewer = connect_as("viewer")
    viewer.subscribe("status/sensor2", 1)
    [online] = collect_until(viewer, lambda ms: bool(ms) and ms[-1].payload == b"online")[-1:]
    assert online.retain

    client.abort()
    assert client.finished and client.failure is None
    [offline] = collect_until(viewer, lambda ms: len(ms) == 1)
    assert (offline.topic, offline.payload, offline.qos) == ("status/sensor2", b"offline", 1)

    later = connect_as("viewer")
    later.subscribe("status/sensor2", 1)
    [status] = collect_until(later, lambda ms: len(ms) == 1)
    assert (status.payload, status.retain) == (b"offline", True)


def test_the_will_fires_when_the_sensor_process_is_killed(
    connect_as: ConnectAs, start_service: StartService
) -> None:
    viewer = connect_as("viewer")
    viewer.subscribe("status/sensor3", 1)
    sensor = start_service("sensor", "sensor3", as_client="sensor3", extra=["--interval", "0.2"])
    sensor.wait_event("client.connected")
    collect_until(viewer, lambda ms: bool(ms) and ms[-1].payload == b"online" and not ms[-1].retain)

    assert sensor.stop(signal.SIGKILL) == -signal.SIGKILL
    [offline] = collect_until(viewer, lambda ms: len(ms) == 1)
    assert (offline.payload, offline.qos) == (b"offline", 1)


def test_motion_sensor_publishes_bursts_of_events(
    connect_as: ConnectAs, start_service: StartService
) -> None:
    viewer = connect_as("viewer")
    viewer.subscribe("motion/sensor3", 0)
    # At 0.1 s intervals the first burst starts within 0.5 s; 3-8 events 0.1-0.4 s apart.
    sensor = start_service(
        "sensor", "sensor3", as_client="sensor3", extra=["--interval", "0.1", "--count", "3"]
    )
    assert sensor.wait(WAIT) == 0, sensor.log_text()
    events = collect_until(viewer, lambda ms: len(ms) == 3)
    readings = [Reading.from_json(m.payload) for m in events]
    assert all((r.device, r.value, r.unit) == ("sensor3", 1.0, "event") for r in readings)
    assert [r.ts for r in readings] == sorted(r.ts for r in readings)
