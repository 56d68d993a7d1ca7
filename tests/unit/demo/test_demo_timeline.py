"""The timeline of a run (``demo/timeline.py``): scripted moments and reading rates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bastion.demo.access import SENSORS
from bastion.demo.monitor import Monitor
from bastion.demo.timeline import Schedule, flow_report
from bastion.services.netclient import Endpoint, Received
from bastion.services.readings import Reading


def test_a_bounded_run_unlocks_at_a_third_and_kills_at_two_thirds() -> None:
    plan = Schedule.plan(100.0, 60.0, attack=True)
    assert plan == Schedule(100.0, 160.0, 120.0, 140.0, 105.0)
    short = Schedule.plan(0.0, 12.0, attack=False)
    assert (short.unlock_at, short.kill_at, short.attack_at) == (4.0, 8.0, None)
    assert Schedule.plan(0.0, 12.0, attack=True).attack_at == 3.0  # a quarter of a short run


def test_an_unbounded_run_has_fixed_moments() -> None:
    plan = Schedule.plan(0.0, None, attack=True)
    assert (plan.end, plan.unlock_at, plan.kill_at, plan.attack_at) == (None, 20.0, 40.0, 5.0)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def fed_monitor(rates: dict[str, list[float]]) -> Monitor:
    """A monitor that saw readings at the given moments, per topic."""
    clock = Clock()
    monitor = Monitor(Endpoint(port=18883, client_id="viewer"), SENSORS, clock)
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    for topic, moments in rates.items():
        device = topic.partition("/")[2]
        for moment in moments:
            clock.now = moment
            payload = Reading(device, stamp, 1.0, "x").to_json()
            monitor.handle(Received(topic, payload, 0, False))
    return monitor


def every(step: float, start: float, end: float) -> list[float]:
    count = round((end - start) / step)
    return [start + i * step for i in range(count)]


def test_steady_readings_kept_flowing() -> None:
    monitor = fed_monitor(
        {
            "temp/sensor1": every(1.0, 0.0, 30.0),
            "humid/sensor2": every(1.0, 0.0, 20.0),  # killed at 20 s, mid-attack
            "motion/sensor3": [3.0],  # bursts say nothing about flow
        }
    )
    report = flow_report(
        monitor,
        SENSORS,
        live_start=0.0,
        attack_start=5.0,
        attack_end=30.0,
        stopped={"sensor2": 20.0},
    )
    assert report.before == {"temp/sensor1": 1.0, "humid/sensor2": 1.0, "motion/sensor3": 0.2}
    assert report.during["temp/sensor1"] == pytest.approx(1.0)
    assert report.during["humid/sensor2"] == pytest.approx(1.0)
    assert report.during["motion/sensor3"] == 0.0
    assert report.kept_flowing


def test_readings_that_stall_under_attack_did_not_keep_flowing() -> None:
    monitor = fed_monitor(
        {"temp/sensor1": every(1.0, 0.0, 6.0), "humid/sensor2": every(1.0, 0.0, 30.0)}
    )
    report = flow_report(
        monitor, SENSORS, live_start=0.0, attack_start=5.0, attack_end=30.0, stopped={}
    )
    assert report.during["temp/sensor1"] == pytest.approx(1 / 25)
    assert not report.kept_flowing
