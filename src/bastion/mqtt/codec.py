"""The MQTT 3.1/3.1.1/5.0 codec: ``packets`` values to bytes and back, pure and sans-I/O.

``connection.py`` feeds frames from ``FrameReader`` (``framing.py``) to ``decode`` and
sends what ``encode`` returns; properties and primitives live in ``properties``/``wire``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt.framing import MAX_PACKET_SIZE, FrameReader
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from bastion.mqtt.properties import WILL, decode_properties, encode_properties
from bastion.mqtt.reason_codes import (
    CONNACK_REASON_FROM_V311,
    SUBACK_RETURN_CODES_V311,
    VALID_REASON_CODES,
    ReasonCode,
    connack_return_code_v311,
)
from bastion.mqtt.wire import (
    MAX_TWO_BYTE_INT,
    Buffer,
    byte,
    encode_binary,
    encode_utf8,
    encode_variable_byte_int,
    pack_u16,
    read_binary,
    read_u8,
    read_u16,
    read_utf8,
    read_variable_byte_int,
)

MQTT_5: Final = 5
_PUBLISH: Final = int(PacketType.PUBLISH)

_Decoder = Callable[[Buffer, bool], Packet]

# ---------------------------------------------------------------------------- helpers


def decode_variable_byte_int(buf: Buffer, offset: int = 0) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``offset``; return (value, offset after it)."""
    return read_variable_byte_int(buf, offset, len(buf))


def _frame(first: int, body: bytes) -> bytes:
    return byte(first) + encode_variable_byte_int(len(body)) + body


def _props(props: Properties, kind: int) -> bytes:
    return b"\x00" if props is NO_PROPERTIES else encode_properties(props, kind)


def _protocol_error(message: str) -> ProtocolError:
    return ProtocolError(message, ReasonCode.PROTOCOL_ERROR)


def _check_end(pos: int, end: int) -> None:
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes after the packet content")


def _read_packet_id(body: Buffer, pos: int, end: int) -> int:
    packet_id = read_u16(body, pos, end)
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    return packet_id


def _check_reason(kind: PacketType, reason: int) -> None:
    if reason not in VALID_REASON_CODES[kind]:
        raise _protocol_error(f"reason code 0x{reason:02X} is not valid in {kind.name}")


# ---------------------------------------------------------------------------- encoding


# The last PUBLISH encoded, with its bytes: the broker hands one ``Publish`` object to every
# subscriber of the same shape, so a fan-out encodes it once. Keyed by identity (the memo
# holds a reference, so the id cannot be reused) and replaced in one assignment.
_last_publish: tuple[Publish | None, bool, bytes] = (None, False, b"")


def encode(packet: Packet, version: int) -> bytes:
    """Encode ``packet`` for a connection speaking protocol level ``version`` (3, 4 or 5).

    CONNECT is encoded for its own ``protocol_version``. For 3.1/3.1.1, properties and
    the reason codes the older protocol lacks are left out. Values the wire cannot carry
    (QoS 3, a missing packet id, AUTH below 5.0, oversized strings, a property the packet
    may not carry) raise ``ValueError``.
    """
    global _last_publish  # a one-entry memo, replaced as a whole
    v5 = version >= MQTT_5
    try:
        if type(packet) is Publish:
            last = _last_publish
            if last[0] is packet and last[1] == v5:
                return last[2]
            data = _encode_publish(packet, v5)
            _last_publish = (packet, v5, data)
            return data
        return _ENCODERS[type(packet)](packet, v5)
    except (struct.error, OverflowError, IndexError) as exc:
        raise ValueError(f"cannot encode {type(packet).__name__}: {exc}") from None


