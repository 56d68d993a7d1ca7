"""MQTT 3.1.1 / 5.0 packets encoded and decoded by hand, for the raw-socket test client.

It deliberately shares no code with bastion's codec: everything here is written from the OASIS
specifications, so a bug in the broker's codec cannot hide behind the same bug in the test.
Encoders accept bad values on purpose (QoS 3, invalid UTF-8) so tests can send them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

MQTT_311: Final = 4
MQTT_5: Final = 5
DEFAULT_TIMEOUT: Final = 5.0


class PacketType(IntEnum):
    """Control packet types (the high nibble of the fixed header)."""

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


class Prop(IntEnum):
    """MQTT 5 property identifiers (spec 2.2.2.2)."""

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


class _Kind(IntEnum):
    BYTE = 1
    U16 = 2
    U32 = 3
    VARINT = 4
    BINARY = 5
    UTF8 = 6
    PAIR = 7


_PROP_KINDS: Final[dict[int, _Kind]] = {
    Prop.PAYLOAD_FORMAT_INDICATOR: _Kind.BYTE,
    Prop.MESSAGE_EXPIRY_INTERVAL: _Kind.U32,
    Prop.CONTENT_TYPE: _Kind.UTF8,
    Prop.RESPONSE_TOPIC: _Kind.UTF8,
    Prop.CORRELATION_DATA: _Kind.BINARY,
    Prop.SUBSCRIPTION_IDENTIFIER: _Kind.VARINT,
    Prop.SESSION_EXPIRY_INTERVAL: _Kind.U32,
    Prop.ASSIGNED_CLIENT_IDENTIFIER: _Kind.UTF8,
    Prop.SERVER_KEEP_ALIVE: _Kind.U16,
    Prop.AUTHENTICATION_METHOD: _Kind.UTF8,
    Prop.AUTHENTICATION_DATA: _Kind.BINARY,
    Prop.REQUEST_PROBLEM_INFORMATION: _Kind.BYTE,
    Prop.WILL_DELAY_INTERVAL: _Kind.U32,
    Prop.REQUEST_RESPONSE_INFORMATION: _Kind.BYTE,
    Prop.RESPONSE_INFORMATION: _Kind.UTF8,
    Prop.SERVER_REFERENCE: _Kind.UTF8,
    Prop.REASON_STRING: _Kind.UTF8,
    Prop.RECEIVE_MAXIMUM: _Kind.U16,
    Prop.TOPIC_ALIAS_MAXIMUM: _Kind.U16,
    Prop.TOPIC_ALIAS: _Kind.U16,
    Prop.MAXIMUM_QOS: _Kind.BYTE,
    Prop.RETAIN_AVAILABLE: _Kind.BYTE,
    Prop.USER_PROPERTY: _Kind.PAIR,
    Prop.MAXIMUM_PACKET_SIZE: _Kind.U32,
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: _Kind.BYTE,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _Kind.BYTE,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: _Kind.BYTE,
}

# A user property pair may be given as bytes, to send invalid UTF-8; decoded pairs are str.
PropValue = int | str | bytes | tuple[str | bytes, str | bytes]
PropList = Sequence[tuple[int, PropValue]]


class ConnectionClosedError(Exception):
    """The peer closed the TCP connection (EOF or reset)."""


class MalformedResponseError(Exception):
    """The broker sent bytes this client cannot decode (a broker bug, reported by the test)."""


# --------------------------------------------------------------------------- encoding


def encode_varint(value: int) -> bytes:
    """Variable Byte Integer (spec 1.5.5 / 2.2.3)."""
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_utf8(text: str | bytes) -> bytes:
    """UTF-8 string with a two-byte length prefix; bytes are sent as given (for bad input)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def encode_binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_properties(props: PropList) -> bytes:
    """A property block: length varint + properties, in the given order (duplicates allowed)."""
    body = bytearray()
    for ident, value in props:
        body += encode_varint(ident)
        kind = _PROP_KINDS[ident]
        if kind is _Kind.BYTE:
            assert isinstance(value, int)
            body += struct.pack("!B", value)
        elif kind is _Kind.U16:
            assert isinstance(value, int)
            body += struct.pack("!H", value)
        elif kind is _Kind.U32:
            assert isinstance(value, int)
            body += struct.pack("!I", value)
        elif kind is _Kind.VARINT:
            assert isinstance(value, int)
            body += encode_varint(value)
        elif kind is _Kind.BINARY:
            assert isinstance(value, bytes)
            body += encode_binary(value)
        elif kind is _Kind.UTF8:
            assert isinstance(value, str | bytes)
            body += encode_utf8(value)
        else:
            assert isinstance(value, tuple)
            body += encode_utf8(value[0]) + encode_utf8(value[1])
    return encode_varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header + body."""
    return bytes([(ptype << 4) | flags]) + encode_varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class Will:
    """A Will Message for CONNECT."""

    topic: str | bytes
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: PropList = ()


def encode_connect(
    client_id: str | bytes,
    *,
    version: int = MQTT_311,
    clean: bool = True,
    keepalive: int = 60,
    properties: PropList = (),
    will: Will | None = None,
    username: str | bytes | None = None,
    password: bytes | None = None,
    protocol_name: bytes = b"MQTT",
    reserved_flag: bool = False,
) -> bytes:
    """CONNECT (spec 3.1). ``protocol_name`` and ``reserved_flag`` exist to send bad ones."""
    flags = 0x01 if reserved_flag else 0x00
    if clean:
        flags |= 0x02
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = bytearray(encode_utf8(protocol_name))
    body += struct.pack("!BBH", version, flags, keepalive)
    if version == MQTT_5:
        body += encode_properties(properties)
    body += encode_utf8(client_id)
    if will is not None:
        if version == MQTT_5:
            body += encode_properties(will.properties)
        body += encode_utf8(will.topic) + encode_binary(will.payload)
    if username is not None:
        body += encode_utf8(username)
    if password is not None:
        body += encode_binary(password)
    return packet(PacketType.CONNECT, 0, bytes(body))


def encode_publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    version: int = MQTT_311,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    properties: PropList = (),
) -> bytes:
    """PUBLISH (spec 3.3); ``qos`` may be 3 and ``topic`` invalid bytes, to test rejection."""
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = bytearray(encode_utf8(topic))
    if qos > 0:
        body += struct.pack("!H", packet_id if packet_id is not None else 1)
    if version == MQTT_5:
        body += encode_properties(properties)
    body += payload
    return packet(PacketType.PUBLISH, flags, bytes(body))


def encode_ack(
    ptype: PacketType,
    packet_id: int,
    *,
    version: int = MQTT_311,
    reason: int = 0,
    properties: PropList = (),
    flags: int | None = None,
) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP; the v5 short form is used when reason is 0."""
    if flags is None:
        flags = 0x02 if ptype is PacketType.PUBREL else 0x00
    body = struct.pack("!H", packet_id)
    if version == MQTT_5 and (reason != 0 or properties):
        body += bytes([reason]) + encode_properties(properties)
    return packet(ptype, flags, body)


