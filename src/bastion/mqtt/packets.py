"""MQTT control packets as typed, immutable values (MQTT 3.1.1 and 5.0).

``codec.py`` turns bytes into these values and back; ``connection.py`` and the broker
core only ever see these types. Field defaults are the values the spec assumes when a
field or property is absent.
"""

from __future__ import annotations

from enum import IntEnum

from bastion.records import record


class PacketType(IntEnum):
    """The fixed-header packet type (high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class ProtocolVersion(IntEnum):
    """Protocol level byte of CONNECT."""

    MQTT_3_1 = 3
    MQTT_3_1_1 = 4
    MQTT_5 = 5


UserProperties = tuple[tuple[str, str], ...]


@record
class Properties:
    """MQTT 5 properties; ``None`` (or an empty tuple) means absent.

    Which property may appear in which packet is checked by the codec
    (``properties.ALLOWED``); this value type just carries them.
    """

    payload_format_indicator: int | None = None  # 0x01 byte
    message_expiry_interval: int | None = None  # 0x02 four-byte int
    content_type: str | None = None  # 0x03
    response_topic: str | None = None  # 0x08
    correlation_data: bytes | None = None  # 0x09
    subscription_identifiers: tuple[int, ...] = ()  # 0x0B variable byte int, repeatable
    session_expiry_interval: int | None = None  # 0x11 four-byte int
    assigned_client_identifier: str | None = None  # 0x12
    server_keep_alive: int | None = None  # 0x13 two-byte int
    authentication_method: str | None = None  # 0x15
    authentication_data: bytes | None = None  # 0x16
    request_problem_information: int | None = None  # 0x17 byte
    will_delay_interval: int | None = None  # 0x18 four-byte int
    request_response_information: int | None = None  # 0x19 byte
    response_information: str | None = None  # 0x1A
    server_reference: str | None = None  # 0x1C
    reason_string: str | None = None  # 0x1F
    receive_maximum: int | None = None  # 0x21 two-byte int
    topic_alias_maximum: int | None = None  # 0x22 two-byte int
    topic_alias: int | None = None  # 0x23 two-byte int
    maximum_qos: int | None = None  # 0x24 byte
    retain_available: int | None = None  # 0x25 byte
    user_properties: UserProperties = ()  # 0x26 string pair, repeatable
    maximum_packet_size: int | None = None  # 0x27 four-byte int
    wildcard_subscription_available: int | None = None  # 0x28 byte
    subscription_identifier_available: int | None = None  # 0x29 byte
    shared_subscription_available: int | None = None  # 0x2A byte


NO_PROPERTIES = Properties()


@record
class Will:
    """The Will Message carried in CONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@record
class Connect:
    protocol_version: int  # ProtocolVersion value
    client_id: str
    clean_start: bool = True
    keep_alive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES
    protocol_name: str = "MQTT"  # "MQIsdp" for 3.1

    packet_type = PacketType.CONNECT


@record
class Connack:
    session_present: bool = False
    reason_code: int = 0  # MQTT 5 reason code; the codec maps it to a 3.1.1 return code
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.CONNACK


@record
class Publish:
    topic: str  # "" when only a topic alias is sent
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # set iff qos > 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.PUBLISH


@record
class Puback:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.PUBACK


@record
class Pubrec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.PUBREC


@record
class Pubrel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.PUBREL


@record
class Pubcomp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.PUBCOMP


@record
class Subscription:
    """One topic filter with its subscription options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@record
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.SUBSCRIBE


@record
class Suback:
    packet_id: int
    reason_codes: tuple[int, ...]  # MQTT 5 codes; 3.1.1 maps >=0x80 to 0x80
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.SUBACK


@record
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.UNSUBSCRIBE


@record
class Unsuback:
    packet_id: int
    reason_codes: tuple[int, ...] = ()  # absent on the wire for 3.1.1
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.UNSUBACK


@record
class Pingreq:
    packet_type = PacketType.PINGREQ


@record
class Pingresp:
    packet_type = PacketType.PINGRESP


@record
class Disconnect:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.DISCONNECT


@record
class Auth:
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    packet_type = PacketType.AUTH


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

__all__ = [
    "NO_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "ProtocolVersion",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
    "UserProperties",
    "Will",
]