def _encode_publish(packet: Publish, v5: bool) -> bytes:
    topic = packet.topic.encode("utf-8")
    topic_len = len(topic)
    if topic_len > MAX_TWO_BYTE_INT:
        raise ValueError("topic longer than 65535 bytes")
    qos = packet.qos
    if v5:
        props = packet.properties
        props_bytes = b"\x00" if props is NO_PROPERTIES else encode_properties(props, _PUBLISH)
    else:
        props_bytes = b""
    payload = packet.payload
    first = 0x30 | (qos << 1) | (0x08 if packet.dup else 0) | (0x01 if packet.retain else 0)
    if qos == 0:
        remaining = 2 + topic_len + len(props_bytes) + len(payload)
        head = byte(first) + encode_variable_byte_int(remaining)
        return b"".join((head, pack_u16(topic_len), topic, props_bytes, payload))
    packet_id = packet.packet_id
    if packet_id is None or qos > 2 or qos < 0:
        raise ValueError("PUBLISH needs QoS 0-2 and, above QoS 0, a packet identifier")
    remaining = 4 + topic_len + len(props_bytes) + len(payload)
    head = byte(first) + encode_variable_byte_int(remaining)
    return b"".join((head, pack_u16(topic_len), topic, pack_u16(packet_id), props_bytes, payload))


def _encode_connect(packet: Connect, _v5: bool) -> bytes:
    level = packet.protocol_version
    v5 = level >= MQTT_5
    flags = 0x02 if packet.clean_start else 0
    name = encode_utf8(_PROTOCOL_NAMES.get(level, "MQTT"))
    parts = [name, byte(level), b"", pack_u16(packet.keep_alive)]  # [2]: flags, set below
    if v5:
        parts.append(_props(packet.properties, PacketType.CONNECT))
    parts.append(encode_utf8(packet.client_id))
    will = packet.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise ValueError("will QoS must be 0-2")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        if v5:
            parts.append(_props(will.properties, WILL))
        parts.append(encode_utf8(will.topic))
        parts.append(encode_binary(will.payload))
    if packet.username is not None:
        flags |= 0x80
        parts.append(encode_utf8(packet.username))
    if packet.password is not None:
        flags |= 0x40
        parts.append(encode_binary(packet.password))
    parts[2] = byte(flags)
    return _frame(0x10, b"".join(parts))


def _encode_connack(packet: Connack, v5: bool) -> bytes:
    flags = 0x01 if packet.session_present else 0
    if not v5:
        return bytes((0x20, 2, flags, connack_return_code_v311(packet.reason_code)))
    body = bytes((flags, packet.reason_code)) + _props(packet.properties, PacketType.CONNACK)
    return _frame(0x20, body)


def _ack_encoder(first: int, kind: PacketType) -> Callable[[Any, bool], bytes]:
    """Encoder for PUBACK/PUBREC/PUBREL/PUBCOMP, omitting what MQTT 5 lets us omit."""
    short_head = bytes((first, 2))

    def encode_ack(packet: Puback | Pubrec | Pubrel | Pubcomp, v5: bool) -> bytes:
        packet_id = pack_u16(packet.packet_id)
        if v5:
            props = _props(packet.properties, kind)
            if props != b"\x00":
                return _frame(first, packet_id + byte(packet.reason_code) + props)
            if packet.reason_code:
                return bytes((first, 3)) + packet_id + byte(packet.reason_code)
        return short_head + packet_id

    return encode_ack


def _encode_subscribe(packet: Subscribe, v5: bool) -> bytes:
    parts = [pack_u16(packet.packet_id)]
    if v5:
        parts.append(_props(packet.properties, PacketType.SUBSCRIBE))
    for sub in packet.subscriptions:
        if not 0 <= sub.qos <= 2 or not 0 <= sub.retain_handling <= 2:
            raise ValueError("subscription QoS must be 0-2 and retain handling 0-2")
        options = sub.qos
        if v5:
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | (sub.retain_handling << 4)
            )
        parts.append(encode_utf8(sub.topic_filter))
        parts.append(byte(options))
    return _frame(0x82, b"".join(parts))


def _encode_suback(packet: Suback, v5: bool) -> bytes:
    head = pack_u16(packet.packet_id)
    if v5:
        props = _props(packet.properties, PacketType.SUBACK)
        return _frame(0x90, head + props + bytes(packet.reason_codes))
    codes = bytes(code if code < 0x80 else 0x80 for code in packet.reason_codes)
    return _frame(0x90, head + codes)


