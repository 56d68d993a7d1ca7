"""The device model: sensor readings as compact JSON, the reference devices, status and will.

Parsing treats every payload as hostile and fails only with ``ReadingError``. The simulators
publish what this encodes; the alert service and the data logger parse it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from bastion.errors import BastionError

__all__ = [
    "MAX_READING_BYTES",
    "OFFLINE",
    "ONLINE",
    "REFERENCE_DEVICES",
    "DeviceSpec",
    "Reading",
    "ReadingError",
    "StatusMessage",
    "check_device_name",
    "device_spec",
    "fleet",
    "format_timestamp",
    "load_json_object",
    "online_status",
    "parse_timestamp",
    "status_topic",
    "will_message",
]

MAX_READING_BYTES = 1024  # a reading is ~100 bytes; anything far larger is refused unread
ONLINE = b"online"
OFFLINE = b"offline"
STATUS_QOS = 1  # status and will must arrive: the alert service acts on "offline"
VALUE_DECIMALS = 2  # the precision a reading carries on the wire (and in memory)

_DEVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}", re.ASCII)
_UNIT_MAX = 16
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)


class ReadingError(BastionError, ValueError):
    """A reading payload or value is invalid; the message names the problem."""


def check_device_name(name: object) -> str:
    """``name`` if it is a safe device name (1-64 of ``A-Z a-z 0-9 _ . -``), else ReadingError.

    Device names become topic levels, so wildcards, ``/`` and ``$`` are never allowed.
    """
    if not isinstance(name, str) or _DEVICE_NAME.fullmatch(name) is None:
        raise ReadingError(f"bad device name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return name


def format_timestamp(ts: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z``: ``2026-11-26T10:00:00.250Z``."""
    u = ts.astimezone(UTC)
    date = f"{u.year:04d}-{u.month:02d}-{u.day:02d}"
    return f"{date}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond // 1000:03d}Z"


def parse_timestamp(text: object) -> datetime:
    """An aware UTC datetime from an RFC 3339 string; ReadingError if it is not one."""
    if not isinstance(text, str):
        raise ReadingError(f"bad timestamp: expected an RFC 3339 string, got {type(text).__name__}")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ReadingError(f"bad timestamp {text[:40]!r}: not RFC 3339 with a UTC offset")
    date, clock, fraction, offset = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{clock}.{micros}{offset}").astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # month 13, second 60, year 1 at +01:00 ...
        raise ReadingError(f"bad timestamp {text!r}: {exc}") from None


