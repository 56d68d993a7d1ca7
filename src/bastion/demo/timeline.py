"""The timeline of a demo run: when the scripted moments happen, and the reading rates.

The door is unlocked at a third of the run and a sensor SIGKILLed at two thirds; the
attacker starts after a few seconds of normal traffic, so ``flow_report`` can compare the
sensors' rates before and while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bastion.demo.access import Sensor
from bastion.demo.monitor import Monitor
from bastion.demo.summary import FlowReport

__all__ = ["Schedule", "flow_report"]

ATTACK_LEAD: Final = 5.0  # seconds of normal traffic before the attacker starts
UNBOUNDED_UNLOCK_AT: Final = 20.0  # without a duration: when to unlock and kill
UNBOUNDED_KILL_AT: Final = 40.0
FLOW_RATIO: Final = 0.5  # during the attack, at least this share of the normal rate
MIN_WINDOW: Final = 1.0  # shorter windows say nothing about a rate


@dataclass(frozen=True, slots=True)
class Schedule:
    """When the scripted moments of a run happen (monotonic seconds)."""

    start: float
    end: float | None  # None: until Ctrl-C
    unlock_at: float
    kill_at: float
    attack_at: float | None  # None: no attacker

    @classmethod
    def plan(cls, start: float, duration: float | None, attack: bool) -> Schedule:
        """The schedule of a run starting at ``start`` and lasting ``duration`` seconds."""
        if duration is None:
            unlock, kill, lead = UNBOUNDED_UNLOCK_AT, UNBOUNDED_KILL_AT, ATTACK_LEAD
        else:
            unlock, kill, lead = duration / 3, duration * 2 / 3, min(ATTACK_LEAD, duration / 4)
        return cls(
            start=start,
            end=None if duration is None else start + duration,
            unlock_at=start + unlock,
            kill_at=start + kill,
            attack_at=start + lead if attack else None,
        )


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def flow_report(
    monitor: Monitor,
    sensors: Sequence[Sensor],
    *,
    live_start: float,
    attack_start: float,
    attack_end: float,
    stopped: dict[str, float],
) -> FlowReport:
    """Readings/s per sensor before and during the attack; ``stopped`` cuts a sensor's window.

    The flow was kept when every periodic sensor (motion comes in bursts) ran at least
    ``FLOW_RATIO`` of its earlier rate while under attack.
    """
    before: dict[str, float] = {}
    during: dict[str, float] = {}
    kept = True
    for sensor in sensors:
        end = min(attack_end, stopped.get(sensor.name, attack_end))
        lead = attack_start - live_start
        count = monitor.count_between(sensor.topic, live_start, attack_start)
        before[sensor.topic] = _rate(count, lead)
        during[sensor.topic] = _rate(
            monitor.count_between(sensor.topic, attack_start, end), end - attack_start
        )
        periodic = not sensor.topic.startswith("motion/")
        if periodic and end - attack_start >= MIN_WINDOW and lead >= MIN_WINDOW:
            kept = kept and during[sensor.topic] >= FLOW_RATIO * before[sensor.topic]
    return FlowReport(before, during, kept)