def _encode_unsubscribe(packet: Unsubscribe, v5: bool) -> bytes:
    parts = [pack_u16(packet.packet_id)]
    if v5:
        parts.append(_props(packet.properties, PacketType.UNSUBSCRIBE))
    parts.extend(encode_utf8(topic_filter) for topic_filter in packet.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(packet: Unsuback, v5: bool) -> bytes:
    head = pack_u16(packet.packet_id)
    if not v5:
        return b"\xb0\x02" + head
    props = _props(packet.properties, PacketType.UNSUBACK)
    return _frame(0xB0, head + props + bytes(packet.reason_codes))


def _encode_pingreq(_packet: Pingreq, _v5: bool) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(_packet: Pingresp, _v5: bool) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(packet: Disconnect, v5: bool) -> bytes:
    if not v5:
        return b"\xe0\x00"
    props = _props(packet.properties, PacketType.DISCONNECT)
    if props != b"\x00":
        return _frame(0xE0, byte(packet.reason_code) + props)
    if packet.reason_code:
        return bytes((0xE0, 1, packet.reason_code))
    return b"\xe0\x00"


def _encode_auth(packet: Auth, v5: bool) -> bytes:
    if not v5:
        raise ValueError("AUTH exists only in MQTT 5.0")
    props = _props(packet.properties, PacketType.AUTH)
    if packet.reason_code == 0 and props == b"\x00":
        return b"\xf0\x00"
    return _frame(0xF0, byte(packet.reason_code) + props)


_ENCODERS: Final[dict[type, Callable[[Any, bool], bytes]]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    Puback: _ack_encoder(0x40, PacketType.PUBACK),
    Pubrec: _ack_encoder(0x50, PacketType.PUBREC),
    Pubrel: _ack_encoder(0x62, PacketType.PUBREL),
    Pubcomp: _ack_encoder(0x70, PacketType.PUBCOMP),
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _encode_unsuback,
    Pingreq: _encode_pingreq,
    Pingresp: _encode_pingresp,
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}

# ---------------------------------------------------------------------------- decoding

_PROTOCOL_NAMES: Final = {3: "MQIsdp", 4: "MQTT", 5: "MQTT"}

# Required low nibble of the first byte per packet type; PUBLISH's flags carry data.
_FIXED_FLAGS: Final[dict[int, int]] = {
    PacketType.CONNECT: 0,
    PacketType.CONNACK: 0,
    PacketType.PUBACK: 0,
    PacketType.PUBREC: 0,
    PacketType.PUBREL: 0b0010,
    PacketType.PUBCOMP: 0,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.SUBACK: 0,
    PacketType.UNSUBSCRIBE: 0b0010,
    PacketType.UNSUBACK: 0,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
    PacketType.AUTH: 0,
}


def decode(first_byte: int, body: Buffer, version: int) -> Packet:
    """Decode one packet from its first byte and body (the bytes after Remaining Length).

    ``version`` is the negotiated protocol level (3, 4 or 5); CONNECT carries its own.
    Raises only ``ProtocolError`` (``MalformedPacket`` included), whose ``reason`` is the
    MQTT 5 reason code to answer with; an unsupported CONNECT protocol level gives 0x84.
    """
    try:
        return _decode_checked(first_byte, body, version)
    except (IndexError, ValueError, TypeError, struct.error) as exc:  # a bug: still malformed
        raise MalformedPacket(f"undecodable packet ({type(exc).__name__})") from None


def _decode_checked(first_byte: int, body: Buffer, version: int) -> Packet:
    """``decode`` without its last-resort net; tests hold this to the same promise."""
    packet_type = first_byte >> 4
    flags = first_byte & 0x0F
    v5 = version >= MQTT_5
    if packet_type == _PUBLISH:
        return _decode_publish(flags, body, v5)
    required = _FIXED_FLAGS.get(packet_type)
    if required is None or (packet_type == PacketType.AUTH and not v5):
        raise MalformedPacket(f"reserved packet type {packet_type}")
    if flags != required:
        raise MalformedPacket(f"invalid fixed header flags 0x{flags:X} for type {packet_type}")
    return _DECODERS[packet_type](body, v5)


def _decode_publish(flags: int, body: Buffer, v5: bool) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = flags & 0x08 != 0
    if dup and qos == 0:
        raise _protocol_error("PUBLISH with QoS 0 and DUP set")
    end = len(body)
    topic, pos = read_utf8(body, 0, end)
    packet_id = None
    if qos:
        packet_id = _read_packet_id(body, pos, end)
        pos += 2
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, _PUBLISH)
    return Publish(topic, bytes(body[pos:]), qos, flags & 0x01 != 0, dup, packet_id, props)


