"""The demo's own eyes: a read-only client (the ``viewer`` credential) subscribed to ``#``.

It counts what really crossed the broker: readings per sensor (with their last value),
alerts (offline ones apart), device status, door-lock results. Messages arrive on the
client's I/O thread (``services/netclient.py``); ``snapshot()`` and ``drain_events()`` are
safe to call from the orchestrator at any time.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bastion.demo.access import Sensor
from bastion.services.netclient import Endpoint, Received, ServiceClient
from bastion.services.readings import Reading, ReadingError

__all__ = ["AlertSeen", "DoorResult", "Monitor", "MonitorSnapshot", "SensorView"]

MAX_ARRIVALS: Final = 200_000  # reading arrival times kept for rates (hours at demo speed)
RECENT_ALERTS: Final = 8
MAX_EVENTS: Final = 1000  # undrained events kept; older ones are dropped
MAX_JSON: Final = 4096
SUBSCRIBE_QOS: Final = 2  # each message arrives at the QoS it was published with


@dataclass(frozen=True, slots=True)
class AlertSeen:
    """One alert as published by the alert service."""

    at: float  # monotonic
    kind: str
    device: str
    detail: str


@dataclass(frozen=True, slots=True)
class DoorResult:
    """One door-lock result from ``result/<device>``."""

    at: float
    outcome: str
    state: str
    request_id: str
    qos: int


@dataclass(frozen=True, slots=True)
class SensorView:
    """What one sensor's topic carried so far."""

    topic: str
    device: str
    count: int
    last_value: float | None
    unit: str
    status: str  # "online", "offline" or "?" (never seen)


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    """A consistent copy of the counters."""

    connected: bool
    sensors: tuple[SensorView, ...]
    alerts: int
    offline_alerts: int
    alerts_by_kind: dict[str, int]
    recent_alerts: tuple[AlertSeen, ...]
    door_results: tuple[DoorResult, ...]
    statuses: dict[str, str]
    invalid_readings: int
    messages: int

    def readings(self) -> dict[str, int]:
        """Readings per sensor topic."""
        return {sensor.topic: sensor.count for sensor in self.sensors}


@dataclass(slots=True)
class _SensorState:
    sensor: Sensor
    count: int = 0
    last_value: float | None = None
    unit: str = ""
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS))


class Monitor:
    """Counts the reference system's traffic as the ``viewer`` client sees it."""

    def __init__(
        self,
        endpoint: Endpoint,
        sensors: Sequence[Sensor],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sensors = {sensor.topic: _SensorState(sensor) for sensor in sensors}
        self._alerts_by_kind: dict[str, int] = {}
        self._recent: deque[AlertSeen] = deque(maxlen=RECENT_ALERTS)
        self._door: list[DoorResult] = []
        self._statuses: dict[str, str] = {}
        self._events: deque[str] = deque(maxlen=MAX_EVENTS)
        self._invalid = 0
        self._messages = 0
        self._client = ServiceClient(endpoint, on_message=self.handle)

    # -- connection ------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Connect and subscribe to ``#``; ``ConnectError`` if that fails within ``timeout``."""
        self._client.subscribe("#", SUBSCRIBE_QOS)
        self._client.connect(timeout)

    def stop(self) -> None:
        """Disconnect cleanly."""
        self._client.stop()

    # -- messages (the client's I/O thread) ------------------------------------------------

    def handle(self, message: Received) -> None:
        """Count one message; never raises on bad payloads."""
        now = self._clock()
        topic = message.topic
        with self._lock:
            self._messages += 1
            sensor = self._sensors.get(topic)
            if sensor is not None:
                self._reading(sensor, message.payload, now)
            elif topic.startswith("alerts/"):
                self._alert(topic, message.payload, now)
            elif topic.startswith("status/"):
                self._status(topic, message.payload, message.retain)
            elif topic.startswith("result/"):
                self._door_result(message, now)

    def _reading(self, state: _SensorState, payload: bytes, now: float) -> None:
        try:
            reading = Reading.from_json(payload)
        except ReadingError:
            self._invalid += 1
            return
        state.count += 1
        state.last_value = reading.value
        state.unit = reading.unit
        state.arrivals.append(now)

    def _alert(self, topic: str, payload: bytes, now: float) -> None:
        parts = topic.split("/")
        kind = parts[1] if len(parts) > 1 else "?"
        device = parts[2] if len(parts) > 2 else "?"
        body = _json_object(payload)
        detail = body.get("detail") or body.get("message") or ""
        self._alerts_by_kind[kind] = self._alerts_by_kind.get(kind, 0) + 1
        seen = AlertSeen(now, kind, device, str(detail)[:80])
        self._recent.append(seen)
        text = f"alert {kind} from {device}" + (f": {seen.detail}" if seen.detail else "")
        self._events.append(text)

    def _status(self, topic: str, payload: bytes, retained: bool) -> None:
        device = topic.partition("/")[2]
        state = payload.decode("utf-8", "replace")[:16] or "?"
        before = self._statuses.get(device)
        self._statuses[device] = state
        if retained:
            self._events.append(f"status/{device} = {state} (retained from an earlier run)")
        elif before != state:
            self._events.append(f"{device} is {state}")

    def _door_result(self, message: Received, now: float) -> None:
        body = _json_object(message.payload)
        result = DoorResult(
            now,
            str(body.get("outcome", "?")),
            str(body.get("state", "?")),
            str(body.get("request_id", "")),
            message.qos,
        )
        self._door.append(result)
        self._events.append(
            f"{message.topic}: {result.outcome}, door {result.state} (QoS {result.qos})"
        )

    # -- reading the counters (any thread) -------------------------------------------------

    def snapshot(self) -> MonitorSnapshot:
        """The counters as they are now."""
        with self._lock:
            sensors = tuple(
                SensorView(
                    state.sensor.topic,
                    state.sensor.name,
                    state.count,
                    state.last_value,
                    state.unit,
                    self._statuses.get(state.sensor.name, "?"),
                )
                for state in self._sensors.values()
            )
            return MonitorSnapshot(
                connected=self._client.connected,
                sensors=sensors,
                alerts=sum(self._alerts_by_kind.values()),
                offline_alerts=self._alerts_by_kind.get("offline", 0),
                alerts_by_kind=dict(self._alerts_by_kind),
                recent_alerts=tuple(self._recent),
                door_results=tuple(self._door),
                statuses=dict(self._statuses),
                invalid_readings=self._invalid,
                messages=self._messages,
            )

    def drain_events(self) -> list[str]:
        """The notable things seen since the last call, oldest first."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events

    def count_between(self, topic: str, start: float, end: float) -> int:
        """Readings of ``topic`` that arrived in [start, end) (monotonic seconds)."""
        with self._lock:
            state = self._sensors.get(topic)
            if state is None or end <= start:
                return 0
            arrivals = list(state.arrivals)
        return bisect.bisect_left(arrivals, end) - bisect.bisect_left(arrivals, start)

    def first_reading_after(self, topic: str, start: float) -> bool:
        """Whether ``topic`` carried a reading at or after ``start``."""
        with self._lock:
            state = self._sensors.get(topic)
            return state is not None and bool(state.arrivals) and state.arrivals[-1] >= start


def _json_object(payload: bytes) -> dict[str, object]:
    if len(payload) > MAX_JSON:
        return {}
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