def subscription_options(
    qos: int, *, no_local: bool = False, retain_as_published: bool = False, retain_handling: int = 0
) -> int:
    """The v5 Subscription Options byte (spec 3.8.3.1); for 3.1.1 only ``qos`` is meaningful."""
    return (
        qos
        | (0x04 if no_local else 0)
        | (0x08 if retain_as_published else 0)
        | (retain_handling << 4)
    )


def encode_subscribe(
    packet_id: int,
    filters: Iterable[tuple[str | bytes, int]],
    *,
    version: int = MQTT_311,
    properties: PropList = (),
    flags: int = 0x02,
) -> bytes:
    """SUBSCRIBE (spec 3.8): ``filters`` are (topic filter, options byte)."""
    body = bytearray(struct.pack("!H", packet_id))
    if version == MQTT_5:
        body += encode_properties(properties)
    for topic_filter, options in filters:
        body += encode_utf8(topic_filter) + bytes([options])
    return packet(PacketType.SUBSCRIBE, flags, bytes(body))


def encode_unsubscribe(
    packet_id: int, filters: Iterable[str], *, version: int = MQTT_311, properties: PropList = ()
) -> bytes:
    body = bytearray(struct.pack("!H", packet_id))
    if version == MQTT_5:
        body += encode_properties(properties)
    for topic_filter in filters:
        body += encode_utf8(topic_filter)
    return packet(PacketType.UNSUBSCRIBE, 0x02, bytes(body))


def encode_pingreq() -> bytes:
    return packet(PacketType.PINGREQ, 0, b"")


def encode_disconnect(
    *, version: int = MQTT_311, reason: int = 0, properties: PropList = ()
) -> bytes:
    body = b""
    if version == MQTT_5 and (reason != 0 or properties):
        body = bytes([reason]) + encode_properties(properties)
    return packet(PacketType.DISCONNECT, 0, body)


# --------------------------------------------------------------------------- decoding


