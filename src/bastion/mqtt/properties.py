"""MQTT 5 properties: identifiers, wire types, which packet may carry which, and the codec.

``codec.py`` calls ``encode_properties``/``decode_properties`` for every MQTT 5 packet;
values land in ``packets.Properties``; primitives come from ``wire.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Final

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt.packets import NO_PROPERTIES, PacketType, Properties
from bastion.mqtt.reason_codes import ReasonCode
from bastion.mqtt.wire import (
    Buffer,
    byte,
    encode_binary,
    encode_utf8,
    encode_variable_byte_int,
    pack_u16,
    pack_u32,
    read_binary,
    read_u8,
    read_u16,
    read_u32,
    read_utf8,
    read_variable_byte_int,
)


class PropertyId(IntEnum):
    """Property identifiers (spec 2.2.2.2, table 2-4)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class WireType(IntEnum):
    """Data representations of spec section 1.5."""

    BYTE = 1
    TWO_BYTE_INT = 2
    FOUR_BYTE_INT = 3
    VARIABLE_BYTE_INT = 4
    UTF8_STRING = 5
    BINARY_DATA = 6
    UTF8_STRING_PAIR = 7


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One row of the property table: identifier, wire type, ``Properties`` field."""

    id: PropertyId
    wire_type: WireType
    field: str


_P = PropertyId
_W = WireType

# The property table, in identifier order (also the order properties are encoded in).
PROPERTY_SPECS: Final[tuple[PropertySpec, ...]] = (
    PropertySpec(_P.PAYLOAD_FORMAT_INDICATOR, _W.BYTE, "payload_format_indicator"),
    PropertySpec(_P.MESSAGE_EXPIRY_INTERVAL, _W.FOUR_BYTE_INT, "message_expiry_interval"),
    PropertySpec(_P.CONTENT_TYPE, _W.UTF8_STRING, "content_type"),
    PropertySpec(_P.RESPONSE_TOPIC, _W.UTF8_STRING, "response_topic"),
    PropertySpec(_P.CORRELATION_DATA, _W.BINARY_DATA, "correlation_data"),
    PropertySpec(_P.SUBSCRIPTION_IDENTIFIER, _W.VARIABLE_BYTE_INT, "subscription_identifiers"),
    PropertySpec(_P.SESSION_EXPIRY_INTERVAL, _W.FOUR_BYTE_INT, "session_expiry_interval"),
    PropertySpec(_P.ASSIGNED_CLIENT_IDENTIFIER, _W.UTF8_STRING, "assigned_client_identifier"),
    PropertySpec(_P.SERVER_KEEP_ALIVE, _W.TWO_BYTE_INT, "server_keep_alive"),
    PropertySpec(_P.AUTHENTICATION_METHOD, _W.UTF8_STRING, "authentication_method"),
    PropertySpec(_P.AUTHENTICATION_DATA, _W.BINARY_DATA, "authentication_data"),
    PropertySpec(_P.REQUEST_PROBLEM_INFORMATION, _W.BYTE, "request_problem_information"),
    PropertySpec(_P.WILL_DELAY_INTERVAL, _W.FOUR_BYTE_INT, "will_delay_interval"),
    PropertySpec(_P.REQUEST_RESPONSE_INFORMATION, _W.BYTE, "request_response_information"),
    PropertySpec(_P.RESPONSE_INFORMATION, _W.UTF8_STRING, "response_information"),
    PropertySpec(_P.SERVER_REFERENCE, _W.UTF8_STRING, "server_reference"),
    PropertySpec(_P.REASON_STRING, _W.UTF8_STRING, "reason_string"),
    PropertySpec(_P.RECEIVE_MAXIMUM, _W.TWO_BYTE_INT, "receive_maximum"),
    PropertySpec(_P.TOPIC_ALIAS_MAXIMUM, _W.TWO_BYTE_INT, "topic_alias_maximum"),
    PropertySpec(_P.TOPIC_ALIAS, _W.TWO_BYTE_INT, "topic_alias"),
    PropertySpec(_P.MAXIMUM_QOS, _W.BYTE, "maximum_qos"),
    PropertySpec(_P.RETAIN_AVAILABLE, _W.BYTE, "retain_available"),
    PropertySpec(_P.USER_PROPERTY, _W.UTF8_STRING_PAIR, "user_properties"),
    PropertySpec(_P.MAXIMUM_PACKET_SIZE, _W.FOUR_BYTE_INT, "maximum_packet_size"),
    PropertySpec(_P.WILDCARD_SUBSCRIPTION_AVAILABLE, _W.BYTE, "wildcard_subscription_available"),
    PropertySpec(
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE, _W.BYTE, "subscription_identifier_available"
    ),
    PropertySpec(_P.SHARED_SUBSCRIPTION_AVAILABLE, _W.BYTE, "shared_subscription_available"),
)
PROPERTY_BY_ID: Final[Mapping[int, PropertySpec]] = MappingProxyType(
    {spec.id: spec for spec in PROPERTY_SPECS}
)

WILL: Final = 0
"""Pseudo packet kind for the Will Properties of CONNECT (no packet type is 0)."""

_MESSAGE: Final = frozenset(
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.MESSAGE_EXPIRY_INTERVAL,
        _P.CONTENT_TYPE,
        _P.RESPONSE_TOPIC,
        _P.CORRELATION_DATA,
        _P.USER_PROPERTY,
    }
)
_ACK: Final = frozenset({_P.REASON_STRING, _P.USER_PROPERTY})

# Which property each packet kind may carry (spec table 2-4). Keys are PacketType values
# and WILL; PINGREQ/PINGRESP carry no properties at all.
ALLOWED: Final[Mapping[int, frozenset[PropertyId]]] = MappingProxyType(
    {
        PacketType.CONNECT: frozenset(
            {
                _P.SESSION_EXPIRY_INTERVAL,
                _P.AUTHENTICATION_METHOD,
                _P.AUTHENTICATION_DATA,
                _P.REQUEST_PROBLEM_INFORMATION,
                _P.REQUEST_RESPONSE_INFORMATION,
                _P.RECEIVE_MAXIMUM,
                _P.TOPIC_ALIAS_MAXIMUM,
                _P.USER_PROPERTY,
                _P.MAXIMUM_PACKET_SIZE,
            }
        ),
        PacketType.CONNACK: frozenset(
            {
                _P.SESSION_EXPIRY_INTERVAL,
                _P.ASSIGNED_CLIENT_IDENTIFIER,
                _P.SERVER_KEEP_ALIVE,
                _P.AUTHENTICATION_METHOD,
                _P.AUTHENTICATION_DATA,
                _P.RESPONSE_INFORMATION,
                _P.SERVER_REFERENCE,
                _P.REASON_STRING,
                _P.RECEIVE_MAXIMUM,
                _P.TOPIC_ALIAS_MAXIMUM,
                _P.MAXIMUM_QOS,
                _P.RETAIN_AVAILABLE,
                _P.USER_PROPERTY,
                _P.MAXIMUM_PACKET_SIZE,
                _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
                _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                _P.SHARED_SUBSCRIPTION_AVAILABLE,
            }
        ),
        PacketType.PUBLISH: _MESSAGE | {_P.SUBSCRIPTION_IDENTIFIER, _P.TOPIC_ALIAS},
        WILL: _MESSAGE | {_P.WILL_DELAY_INTERVAL},
        PacketType.PUBACK: _ACK,
        PacketType.PUBREC: _ACK,
        PacketType.PUBREL: _ACK,
        PacketType.PUBCOMP: _ACK,
        PacketType.SUBSCRIBE: frozenset({_P.SUBSCRIPTION_IDENTIFIER, _P.USER_PROPERTY}),
        PacketType.SUBACK: _ACK,
        PacketType.UNSUBSCRIBE: frozenset({_P.USER_PROPERTY}),
        PacketType.UNSUBACK: _ACK,
        PacketType.PINGREQ: frozenset(),
        PacketType.PINGRESP: frozenset(),
        PacketType.DISCONNECT: frozenset(
            {_P.SESSION_EXPIRY_INTERVAL, _P.SERVER_REFERENCE, _P.REASON_STRING, _P.USER_PROPERTY}
        ),
        PacketType.AUTH: frozenset(
            {_P.AUTHENTICATION_METHOD, _P.AUTHENTICATION_DATA, _P.REASON_STRING, _P.USER_PROPERTY}
        ),
    }
)

# Byte properties whose only legal values are 0 and 1 (any other value is a Protocol Error).
BOOLEAN_BYTE_PROPERTIES: Final = frozenset(
    {
        _P.PAYLOAD_FORMAT_INDICATOR,
        _P.REQUEST_PROBLEM_INFORMATION,
        _P.REQUEST_RESPONSE_INFORMATION,
        _P.MAXIMUM_QOS,
        _P.RETAIN_AVAILABLE,
        _P.WILDCARD_SUBSCRIPTION_AVAILABLE,
        _P.SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        _P.SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
# Integer properties for which 0 is a Protocol Error.
NON_ZERO_PROPERTIES: Final = frozenset(
    {_P.SUBSCRIPTION_IDENTIFIER, _P.RECEIVE_MAXIMUM, _P.MAXIMUM_PACKET_SIZE, _P.TOPIC_ALIAS}
)


def _encode_byte(head: bytes, value: int) -> bytes:
    return head + byte(value)


def _encode_two_byte_int(head: bytes, value: int) -> bytes:
    return head + pack_u16(value)


def _encode_four_byte_int(head: bytes, value: int) -> bytes:
    return head + pack_u32(value)


def _encode_string(head: bytes, value: str) -> bytes:
    return head + encode_utf8(value)


def _encode_binary(head: bytes, value: bytes) -> bytes:
    return head + encode_binary(value)


def _encode_string_pairs(head: bytes, value: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join([head + encode_utf8(name) + encode_utf8(text) for name, text in value])


def _encode_variable_byte_ints(head: bytes, value: tuple[int, ...]) -> bytes:
    return b"".join([head + encode_variable_byte_int(number) for number in value])


_VALUE_ENCODERS: Final[dict[WireType, Callable[[bytes, Any], bytes]]] = {
    _W.BYTE: _encode_byte,
    _W.TWO_BYTE_INT: _encode_two_byte_int,
    _W.FOUR_BYTE_INT: _encode_four_byte_int,
    _W.VARIABLE_BYTE_INT: _encode_variable_byte_ints,  # the repeatable Subscription Identifier
    _W.UTF8_STRING: _encode_string,
    _W.BINARY_DATA: _encode_binary,
    _W.UTF8_STRING_PAIR: _encode_string_pairs,
}
_ENCODE_ORDER: Final = tuple(
    (int(s.id), s.field, byte(s.id), _VALUE_ENCODERS[s.wire_type]) for s in PROPERTY_SPECS
)
_EMPTY_BLOCK: Final = b"\x00"
_PUBLISH: Final = int(PacketType.PUBLISH)


def encode_properties(props: Properties, packet_kind: int) -> bytes:
    """Encode a property block, Property Length (a variable byte integer) included.

    ``packet_kind`` is a ``PacketType`` or ``WILL``. A property the packet may not carry,
    or a repeated Subscription Identifier outside PUBLISH, raises ``ValueError``: that is
    a bug in the caller, not something to send.
    """
    if props is NO_PROPERTIES:
        return _EMPTY_BLOCK
    allowed = ALLOWED[packet_kind]
    parts: list[bytes] = []
    for pid, field, head, encode_value in _ENCODE_ORDER:
        value = getattr(props, field)
        if value is None or value == ():
            continue
        if pid not in allowed:
            raise ValueError(f"property {field} not allowed in packet kind {packet_kind}")
        parts.append(encode_value(head, value))
    if len(props.subscription_identifiers) > 1 and packet_kind != _PUBLISH:
        raise ValueError("only PUBLISH may carry several subscription identifiers")
    body = b"".join(parts)
    return encode_variable_byte_int(len(body)) + body


def _decode_byte(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    return read_u8(buf, pos, end), pos + 1


def _decode_two_byte_int(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    return read_u16(buf, pos, end), pos + 2


def _decode_four_byte_int(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    return read_u32(buf, pos, end), pos + 4


def _decode_string_pair(buf: Buffer, pos: int, end: int) -> tuple[tuple[str, str], int]:
    name, pos = read_utf8(buf, pos, end)
    text, pos = read_utf8(buf, pos, end)
    return (name, text), pos


_VALUE_DECODERS: Final[dict[WireType, Callable[[Buffer, int, int], tuple[Any, int]]]] = {
    _W.BYTE: _decode_byte,
    _W.TWO_BYTE_INT: _decode_two_byte_int,
    _W.FOUR_BYTE_INT: _decode_four_byte_int,
    _W.VARIABLE_BYTE_INT: read_variable_byte_int,
    _W.UTF8_STRING: read_utf8,
    _W.BINARY_DATA: read_binary,
    _W.UTF8_STRING_PAIR: _decode_string_pair,
}
_NO_CHECK, _BOOLEAN, _NON_ZERO = 0, 1, 2
# identifier -> (field, value decoder, value check); plain ints keep the loop lean.
_DECODE_TABLE: Final[dict[int, tuple[str, Callable[[Buffer, int, int], tuple[Any, int]], int]]] = {
    int(s.id): (
        s.field,
        _VALUE_DECODERS[s.wire_type],
        _BOOLEAN
        if s.id in BOOLEAN_BYTE_PROPERTIES
        else _NON_ZERO
        if s.id in NON_ZERO_PROPERTIES
        else _NO_CHECK,
    )
    for s in PROPERTY_SPECS
}
_USER_PROPERTY: Final = int(_P.USER_PROPERTY)
_SUBSCRIPTION_IDENTIFIER: Final = int(_P.SUBSCRIPTION_IDENTIFIER)


def decode_properties(buf: Buffer, offset: int, packet_kind: int) -> tuple[Properties, int]:
    """Decode the property block at ``offset``; return it and the offset just past it.

    ``packet_kind`` is a ``PacketType`` or ``WILL``. Raises ``MalformedPacket`` (0x81)
    for truncation, unknown identifiers and properties the packet may not carry, and
    ``ProtocolError`` (0x82) for repeated properties and out-of-range values.
    """
    length, pos = read_variable_byte_int(buf, offset, len(buf))
    if length == 0:
        return NO_PROPERTIES, pos
    end = pos + length
    if end > len(buf):
        raise MalformedPacket("property length runs past the packet")
    allowed = ALLOWED[packet_kind]
    fields: dict[str, Any] = {}
    user: list[tuple[str, str]] = []
    sub_ids: list[int] = []
    while pos < end:
        pid, pos = read_variable_byte_int(buf, pos, end)
        entry = _DECODE_TABLE.get(pid)
        if entry is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02X}")
        if pid not in allowed:
            raise MalformedPacket(f"property {_P(pid).name} not allowed in this packet")
        field, decode_value, check = entry
        value, pos = decode_value(buf, pos, end)
        if check:
            _check_value(pid, check, value)
        if pid == _USER_PROPERTY:
            user.append(value)
        elif pid == _SUBSCRIPTION_IDENTIFIER:
            if sub_ids and packet_kind != _PUBLISH:
                raise _repeated(pid)
            sub_ids.append(value)
        elif field in fields:
            raise _repeated(pid)
        else:
            fields[field] = value
    if user:
        fields["user_properties"] = tuple(user)
    if sub_ids:
        fields["subscription_identifiers"] = tuple(sub_ids)
    return Properties(**fields), end


def _check_value(pid: int, check: int, value: int) -> None:
    if check == _BOOLEAN and value not in (0, 1):
        raise ProtocolError(
            f"property {_P(pid).name} must be 0 or 1, got {value}", ReasonCode.PROTOCOL_ERROR
        )
    if check == _NON_ZERO and value == 0:
        raise ProtocolError(f"property {_P(pid).name} must not be 0", ReasonCode.PROTOCOL_ERROR)


def _repeated(pid: int) -> ProtocolError:
    return ProtocolError(
        f"property {_P(pid).name} appears more than once", ReasonCode.PROTOCOL_ERROR
    )


__all__ = [
    "ALLOWED",
    "BOOLEAN_BYTE_PROPERTIES",
    "NON_ZERO_PROPERTIES",
    "PROPERTY_BY_ID",
    "PROPERTY_SPECS",
    "WILL",
    "PropertyId",
    "PropertySpec",
    "WireType",
    "decode_properties",
    "encode_properties",
]