def _decode_connect(body: Buffer, _v5: bool) -> Connect:
    end = len(body)
    name, pos = read_utf8(body, 0, end)
    level = read_u8(body, pos, end)
    if name not in ("MQTT", "MQIsdp"):
        raise _protocol_error(f"unknown protocol name {name!r}")
    if _PROTOCOL_NAMES.get(level) != name:
        raise ProtocolError(
            f"unsupported protocol level {level} for {name!r}",
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        )
    flags = read_u8(body, pos + 1, end)
    keep_alive = read_u16(body, pos + 2, end)
    pos += 4
    if flags & 0x01:
        raise MalformedPacket("reserved CONNECT flag set")
    will_flag = flags & 0x04
    will_qos = (flags >> 3) & 0x03
    will_retain = flags & 0x20 != 0
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain set without the will flag")
    v5 = level >= MQTT_5
    if flags & 0x40 and not flags & 0x80 and not v5:
        raise MalformedPacket("password flag without user name flag")
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, PacketType.CONNECT)
    client_id, pos = read_utf8(body, pos, end)
    will = None
    if will_flag:
        will_props = NO_PROPERTIES
        if v5:
            will_props, pos = decode_properties(body, pos, WILL)
        will_topic, pos = read_utf8(body, pos, end)
        will_payload, pos = read_binary(body, pos, end)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username: str | None = None
    password: bytes | None = None
    if flags & 0x80:
        username, pos = read_utf8(body, pos, end)
    if flags & 0x40:
        password, pos = read_binary(body, pos, end)
    _check_end(pos, end)
    return Connect(
        level, client_id, flags & 0x02 != 0, keep_alive, will, username, password, props, name
    )


def _decode_connack(body: Buffer, v5: bool) -> Connack:
    end = len(body)
    flags = read_u8(body, 0, end)
    code = read_u8(body, 1, end)
    if flags & 0xFE:
        raise MalformedPacket("reserved CONNACK flags set")
    props = NO_PROPERTIES
    if v5:
        _check_reason(PacketType.CONNACK, code)
        reason = code
        props, pos = decode_properties(body, 2, PacketType.CONNACK)
        _check_end(pos, end)
    else:
        _check_end(2, end)
        mapped = CONNACK_REASON_FROM_V311.get(code)
        if mapped is None:
            raise _protocol_error(f"reserved CONNACK return code {code}")
        reason = mapped
    if flags and reason:
        raise _protocol_error("session present with a failed CONNACK")
    return Connack(flags == 1, reason, props)


def _ack_decoder(kind: PacketType, cls: type[Puback | Pubrec | Pubrel | Pubcomp]) -> _Decoder:
    def decode_ack(body: Buffer, v5: bool) -> Packet:
        end = len(body)
        packet_id = _read_packet_id(body, 0, end)
        if not v5 or end == 2:
            _check_end(2, end)
            return cls(packet_id)
        reason = body[2]
        _check_reason(kind, reason)
        props = NO_PROPERTIES
        if end > 3:
            props, pos = decode_properties(body, 3, kind)
            _check_end(pos, end)
        return cls(packet_id, reason, props)

    return decode_ack


