"""The alert service's logic: motion, offline and threshold alerts, de-duplicated and rate-limited.

Pure (time is an argument): the alert client feeds it what it receives on ``motion/#``,
``status/+`` and the rules' filters, and publishes the returned ``Alert`` values at QoS 1.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from bastion.errors import ConfigError, ProtocolError
from bastion.mqtt.topics import topic_matches, validate_topic_filter
from bastion.security.limits import TokenBucket
from bastion.services.readings import (
    MAX_READING_BYTES,
    OFFLINE,
    Reading,
    ReadingError,
    check_device_name,
    format_timestamp,
    load_json_object,
)
from bastion.services.signals import epoch_seconds

__all__ = [
    "ALERT_QOS",
    "Alert",
    "AlertEngine",
    "AlertStats",
    "Rule",
    "alert_topic",
    "parse_rule",
]

ALERT_QOS = 1
MOTION_FILTER = "motion/#"
STATUS_FILTER = "status/+"
ALERTS_PREFIX = "alerts/"

# (kind, detail, value, threshold) of an alert about to be raised
_Hit = tuple[str, str, float | None, float | None]
DEFAULT_RULE_KIND = "threshold"
_RULE_SYNTAX = re.compile(
    r"(?P<filter>.+):(?P<field>[A-Za-z0-9_.-]{1,64})\s*(?P<op>>=|<=|>|<)\s*"
    r"(?P<value>[^:\s]+)\s*(?::(?P<kind>[^:]*))?",
    re.ASCII,
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}


def alert_topic(kind: str, device: str) -> str:
    """``alerts/<kind>/<device>``; both parts must be safe topic levels."""
    return f"{ALERTS_PREFIX}{check_device_name(kind)}/{check_device_name(device)}"


@dataclass(frozen=True, slots=True)
class Rule:
    """Alert ``kind`` when the payload's numeric ``field`` compares ``op`` to ``threshold``.

    ``Rule("temp/+", ">", 30.0, "overheat")`` fires for any temperature sensor above 30.
    """

    topic_filter: str
    op: str
    threshold: float
    kind: str
    field: str = "value"

    def __post_init__(self) -> None:
        try:
            validate_topic_filter(self.topic_filter)
        except ProtocolError as exc:
            raise ConfigError(f"rule filter {self.topic_filter!r}: {exc}") from None
        if self.op not in _OPS:
            raise ConfigError(f"rule op must be one of {sorted(_OPS)}, got {self.op!r}")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"rule threshold must be finite, got {self.threshold!r}")
        try:
            check_device_name(self.kind)
        except ReadingError:
            raise ConfigError(f"rule kind {self.kind!r} is not a safe topic level") from None
        if not self.field:
            raise ConfigError("rule field must not be empty")

    def fires(self, value: float) -> bool:
        """Whether ``value`` crosses this rule's threshold."""
        return _OPS[self.op](value, self.threshold)


