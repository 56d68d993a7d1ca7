"""MQTT 5 reason codes, which of them each packet may carry, and the 3.1.1 CONNACK mapping.

``codec.py`` validates decoded reason codes against ``VALID_REASON_CODES`` and maps CONNACK
reasons down for 3.1.1 peers; ``bastion.errors.ProtocolError.reason`` holds one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from bastion.mqtt.packets import PacketType


class ReasonCode(IntEnum):
    """Every reason code of MQTT 5.0 (OASIS spec, table 2-6), named as the spec names them."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


_R = ReasonCode

_PUBACK_PUBREC: Final = frozenset(
    {
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    }
)
_PUBREL_PUBCOMP: Final = frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND})

# Which reason codes an MQTT 5 packet may carry (spec sections 3.2.2.2, 3.4.2.1, ... 3.15.2.1).
# Packets without a reason code have no row.
VALID_REASON_CODES: Final[Mapping[PacketType, frozenset[int]]] = MappingProxyType(
    {
        PacketType.CONNACK: frozenset(
            {
                _R.SUCCESS,
                _R.UNSPECIFIED_ERROR,
                _R.MALFORMED_PACKET,
                _R.PROTOCOL_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.UNSUPPORTED_PROTOCOL_VERSION,
                _R.CLIENT_IDENTIFIER_NOT_VALID,
                _R.BAD_USER_NAME_OR_PASSWORD,
                _R.NOT_AUTHORIZED,
                _R.SERVER_UNAVAILABLE,
                _R.SERVER_BUSY,
                _R.BANNED,
                _R.BAD_AUTHENTICATION_METHOD,
                _R.TOPIC_NAME_INVALID,
                _R.PACKET_TOO_LARGE,
                _R.QUOTA_EXCEEDED,
                _R.PAYLOAD_FORMAT_INVALID,
                _R.RETAIN_NOT_SUPPORTED,
                _R.QOS_NOT_SUPPORTED,
                _R.USE_ANOTHER_SERVER,
                _R.SERVER_MOVED,
                _R.CONNECTION_RATE_EXCEEDED,
            }
        ),
        PacketType.PUBACK: _PUBACK_PUBREC,
        PacketType.PUBREC: _PUBACK_PUBREC,
        PacketType.PUBREL: _PUBREL_PUBCOMP,
        PacketType.PUBCOMP: _PUBREL_PUBCOMP,
        PacketType.SUBACK: frozenset(
            {
                _R.GRANTED_QOS_0,
                _R.GRANTED_QOS_1,
                _R.GRANTED_QOS_2,
                _R.UNSPECIFIED_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.TOPIC_FILTER_INVALID,
                _R.PACKET_IDENTIFIER_IN_USE,
                _R.QUOTA_EXCEEDED,
                _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            }
        ),
        PacketType.UNSUBACK: frozenset(
            {
                _R.SUCCESS,
                _R.NO_SUBSCRIPTION_EXISTED,
                _R.UNSPECIFIED_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.TOPIC_FILTER_INVALID,
                _R.PACKET_IDENTIFIER_IN_USE,
            }
        ),
        PacketType.DISCONNECT: frozenset(
            {
                _R.NORMAL_DISCONNECTION,
                _R.DISCONNECT_WITH_WILL_MESSAGE,
                _R.UNSPECIFIED_ERROR,
                _R.MALFORMED_PACKET,
                _R.PROTOCOL_ERROR,
                _R.IMPLEMENTATION_SPECIFIC_ERROR,
                _R.NOT_AUTHORIZED,
                _R.SERVER_BUSY,
                _R.SERVER_SHUTTING_DOWN,
                _R.KEEP_ALIVE_TIMEOUT,
                _R.SESSION_TAKEN_OVER,
                _R.TOPIC_FILTER_INVALID,
                _R.TOPIC_NAME_INVALID,
                _R.RECEIVE_MAXIMUM_EXCEEDED,
                _R.TOPIC_ALIAS_INVALID,
                _R.PACKET_TOO_LARGE,
                _R.MESSAGE_RATE_TOO_HIGH,
                _R.QUOTA_EXCEEDED,
                _R.ADMINISTRATIVE_ACTION,
                _R.PAYLOAD_FORMAT_INVALID,
                _R.RETAIN_NOT_SUPPORTED,
                _R.QOS_NOT_SUPPORTED,
                _R.USE_ANOTHER_SERVER,
                _R.SERVER_MOVED,
                _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                _R.CONNECTION_RATE_EXCEEDED,
                _R.MAXIMUM_CONNECT_TIME,
                _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            }
        ),
        PacketType.AUTH: frozenset({_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.REAUTHENTICATE}),
    }
)

