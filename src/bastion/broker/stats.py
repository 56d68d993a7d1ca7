"""Broker counters and their smoothed per-minute rates, the numbers behind ``$SYS``.

The broker core increments the message counters; the transport adds byte counts
(``broker.stats.bytes_received += n``). ``sys_topics.py`` turns them into ``$SYS`` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Averaging windows of Mosquitto's $SYS/broker/load/... topics, in seconds.
LOAD_WINDOWS: tuple[tuple[str, float], ...] = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


@dataclass(slots=True)
class BrokerStats:
    """Counters since start; ``clients_*`` and the gauges are kept current by the core."""

    clients_connected: int = 0
    clients_total: int = 0  # sessions known: connected plus offline persistent ones
    clients_maximum: int = 0  # highest clients_connected seen
    connections_total: int = 0  # accepted connections since start
    messages_received: int = 0  # every MQTT control packet received
    messages_sent: int = 0  # every MQTT control packet sent
    publish_messages_received: int = 0
    publish_messages_sent: int = 0
    publish_messages_dropped: int = 0  # queue full, expired, or too large for the client
    bytes_received: int = 0  # incremented by the transport
    bytes_sent: int = 0  # incremented by the transport
    subscriptions_count: int = 0
    retained_count: int = 0

    @property
    def clients_disconnected(self) -> int:
        """Sessions that persist while their client is offline."""
        return self.clients_total - self.clients_connected

    def client_connected(self) -> None:
        self.clients_connected += 1
        self.connections_total += 1
        self.clients_maximum = max(self.clients_maximum, self.clients_connected)


class LoadAverage:
    """Exponentially smoothed per-minute rate of one counter over 1, 5 and 15 minutes.

    Updated once per ``$SYS`` interval the way Mosquitto does: the rate of the last
    interval is blended in with weight ``1 - exp(-elapsed / window)``.
    """

    __slots__ = ("_last_count", "_last_time", "values")

    def __init__(self, count: int, now: float) -> None:
        self._last_count = count
        self._last_time = now
        self.values = [0.0 for _ in LOAD_WINDOWS]

    def update(self, count: int, now: float) -> None:
        """Blend in the rate since the previous update."""
        elapsed = now - self._last_time
        if elapsed <= 0:
            return
        rate = (count - self._last_count) * 60.0 / elapsed
        for i, (_, window) in enumerate(LOAD_WINDOWS):
            weight = math.exp(-elapsed / window)
            self.values[i] = rate + weight * (self.values[i] - rate)
        self._last_count = count
        self._last_time = now


__all__ = ["LOAD_WINDOWS", "BrokerStats", "LoadAverage"]
