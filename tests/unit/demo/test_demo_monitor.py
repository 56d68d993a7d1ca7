"""The demo's counters (``demo/monitor.py``), fed the messages a viewer client receives.

No network: ``Monitor.handle`` gets ``Received`` values as the client's I/O thread would, with
payloads made by the services' own encoders, and a fake clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bastion.demo.access import SENSORS
from bastion.demo.monitor import Monitor
from bastion.services.netclient import Endpoint, Received
from bastion.services.readings import Reading


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor() -> tuple[Monitor, Clock]:
    clock = Clock()
    return Monitor(Endpoint(port=18883, client_id="viewer"), SENSORS, clock), clock


def reading(device: str, value: float, unit: str) -> bytes:
    return Reading(device, datetime(2026, 1, 1, tzinfo=UTC), value, unit).to_json()


def msg(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Received:
    return Received(topic, payload, qos, retain)


def test_readings_are_counted_per_sensor_with_the_last_value() -> None:
    mon, clock = monitor()
    mon.handle(msg("temp/sensor1", reading("sensor1", 21.5, "°C")))
    clock.now += 1
    mon.handle(msg("temp/sensor1", reading("sensor1", 22.25, "°C")))
    mon.handle(msg("humid/sensor2", reading("sensor2", 40.0, "%")))
    mon.handle(msg("temp/sensor1", b"not json"))
    snap = mon.snapshot()
    assert snap.readings() == {"temp/sensor1": 2, "humid/sensor2": 1, "motion/sensor3": 0}
    [temp, humid, motion] = snap.sensors
    assert (temp.last_value, temp.unit) == (22.25, "°C")
    assert (humid.last_value, humid.unit) == (40.0, "%")
    assert motion.last_value is None
    assert snap.invalid_readings == 1
    assert snap.messages == 4


def test_alerts_offline_alerts_and_statuses() -> None:
    mon, _ = monitor()
    mon.handle(msg("status/sensor2", b"offline", 1, retain=True))
    mon.handle(msg("status/sensor2", b"online", 1))
    alert = {"kind": "motion", "device": "sensor3", "detail": "motion detected"}
    mon.handle(msg("alerts/motion/sensor3", json.dumps(alert).encode(), 1))
    mon.handle(msg("status/sensor2", b"offline", 1))
    offline = {"kind": "offline", "device": "sensor2", "detail": "device went offline"}
    mon.handle(msg("alerts/offline/sensor2", json.dumps(offline).encode(), 1))
    snap = mon.snapshot()
    assert (snap.alerts, snap.offline_alerts) == (2, 1)
    assert snap.alerts_by_kind == {"motion": 1, "offline": 1}
    assert [(a.kind, a.device) for a in snap.recent_alerts] == [
        ("motion", "sensor3"),
        ("offline", "sensor2"),
    ]
    assert snap.statuses == {"sensor2": "offline"}
    assert snap.sensors[1].status == "offline"
    assert mon.drain_events() == [
        "status/sensor2 = offline (retained from an earlier run)",
        "sensor2 is online",
        "alert motion from sensor3: motion detected",
        "sensor2 is offline",
        "alert offline from sensor2: device went offline",
    ]
    assert mon.drain_events() == []


def test_door_results_keep_their_qos() -> None:
    mon, _ = monitor()
    result = {"device": "door1", "outcome": "accepted", "state": "unlocked", "request_id": "r-1"}
    mon.handle(msg("result/door1", json.dumps(result).encode(), 2))
    mon.handle(msg("result/door1", b"\xff garbage", 2))
    [accepted, garbage] = mon.snapshot().door_results
    assert (accepted.outcome, accepted.state, accepted.request_id, accepted.qos) == (
        "accepted",
        "unlocked",
        "r-1",
        2,
    )
    assert garbage.outcome == "?"


def test_counts_between_two_moments() -> None:
    mon, clock = monitor()
    for second in range(10):
        clock.now = 100.0 + second
        mon.handle(msg("temp/sensor1", reading("sensor1", 20.0, "°C")))
    assert mon.count_between("temp/sensor1", 100.0, 105.0) == 5
    assert mon.count_between("temp/sensor1", 105.0, 200.0) == 5
    assert mon.count_between("temp/sensor1", 105.0, 105.0) == 0
    assert mon.count_between("humid/sensor2", 0.0, 200.0) == 0
    assert mon.first_reading_after("temp/sensor1", 109.0)
    assert not mon.first_reading_after("temp/sensor1", 109.5)
    assert not mon.first_reading_after("motion/sensor3", 0.0)
