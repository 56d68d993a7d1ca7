"""The ``[mqtt]`` table: protocol limits and the features announced to clients.

Part of the settings schema (``schema.py`` is the root); the broker core reads it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from bastion.config.base import MAX_U32 as _MAX_U32
from bastion.config.base import Section as _Section

_CLIENT_ID_PREFIX = re.compile(r"[A-Za-z0-9_.-]*")


def _check_client_id_prefix(prefix: str) -> str:
    if not _CLIENT_ID_PREFIX.fullmatch(prefix):
        raise PydanticCustomError(
            "bastion_client_id_prefix",
            "expected only letters, digits, '_', '.' and '-', got {prefix}",
            {"prefix": json.dumps(prefix)},
        )
    return prefix


class MqttSettings(_Section):
    """Protocol limits and the features announced to clients (the ``[mqtt]`` table)."""

    max_keepalive: int = Field(
        default=65535,
        ge=0,
        le=65535,
        description=(
            "Longest keep-alive interval, in seconds, a client may use. An MQTT 5 client that "
            "asks for more, or for 0 (no keep-alive), is told this value as Server Keep Alive."
        ),
    )
    max_packet_size: int = Field(
        default=1_048_576,
        ge=64,
        le=268_435_460,
        description=(
            "Largest packet, in bytes, accepted from a client (announced to MQTT 5 clients as "
            "Maximum Packet Size). A bigger packet closes the connection."
        ),
    )
    receive_maximum: int = Field(
        default=1024,
        ge=1,
        le=65535,
        description=(
            "How many inbound QoS 1/2 publications a client may have unacknowledged at once "
            "(the server's Receive Maximum)."
        ),
    )
    topic_alias_maximum: int = Field(
        default=64,
        ge=0,
        le=65535,
        description="How many topic aliases a client may use towards the server; 0 refuses them.",
    )
    max_inflight_messages: int = Field(
        default=32,
        ge=1,
        le=65535,
        description=(
            "Cap on outbound QoS 1/2 messages in flight per client; the effective window is the "
            "smaller of this and the client's own Receive Maximum."
        ),
    )
    max_queued_messages: int = Field(
        default=1000,
        ge=0,
        le=10_000_000,
        description=(
            "Messages queued per offline or slow session beyond the in-flight window; "
            "0 queues nothing."
        ),
    )
    max_queued_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        le=1 << 40,
        description=(
            "Bytes (payload plus topic) queued per offline or slow session; with "
            "`max_queued_messages`, whichever is reached first bounds the queue. Only QoS 1/2 "
            "copies are ever queued (QoS 0 goes out at once or is dropped), so a full queue "
            "drops the newest QoS 1/2 copy after discarding expired ones; drops are counted and "
            "logged once per episode. 0 queues nothing."
        ),
    )
    max_publisher_hold: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description=(
            "Backpressure: when a connected subscriber's QoS 1/2 queue is half full, the broker "
            "stops reading from the publishers feeding it until the queue drains to an eighth, "
            "so acknowledged messages are not dropped while it catches up. A hold lasts at most "
            "this many seconds; a subscriber still behind then is marked lagging for 30 s, holds "
            "nobody, and its overflow is dropped (counted). 0 turns backpressure off."
        ),
    )
    max_inflight_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        le=1 << 40,
        description=(
            "Bytes (payload plus topic) of outbound QoS 1/2 messages in flight per client; a new "
            "message starts only while less than this is in flight (so one larger message still "
            "goes out alone), the rest wait in the queue."
        ),
    )
    max_message_size: int = Field(
        default=256 * 1024,
        ge=0,
        le=268_435_455,
        description=(
            "Largest application message payload, in bytes, accepted from a client (wills "
            "included); 0 leaves only `max_packet_size`. MQTT 5 QoS 1/2 publications over it "
            "get PUBACK/PUBREC 0x97 Quota exceeded (0x95 is not a PUBACK code); QoS 0 and MQTT "
            "3.1.1 publishers are disconnected (DISCONNECT 0x97 on MQTT 5); a will over it "
            "refuses the CONNECT (CONNACK 0x97)."
        ),
    )
    max_topic_length: int = Field(
        default=1024,
        ge=1,
        le=65535,
        description=(
            "Longest topic name or topic filter, in UTF-8 bytes (a `$share/<group>/` prefix "
            "counts). A longer topic name is refused like `max_topic_levels` says; a longer "
            "filter gets SUBACK 0x8F Topic Filter invalid (0x80 on MQTT 3.1.1)."
        ),
    )
    max_topic_levels: int = Field(
        default=32,
        ge=1,
        le=65535,
        description=(
            "Most `/`-separated levels in a topic name or filter. A PUBLISH over this or "
            "`max_topic_length` gets PUBACK/PUBREC 0x90 Topic Name invalid on MQTT 5 QoS 1/2; "
            "QoS 0 and MQTT 3.1.1 publishers are disconnected (DISCONNECT 0x90 on MQTT 5); a "
            "will over it gets CONNACK 0x90."
        ),
    )
    max_subscriptions_per_client: int = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description=(
            "Most subscriptions one session may hold; a new filter beyond it gets SUBACK 0x97 "
            "Quota exceeded (0x80 on MQTT 3.1.1). Re-subscribing to a held filter always works."
        ),
    )
    max_delivery_attempts: int = Field(
        default=3,
        ge=0,
        le=1000,
        description=(
            "Times a QoS 1/2 message (or a QoS 2 PUBREL) is sent to a client that keeps "
            "reconnecting without acknowledging it; after that the flow is dropped for that "
            "client, counted and reported as a security event, so a message that makes a "
            "subscriber disconnect cannot be redelivered forever. 0 resends without limit."
        ),
    )
    max_awaiting_rel: int = Field(
        default=100,
        ge=1,
        le=65535,
        description=(
            "Inbound QoS 2 messages per session that may wait for their PUBREL. One more gets "
            "PUBREC 0x97 Quota exceeded on MQTT 5 (the message is not routed); an MQTT 3.1.1 "
            "client is disconnected."
        ),
    )
    awaiting_rel_timeout: float = Field(
        default=300.0,
        ge=0,
        le=604_800,
        allow_inf_nan=False,
        description=(
            "Seconds an inbound QoS 2 packet identifier waits for its PUBREL before it is "
            "forgotten (the message was already routed; a late PUBREL gets PUBCOMP 0x92). "
            "0 waits forever."
        ),
    )
    max_qos: int = Field(
        default=2,
        ge=0,
        le=2,
        description=(
            "Highest QoS the server accepts and grants (announced as Maximum QoS); "
            "`listeners[].max_qos` and `[security.users.NAME] max_qos` can lower it per "
            "connection."
        ),
    )
    retain_available: bool = Field(
        default=True,
        description="Whether retained messages are supported (announced as Retain Available).",
    )
    wildcard_subscription_available: bool = Field(
        default=True,
        description="Whether subscriptions may use the `+` and `#` wildcards.",
    )
    subscription_identifier_available: bool = Field(
        default=True,
        description="Whether MQTT 5 subscription identifiers are supported.",
    )
    shared_subscription_available: bool = Field(
        default=True,
        description="Whether `$share/<group>/<filter>` shared subscriptions are supported.",
    )
    max_session_expiry_interval: int = Field(
        default=_MAX_U32,
        ge=0,
        le=_MAX_U32,
        description=(
            "Longest session expiry interval, in seconds, an MQTT 5 client may ask for; larger "
            "requests are capped. 4294967295 means a session may be kept forever."
        ),
    )
    persistent_client_expiration: int | None = Field(
        default=None,
        ge=0,
        le=_MAX_U32,
        description=(
            "Seconds an MQTT 3.1.1 session with clean_session=0 is kept after its client "
            "disconnects; unset keeps it forever."
        ),
    )
    client_id_prefix: Annotated[
        str, Field(max_length=32), AfterValidator(_check_client_id_prefix)
    ] = Field(
        default="auto-",
        description=(
            "Prefix of the client identifiers the server assigns to clients that connect with "
            "an empty one (letters, digits, `_`, `.`, `-`)."
        ),
    )
    max_client_id_length: int = Field(
        default=65535,
        ge=23,
        le=65535,
        description=(
            "Longest client identifier accepted, in bytes (MQTT requires at least 23 to be "
            "accepted)."
        ),
    )
    sys_interval: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Seconds between `$SYS/` topic updates; 0 disables them.",
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description=(
            "Seconds a new network connection has to send its CONNECT packet before it is closed."
        ),
    )
    server_assigns_topic_aliases: bool = Field(
        default=True,
        description=(
            "Whether the server assigns topic aliases on outbound publications, within the "
            "client's Topic Alias Maximum."
        ),
    )


__all__ = ["MqttSettings"]