# SUBACK return codes that exist in MQTT 3.1.1 (0x80 is "Failure").
SUBACK_RETURN_CODES_V311: Final = frozenset({0x00, 0x01, 0x02, 0x80})

# MQTT 5 CONNACK reason -> MQTT 3.1.1 CONNACK return code.
#   0 accepted
#   1 unacceptable protocol version   <- 0x84
#   2 identifier rejected             <- 0x85
#   3 server unavailable              <- conditions on the server side that may pass, or a
#                                        redirect: 0x80 0x83 0x88 0x89 0x97 0x9C 0x9D 0x9F
#   4 bad user name or password       <- 0x86
#   5 not authorized                  <- 0x87, 0x8A banned, 0x8C bad authentication method,
#                                        and refusals of what the CONNECT asked for, where
#                                        retrying the same CONNECT cannot help: 0x81 0x82 0x90
#                                        0x95 0x99 0x9A 0x9B (a 3.1.1 server should rather
#                                        close without CONNACK on 0x81/0x82; the caller decides)
_CONNACK_V311: Final[Mapping[int, int]] = MappingProxyType(
    {
        _R.SUCCESS: 0,
        _R.UNSUPPORTED_PROTOCOL_VERSION: 1,
        _R.CLIENT_IDENTIFIER_NOT_VALID: 2,
        _R.UNSPECIFIED_ERROR: 3,
        _R.IMPLEMENTATION_SPECIFIC_ERROR: 3,
        _R.SERVER_UNAVAILABLE: 3,
        _R.SERVER_BUSY: 3,
        _R.QUOTA_EXCEEDED: 3,
        _R.USE_ANOTHER_SERVER: 3,
        _R.SERVER_MOVED: 3,
        _R.CONNECTION_RATE_EXCEEDED: 3,
        _R.BAD_USER_NAME_OR_PASSWORD: 4,
        _R.NOT_AUTHORIZED: 5,
        _R.BANNED: 5,
        _R.BAD_AUTHENTICATION_METHOD: 5,
        _R.MALFORMED_PACKET: 5,
        _R.PROTOCOL_ERROR: 5,
        _R.TOPIC_NAME_INVALID: 5,
        _R.PACKET_TOO_LARGE: 5,
        _R.PAYLOAD_FORMAT_INVALID: 5,
        _R.RETAIN_NOT_SUPPORTED: 5,
        _R.QOS_NOT_SUPPORTED: 5,
    }
)

# MQTT 3.1.1 CONNACK return code -> the MQTT 5 reason code that stands for it on decode.
CONNACK_REASON_FROM_V311: Final[Mapping[int, int]] = MappingProxyType(
    {
        0: _R.SUCCESS,
        1: _R.UNSUPPORTED_PROTOCOL_VERSION,
        2: _R.CLIENT_IDENTIFIER_NOT_VALID,
        3: _R.SERVER_UNAVAILABLE,
        4: _R.BAD_USER_NAME_OR_PASSWORD,
        5: _R.NOT_AUTHORIZED,
    }
)


def connack_return_code_v311(reason: int) -> int:
    """Map an MQTT 5 CONNACK reason code to the MQTT 3.1.1 return code (0-5).

    The table above documents the choices. A failure code (>= 0x80) outside it maps to
    5 (not authorized): a refusal that does not invite the client to retry. A non-zero
    success code is not a CONNACK reason at all and raises ``ValueError``.
    """
    code = _CONNACK_V311.get(reason)
    if code is not None:
        return code
    if 0x80 <= reason <= 0xFF:
        return 5
    raise ValueError(f"0x{reason:02X} is not a CONNACK reason code")


__all__ = [
    "CONNACK_REASON_FROM_V311",
    "SUBACK_RETURN_CODES_V311",
    "VALID_REASON_CODES",
    "ReasonCode",
    "connack_return_code_v311",
]