def _normal_timestamp(ts: object) -> datetime:
    if not isinstance(ts, datetime) or ts.tzinfo is None or ts.utcoffset() is None:
        raise ReadingError("bad timestamp: ts must be an aware datetime")
    try:
        utc = ts.astimezone(UTC)
    except OverflowError:
        raise ReadingError("bad timestamp: out of range in UTC") from None
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def _string(body: dict[str, object], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ReadingError(f"wrong type for {name!r}: expected a string, got {kind}")
    return value


def _normal_value(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReadingError(f"wrong type for 'value': expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise ReadingError("bad value: number out of range") from None
    if not math.isfinite(number):
        raise ReadingError("bad value: must be finite")
    return round(number, VALUE_DECIMALS)


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement from one device, validated on construction.

    ``ts`` is kept in UTC to the millisecond and ``value`` to 0.01, the precision the wire
    carries, so ``Reading.from_json(r.to_json()) == r`` holds.
    """

    device: str
    ts: datetime
    value: float
    unit: str

    def __post_init__(self) -> None:
        check_device_name(self.device)
        if not isinstance(self.unit, str) or not 0 < len(self.unit) <= _UNIT_MAX:
            raise ReadingError(f"bad unit {self.unit!r}: expected 1-{_UNIT_MAX} characters")
        object.__setattr__(self, "ts", _normal_timestamp(self.ts))
        object.__setattr__(self, "value", _normal_value(self.value))

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON: ``{"device":..,"ts":..,"value":..,"unit":..}``."""
        body = {
            "device": self.device,
            "ts": format_timestamp(self.ts),
            "value": self.value,
            "unit": self.unit,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview) -> Reading:
        """Parse a payload; unknown fields are ignored, anything wrong is a ReadingError."""
        body = load_json_object(data, MAX_READING_BYTES)
        for name in ("device", "ts", "value", "unit"):
            if name not in body:
                raise ReadingError(f"missing field {name!r}")
        device, unit = _string(body, "device"), _string(body, "unit")
        return cls(device, parse_timestamp(body["ts"]), _normal_value(body["value"]), unit)


def _reject_constant(name: str) -> object:
    raise ReadingError(f"not JSON: {name} is not a number")


def load_json_object(data: bytes | bytearray | memoryview, limit: int) -> dict[str, object]:
    """A JSON object from at most ``limit`` bytes of strict UTF-8; ReadingError otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReadingError(f"payload must be bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise ReadingError(f"payload too large: {len(data)} bytes > {limit}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ReadingError("not JSON: payload is not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ReadingError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise ReadingError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReadingError(f"not a JSON object: got {type(body).__name__}")
    return body


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A simulated sensor: its name, what it measures, where and how it publishes."""

    name: str
    kind: str  # "temperature" | "humidity" | "motion"
    topic: str
    unit: str
    qos: int = 0
    interval: float = 5.0  # seconds between readings (motion publishes per event instead)

    def __post_init__(self) -> None:
        check_device_name(self.name)
        if self.kind not in _KIND_PREFIX:
            raise ReadingError(f"unknown sensor kind {self.kind!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ReadingError(f"interval must be > 0 seconds, got {self.interval!r}")


_KIND_PREFIX = {"temperature": "temp", "humidity": "humid", "motion": "motion"}
_KIND_UNIT = {"temperature": "°C", "humidity": "%", "motion": "event"}


def _device(name: str, kind: str, interval: float = 5.0) -> DeviceSpec:
    topic = f"{_KIND_PREFIX[kind]}/{check_device_name(name)}"
    return DeviceSpec(name, kind, topic, _KIND_UNIT[kind], qos=0, interval=interval)


def device_spec(
    name: str, kind: str, *, topic: str | None = None, interval: float = 5.0
) -> DeviceSpec:
    """A sensor of ``kind`` with its unit; its topic defaults to ``<temp|humid|motion>/<name>``.

    ReadingError for an unknown kind, a bad name or interval, or an empty topic.
    """
    if kind not in _KIND_PREFIX:
        raise ReadingError(f"unknown sensor kind {kind!r}: use one of {', '.join(_KIND_PREFIX)}")
    if topic is not None and not topic:
        raise ReadingError("the topic must not be empty")
    spec = _device(name, kind, interval)
    return spec if topic is None else DeviceSpec(name, kind, topic, spec.unit, 0, interval)


REFERENCE_DEVICES: tuple[DeviceSpec, ...] = (
    _device("sensor1", "temperature"),
    _device("sensor2", "humidity"),
    _device("sensor3", "motion"),
)


def fleet(count: int, interval: float = 5.0) -> tuple[DeviceSpec, ...]:
    """``count`` sensors ``sensor1..sensorN`` cycling temperature, humidity, motion.

    The first three are the reference devices (with ``interval``); the rest load-test alike.
    """
    if not 1 <= count <= 100_000:
        raise ReadingError(f"sensor count must be 1..100000, got {count}")
    kinds = ("temperature", "humidity", "motion")
    return tuple(_device(f"sensor{n}", kinds[(n - 1) % 3], interval) for n in range(1, count + 1))


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A retained status publication (also the shape of a Last Will)."""

    topic: str
    payload: bytes
    qos: int = STATUS_QOS
    retain: bool = True


def status_topic(device: str) -> str:
    """``status/<device>``, where a device announces online and its will says offline."""
    return f"status/{check_device_name(device)}"


def online_status(device: str) -> StatusMessage:
    """What a device publishes (retained, QoS 1) right after it connects."""
    return StatusMessage(status_topic(device), ONLINE)


def will_message(device: str) -> StatusMessage:
    """The Last Will a device registers in CONNECT: retained ``offline`` on its status topic."""
    return StatusMessage(status_topic(device), OFFLINE)
