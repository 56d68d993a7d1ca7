"""The sensor fleet: readings due on schedule, motion per event, humidity following the room."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest

from bastion.services.readings import Reading, fleet
from bastion.services.simulator import SensorSimulator

T0 = datetime(2026, 11, 26, tzinfo=UTC)


def run(sim: SensorSimulator, seconds: int, step: int = 1) -> list[tuple[str, Reading]]:
    out: list[tuple[str, Reading]] = []
    for s in range(0, seconds + 1, step):
        out.extend((due.device.topic, due.reading) for due in sim.poll(T0 + timedelta(seconds=s)))
    return out


def test_periodic_sensors_report_every_interval() -> None:
    sim = SensorSimulator(fleet(2, interval=5.0), seed=1)
    topics = [topic for topic, _ in run(sim, 60)]
    assert topics.count("temp/sensor1") == 13  # t = 0, 5, ..., 60
    assert topics.count("humid/sensor2") == 13


def test_a_long_pause_reports_once_then_resumes_the_schedule() -> None:
    sim = SensorSimulator(fleet(1, interval=5.0), seed=1)
    assert len(sim.poll(T0)) == 1
    assert len(sim.poll(T0 + timedelta(hours=1))) == 1
    assert sim.poll(T0 + timedelta(hours=1, seconds=4)) == []
    assert len(sim.poll(T0 + timedelta(hours=1, seconds=5))) == 1
    assert sim.poll(T0) == []  # a clock stepping back reports nothing


def test_payloads_are_valid_readings_from_their_device() -> None:
    sim = SensorSimulator(seed=2)
    dues = [due for s in range(0, 7200, 5) for due in sim.poll(T0 + timedelta(seconds=s))]
    kinds = {due.device.kind for due in dues}
    assert kinds == {"temperature", "humidity", "motion"}
    for due in dues:
        reading = Reading.from_json(due.payload)
        assert reading.device == due.device.name
        assert reading.unit == due.device.unit
        assert due.device.topic.endswith("/" + reading.device)
        assert due.device.qos == 0


def test_motion_readings_carry_the_event_time() -> None:
    sim = SensorSimulator(fleet(3), seed=3)
    motion = [r for topic, r in run(sim, 4 * 3600, step=60) if topic == "motion/sensor3"]
    assert motion
    assert all(r.value == 1 for r in motion)
    assert len({r.ts for r in motion}) > len(motion) / 2  # not all stamped at poll times


def test_humidity_follows_the_room_temperature() -> None:
    sim = SensorSimulator(fleet(2, interval=300.0), seed=4)
    readings = run(sim, 24 * 3600, step=300)
    temps = [r.value for topic, r in readings if topic == "temp/sensor1"]
    humids = [r.value for topic, r in readings if topic == "humid/sensor2"]
    assert len(temps) == len(humids) > 250
    assert statistics.correlation(temps, humids) < -0.5


def test_same_seed_same_run() -> None:
    assert run(SensorSimulator(seed=5), 600) == run(SensorSimulator(seed=5), 600)
    assert run(SensorSimulator(seed=5), 600) != run(SensorSimulator(seed=6), 600)


def test_device_names_must_be_unique() -> None:
    devices = fleet(1)
    with pytest.raises(ValueError, match="unique"):
        SensorSimulator(devices + devices)
    assert SensorSimulator(devices).devices == devices