def _decode_subscribe(body: Buffer, v5: bool) -> Subscribe:
    end = len(body)
    packet_id = _read_packet_id(body, 0, end)
    pos = 2
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, PacketType.SUBSCRIBE)
    subscriptions = []
    while pos < end:
        topic_filter, pos = read_utf8(body, pos, end)
        options = read_u8(body, pos, end)
        pos += 1
        subscriptions.append(_subscription(topic_filter, options, v5))
    if not subscriptions:
        raise _protocol_error("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(subscriptions), props)


def _subscription(topic_filter: str, options: int, v5: bool) -> Subscription:
    if options & (0xC0 if v5 else 0xFC):
        raise MalformedPacket("reserved subscription option bits set")
    qos = options & 0x03
    if qos == 3:
        raise MalformedPacket("subscription with QoS 3")
    retain_handling = (options >> 4) & 0x03
    if retain_handling == 3:
        raise _protocol_error("retain handling 3")
    return Subscription(
        topic_filter, qos, options & 0x04 != 0, options & 0x08 != 0, retain_handling
    )


def _decode_suback(body: Buffer, v5: bool) -> Suback:
    end = len(body)
    packet_id = _read_packet_id(body, 0, end)
    pos = 2
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, PacketType.SUBACK)
    codes = tuple(body[pos:end])
    if not codes:
        raise _protocol_error("SUBACK without reason codes")
    valid = VALID_REASON_CODES[PacketType.SUBACK] if v5 else SUBACK_RETURN_CODES_V311
    for code in codes:
        if code not in valid:
            raise _protocol_error(f"reason code 0x{code:02X} is not valid in SUBACK")
    return Suback(packet_id, codes, props)


def _decode_unsubscribe(body: Buffer, v5: bool) -> Unsubscribe:
    end = len(body)
    packet_id = _read_packet_id(body, 0, end)
    pos = 2
    props = NO_PROPERTIES
    if v5:
        props, pos = decode_properties(body, pos, PacketType.UNSUBSCRIBE)
    topic_filters = []
    while pos < end:
        topic_filter, pos = read_utf8(body, pos, end)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise _protocol_error("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(topic_filters), props)


def _decode_unsuback(body: Buffer, v5: bool) -> Unsuback:
    end = len(body)
    packet_id = _read_packet_id(body, 0, end)
    if not v5:
        _check_end(2, end)
        return Unsuback(packet_id)
    props, pos = decode_properties(body, 2, PacketType.UNSUBACK)
    codes = tuple(body[pos:end])
    if not codes:
        raise _protocol_error("UNSUBACK without reason codes")
    for code in codes:
        _check_reason(PacketType.UNSUBACK, code)
    return Unsuback(packet_id, codes, props)


def _decode_pingreq(body: Buffer, _v5: bool) -> Pingreq:
    _check_end(0, len(body))
    return Pingreq()


def _decode_pingresp(body: Buffer, _v5: bool) -> Pingresp:
    _check_end(0, len(body))
    return Pingresp()


def _reason_and_props(body: Buffer, kind: PacketType) -> tuple[int, Properties]:
    """DISCONNECT/AUTH body: optional reason code, then optional property block."""
    end = len(body)
    if end == 0:
        return 0, NO_PROPERTIES
    reason = body[0]
    _check_reason(kind, reason)
    if end == 1:
        return reason, NO_PROPERTIES
    props, pos = decode_properties(body, 1, kind)
    _check_end(pos, end)
    return reason, props


def _decode_disconnect(body: Buffer, v5: bool) -> Disconnect:
    if not v5:
        _check_end(0, len(body))
        return Disconnect()
    reason, props = _reason_and_props(body, PacketType.DISCONNECT)
    return Disconnect(reason, props)


def _decode_auth(body: Buffer, _v5: bool) -> Auth:
    reason, props = _reason_and_props(body, PacketType.AUTH)
    return Auth(reason, props)


_DECODERS: Final[dict[int, _Decoder]] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBACK: _ack_decoder(PacketType.PUBACK, Puback),
    PacketType.PUBREC: _ack_decoder(PacketType.PUBREC, Pubrec),
    PacketType.PUBREL: _ack_decoder(PacketType.PUBREL, Pubrel),
    PacketType.PUBCOMP: _ack_decoder(PacketType.PUBCOMP, Pubcomp),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_pingreq,
    PacketType.PINGRESP: _decode_pingresp,
    PacketType.DISCONNECT: _decode_disconnect,
    PacketType.AUTH: _decode_auth,
}

__all__ = [
    "MAX_PACKET_SIZE",
    "FrameReader",
    "decode",
    "decode_variable_byte_int",
    "encode",
    "encode_variable_byte_int",
]