class _Reader:
    """Cursor over a packet body; every read checks bounds."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining():
            raise MalformedResponseError(f"need {n} bytes, have {self.remaining()}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("!I", self.take(4))[0]
        return value

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise MalformedResponseError("varint longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def utf8(self) -> str:
        raw = self.binary()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedResponseError(f"broker sent invalid UTF-8: {raw!r}") from exc

    def rest(self) -> bytes:
        return self.take(self.remaining())


@dataclass(frozen=True, slots=True)
class Properties:
    """A decoded property block, in wire order."""

    items: tuple[tuple[int, PropValue], ...] = ()

    def has(self, ident: int) -> bool:
        return any(i == ident for i, _ in self.items)

    def get(self, ident: int) -> PropValue | None:
        for i, value in self.items:
            if i == ident:
                return value
        return None

    def get_int(self, ident: int) -> int | None:
        value = self.get(ident)
        assert value is None or isinstance(value, int), value
        return value

    def get_str(self, ident: int) -> str | None:
        value = self.get(ident)
        assert value is None or isinstance(value, str), value
        return value

    def get_all(self, ident: int) -> list[PropValue]:
        return [value for i, value in self.items if i == ident]

    def ids(self) -> set[int]:
        return {i for i, _ in self.items}


def _decode_properties(reader: _Reader) -> Properties:
    length = reader.varint()
    sub = _Reader(reader.take(length))
    items: list[tuple[int, PropValue]] = []
    while sub.remaining():
        ident = sub.varint()
        kind = _PROP_KINDS.get(ident)
        value: PropValue
        if kind is None:
            raise MalformedResponseError(f"unknown property id 0x{ident:02x}")
        if kind is _Kind.BYTE:
            value = sub.u8()
        elif kind is _Kind.U16:
            value = sub.u16()
        elif kind is _Kind.U32:
            value = sub.u32()
        elif kind is _Kind.VARINT:
            value = sub.varint()
        elif kind is _Kind.BINARY:
            value = sub.binary()
        elif kind is _Kind.UTF8:
            value = sub.utf8()
        else:
            value = (sub.utf8(), sub.utf8())
        items.append((ident, value))
    return Properties(tuple(items))


@dataclass(frozen=True, slots=True)
class Packet:
    """One framed control packet as received."""

    type: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        try:
            return PacketType(self.type).name
        except ValueError:
            return f"TYPE{self.type}"


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class Ack:
    """PUBACK / PUBREC / PUBREL / PUBCOMP."""

    type: int
    flags: int
    packet_id: int
    reason_code: int
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK / UNSUBACK (for 3.1.1 UNSUBACK ``reason_codes`` is empty)."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = field(default_factory=Properties)


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int
    properties: Properties = field(default_factory=Properties)


def decode_connack(pkt: Packet, version: int) -> ConnAck:
    _expect_type(pkt, PacketType.CONNACK)
    reader = _Reader(pkt.body)
    ack_flags = reader.u8()
    if ack_flags & 0xFE:
        raise MalformedResponseError(f"CONNACK reserved flags set: {ack_flags:#x}")
    code = reader.u8()
    props = _decode_properties(reader) if version == MQTT_5 and reader.remaining() else Properties()
    _expect_consumed(reader, pkt)
    return ConnAck(bool(ack_flags & 1), code, props)


def decode_publish(pkt: Packet, version: int) -> Publish:
    _expect_type(pkt, PacketType.PUBLISH)
    qos = (pkt.flags >> 1) & 0x03
    if qos == 3:
        raise MalformedResponseError("broker sent PUBLISH with QoS 3")
    reader = _Reader(pkt.body)
    topic = reader.utf8()
    packet_id = reader.u16() if qos else None
    props = _decode_properties(reader) if version == MQTT_5 else Properties()
    return Publish(
        topic=topic,
        payload=reader.rest(),
        qos=qos,
        retain=bool(pkt.flags & 0x01),
        dup=bool(pkt.flags & 0x08),
        packet_id=packet_id,
        properties=props,
    )


def decode_ack(pkt: Packet, version: int) -> Ack:
    if pkt.type not in (
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
    ):
        raise MalformedResponseError(f"expected a publish acknowledgement, got {pkt.name}")
    reader = _Reader(pkt.body)
    packet_id = reader.u16()
    code = 0
    props = Properties()
    if version == MQTT_5 and reader.remaining():
        code = reader.u8()
        if reader.remaining():
            props = _decode_properties(reader)
    _expect_consumed(reader, pkt)
    return Ack(pkt.type, pkt.flags, packet_id, code, props)


def decode_suback(pkt: Packet, version: int) -> SubAck:
    if pkt.type not in (PacketType.SUBACK, PacketType.UNSUBACK):
        raise MalformedResponseError(f"expected SUBACK/UNSUBACK, got {pkt.name}")
    reader = _Reader(pkt.body)
    packet_id = reader.u16()
    props = _decode_properties(reader) if version == MQTT_5 else Properties()
    return SubAck(packet_id, tuple(reader.rest()), props)


def decode_disconnect(pkt: Packet, version: int) -> Disconnect:
    _expect_type(pkt, PacketType.DISCONNECT)
    reader = _Reader(pkt.body)
    if version != MQTT_5 or not reader.remaining():
        return Disconnect(0)
    code = reader.u8()
    props = _decode_properties(reader) if reader.remaining() else Properties()
    _expect_consumed(reader, pkt)
    return Disconnect(code, props)


def _expect_type(pkt: Packet, ptype: PacketType) -> None:
    if pkt.type != ptype:
        raise MalformedResponseError(f"expected {ptype.name}, got {pkt.name} {pkt.body!r}")


def _expect_consumed(reader: _Reader, pkt: Packet) -> None:
    if reader.remaining():
        raise MalformedResponseError(f"{pkt.name}: {reader.remaining()} trailing bytes")
