"""A fleet of simulated sensors: which readings are due at ``now``, from the seeded signals.

Pure: the simulator client calls ``poll(now)`` on its timer and publishes each reading on its
device's topic. Built from ``signals.py`` (values) and ``readings.py`` (devices, payloads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from bastion.services.readings import REFERENCE_DEVICES, DeviceSpec, Reading
from bastion.services.signals import (
    HumiditySignal,
    MotionProfile,
    MotionSignal,
    TemperatureSignal,
    epoch_seconds,
)

__all__ = ["DueReading", "SensorSimulator"]


@dataclass(frozen=True, slots=True)
class DueReading:
    """A reading to publish now on ``device.topic`` at ``device.qos``."""

    device: DeviceSpec
    reading: Reading

    @property
    def payload(self) -> bytes:
        """The reading as JSON, ready to publish."""
        return self.reading.to_json()


class _Sensor:
    __slots__ = ("due", "motion", "signal", "spec")

    def __init__(self, spec: DeviceSpec, seed: int, motion: MotionProfile | None) -> None:
        self.spec = spec
        self.due: float | None = None
        self.signal: TemperatureSignal | HumiditySignal | None = None
        self.motion: MotionSignal | None = None
        if spec.kind == "temperature":
            self.signal = TemperatureSignal(seed=seed)
        elif spec.kind == "humidity":
            self.signal = HumiditySignal(seed=seed)
        else:
            self.motion = MotionSignal(seed=seed) if motion is None else motion.signal(seed)


class SensorSimulator:
    """Simulated sensors sharing one room: humidity follows the room's temperature curve.

    Periodic sensors report every ``interval`` (a poll after a long pause reports once, not
    once per missed interval); motion sensors report each event, timestamped when it happened,
    with ``motion`` settings (default: ``MotionSignal``'s own).
    """

    __slots__ = ("_room", "_sensors")

    def __init__(
        self,
        devices: Iterable[DeviceSpec] = REFERENCE_DEVICES,
        *,
        seed: int = 0,
        motion: MotionProfile | None = None,
    ) -> None:
        self._room = TemperatureSignal(noise=0.0)
        self._sensors = [
            _Sensor(spec, seed * 1_000_003 + n, motion) for n, spec in enumerate(devices)
        ]
        names = [sensor.spec.name for sensor in self._sensors]
        if len(set(names)) != len(names):
            raise ValueError("device names must be unique")

    @property
    def devices(self) -> tuple[DeviceSpec, ...]:
        """The simulated devices, in order."""
        return tuple(sensor.spec for sensor in self._sensors)

    def poll(self, now: datetime) -> list[DueReading]:
        """Readings due at ``now`` (aware datetime), in device order."""
        stamp = epoch_seconds(now)
        due: list[DueReading] = []
        for sensor in self._sensors:
            spec = sensor.spec
            if sensor.motion is not None:
                for event in sensor.motion.poll(now):
                    ts = datetime.fromtimestamp(event, UTC)
                    due.append(DueReading(spec, Reading(spec.name, ts, 1, spec.unit)))
                continue
            if sensor.due is not None and stamp < sensor.due:
                continue
            if sensor.due is None or stamp - sensor.due >= spec.interval:
                sensor.due = stamp + spec.interval  # first reading, or fell behind: restart
            else:
                sensor.due += spec.interval  # on schedule: no drift
            if isinstance(sensor.signal, TemperatureSignal):
                value = sensor.signal.sample(now)
            elif isinstance(sensor.signal, HumiditySignal):
                value = sensor.signal.sample(self._room.expected(now))
            else:  # pragma: no cover - every kind has a signal
                continue
            due.append(DueReading(spec, Reading(spec.name, now, value, spec.unit)))
        return due