def parse_rule(text: str) -> Rule:
    """A rule from ``FILTER:FIELD OP VALUE[:KIND]``, e.g. ``temp/#:value>30:overheat``.

    OP is one of ``> < >= <=``; KIND (the alert topic's level) defaults to ``threshold``.
    ConfigError names what is wrong.
    """
    match = _RULE_SYNTAX.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"bad rule {text!r}: expected TOPICFILTER:FIELD>VALUE (or <, >=, <=), "
            "optionally followed by :KIND, e.g. 'temp/#:value>30:overheat'"
        )
    raw = match["value"]
    try:
        threshold = float(raw)
    except ValueError:
        raise ConfigError(f"bad rule {text!r}: threshold {raw!r} is not a number") from None
    kind = match["kind"] if match["kind"] is not None else DEFAULT_RULE_KIND
    try:
        return Rule(match["filter"], match["op"], threshold, kind.strip(), match["field"])
    except ConfigError as exc:
        raise ConfigError(f"bad rule {text!r}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert to publish: ``topic`` is ``alerts/<kind>/<device>``, ``payload`` JSON."""

    kind: str
    device: str
    topic: str
    payload: bytes
    qos: int = ALERT_QOS
    retain: bool = False


@dataclass(slots=True)
class AlertStats:
    """Counters the client exports as metrics (a suppressed alert is counted, not logged)."""

    raised: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    invalid: int = 0
    ignored: int = 0


def _device_of(topic: str) -> str | None:
    """The device a topic belongs to: its last level (the ACL binds it to the publisher)."""
    device = topic.rpartition("/")[2]
    try:
        return check_device_name(device)
    except ReadingError:
        return None


def _number(body: dict[str, object], name: str) -> float | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class AlertEngine:
    """Turns received messages into alerts, at most one per (kind, device) per ``holdoff``.

    Raised alerts also spend a token from the device's bucket and the global one; an alert
    either bucket refuses is dropped (and counted) without starting a hold-off.
    """

    __slots__ = (
        "_buckets",
        "_device_burst",
        "_device_rate",
        "_global",
        "_holdoff",
        "_last_raised",
        "_max_tracked",
        "_rules",
        "stats",
    )

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        holdoff: float = 60.0,
        rate: float = 5.0,
        burst: float = 20.0,
        device_rate: float = 0.5,
        device_burst: float = 5.0,
        max_tracked: int = 10_000,
    ) -> None:
        if not (math.isfinite(holdoff) and holdoff >= 0):
            raise ConfigError(f"holdoff must be a finite number >= 0, got {holdoff!r}")
        if max_tracked < 1:
            raise ConfigError("max_tracked must be >= 1")
        self._rules = tuple(rules)
        self._holdoff = float(holdoff)
        self._global = TokenBucket(rate, burst)
        self._device_rate = device_rate
        self._device_burst = device_burst
        TokenBucket(device_rate, device_burst)  # validate the per-device settings now
        self._max_tracked = max_tracked
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._last_raised: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.stats = AlertStats()

    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters the alert client must subscribe to (no duplicates)."""
        filters = [MOTION_FILTER, STATUS_FILTER, *(rule.topic_filter for rule in self._rules)]
        return tuple(dict.fromkeys(filters))

    def handle(self, topic: str, payload: bytes, now: datetime) -> list[Alert]:
        """The alerts one received message raises at ``now``; never raises on bad payloads."""
        stamp = epoch_seconds(now)
        device = _device_of(topic)
        if device is None or topic.startswith(ALERTS_PREFIX):  # never alert on our own alerts
            self.stats.ignored += 1
            return []
        candidates: list[_Hit] = []
        if topic_matches(STATUS_FILTER, topic):
            if bytes(payload) == OFFLINE:
                candidates.append(("offline", "device went offline", None, None))
        elif topic_matches(MOTION_FILTER, topic):
            candidates.extend(self._motion(payload))
        candidates.extend(self._thresholds(topic, payload))
        if not candidates:
            return []
        alerts = []
        for hit in candidates:
            if self._admit(hit[0], device, stamp):
                alerts.append(self._alert(hit, device, topic, now))
        return alerts

    def _motion(self, payload: bytes) -> list[_Hit]:
        try:
            reading = Reading.from_json(payload)
        except ReadingError:
            self.stats.invalid += 1
            return []
        if reading.value <= 0:
            return []
        return [("motion", "motion detected", reading.value, None)]

    def _thresholds(self, topic: str, payload: bytes) -> list[_Hit]:
        rules = [rule for rule in self._rules if topic_matches(rule.topic_filter, topic)]
        if not rules:
            return []
        try:
            body = load_json_object(payload, MAX_READING_BYTES)
        except ReadingError:
            self.stats.invalid += 1
            return []
        fired: list[_Hit] = []
        for rule in rules:
            value = _number(body, rule.field)
            if value is None:
                self.stats.invalid += 1
            elif rule.fires(value):
                detail = f"{rule.field} {value:g} {rule.op} {rule.threshold:g}"
                fired.append((rule.kind, detail, value, rule.threshold))
        return fired

    def _admit(self, kind: str, device: str, stamp: float) -> bool:
        key = (kind, device)
        last = self._last_raised.get(key)
        if last is not None and stamp - last < self._holdoff:  # a clock stepping back too
            self.stats.duplicates += 1
            return False
        bucket = self._bucket(device)
        if not (bucket.holds(stamp, 1.0) and self._global.holds(stamp, 1.0)):
            self.stats.rate_limited += 1
            return False
        bucket.spend(1.0)
        self._global.spend(1.0)
        self._last_raised[key] = stamp
        self._last_raised.move_to_end(key)
        if len(self._last_raised) > self._max_tracked:
            self._last_raised.popitem(last=False)
        self.stats.raised += 1
        return True

    def _bucket(self, device: str) -> TokenBucket:
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = TokenBucket(self._device_rate, self._device_burst)
            if len(self._buckets) > self._max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device)
        return bucket

    @staticmethod
    def _alert(hit: _Hit, device: str, topic: str, now: datetime) -> Alert:
        kind, detail, value, threshold = hit
        body: dict[str, object] = {
            "kind": kind,
            "device": device,
            "ts": format_timestamp(now),
            "message": f"{kind} alert from {device}: {detail}",
            "detail": detail,
            "topic": topic,
        }
        if value is not None:
            body["value"] = round(value, 2)
        if threshold is not None:
            body["threshold"] = threshold
        payload = json.dumps(body, separators=(",", ":")).encode()
        return Alert(kind, device, alert_topic(kind, device), payload, ALERT_QOS)
