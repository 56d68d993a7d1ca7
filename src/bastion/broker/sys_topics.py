"""The broker's ``$SYS/broker/...`` status topics, named as Mosquitto names them.

Every ``sys_interval`` seconds ``core.py`` asks ``SysTopics.collect`` for the values that
changed since the last round (uptime always) and publishes them retained at QoS 0.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.broker.stats import LOAD_WINDOWS, BrokerStats, LoadAverage

PREFIX = "$SYS/broker/"

_Counter = Callable[[BrokerStats], int]

# $SYS/broker/<name> -> counter, published as a plain integer.
GAUGES: tuple[tuple[str, _Counter], ...] = (
    ("clients/connected", lambda s: s.clients_connected),
    ("clients/disconnected", lambda s: s.clients_disconnected),
    ("clients/total", lambda s: s.clients_total),
    ("clients/maximum", lambda s: s.clients_maximum),
    ("messages/received", lambda s: s.messages_received),
    ("messages/sent", lambda s: s.messages_sent),
    ("publish/messages/received", lambda s: s.publish_messages_received),
    ("publish/messages/sent", lambda s: s.publish_messages_sent),
    ("publish/messages/dropped", lambda s: s.publish_messages_dropped),
    ("bytes/received", lambda s: s.bytes_received),
    ("bytes/sent", lambda s: s.bytes_sent),
    ("subscriptions/count", lambda s: s.subscriptions_count),
    ("retained messages/count", lambda s: s.retained_count),
    ("store/messages/refused", lambda s: s.store_refused),
    ("store/write failures", lambda s: s.store_write_failures),
    ("store/bytes", lambda s: s.store_bytes),
)

# $SYS/broker/load/<name>/<window> -> counter whose per-minute rate is averaged.
LOADS: tuple[tuple[str, _Counter], ...] = (
    ("messages/received", lambda s: s.messages_received),
    ("messages/sent", lambda s: s.messages_sent),
    ("publish/received", lambda s: s.publish_messages_received),
    ("publish/sent", lambda s: s.publish_messages_sent),
    ("publish/dropped", lambda s: s.publish_messages_dropped),
    ("bytes/received", lambda s: s.bytes_received),
    ("bytes/sent", lambda s: s.bytes_sent),
    ("connections", lambda s: s.connections_total),
)


class SysTopics:
    """Decides when ``$SYS`` is due and which topic values changed since last time."""

    def __init__(self, version: str, interval: float, stats: BrokerStats) -> None:
        self.interval = interval
        self._version = f"bastion version {version}"
        self._stats = stats
        self._started: float | None = None
        self._next: float | None = None
        self._published: dict[str, str] = {}
        self._loads: list[LoadAverage] = []

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def start(self, now: float) -> None:
        """Start the uptime clock; the first round is due at once."""
        self._started = now
        self._next = now
        self._loads = [LoadAverage(counter(self._stats), now) for _, counter in LOADS]

    def next_deadline(self) -> float | None:
        """When the next round is due (None when disabled or not started)."""
        return self._next if self.enabled else None

    def due(self, now: float) -> bool:
        """True when a round should be published at ``now`` (the first one at once)."""
        return self.enabled and (self._next is None or now >= self._next)

    def collect(self, now: float) -> list[tuple[str, str]]:
        """This round's ``(topic, value)`` pairs: uptime, and whatever else changed."""
        if self._started is None:
            self.start(now)
        assert self._started is not None
        self._next = now + self.interval
        stats = self._stats
        values: list[tuple[str, str]] = [
            ("version", self._version),
            ("uptime", f"{int(now - self._started)} seconds"),
        ]
        values.extend((name, str(counter(stats))) for name, counter in GAUGES)
        for (name, counter), load in zip(LOADS, self._loads, strict=True):
            load.update(counter(stats), now)
            for (window, _), rate in zip(LOAD_WINDOWS, load.values, strict=True):
                values.append((f"load/{name}/{window}", f"{rate:.2f}"))
        changed: list[tuple[str, str]] = []
        for name, value in values:
            if name == "uptime" or self._published.get(name) != value:
                self._published[name] = value
                changed.append((PREFIX + name, value))
        return changed


__all__ = ["GAUGES", "LOADS", "PREFIX", "SysTopics"]
