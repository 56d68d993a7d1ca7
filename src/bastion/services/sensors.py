"""One simulated sensor as a network client: readings on its topic, a retained status, a will.

Drives ``simulator.SensorSimulator`` with the real clock and publishes through
``netclient.ServiceClient``; ``bastion sensor`` (``cli/services.py``) and the demo run it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog

from bastion.errors import ConfigError, ProtocolError
from bastion.mqtt.topics import validate_topic_name
from bastion.services.netclient import Backoff, Endpoint, RunBounds, ServiceClient
from bastion.services.readings import (
    REFERENCE_DEVICES,
    DeviceSpec,
    ReadingError,
    device_spec,
    online_status,
    will_message,
)
from bastion.services.signals import MotionProfile
from bastion.services.simulator import SensorSimulator

__all__ = ["SENSOR_KINDS", "SensorReport", "default_seed", "run_sensor", "sensor_spec"]

SENSOR_KINDS: Final = ("temperature", "humidity", "motion")
PROGRESS_EVERY: Final = 1.0  # seconds between ``sensor.published`` log lines
MAX_TICK: Final = 0.1

_log = structlog.get_logger("bastion.services.sensor")


@dataclass(frozen=True, slots=True)
class SensorReport:
    """What one run of a sensor did."""

    device: str
    topic: str
    published: int
    dropped: int  # readings due while the client was not connected


def sensor_spec(
    device: str,
    *,
    kind: str | None = None,
    topic: str | None = None,
    interval: float | None = None,
) -> DeviceSpec:
    """The device to simulate: a reference device (sensor1..3) by name, or any name + ``kind``.

    ConfigError (one line) for an unknown device without a kind, a bad topic or interval.
    """
    reference = next((d for d in REFERENCE_DEVICES if d.name == device), None)
    if kind is None:
        if reference is None:
            names = ", ".join(d.name for d in REFERENCE_DEVICES)
            raise ConfigError(
                f"device {device!r} is not a reference device ({names}): give its --kind"
            )
        kind = reference.kind
    if topic is None and reference is not None and reference.kind == kind:
        topic = reference.topic
    if topic is not None:
        try:
            validate_topic_name(topic)
        except ProtocolError as exc:
            raise ConfigError(f"bad topic {topic!r}: {exc}") from None
        if topic.startswith("$"):
            raise ConfigError(f"bad topic {topic!r}: topics starting with '$' are reserved")
    try:
        return device_spec(device, kind, topic=topic, interval=interval or 5.0)
    except ReadingError as exc:
        raise ConfigError(str(exc)) from None


def default_seed(device: str) -> int:
    """A seed that differs between devices and is the same on every run of one."""
    return zlib.crc32(device.encode())


class _Progress:
    """``sensor.published`` at most once per ``PROGRESS_EVERY`` seconds, never per message."""

    __slots__ = ("_last", "_logged", "spec")

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self._last = time.monotonic()
        self._logged = (0, 0)

    def maybe_log(self, published: int, dropped: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if (published, dropped) == self._logged:
            return
        if not force and now - self._last < PROGRESS_EVERY:
            return
        self._last, self._logged = now, (published, dropped)
        fields: dict[str, object] = {"device": self.spec.name, "topic": self.spec.topic}
        fields["count"] = published
        if dropped:
            fields["dropped"] = dropped
        _log.info("sensor.published", **fields)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_sensor(
    endpoint: Endpoint,
    spec: DeviceSpec,
    bounds: RunBounds,
    *,
    count: int | None = None,
    seed: int | None = None,
    clock: Callable[[], datetime] = _utc_now,
    backoff: Backoff | None = None,
) -> SensorReport:
    """Publish ``spec``'s readings until ``bounds`` ends or ``count`` readings went out.

    Readings go at ``spec.qos`` (0); ``status/<device>`` is ``online`` (retained, QoS 1)
    after every connect, the will sets it ``offline``, and a clean end publishes ``offline``
    before DISCONNECT. Raises ConnectError when the client gives up.
    """
    if count is not None and count < 1:
        raise ConfigError(f"count must be >= 1, got {count}")
    will = will_message(spec.name)
    client = ServiceClient(
        endpoint, will=will, birth=online_status(spec.name), farewell=will, backoff=backoff
    )
    simulator = SensorSimulator(
        [spec],
        seed=default_seed(spec.name) if seed is None else seed,
        motion=MotionProfile.paced(spec.interval),
    )
    progress = _Progress(spec)
    published = dropped = 0
    tick = min(MAX_TICK, spec.interval / 2.0)
    try:
        if not bounds.connect(client):
            return SensorReport(spec.name, spec.topic, 0, 0)
        _log.info(
            "sensor.started",
            device=spec.name,
            kind=spec.kind,
            topic=spec.topic,
            interval=spec.interval,
        )
        while not bounds.done() and (count is None or published < count):
            if client.failure is not None:
                raise client.failure
            for due in simulator.poll(clock()):
                delivery = client.publish(due.device.topic, due.payload, due.device.qos)
                if delivery.accepted:
                    published += 1
                else:
                    dropped += 1
                if count is not None and published >= count:
                    break
            progress.maybe_log(published, dropped)
            bounds.wait(tick)
        progress.maybe_log(published, dropped, force=True)
    finally:
        client.stop()
    _log.info("sensor.stopped", device=spec.name, published=published, dropped=dropped)
    return SensorReport(spec.name, spec.topic, published, dropped)
