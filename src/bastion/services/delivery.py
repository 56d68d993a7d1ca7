"""What a ``netclient.ServiceClient`` hands over: messages it received, the fate of a publish.

``Received`` is one delivered message (with what a manual acknowledgement needs);
``Delivery`` waits for the broker's acknowledgement of a publish; ``ClientStats`` counts both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ClientStats", "Delivery", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """An application message as delivered to this client (``qos`` is the delivery QoS).

    ``mid`` and ``connection`` (which connection of the client delivered it) are what
    ``ServiceClient.ack`` needs; ``content_type`` and ``user_properties`` are the MQTT 5
    properties, if the publisher set them.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    mid: int = 0
    connection: int = 0

    @classmethod
    def from_paho(cls, message: Any, connection: int) -> Received:
        """The ``Received`` of a paho message; UnicodeDecodeError if its topic is not UTF-8."""
        topic = message.topic
        props = getattr(message, "properties", None)
        content_type = getattr(props, "ContentType", None)
        pairs = getattr(props, "UserProperty", None) or []
        return cls(
            topic,
            bytes(message.payload),
            int(message.qos),
            bool(message.retain),
            tuple((str(k), str(v)) for k, v in pairs),
            content_type if isinstance(content_type, str) else None,
            int(message.mid),
            connection,
        )


@dataclass(slots=True)
class ClientStats:
    """Counters of one client (read them from any thread; they only grow)."""

    connects: int = 0
    connect_failures: int = 0
    connection_losses: int = 0
    published: int = 0
    not_connected: int = 0  # publishes dropped because the client was not connected
    refused: int = 0  # publishes the broker refused (PUBACK/PUBREC reason >= 0x80)
    received: int = 0
    inbox_dropped: int = 0
    bad_topics: int = 0  # messages skipped because their topic is not UTF-8


class Delivery:
    """The fate of one publish: ``accepted`` by the client, ``wait`` for the broker's ack."""

    __slots__ = ("_info",)

    def __init__(self, info: Any = None) -> None:
        self._info = info

    @property
    def accepted(self) -> bool:
        """Whether the message was handed to the connection (False: not connected or full)."""
        return self._info is not None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the publish to complete (sent for QoS 0,
        PUBACK/PUBCOMP for QoS 1/2); False if it did not."""
        if self._info is None:
            return False
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._published():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.02, left))
        return True

    def _published(self) -> bool:
        try:
            return bool(self._info.is_published())
        except (ValueError, RuntimeError):  # the connection was lost before it went out
            return False
