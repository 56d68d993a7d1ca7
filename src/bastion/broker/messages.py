"""Application messages inside the broker: what was published, and one copy on its way out.

``delivery.py`` routes ``Message`` values and queues ``Delivery`` copies on sessions
(``sessions.py``); this module also turns a copy back into an outgoing ``Publish``.
"""

from __future__ import annotations

import math
from dataclasses import field, replace
from typing import TYPE_CHECKING

from bastion.mqtt.packets import NO_PROPERTIES, Properties, Publish, Will
from bastion.records import record

if TYPE_CHECKING:
    from bastion.broker.subscriptions import SharedGroup


SYS_TOPIC_ROOT = "$SYS"


def is_broker_topic(topic: str) -> bool:
    """True for ``$SYS`` topics, which only the broker itself publishes to."""
    return topic.startswith(SYS_TOPIC_ROOT) and topic[
        len(SYS_TOPIC_ROOT) : len(SYS_TOPIC_ROOT) + 1
    ] in ("", "/")


@record
class Message:
    """A published application message, as routed and retained by the broker.

    ``properties`` never carries a topic alias or subscription identifiers (those belong to
    one hop); ``expires_at`` is the monotonic deadline derived from the Message Expiry
    Interval, and ``origin`` the client id of the publisher (None for the broker itself).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties = NO_PROPERTIES
    expires_at: float | None = None
    origin: str | None = None
    ident: int = field(default=0, compare=False)  # the id persistence stores it under

    @property
    def size(self) -> int:
        """What one copy counts against a session's byte bounds: payload plus topic."""
        return len(self.payload) + len(self.topic)

    def is_expired(self, now: float) -> bool:
        """True once the message's expiry interval has run out."""
        return self.expires_at is not None and now >= self.expires_at

    def remaining_expiry(self, now: float) -> int | None:
        """The Message Expiry Interval to forward at ``now`` (whole seconds, at least 1)."""
        if self.expires_at is None:
            return None
        return max(1, math.ceil(self.expires_at - now))


def _hop_free(properties: Properties) -> Properties:
    """``properties`` without the ones that only make sense on one network hop."""
    if properties.topic_alias is None and not properties.subscription_identifiers:
        return properties
    return replace(properties, topic_alias=None, subscription_identifiers=())


def _deadline(properties: Properties, now: float) -> float | None:
    interval = properties.message_expiry_interval
    return None if interval is None else now + interval


def message_from_publish(packet: Publish, origin: str, now: float, ident: int = 0) -> Message:
    """The message a client's PUBLISH carries, received at ``now`` (``ident``: its id)."""
    props = packet.properties
    return Message(
        packet.topic,
        packet.payload,
        packet.qos,
        packet.retain,
        _hop_free(props),
        _deadline(props, now),
        origin,
        ident,
    )


def message_from_will(will: Will, origin: str, now: float, ident: int = 0) -> Message:
    """The message a Will turns into when it is published at ``now``.

    Will properties that are not message properties (the Will Delay Interval) are dropped.
    """
    props = will.properties
    if props.will_delay_interval is not None:
        props = replace(props, will_delay_interval=None)
    return Message(
        will.topic,
        will.payload,
        will.qos,
        will.retain,
        _hop_free(props),
        _deadline(props, now),
        origin,
        ident,
    )


@record
class Delivery:
    """One copy of a message for one session, with the options of the matching subscriptions.

    ``group`` is the shared subscription group the copy was chosen through (``None`` for an
    ordinary subscription); it lets an undelivered copy move to another group member, which
    inherits the transmissions made so far in ``attempts``.
    """

    message: Message
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...] = ()
    group: SharedGroup | None = None
    attempts: int = 0


def outgoing_publish(
    delivery: Delivery,
    packet_id: int | None,
    protocol_version: int,
    now: float,
    *,
    dup: bool = False,
) -> Publish:
    """The PUBLISH packet that carries ``delivery`` to a client at ``now``."""
    return publish_packet(
        delivery.message,
        delivery.qos,
        delivery.retain,
        delivery.subscription_ids,
        packet_id,
        protocol_version,
        now,
        dup=dup,
    )


def publish_packet(  # noqa: PLR0917 - the parts of one outgoing PUBLISH
    message: Message,
    qos: int,
    retain: bool,
    subscription_ids: tuple[int, ...],
    packet_id: int | None,
    protocol_version: int,
    now: float,
    *,
    dup: bool = False,
) -> Publish:
    """The PUBLISH that carries ``message`` with one subscriber's options at ``now``."""
    if protocol_version < 5:
        properties = NO_PROPERTIES
    else:
        properties = message.properties
        expiry = message.remaining_expiry(now)
        if expiry is not None or subscription_ids:
            properties = replace(
                properties,
                message_expiry_interval=expiry,
                subscription_identifiers=subscription_ids,
            )
    return Publish(message.topic, message.payload, qos, retain, dup, packet_id, properties)


__all__ = [
    "SYS_TOPIC_ROOT",
    "Delivery",
    "Message",
    "is_broker_topic",
    "message_from_publish",
    "message_from_will",
    "outgoing_publish",
    "publish_packet",
]
