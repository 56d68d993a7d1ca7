"""``bastion alerts`` against a real TLS broker: motion, offline (the will) and threshold alerts
at QoS 1 on ``alerts/<kind>/<device>``, de-duplicated; stale retained status raises nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from bastion.services.netclient import Endpoint, ServiceClient
from bastion.services.readings import Reading, online_status, parse_timestamp, will_message
from support.pahoclient import Message

from .conftest import ConnectAs, StartService, unique_id
from .reference import WAIT, collect_until, drain


def motion_event() -> bytes:
    return Reading("sensor3", datetime.now(UTC), 1, "event").to_json()


def temperature(value: float) -> bytes:
    return Reading("sensor1", datetime.now(UTC), value, "°C").to_json()


def by_topic(messages: list[Message], topic: str) -> list[Message]:
    return [m for m in messages if m.topic == topic]


def test_motion_threshold_and_offline_alerts_at_qos1_deduplicated(
    connect_as: ConnectAs,
    start_service: StartService,
    endpoint_of: Callable[..., Endpoint],
) -> None:
    # A device that went offline before the service started: its retained status is stale.
    sensor2 = connect_as("sensor2")
    assert sensor2.publish("status/sensor2", b"offline", 1, retain=True) < 0x80  # 0x10 is ok
    viewer = connect_as("viewer")
    viewer.subscribe("alerts/#", 1)
    service = start_service(
        "alerts", as_client="alerts", extra=["--rule", "temp/#:value>30:overheat"]
    )
    [subscribed] = service.wait_event("client.subscribed")
    filters = subscribed["filters"]
    assert isinstance(filters, list)
    assert set(filters) >= {"motion/#", "status/+", "temp/#"}

    sensor3 = ServiceClient(
        endpoint_of("sensor3", unique_id("sensor3")),
        will=will_message("sensor3"),
        birth=online_status("sensor3"),
    )
    assert sensor3.connect(WAIT)
    for _ in range(3):  # one burst: one alert, the rest are duplicates within the hold-off
        assert sensor3.publish("motion/sensor3", motion_event(), 0).wait(WAIT)
    sensor1 = connect_as("sensor1")
    sensor1.publish("temp/sensor1", temperature(25.0), 0)  # below the threshold
    sensor1.publish("temp/sensor1", temperature(31.5), 0)

    got = collect_until(viewer, lambda ms: len(ms) == 2)
    sensor3.abort()  # no DISCONNECT: the will says offline, the service raises an alert
    got += collect_until(viewer, lambda ms: len(ms) == 1)
    service.stop()
    got += drain(viewer, 0.3)  # anything that was still queued

    assert sorted(m.topic for m in got) == [
        "alerts/motion/sensor3",
        "alerts/offline/sensor3",
        "alerts/overheat/sensor1",
    ]
    assert all(m.qos == 1 and not m.retain for m in got)
    [motion] = by_topic(got, "alerts/motion/sensor3")
    body = json.loads(motion.payload)
    assert (body["kind"], body["device"], body["topic"]) == ("motion", "sensor3", "motion/sensor3")
    assert body["message"] == "motion alert from sensor3: motion detected"
    parse_timestamp(body["ts"])
    [hot] = by_topic(got, "alerts/overheat/sensor1")
    body = json.loads(hot.payload)
    assert (body["value"], body["threshold"]) == (31.5, 30.0)
    [offline] = by_topic(got, "alerts/offline/sensor3")
    assert json.loads(offline.payload)["kind"] == "offline"

    raised = service.events("alert.raised")
    assert sorted(str(e["topic"]) for e in raised) == sorted(m.topic for m in got)
    [stopped] = service.events("alerts.stopped")
    assert stopped["duplicates"] == 2
