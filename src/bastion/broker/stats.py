"""Broker counters and their smoothed per-minute rates, the numbers behind ``$SYS``.

The broker core increments the message counters; the transport adds byte counts
(``broker.stats.bytes_received += n``). ``sys_topics.py`` turns them into ``$SYS`` values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

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
    # Defences that fired (one per refused packet or dropped copy; see ``count``).
    protocol_violations: int = 0  # connections closed for breaking the protocol
    invalid_utf8: int = 0  # connections closed for a string that is not well-formed UTF-8
    payload_format_invalid: int = 0  # format indicator 1 with a non-UTF-8 payload
    topic_limit_refused: int = 0  # topic names over max_topic_length / max_topic_levels
    filter_limit_refused: int = 0  # topic filters over the same limits
    message_size_refused: int = 0  # payloads over max_message_size
    subscription_quota_refused: int = 0  # filters over max_subscriptions_per_client
    awaiting_rel_refused: int = 0  # QoS 2 messages over max_awaiting_rel
    awaiting_rel_expired: int = 0  # QoS 2 ids forgotten after awaiting_rel_timeout
    messages_dropped_queue_full: int = 0  # copies over max_queued_messages / _bytes
    messages_dropped_redelivery: int = 0  # flows abandoned after max_delivery_attempts
    acl_denied: int = 0  # PUBLISH / SUBSCRIBE refused by the ACL
    # Persistence (kept by the core and the runtime's group committer).
    store_refused: int = 0  # QoS 1/2 messages refused (0x97 / 0x80 / closed): store full or failing
    store_write_failures: int = 0  # group commits that failed
    store_bytes: int = 0  # database + write-ahead log, at the last check

    @property
    def clients_disconnected(self) -> int:
        """Sessions that persist while their client is offline."""
        return self.clients_total - self.clients_connected

    def client_connected(self) -> None:
        self.clients_connected += 1
        self.connections_total += 1
        self.clients_maximum = max(self.clients_maximum, self.clients_connected)

    def count(self, defence: Defence, n: int = 1) -> None:
        """Add ``n`` to the counter of ``defence``."""
        name = COUNTER_OF[defence]
        setattr(self, name, getattr(self, name) + n)


class Defence(StrEnum):
    """A check or bound of the broker core that fired; the value names it in logs."""

    PROTOCOL_VIOLATION = "protocol_violation"  # connection closed for breaking the protocol
    INVALID_UTF8 = "invalid_utf8"  # a string field not well-formed UTF-8 (or with U+0000)
    PAYLOAD_FORMAT_INVALID = "payload_format_invalid"  # format indicator 1, payload not UTF-8
    TOPIC_LIMIT = "topic_limit"  # topic name over max_topic_length / max_topic_levels
    FILTER_LIMIT = "filter_limit"  # topic filter over max_topic_length / max_topic_levels
    MESSAGE_SIZE = "message_size"  # payload over max_message_size
    SUBSCRIPTION_QUOTA = "subscription_quota"  # max_subscriptions_per_client reached
    AWAITING_REL_QUOTA = "awaiting_rel_quota"  # max_awaiting_rel QoS 2 ids pending PUBREL
    AWAITING_REL_TIMEOUT = "awaiting_rel_timeout"  # a QoS 2 id waited awaiting_rel_timeout
    QUEUE_FULL = "queue_full"  # max_queued_messages / max_queued_bytes: copies dropped
    REDELIVERY_EXHAUSTED = "redelivery_exhausted"  # max_delivery_attempts: flows dropped
    ACL_DENIED = "acl_denied"  # a PUBLISH or SUBSCRIBE the ACL does not allow


# The BrokerStats counter each defence adds to.
COUNTER_OF: Final[Mapping[Defence, str]] = MappingProxyType(
    {
        Defence.PROTOCOL_VIOLATION: "protocol_violations",
        Defence.INVALID_UTF8: "invalid_utf8",
        Defence.PAYLOAD_FORMAT_INVALID: "payload_format_invalid",
        Defence.TOPIC_LIMIT: "topic_limit_refused",
        Defence.FILTER_LIMIT: "filter_limit_refused",
        Defence.MESSAGE_SIZE: "message_size_refused",
        Defence.SUBSCRIPTION_QUOTA: "subscription_quota_refused",
        Defence.AWAITING_REL_QUOTA: "awaiting_rel_refused",
        Defence.AWAITING_REL_TIMEOUT: "awaiting_rel_expired",
        Defence.QUEUE_FULL: "messages_dropped_queue_full",
        Defence.REDELIVERY_EXHAUSTED: "messages_dropped_redelivery",
        Defence.ACL_DENIED: "acl_denied",
    }
)


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


__all__ = ["COUNTER_OF", "LOAD_WINDOWS", "BrokerStats", "Defence", "LoadAverage"]
